//! Test federations: N regions on port 0 with generated certificates, records and an IdP key;
//! fake peers that bind port 0 and misbehave on demand; clients with or without certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway::app::Gateway;
use gateway::config::Config;
use gateway::demo::data::{DemoData, generate};
use gateway::server::{Running, serve_tls, start_on};
use gateway::tls::devca::{DevCa, Leaf, LeafKind, write};
use http::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "federation-gateway";

/// A peer entry added to a region's configuration by hand (for fake peers).
#[derive(Clone)]
pub struct ExtraPeer {
    pub code: String,
    pub addr: SocketAddr,
    pub identity: String,
    pub timeout_ms: u64,
}

impl ExtraPeer {
    /// A peer region at `addr`, expected to carry its region's identity.
    pub fn new(code: &str, addr: SocketAddr, timeout_ms: u64) -> Self {
        ExtraPeer {
            code: code.into(),
            addr,
            identity: format!("urn:gateway:region:{code}"),
            timeout_ms,
        }
    }
}

pub struct Region {
    pub clinician: SocketAddr,
    pub federation: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` (plain HTTP).
    pub operations: SocketAddr,
    /// Held so the gateway keeps serving: dropping it stops the listeners.
    _running: Running,
}

pub struct TestFederation {
    /// PostgreSQL schemas made for this federation (dropped by `drop_pg_schemas`).
    pub pg_schemas: Vec<String>,
    pub dir: TempDir,
    pub ca: DevCa,
    pub idp_key_pem: String,
    pub regions: Vec<Region>,
    pub data: DemoData,
    /// Realistic patients (years of care, hundreds of items in every region), when asked for.
    pub realistic: Vec<gateway::demo::data::DemoPatient>,
    /// Balanced regions: code, the balancer's clinician port and federation port.
    pub balancers: Vec<(String, u16, u16)>,
}

/// The sum of the Prometheus samples at region `region` whose line starts with `prefix`
/// (a name, or a name with its labels).
pub async fn metric_sum(fed: &TestFederation, region: usize, prefix: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", fed.regions[region].operations))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A patient's objection to sharing their record (to be recorded at the region that holds it).
pub fn objection(nhs: &str) -> Value {
    serde_json::json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny"}
    })
}

/// An HTTPS client trusting `ca_pem`, presenting `identity` (certificate and key PEM) if given.
pub fn mtls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .no_proxy();
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// A port free now (for a process that binds it later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx as a round-robin TCP load balancer (the stream module; TLS passes through, so client
/// certificates reach the gateways), stopped when dropped. One process, no master (killing a
/// master leaves its workers running, holding the ports). `GATEWAY_TEST_NGINX` names the
/// binary (default `/usr/sbin/nginx`) and `GATEWAY_TEST_NGINX_STREAM` its stream module
/// (default Debian's); `scripts/test` installs both. A missing nginx fails the test.
pub struct Balancer {
    child: std::process::Child,
    pub clinician: u16,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Balancer {
    pub async fn start(
        dir: &Path,
        name: &str,
        clinician: (u16, &[u16]),
        federation: (u16, &[u16]),
    ) -> Balancer {
        let nginx =
            std::env::var("GATEWAY_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        let module = std::env::var("GATEWAY_TEST_NGINX_STREAM")
            .unwrap_or_else(|_| "/usr/lib/nginx/modules/ngx_stream_module.so".into());
        assert!(
            Path::new(&nginx).is_file() && Path::new(&module).is_file(),
            "nginx ({nginx}) with its stream module ({module}) is needed: scripts/test installs them"
        );
        let prefix = dir.join(format!("nginx-{name}"));
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let servers = |ports: &[u16]| -> String {
            ports
                .iter()
                .map(|p| format!("server 127.0.0.1:{p};"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let conf = format!(
            "load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {log} warn;
events {{ worker_connections 4096; }}
stream {{
  upstream clinician {{ {c} }}
  upstream federation {{ {f} }}
  server {{ listen 127.0.0.1:{cp}; proxy_pass clinician; }}
  server {{ listen 127.0.0.1:{fp}; proxy_pass federation; }}
}}
",
            pid = prefix.join("nginx.pid").display(),
            log = prefix.join("logs/error.log").display(),
            c = servers(clinician.1),
            f = servers(federation.1),
            cp = clinician.0,
            fp = federation.0,
        );
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new(&nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{nginx}: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for port in [clinician.0, federation.0] {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nginx did not listen on {port}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Balancer {
            child,
            clinician: clinician.0,
        }
    }
}

pub fn install() {
    gateway::tls::install_crypto_provider();
}

fn config_text(
    code: &str,
    clinician: SocketAddr,
    federation: SocketAddr,
    peers: &[ExtraPeer],
    deadline_ms: u64,
) -> String {
    let mut text = format!(
        r#"[region]
code = "{code}"
name = "{code} region"
base_url = "https://localhost:{cp}/fhir"
[listen]
clinician = "{clinician}"
federation = "{federation}"
[tls]
ca = "certs/ca.pem"
server_cert = "certs/{code}/server.pem"
server_key = "certs/{code}/server.key"
client_cert = "certs/{code}/client.pem"
client_key = "certs/{code}/client.key"
[record]
directory = "data/{code}"
[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
public_keys_pem = "idp.pem"
[fanout]
deadline_ms = {deadline_ms}
"#,
        cp = clinician.port()
    );
    for p in peers {
        text.push_str(
            &gateway::config::ConfigPeer {
                region: p.code.clone(),
                name: format!("{} region", p.code),
                url: format!("https://localhost:{}/fhir", p.addr.port()),
                identity: p.identity.clone(),
                timeout_ms: p.timeout_ms,
            }
            .to_toml(),
        );
    }
    text
}

/// Writes a region's certificates into `dir/certs/{code}/`.
pub fn write_region_certs(ca: &DevCa, dir: &Path, code: &str) {
    let server = ca
        .issue(
            code,
            LeafKind::Server,
            &["localhost".into(), "127.0.0.1".into()],
            30,
        )
        .unwrap();
    let client = ca.issue(code, LeafKind::Client, &[], 30).unwrap();
    let d = dir.join("certs").join(code);
    write(&d.join("server.pem"), &server.cert_pem, false).unwrap();
    write(&d.join("server.key"), &server.key_pem, true).unwrap();
    write(&d.join("client.pem"), &client.cert_pem, false).unwrap();
    write(&d.join("client.key"), &client.key_pem, true).unwrap();
}

pub struct Builder {
    codes: Vec<String>,
    patients: usize,
    extra_peers: Vec<ExtraPeer>,
    deadline_ms: u64,
    peer_timeout_ms: u64,
    ca: Option<DevCa>,
    /// The first region's record is this FHIR server (url, timeout) instead of a directory.
    local_record: Option<(String, u64)>,
    /// (region index, extra policy file name, its text): that region runs the default set plus it.
    extra_policy: Option<(usize, String, String)>,
    /// Every region keeps its consent directives in PostgreSQL (a schema per region and run).
    postgres: bool,
    /// TOML appended to the first region's configuration.
    first_region_toml: String,
    /// TOML appended to every region's configuration.
    every_region_toml: String,
    /// The body of the first region's `[auth]` table, instead of the test key file's.
    first_region_auth: Option<String>,
    /// This region checks peers' certificates against `certs/{code}-crl.pem` (an empty CRL at
    /// the start).
    crl_at: Option<usize>,
    /// Realistic patients: how many, and about how many items the first has in each region.
    realistic: Option<(usize, usize)>,
    /// Keys added to the first region's `[record]` table when its record is a FHIR server.
    record_extra: String,
    /// Regions whose faces are reached through a TCP load balancer ([`Balancer`]): their
    /// `base_url` and their neighbours' peer URLs name the balancer's ports.
    balanced: Vec<String>,
}

impl Builder {
    pub fn new(codes: &[&str]) -> Self {
        Builder {
            codes: codes.iter().map(|s| s.to_string()).collect(),
            patients: 12,
            extra_peers: vec![],
            deadline_ms: 4000,
            peer_timeout_ms: 3000,
            ca: None,
            local_record: None,
            extra_policy: None,
            postgres: false,
            first_region_toml: String::new(),
            every_region_toml: String::new(),
            first_region_auth: None,
            crl_at: None,
            realistic: None,
            record_extra: String::new(),
            balanced: Vec::new(),
        }
    }

    /// Region `code` is reached through a round-robin TCP balancer (both faces): start its
    /// replicas with [`TestFederation::start_replica`] and the balancer with
    /// [`TestFederation::balance`].
    pub fn balanced(mut self, code: &str) -> Self {
        self.balanced.push(code.to_owned());
        self
    }

    /// Adds `n` realistic patients to every region's record (see `gateway::demo::realistic`).
    pub fn realistic(mut self, n: usize, items_per_region: usize) -> Self {
        self.realistic = Some((n, items_per_region));
        self
    }

    /// Keys (`page_size = 20`, `max_items = 100`, ...) for the first region's `[record]`
    /// table, when its record is a FHIR server.
    pub fn record_keys(mut self, text: &str) -> Self {
        self.record_extra.push('\n');
        self.record_extra.push_str(text);
        self
    }

    /// The region at `index` checks peers' certificates against a CRL file.
    pub fn crl_at(mut self, index: usize) -> Self {
        self.crl_at = Some(index);
        self
    }

    /// Appends TOML (whole tables) to the first region's configuration.
    /// The first region's `[auth]` table (its keys, issuer, claim names), instead of the
    /// test identity provider's key file.
    pub fn first_region_auth(mut self, body: &str) -> Self {
        self.first_region_auth = Some(body.to_owned());
        self
    }

    /// TOML appended to every region's configuration.
    pub fn every_region_toml(mut self, text: &str) -> Self {
        self.every_region_toml.push_str(text);
        self
    }

    pub fn first_region_toml(mut self, text: &str) -> Self {
        self.first_region_toml.push_str(text);
        self
    }

    /// Uses this CA (so fake peers made from it are trusted).
    pub fn with_ca(mut self, ca: DevCa) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Consent directives in PostgreSQL (`GATEWAY_TEST_POSTGRES`, default the local server).
    pub fn postgres(mut self) -> Self {
        self.postgres = true;
        self
    }

    /// Region `index` runs the default policy set plus this file.
    pub fn extra_policy(mut self, index: usize, name: &str, text: &str) -> Self {
        self.extra_policy = Some((index, name.to_owned(), text.to_owned()));
        self
    }

    pub fn local_record(mut self, url: &str, timeout_ms: u64) -> Self {
        self.local_record = Some((url.to_owned(), timeout_ms));
        self
    }

    pub fn patients(mut self, n: usize) -> Self {
        self.patients = n;
        self
    }

    /// Adds a peer to the first region's configuration only.
    pub fn extra_peer(mut self, p: ExtraPeer) -> Self {
        self.extra_peers.push(p);
        self
    }

    pub fn timeouts(mut self, deadline_ms: u64, peer_timeout_ms: u64) -> Self {
        self.deadline_ms = deadline_ms;
        self.peer_timeout_ms = peer_timeout_ms;
        self
    }

    pub async fn start(self) -> TestFederation {
        install();
        let dir = tempfile::tempdir().unwrap();
        let ca = self
            .ca
            .unwrap_or_else(|| DevCa::new("Test federation CA").unwrap());
        write(&dir.path().join("certs/ca.pem"), &ca.cert_pem, false).unwrap();
        let idp = rcgen::KeyPair::generate().unwrap();
        write(&dir.path().join("idp.pem"), &idp.public_key_pem(), false).unwrap();
        let mut data = generate(&self.codes, self.patients, 42);
        let mut realistic = Vec::new();
        if let Some((n, items)) = self.realistic {
            let (records, patients) = gateway::demo::realistic::generate(&self.codes, n, items, 42);
            for (code, resources) in records {
                data.records.entry(code).or_default().extend(resources);
            }
            realistic = patients;
        }
        for (code, resources) in &data.records {
            let d = dir.path().join("data").join(code);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("record.ndjson"),
                resources
                    .iter()
                    .map(|r| format!("{r}\n"))
                    .collect::<String>(),
            )
            .unwrap();
        }
        let mut listeners = Vec::new();
        for code in &self.codes {
            write_region_certs(&ca, dir.path(), code);
            let c = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let f = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.push((code.clone(), c, f));
        }
        // A balanced region's ports are the balancer's, reserved now.
        let balancers: Vec<(String, u16, u16)> = self
            .balanced
            .iter()
            .map(|code| (code.clone(), free_port(), free_port()))
            .collect();
        let addrs: Vec<(String, SocketAddr, SocketAddr)> = listeners
            .iter()
            .map(|(c, l, f)| {
                let mut fed = f.local_addr().unwrap();
                if let Some((_, _, p)) = balancers.iter().find(|(b, _, _)| b == c) {
                    fed.set_port(*p);
                }
                (c.clone(), l.local_addr().unwrap(), fed)
            })
            .collect();
        let mut regions = Vec::new();
        let mut pg_schemas = Vec::new();
        for (i, (code, c, f)) in listeners.into_iter().enumerate() {
            let mut peers: Vec<ExtraPeer> = addrs
                .iter()
                .filter(|(other, _, _)| *other != code)
                .map(|(other, _, fed)| ExtraPeer {
                    code: other.clone(),
                    addr: *fed,
                    identity: format!("urn:gateway:region:{other}"),
                    timeout_ms: self.peer_timeout_ms,
                })
                .collect();
            if i == 0 {
                peers.extend(self.extra_peers.iter().cloned());
            }
            let path = dir.path().join(format!("{code}.toml"));
            let mut text = config_text(
                &code,
                c.local_addr().unwrap(),
                f.local_addr().unwrap(),
                &peers,
                self.deadline_ms,
            );
            if let Some((_, cp, _)) = balancers.iter().find(|(b, _, _)| *b == code) {
                let own = format!(
                    "base_url = \"https://localhost:{}/fhir\"",
                    c.local_addr().unwrap().port()
                );
                assert!(text.contains(&own));
                text = text.replace(&own, &format!("base_url = \"https://localhost:{cp}/fhir\""));
            }
            if let (0, Some((url, timeout))) = (i, &self.local_record) {
                text = text.replace(
                    &format!("directory = \"data/{code}\""),
                    &format!(
                        "fhir_base = \"{url}\"\ntimeout_ms = {timeout}{}",
                        self.record_extra
                    ),
                );
            }
            if let Some((index, name, policy)) = &self.extra_policy
                && *index == i
            {
                let pdir = dir.path().join(format!("policies-{code}"));
                std::fs::create_dir_all(pdir.join("default")).unwrap();
                std::fs::write(
                    pdir.join("schema.cedarschema"),
                    gateway::access::EMBEDDED_SCHEMA,
                )
                .unwrap();
                for (n, t) in gateway::access::embedded_policy_files() {
                    std::fs::write(pdir.join("default").join(n), t).unwrap();
                }
                std::fs::write(pdir.join("default").join(name), policy).unwrap();
                text.push_str(&format!("[policy]\ndirectory = \"policies-{code}\"\n"));
            }
            if self.postgres {
                let conninfo = std::env::var("GATEWAY_TEST_POSTGRES").unwrap_or_else(|_| {
                    "host=127.0.0.1 port=5432 user=postgres dbname=test".into()
                });
                let schema = format!(
                    "gw_it_{}_{}",
                    uuid::Uuid::new_v4().simple(),
                    code.replace('-', "_")
                );
                text.push_str(&format!(
                    "[store]\npostgres = \"{conninfo}\"\npostgres_schema = \"{schema}\"\n"
                ));
                pg_schemas.push(schema);
            }
            text.push_str(&self.every_region_toml);
            if i == 0 {
                text.push_str(&self.first_region_toml);
                if let Some(body) = &self.first_region_auth {
                    let test_idp = format!(
                        "[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\npublic_keys_pem = \"idp.pem\"\n"
                    );
                    assert!(text.contains(&test_idp));
                    text = text.replace(&test_idp, &format!("[auth]\n{body}\n"));
                }
            }
            if self.crl_at == Some(i) {
                let crl = dir.path().join(format!("certs/{code}-crl.pem"));
                std::fs::write(&crl, ca.crl(&[], 1).unwrap()).unwrap();
                let line = format!("client_key = \"certs/{code}/client.key\"");
                assert!(text.contains(&line));
                text = text.replace(&line, &format!("{line}\ncrls = [\"certs/{code}-crl.pem\"]"));
            }
            std::fs::write(&path, text).unwrap();
            let config = Config::load(&path).unwrap();
            let gateway = Arc::new(Gateway::from_config(config).await.unwrap());
            let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let running = start_on(gateway, c, f, Some(ops)).unwrap();
            regions.push(Region {
                clinician: running.clinician,
                federation: running.federation,
                operations: running.operations.unwrap(),
                _running: running,
            });
        }
        TestFederation {
            pg_schemas,
            dir,
            ca,
            idp_key_pem: idp.serialize_pem(),
            regions,
            data,
            realistic,
            balancers,
        }
    }
}

impl TestFederation {
    pub fn token(&self, role: &str) -> String {
        self.token_with(|c| c.role = role.into())
    }

    pub fn token_with(&self, edit: impl FnOnce(&mut gateway::auth::DevTokenClaims)) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut claims = gateway::auth::DevTokenClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "test-user".into(),
            role: "R8000".into(),
            org: "RBD".into(),
            purpose_of_use: "TREAT".into(),
            iat: now,
            nbf: now - 10,
            exp: now + 600,
        };
        edit(&mut claims);
        gateway::auth::mint_dev_token(&claims, &self.idp_key_pem, None).unwrap()
    }

    pub fn base(&self, region: usize) -> String {
        format!(
            "https://localhost:{}/fhir",
            self.regions[region].clinician.port()
        )
    }

    pub fn fed_base(&self, region: usize) -> String {
        format!(
            "https://localhost:{}/fhir",
            self.regions[region].federation.port()
        )
    }

    /// A clinician's HTTPS client trusting the federation CA only.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).unwrap()])
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// A clinical practitioner's search at the first region: `GET {Type}?patient.identifier=`
    /// for the patient seen everywhere.
    pub async fn search_as_clinician(&self, resource_type: &str) -> Reply {
        let path = format!(
            "/{resource_type}?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
            self.everywhere()
        );
        self.get(0, &path, Some(&self.token("R8000"))).await
    }

    /// GET as a clinician.
    pub async fn get(&self, region: usize, path: &str, token: Option<&str>) -> Reply {
        get_json(
            &self.client(),
            &format!("{}{}", self.base(region), path),
            token,
        )
        .await
    }

    /// Starts another replica of region `code` from the same configuration (so, with
    /// `postgres()`, the same store) on new ports. Returns its index in `regions`.
    pub async fn start_replica(&mut self, code: &str) -> usize {
        let path = self.config_path(code);
        let config = Config::load(&path).unwrap();
        let gateway = Arc::new(Gateway::from_config(config).await.unwrap());
        let c = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = start_on(gateway, c, f, Some(ops)).unwrap();
        self.regions.push(Region {
            clinician: running.clinician,
            federation: running.federation,
            operations: running.operations.unwrap(),
            _running: running,
        });
        self.regions.len() - 1
    }

    /// Starts the balancer of region `code` (made balanced by [`Builder::balanced`]) in front
    /// of the replicas at `replicas` (indices into `regions`), round robin.
    pub async fn balance(&self, code: &str, replicas: &[usize]) -> Balancer {
        let (_, cp, fp) = self
            .balancers
            .iter()
            .find(|(c, _, _)| c == code)
            .unwrap_or_else(|| panic!("{code} was not built balanced"))
            .clone();
        let clinician: Vec<u16> = replicas
            .iter()
            .map(|&i| self.regions[i].clinician.port())
            .collect();
        let federation: Vec<u16> = replicas
            .iter()
            .map(|&i| self.regions[i].federation.port())
            .collect();
        Balancer::start(self.dir.path(), code, (cp, &clinician), (fp, &federation)).await
    }

    /// Drops the PostgreSQL schemas this federation made.
    pub async fn drop_pg_schemas(&self) {
        let conninfo = std::env::var("GATEWAY_TEST_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
        for schema in &self.pg_schemas {
            gateway::store::postgres::PostgresStore::connect(&conninfo, schema)
                .await
                .unwrap()
                .drop_schema()
                .await
                .unwrap();
        }
    }

    /// `GET /admin/audit?{query}` at a region, as the holder of `token`.
    pub async fn audit(&self, region: usize, query: &str, token: &str) -> Reply {
        get_json(
            &self.client(),
            &format!(
                "https://localhost:{}/admin/audit?{query}",
                self.regions[region].clinician.port()
            ),
            Some(token),
        )
        .await
    }

    /// The audit trail's AuditEvents at a region matching `query`, read by a privacy officer;
    /// waits up to two seconds for `at_least` of them (some refusals are recorded after the
    /// answer, in the background).
    pub async fn audit_events(&self, region: usize, query: &str, at_least: usize) -> Vec<Value> {
        let officer = self.token_with(|c| {
            c.role = "R0001".into();
            c.sub = "privacy-officer".into();
            c.purpose_of_use = "HOPERAT".into();
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let r = self.audit(region, query, &officer).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let events: Vec<Value> = entries(&r.body, "match")
                .into_iter()
                .map(|e| e["resource"].clone())
                .collect();
            if events.len() >= at_least || std::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A region's configuration file.
    pub fn config_path(&self, code: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{code}.toml"))
    }

    pub fn everywhere(&self) -> String {
        self.data.seen_everywhere.to_string()
    }
}

/// What a FHIR request got back.
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// GETs a URL and reads a FHIR JSON body (asserting the content type).
pub async fn get_json(client: &reqwest::Client, url: &str, token: Option<&str>) -> Reply {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let (status, version, headers) = (resp.status(), resp.version(), resp.headers().clone());
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.bytes().await.unwrap();
    assert!(
        ct.starts_with("application/fhir+json"),
        "content type {ct} for {status}"
    );
    Reply {
        status,
        body: serde_json::from_slice(&body).unwrap(),
        version,
        headers,
    }
}

/// Entries of a Bundle with the given search mode.
pub fn entries<'a>(bundle: &'a Value, mode: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["search"]["mode"] == mode).collect())
        .unwrap_or_default()
}

/// The region codes tagged on a resource.
pub fn region_tags(resource: &Value) -> Vec<String> {
    resource["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["system"] == "urn:gateway:region")
        .map(|t| t["code"].as_str().unwrap().to_owned())
        .collect()
}

/// The issues of the outcome entry, as (code, region code, diagnostics).
pub fn outcome_issues(bundle: &Value) -> Vec<(String, String, String)> {
    entries(bundle, "outcome")
        .iter()
        .flat_map(|e| {
            e["resource"]["issue"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|i| {
            (
                i["code"].as_str().unwrap_or("").to_owned(),
                i["details"]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                i["diagnostics"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// How a fake peer behaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Accepts the request and never answers.
    Hang,
    /// Answers this status, content type and body.
    Answer(u16, &'static str, String),
    /// Answers 200 FHIR JSON with this body and these extra headers.
    AnswerWith(String, Vec<(&'static str, String)>),
    /// Waits this many milliseconds, then answers 200 FHIR JSON with this body.
    Slow(u64, String),
    /// Starts a 200 answer, then breaks the connection.
    Reset,
    /// Starts a 200 answer, then sends one byte a second.
    Drip,
    /// Streams a 200 answer of this many bytes (whitespace), without a Content-Length.
    Huge(usize),
}

/// A fake peer region: a real mTLS server (certificate from `ca` naming `region`) that behaves
/// as told.
pub struct FakePeer {
    pub addr: SocketAddr,
    /// How many requests it has received.
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    behaviour: Arc<std::sync::Mutex<Behaviour>>,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn fhir_stream(body: axum::body::Body) -> http::Response<axum::body::Body> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/fhir+json")
        .body(body)
        .unwrap()
}

impl FakePeer {
    pub async fn start(ca: &DevCa, region: &str, behaviour: Behaviour) -> FakePeer {
        install();
        let server = ca
            .issue(region, LeafKind::Server, &["localhost".into()], 30)
            .unwrap();
        Self::start_with(ca, server, behaviour).await
    }

    /// A fake peer whose server certificate expired yesterday.
    pub async fn start_expired(ca: &DevCa, region: &str, behaviour: Behaviour) -> FakePeer {
        install();
        let now = time::OffsetDateTime::now_utc();
        let server = ca
            .issue_between(
                region,
                LeafKind::Server,
                &["localhost".into()],
                now - time::Duration::days(30),
                now - time::Duration::days(1),
            )
            .unwrap();
        Self::start_with(ca, server, behaviour).await
    }

    async fn start_with(ca: &DevCa, server: Leaf, behaviour: Behaviour) -> FakePeer {
        let keys = key_material(&server);
        let ca_der = rustls::pki_types::CertificateDer::from(rcgen_ca_der(ca));
        let tls = gateway::tls::federation_server_config(&keys, &[ca_der], &[]).unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let behaviour = Arc::new(std::sync::Mutex::new(behaviour));
        let (counter, current) = (hits.clone(), behaviour.clone());
        let app = axum::Router::new().fallback(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let b = current.lock().unwrap().clone();
            async move {
                match b {
                    Behaviour::AnswerWith(body, headers) => {
                        let mut r = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/fhir+json");
                        for (k, v) in headers {
                            r = r.header(k, v);
                        }
                        r.body(axum::body::Body::from(body)).unwrap()
                    }
                    Behaviour::Reset => {
                        let broken = futures::stream::once(async {
                            Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other(
                                "connection reset by the fake peer",
                            ))
                        });
                        fhir_stream(axum::body::Body::from_stream(broken))
                    }
                    Behaviour::Drip => {
                        let drip = futures::stream::unfold((), |()| async {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Some((
                                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
                                (),
                            ))
                        });
                        fhir_stream(axum::body::Body::from_stream(drip))
                    }
                    Behaviour::Huge(total) => {
                        const CHUNK: usize = 64 * 1024;
                        let chunk = axum::body::Bytes::from(vec![b' '; CHUNK]);
                        let flood = futures::stream::iter(
                            (0..total.div_ceil(CHUNK))
                                .map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                        );
                        fhir_stream(axum::body::Body::from_stream(flood))
                    }
                    Behaviour::Slow(ms, body) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        http::Response::builder()
                            .status(200)
                            .header("content-type", "application/fhir+json")
                            .body(axum::body::Body::from(body))
                            .unwrap()
                    }
                    Behaviour::Hang => {
                        futures::future::pending::<()>().await;
                        unreachable!()
                    }
                    Behaviour::Answer(status, ct, body) => http::Response::builder()
                        .status(status)
                        .header("content-type", ct)
                        .body(axum::body::Body::from(body))
                        .unwrap(),
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve_tls(
            "fake-peer",
            listener,
            gateway::server::fixed_tls(Arc::new(tls)),
            app,
            rx,
            None,
            Arc::default(),
        ));
        FakePeer {
            addr,
            hits,
            behaviour,
            _stop: stop,
        }
    }

    /// Changes how it answers from the next request on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn hit_count(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn as_peer(&self, region: &str, timeout_ms: u64) -> ExtraPeer {
        ExtraPeer::new(region, self.addr, timeout_ms)
    }
}

pub fn key_material(leaf: &Leaf) -> gateway::tls::KeyMaterial {
    use rustls::pki_types::pem::PemObject;
    gateway::tls::KeyMaterial {
        chain: vec![rustls::pki_types::CertificateDer::from(
            leaf.cert_der.clone(),
        )],
        key: rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        key_pem: leaf.key_pem.clone(),
    }
}

pub fn rcgen_ca_der(ca: &DevCa) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A plain TCP server that accepts connections and never answers.
pub async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// An address where nothing listens.
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The value of one `detail` of an AuditEvent's record entity.
pub fn audit_detail(event: &Value, name: &str) -> Option<String> {
    event["entity"]
        .as_array()?
        .iter()
        .filter_map(|e| e["detail"].as_array())
        .flatten()
        .find(|d| d["type"] == name)
        .and_then(|d| d["valueString"].as_str().map(str::to_owned))
}

/// Every reference in an answer: (the JSON path's last key, the reference).
pub fn references_in(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match x {
                        Value::String(s) if k == "reference" => out.push(s.clone()),
                        other => walk(other, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// Follows every reference in a Bundle from region `region`, as `token`'s user: each is an
/// entry of the Bundle, or at that gateway, where it answers 200 with the resource it names.
/// Contained (`#`) and `urn:` references are the Bundle's own. Entries' fullUrls are at the
/// gateway too. Returns how many references were followed outside the Bundle.
pub async fn follow_references(
    fed: &TestFederation,
    region: usize,
    bundle: &Value,
    token: &str,
) -> usize {
    let base = fed.base(region);
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let urls: std::collections::HashSet<String> = entries
        .iter()
        .filter_map(|e| e["fullUrl"].as_str().map(str::to_owned))
        .collect();
    for u in &urls {
        assert!(
            u.starts_with(&format!("{base}/")) || u.starts_with("urn:uuid:"),
            "a fullUrl outside the gateway: {u}"
        );
    }
    let mut outside: Vec<String> = references_in(bundle)
        .into_iter()
        .filter(|r| !urls.contains(r) && !r.starts_with('#') && !r.starts_with("urn:"))
        .collect();
    outside.sort();
    outside.dedup();
    let client = fed.client();
    for r in &outside {
        assert!(
            r.starts_with(&format!("{base}/")),
            "a reference that points outside the gateway: {r}"
        );
        let reply = get_json(&client, r, Some(token)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{r} answered {}: {}",
            reply.status,
            reply.body
        );
        let mut tail = r.rsplit('/');
        let (id, rtype) = (tail.next().unwrap(), tail.next().unwrap());
        assert_eq!(reply.body["resourceType"], rtype, "{r}");
        assert_eq!(reply.body["id"], id, "{r}");
    }
    outside.len()
}

/// Writes an answer into the directory the independent FHIR validators of `scripts/test` read
/// (`FHIR_ARTIFACT_DIR`, default `target/fhir-artifacts`).
pub fn save_artifact(name: &str, body: &Value) {
    let dir = std::env::var_os("FHIR_ARTIFACT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fhir-artifacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(body).unwrap(),
    )
    .unwrap();
}

/// The repository's root (tests run from the gateway crate's directory).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with the checkers' packages (`GATEWAY_TEST_PYTHON`; `scripts/test` makes
/// `.venv` and sets it). A missing one fails the test that needs it.
pub fn python() -> std::path::PathBuf {
    std::env::var_os("GATEWAY_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// The address a Bundle's link of `relation` (`next`, `self`) names, when it has one.
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}
