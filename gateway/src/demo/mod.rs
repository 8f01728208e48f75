//! `gateway demo`: a local federation of three regions on loopback, on the embedded defaults.
//! It makes development certificates, writes a synthetic record for each region, makes a
//! development identity-provider key and a clinician token, writes one configuration file per
//! region, starts the three gateways, and prints `curl` commands ready to paste.

pub mod data;
pub mod realistic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::{Gateway, StartError};
use crate::auth::{DevTokenClaims, KeyError, mint_dev_token};
use crate::config::{Config, ConfigError};
use crate::fhir::nhs::NhsNumber;
use crate::server::ServeError;
use crate::tls::devca::{self, DevCaError};

pub const DEMO_ISSUER: &str = "https://idp.demo.local";
pub const DEMO_AUDIENCE: &str = "federation-gateway";
/// The seed of the demo's records: the same patients on every machine.
pub const DEMO_SEED: u64 = 20_261_125;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("certificates: {0}")]
    Certs(#[from] DevCaError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("starting a gateway: {0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Serve(#[from] ServeError),
    #[error("token: {0}")]
    Token(#[from] KeyError),
    #[error("{0}")]
    Key(#[from] rcgen::Error),
    #[error("port {0} plus the demo's offsets does not fit below 65536")]
    Ports(u16),
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    pub port_base: u16,
    pub patients: usize,
    pub regions: Vec<String>,
}

/// What `prepare` made.
#[derive(Debug, Clone)]
pub struct DemoLayout {
    pub dir: PathBuf,
    /// (region code, configuration file, clinician port)
    pub regions: Vec<(String, PathBuf, u16)>,
    pub ca: PathBuf,
    pub token: String,
    /// A privacy officer's token (R0001), for the audit trail.
    pub governance_token: String,
    pub idp_key: PathBuf,
    pub seen_everywhere: NhsNumber,
    pub seen_in_two: NhsNumber,
    pub mismatched: NhsNumber,
    /// The largest realistic patient: years of care, thousands of items in all regions.
    pub realistic: Option<NhsNumber>,
}

/// How many realistic patients the demo adds, and about how many items each has in a region.
pub const REALISTIC_PATIENTS: usize = 4;
pub const REALISTIC_ITEMS_PER_REGION: usize = 350;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A region's display name: its code with a capital.
pub fn display_name(code: &str) -> String {
    let mut c = code.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Ports: clinician faces at `base + i`, federation faces at `base + 100 + i`.
fn ports(base: u16, i: usize) -> Result<(u16, u16), DemoError> {
    let c = base.checked_add(i as u16).ok_or(DemoError::Ports(base))?;
    let f = c.checked_add(100).ok_or(DemoError::Ports(base))?;
    Ok((c, f))
}

/// The configuration file of one demo region.
pub fn region_config(regions: &[String], i: usize, port_base: u16) -> Result<String, DemoError> {
    let code = &regions[i];
    let (c, f) = ports(port_base, i)?;
    let o = f.checked_add(100).ok_or(DemoError::Ports(port_base))?;
    let mut text = format!(
        r#"# Demo configuration of region {code}, written by `gateway demo`.
[region]
code = "{code}"
name = "{name}"
base_url = "https://localhost:{c}/fhir"

[listen]
clinician = "127.0.0.1:{c}"
federation = "127.0.0.1:{f}"
operations = "127.0.0.1:{o}"

[tls]
ca = "certs/ca.pem"
server_cert = "certs/{code}/server.pem"
server_key = "certs/{code}/server.key"
client_cert = "certs/{code}/client.pem"
client_key = "certs/{code}/client.key"

[record]
directory = "data/{code}"

[auth]
issuer = "{DEMO_ISSUER}"
audience = "{DEMO_AUDIENCE}"
public_keys_pem = "idp/idp.pem"

[policy]
directory = "policies"

[fanout]
deadline_ms = 5000
"#,
        name = display_name(code),
    );
    for (j, peer) in regions.iter().enumerate().filter(|(j, _)| *j != i) {
        let (_, pf) = ports(port_base, j)?;
        text.push('\n');
        text.push_str(
            &crate::config::ConfigPeer {
                region: peer.clone(),
                name: display_name(peer),
                url: format!("https://localhost:{pf}/fhir"),
                identity: format!("urn:gateway:region:{peer}"),
                timeout_ms: 3000,
            }
            .to_toml(),
        );
    }
    Ok(text)
}

/// Mints a development clinician token with the demo IdP key.
pub fn dev_token(
    idp_key_pem: &str,
    role: &str,
    org: &str,
    purpose: &str,
    ttl_seconds: i64,
) -> Result<String, KeyError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    mint_dev_token(
        &DevTokenClaims {
            iss: DEMO_ISSUER.into(),
            aud: DEMO_AUDIENCE.into(),
            sub: "demo-clinician".into(),
            role: role.into(),
            org: org.into(),
            purpose_of_use: purpose.into(),
            iat: now,
            nbf: now - 60,
            exp: now + ttl_seconds,
        },
        idp_key_pem,
        None,
    )
}

/// Writes everything the demo needs under `opts.dir`.
pub fn prepare(opts: &DemoOptions) -> Result<DemoLayout, DemoError> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let certs = dir.join("certs");
    devca::init_dir(
        &certs,
        &opts.regions,
        &["localhost".into(), "127.0.0.1".into()],
        90,
    )?;

    let generated = data::generate(&opts.regions, opts.patients, DEMO_SEED);
    let (realistic_records, realistic) = realistic::generate(
        &opts.regions,
        REALISTIC_PATIENTS,
        REALISTIC_ITEMS_PER_REGION,
        DEMO_SEED,
    );
    for (region, resources) in &generated.records {
        let region_dir = dir.join("data").join(region);
        std::fs::create_dir_all(&region_dir).map_err(io_err(&region_dir))?;
        let path = region_dir.join("record.ndjson");
        let text: String = resources
            .iter()
            .chain(realistic_records.get(region).into_iter().flatten())
            .map(|r| format!("{r}\n"))
            .collect();
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }

    // The policy set, written out so that it can be read and edited.
    let policies = dir.join("policies");
    std::fs::create_dir_all(policies.join("default")).map_err(io_err(&policies))?;
    let schema = policies.join("schema.cedarschema");
    std::fs::write(&schema, crate::access::EMBEDDED_SCHEMA).map_err(io_err(&schema))?;
    let cases = policies.join("tests/default.json");
    std::fs::create_dir_all(policies.join("tests")).map_err(io_err(&policies))?;
    std::fs::write(&cases, crate::access::EMBEDDED_CASES).map_err(io_err(&cases))?;
    for (name, text) in crate::access::embedded_policy_files() {
        let path = policies.join("default").join(name);
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }

    let idp = rcgen::KeyPair::generate()?;
    let idp_key = dir.join("idp/idp.key");
    devca::write(&idp_key, &idp.serialize_pem(), true)?;
    devca::write(&dir.join("idp/idp.pem"), &idp.public_key_pem(), false)?;
    let token = dev_token(&idp.serialize_pem(), "R8000", "RBD", "TREAT", 12 * 3600)?;
    devca::write(&dir.join("token.jwt"), &token, true)?;
    let governance_token = dev_token(&idp.serialize_pem(), "R0001", "RBD", "HOPERAT", 12 * 3600)?;
    devca::write(&dir.join("governance-token.jwt"), &governance_token, true)?;

    let mut regions = Vec::new();
    for (i, code) in opts.regions.iter().enumerate() {
        let path = dir.join(format!("{code}.toml"));
        std::fs::write(&path, region_config(&opts.regions, i, opts.port_base)?)
            .map_err(io_err(&path))?;
        regions.push((code.clone(), path, ports(opts.port_base, i)?.0));
    }
    Ok(DemoLayout {
        dir: dir.clone(),
        regions,
        ca: certs.join("ca.pem"),
        token,
        governance_token,
        idp_key,
        seen_everywhere: generated.seen_everywhere,
        seen_in_two: generated.seen_in_two,
        mismatched: generated.mismatched,
        // The generator makes each patient larger than the one before.
        realistic: realistic.last().map(|p| p.nhs.clone()),
    })
}

/// Paste-ready `curl` commands: first a patient seen in all three regions.
pub fn curl_commands(layout: &DemoLayout) -> Vec<String> {
    let ca = layout.ca.display();
    let port = layout.regions[0].2;
    let base = format!("https://localhost:{port}/fhir");
    let everywhere = &layout.seen_everywhere;
    let token = &layout.token;
    let nhs_param =
        |n: &NhsNumber| format!("patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{n}");
    let curl =
        |url: String| format!("curl -sS --cacert {ca} -H 'Authorization: Bearer {token}' '{url}'");
    let mut out = vec![
        curl(format!("{base}/Patient/{everywhere}/$everything")),
        curl(format!(
            "{base}/AllergyIntolerance?{}",
            nhs_param(everywhere)
        )),
        curl(format!(
            "{base}/Observation?{}&category=vital-signs&date=ge2020-01-01",
            nhs_param(everywhere)
        )),
        curl(format!(
            "{base}/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
            layout.seen_in_two
        )),
        curl(format!("{base}/Patient/{}", layout.mismatched)),
    ];
    if let Some(big) = &layout.realistic {
        // A patient of real size: years of care in every region, thousands of items.
        out.push(curl(format!("{base}/Patient/{big}/$everything")));
    }
    if let Some((_, _, other)) = layout.regions.get(1) {
        out.push(curl(format!(
            "https://localhost:{other}/fhir/DiagnosticReport?{}",
            nhs_param(everywhere)
        )));
    }
    out.push(format!(
        "curl -sS --cacert {ca} 'https://localhost:{port}/fhir/metadata'"
    ));
    // A privacy officer reads who accessed the first patient's record.
    out.push(format!(
        "curl -sS --cacert {ca} -H 'Authorization: Bearer {}' 'https://localhost:{port}/admin/audit?patient={everywhere}&_count=10'",
        layout.governance_token
    ));
    out
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the demo until Ctrl-C.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let layout = prepare(&opts)?;
    let mut running = Vec::new();
    for (_, path, _) in &layout.regions {
        let config = Config::load(path)?;
        let gateway = Arc::new(Gateway::from_config(config).await?);
        running.push(crate::server::start(gateway).await?);
    }
    println!(
        "Local federation of {} regions is running.",
        layout.regions.len()
    );
    println!(
        "Certificates, data, configurations and the token are in {}",
        layout.dir.display()
    );
    for (code, path, port) in &layout.regions {
        println!(
            "  {code}: clinician face https://localhost:{port}/fhir, metrics http://127.0.0.1:{}/metrics (config {})",
            port + 200,
            path.display()
        );
    }
    println!();
    println!("Try (the first patient is seen in all three regions):");
    for c in curl_commands(&layout) {
        println!("{c}");
    }
    println!();
    if let Some((_, config, port)) = layout.regions.first() {
        println!(
            "The last command reads the audit trail as a privacy officer. After stopping, check it with:\n  gateway audit verify --config {}",
            config.display()
        );
        println!();
        println!(
            "Governance console: https://localhost:{port}/admin/ (the browser must trust {}; sign in with the contents of {})",
            layout.dir.join("certs/ca.pem").display(),
            layout.dir.join("governance-token.jwt").display()
        );
        println!(
            "One view for clinicians: https://localhost:{port}/view/ (the demo has no single sign-on: paste the contents of {}, then search for NHS number {})",
            layout.dir.join("token.jwt").display(),
            layout.seen_everywhere
        );
        println!();
    }
    println!("Press Ctrl-C to stop.");
    stop_signal().await;
    println!("Stopping...");
    for r in running {
        r.shutdown().await;
    }
    println!("Stopped.");
    Ok(())
}
