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
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
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

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    gateway::tls::install_crypto_provider();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            let gateway = Arc::new(Gateway::from_config(config)?);
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
        Command::Check { config } => {
            let loaded = Config::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            Gateway::from_config(loaded)?;
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
