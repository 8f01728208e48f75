//! The `gateway` command: thin; parses arguments, sets up logging, and calls the library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gateway::app::Gateway;
use gateway::config::Config;
use gateway::demo::{self, DemoOptions};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Regional federation gateway: one FHIR R4 view of a patient across neighbouring regions"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, env = "GATEWAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve both faces of one region's gateway.
    Serve {
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and every file it names, then exit.
    Check {
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Ask a health endpoint (the image's HEALTHCHECK: the operations listener's `/readyz`);
    /// exit 0 when it answers 2xx within the timeout, 1 otherwise.
    Probe {
        #[arg(default_value = "http://127.0.0.1:9100/readyz")]
        url: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// A local federation of three regions on loopback, with synthetic records.
    Demo {
        /// Where certificates, records, configurations and the token are written.
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
        /// Clinician faces listen on PORT, PORT+1, ...; federation faces on PORT+100, ...
        #[arg(long, default_value_t = 8443)]
        port_base: u16,
        #[arg(long, default_value_t = 300)]
        patients: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "dorset,hampshire,wiltshire"
        )]
        regions: Vec<String>,
        /// Write everything and exit without starting the gateways.
        #[arg(long)]
        prepare_only: bool,
    },
    /// Consent and role policy: run the test cases, or explain one decision.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Mint a development clinician token with the demo's identity-provider key.
    Token {
        #[arg(long, default_value = "demo-data/idp/idp.key")]
        idp_key: PathBuf,
        /// NHS national RBAC role code (R8000 clinical practitioner, R8004 student, ...).
        #[arg(long, default_value = "R8000")]
        role: String,
        /// ODS code of the user's organisation.
        #[arg(long, default_value = "RBD")]
        org: String,
        /// HL7 v3 ActReason purpose of use.
        #[arg(long, default_value = "TREAT")]
        purpose: String,
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: i64,
    },
}

// Parsed once at start; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the policy test cases (policies/tests/*.json) against a policy set.
    Test {
        /// Policy directory (schema.cedarschema and default/*.cedar); the embedded set if absent.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value = "policies/tests")]
        cases: PathBuf,
    },
    /// Decide one question and show the policies behind the decision.
    Explain {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The user's NHS RBAC role code.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "RBD")]
        org: String,
        #[arg(long, default_value = "dorset")]
        user_region: String,
        #[arg(long, default_value = "TREAT")]
        purpose: String,
        #[arg(long)]
        break_glass: bool,
        /// `view` (the requesting region) or `release` (the answering region).
        #[arg(long, default_value = "view", value_parser = ["view", "release"])]
        point: String,
        /// Another action than reading the item: search, break-glass, manage-consent, edit-policy.
        #[arg(long)]
        action: Option<String>,
        /// The item's FHIR resource type.
        #[arg(long = "type")]
        resource_type: String,
        /// The region holding the item.
        #[arg(long, default_value = "dorset")]
        item_region: String,
        #[arg(long, default_value = "N")]
        confidentiality: String,
        /// Sensitivity codes on the item (HIV, PSY, SDV, ETH, STD, ...).
        #[arg(long, value_delimiter = ',')]
        sensitivity: Vec<String>,
        /// The patient's home region.
        #[arg(long, default_value = "dorset")]
        patient_region: String,
        /// The patient objects to sharing outside their home region.
        #[arg(long)]
        objects: bool,
        #[arg(long)]
        consent_denies: bool,
        #[arg(long)]
        consent_permits: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a federation CA and, for each region, a server and a client certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_delimiter = ',', required = true)]
        regions: Vec<String>,
        /// Extra names for the server certificates (DNS names or IP addresses).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

/// The operational log on standard error, written by a thread of its own from a buffer, so
/// that a request's thread never waits on the terminal or a pipe. Nothing is dropped: when the
/// buffer is full, logging waits (an operator would rather a slow line than a missing one).
/// The thread writes every line waiting and then flushes, so under load many lines share one
/// `write` (a profile of a kept view's repeat put the log's thread, writing a line at a time,
/// at 7 % of the gateway's CPU), and a lone line still leaves at once. The guard flushes what
/// is left when `main` ends.
fn init_logging(format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain from the first record and every signed checkpoint; names the first
    /// record modified, deleted or reordered. Exits 1 when anything is wrong.
    Verify {
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: PathBuf,
        /// Checkpoint files (JSON lines) kept elsewhere; the configured file is always read
        /// when it exists.
        #[arg(long)]
        checkpoints: Vec<PathBuf>,
    },
    /// Write the whole trail to standard output as JSON lines, oldest first (`seq`,
    /// `prev_hash`, `hash`, `event`), for checking the chain with another RFC 8785 library.
    /// The export holds the patient data the trail holds.
    Export {
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: PathBuf,
    },
}

/// mimalloc instead of the system allocator: a request builds and drops many small JSON
/// values on both cores at once, where glibc's malloc spent a quarter of the time (profile in
/// the issue 9 note).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _log = init_logging(&cli.log_format);
    gateway::tls::install_crypto_provider();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            let gateway = Arc::new(Gateway::from_config(config).await?);
            let running = gateway::server::start(gateway).await?;
            let stop = running.stop_handle();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down: finishing in-flight requests");
                let _ = stop.send(true);
            });
            running.wait().await;
            tracing::info!("stopped");
        }
        Command::Probe { url, timeout_ms } => {
            let answer = reqwest::Client::builder()
                .timeout(std::time::Duration::from_millis(timeout_ms))
                .no_proxy()
                .build()?
                .get(&url)
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => println!("{url}: {}", r.status()),
                Ok(r) => anyhow::bail!("{url}: {}", r.status()),
                Err(e) => anyhow::bail!("{url}: {e}"),
            }
        }
        Command::Check { config } => {
            let loaded = Config::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            Gateway::from_config(loaded).await?;
            println!("{}: valid", config.display());
        }
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    regions,
                    hosts,
                    days,
                },
        } => {
            let written = gateway::tls::devca::init_dir(&dir, &regions, &hosts, days)?;
            for path in written {
                println!("{}", path.display());
            }
        }
        Command::Demo {
            dir,
            port_base,
            patients,
            regions,
            prepare_only,
        } => {
            let opts = DemoOptions {
                dir,
                port_base,
                patients,
                regions,
            };
            if prepare_only {
                let layout = demo::prepare(&opts)?;
                for c in demo::curl_commands(&layout) {
                    println!("{c}");
                }
            } else {
                demo::run(opts).await?;
            }
        }
        Command::Policy { command } => return policy_command(command),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    mut checkpoints,
                },
        } => {
            let loaded = Config::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            if let Some(f) = &loaded.audit.checkpoint_file {
                if f.exists() && !checkpoints.contains(f) {
                    checkpoints.push(f.clone());
                }
            }
            let report = gateway::app::verify_trail(&loaded, &checkpoints).await?;
            let region = &loaded.region.code;
            if report.problems.is_empty() {
                println!(
                    "audit trail of {region}: {} records, intact (head {})",
                    report.records, report.head
                );
                match report.latest_checkpoint {
                    Some(seq) => println!(
                        "{} signed checkpoint(s) verified; the latest vouches for {seq} records",
                        report.checkpoints
                    ),
                    None => println!("no signed checkpoints yet"),
                }
            } else {
                for p in &report.problems {
                    println!("TAMPERED: {p}");
                }
                anyhow::bail!(
                    "the audit trail of {region} failed verification ({} problem(s))",
                    report.problems.len()
                );
            }
        }
        Command::Audit {
            command: AuditCommand::Export { config },
        } => {
            let loaded = Config::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = gateway::app::export_trail(&loaded, &mut out).await?;
            std::io::Write::flush(&mut out)?;
            eprintln!("{n} audit records written");
        }
        Command::Token {
            idp_key,
            role,
            org,
            purpose,
            ttl_seconds,
        } => {
            let pem = std::fs::read_to_string(&idp_key)
                .with_context(|| format!("reading {}", idp_key.display()))?;
            println!(
                "{}",
                demo::dev_token(&pem, &role, &org, &purpose, ttl_seconds)?
            );
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM where there is one (containers stop with SIGTERM).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn load_policies(dir: Option<&std::path::Path>) -> anyhow::Result<policy::PolicySet> {
    Ok(match dir {
        Some(d) => policy::PolicySet::load(d)?,
        None => gateway::access::embedded_policy_set()?,
    })
}

fn policy_command(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Test { dir, cases } => {
            let set = load_policies(dir.as_deref())?;
            let files = policy::cases::load_dir(&cases)?;
            let outcomes = policy::cases::run(&set, &files);
            let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
            for o in &failed {
                println!("FAILED {}: {}: {}", o.file, o.name, o.detail);
            }
            println!(
                "policy-cases: {} passed, {} failed",
                outcomes.len() - failed.len(),
                failed.len()
            );
            if !failed.is_empty() {
                anyhow::bail!("{} policy case(s) failed", failed.len());
            }
        }
        PolicyCommand::Explain {
            dir,
            action,
            role,
            org,
            user_region,
            purpose,
            break_glass,
            point,
            resource_type,
            item_region,
            confidentiality,
            sensitivity,
            patient_region,
            objects,
            consent_denies,
            consent_permits,
        } => {
            let set = load_policies(dir.as_deref())?;
            let principal = policy::Principal {
                id: "explain".into(),
                role,
                organisation: org,
                home_region: user_region.clone(),
            };
            let item = policy::ItemClass {
                resource_type,
                region: item_region,
                confidentiality,
                sensitivity: sensitivity.into_iter().collect(),
                patient_home_region: patient_region,
                patient_objects_to_sharing: objects,
                consent_denies,
                consent_permits,
            };
            let circumstances = policy::Circumstances {
                purpose_of_use: if break_glass {
                    "ETREAT".into()
                } else {
                    purpose
                },
                break_glass,
                decision_point: if point == "release" {
                    policy::DecisionPoint::Release
                } else {
                    policy::DecisionPoint::View
                },
                requesting_region: user_region,
                break_glass_reason: if break_glass {
                    "(given)".into()
                } else {
                    String::new()
                },
                time: time::OffsetDateTime::now_utc().unix_timestamp(),
                granted_types: policy::all_types(),
            };
            let q = policy::Question {
                principal: &principal,
                item: &item,
                circumstances: &circumstances,
            };
            let d = match &action {
                Some(a) => set.decide_action(a, &q),
                None => set.decide(&q),
            };
            println!("Decision: {}", if d.allowed { "ALLOW" } else { "DENY" });
            if d.policies.is_empty() && !d.allowed {
                println!("  No policy permits this (anything not permitted is refused).");
            }
            for id in &d.policies {
                match set.describe(id) {
                    Some((file, text)) => println!("  {id} ({file}): {text}"),
                    None => println!("  {id}"),
                }
            }
            for e in &d.errors {
                println!("  error (refused, fail closed): {e}");
            }
        }
    }
    Ok(())
}
