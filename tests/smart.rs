//! SMART on FHIR against a real OpenID provider: panva's `oidc-provider` from npm, run by node
//! over HTTPS (`tests/oidc/provider.mjs`). The gateway finds the provider's keys by discovery,
//! accepts its tokens, follows a key rotation, refuses tokens signed by a key the provider never
//! published (without hammering it), reads the region's own claim names, and bounds what a
//! token sees by its scopes and its patient. A SMART client library (Python `fhirclient`)
//! discovers the configuration and calls the gateway.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gateway::tls::devca::{DevCa, Leaf, LeafKind, write};
use http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// The audience the provider's tokens name (the gateway's).
const GATEWAY_AUDIENCE: &str = "https://gateway.dorset.test/fhir";

/// A running provider; stopped when dropped.
pub struct OidcProvider {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
    /// The CA its TLS certificate chains to.
    pub ca_pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts a provider signing with a new key named `kid`, serving `clients` (see
    /// provider.mjs), with a TLS certificate for localhost from `ca`.
    pub fn start(ca: &DevCa, kid: &str, clients: Value) -> OidcProvider {
        Self::start_with(ca, kid, clients, json!({}))
    }

    /// As [`OidcProvider::start`], with more of provider.mjs's configuration (`users`,
    /// `public_clients`, `launch_secret`: SMART App Launch).
    pub fn start_with(ca: &DevCa, kid: &str, clients: Value, extra: Value) -> OidcProvider {
        let dir = tempfile::tempdir().unwrap();
        let leaf: Leaf = ca
            .issue(
                "idp",
                LeafKind::Server,
                &["localhost".into(), "127.0.0.1".into()],
                1,
            )
            .unwrap();
        let cert = write(&dir.path().join("idp.pem"), &leaf.cert_pem, false).unwrap();
        let key = write(&dir.path().join("idp.key"), &leaf.key_pem, true).unwrap();
        let ca_pem = write(&dir.path().join("ca.pem"), &ca.cert_pem, false).unwrap();
        let port = free_port();
        let config = dir.path().join("provider.json");
        let mut cfg = json!({
            "issuer": format!("https://localhost:{port}"),
            "port": port,
            "cert": cert,
            "key": key,
            "kid": kid,
            "audience": GATEWAY_AUDIENCE,
            "resource_scopes": "user/*.rs user/*.cruds user/Observation.rs patient/*.rs system/*.rs",
            "clients": clients,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            cfg[k] = v.clone();
        }
        std::fs::write(&config, cfg.to_string()).unwrap();
        let mut p = OidcProvider {
            child: None,
            port,
            config,
            ca_pem,
            _dir: dir,
        };
        p.run();
        p
    }

    fn run(&mut self) {
        self.child = Some(node("provider.mjs", &self.config, &[]));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts the provider with a new signing key named `kid` (its old key no longer
    /// published): a key rotation.
    pub fn rotate(&mut self, kid: &str) {
        self.stop();
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        cfg["kid"] = json!(kid);
        std::fs::write(&self.config, cfg.to_string()).unwrap();
        self.run();
    }

    pub fn issuer(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca_pem).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    }

    /// An access token by the client-credentials grant (client secret = client id).
    pub async fn token(&self, client_id: &str, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(s) = scope {
            form.push(("scope", s.to_owned()));
        }
        let r = self
            .client()
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client_id, Some(client_id))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&form).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `tests/oidc/{script} {config}` with node, and waits for it to say "ready".
fn node(script: &str, config: &Path, env: &[(&str, &Path)]) -> Child {
    let node = std::env::var("GATEWAY_TEST_NODE").unwrap_or_else(|_| "node".into());
    let mut command = Command::new(node);
    command
        .arg(repo_root().join("tests/oidc").join(script))
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .expect("node runs the test's OpenID parts (scripts/test installs tests/oidc)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(ready.as_deref(), Ok("ready"), "{script} did not start");
    child
}

/// A client of the provider whose tokens carry the user context under this region's claim
/// names (`nhs_role`, `ods`, `pou`), with `extra` claims.
pub(crate) fn clinician_client(id: &str, scope: &str, extra: Value) -> Value {
    let mut claims = json!({"nhs_role": "R8000", "ods": "RBD", "pou": "TREAT"});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let mut client = json!({"client_id": id, "client_secret": id, "claims": claims});
    if !scope.is_empty() {
        client["scope"] = json!(scope);
    }
    client
}

/// The `[auth]` table of a gateway that finds the provider's keys by discovery and reads its
/// claim names.
pub(crate) fn discovery_auth(issuer: &str, extra: &str) -> String {
    format!(
        r#"issuer = "{issuer}"
audience = "{GATEWAY_AUDIENCE}"
discovery = true
ca = "certs/ca.pem"
jwks_min_refresh_interval_ms = 2000
{extra}
[auth.claims]
role = "nhs_role"
organisation = "ods"
purpose_of_use = "pou"
"#
    )
}

fn types_of(bundle: &Value) -> Vec<String> {
    entries(bundle, "match")
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect()
}

async fn everything(fed: &TestFederation, nhs: &str, token: &str) -> Reply {
    fed.get(0, &format!("/Patient/{nhs}/$everything"), Some(token))
        .await
}

#[tokio::test]
async fn keys_by_discovery_follow_a_rotation_and_forged_keys_are_refused_without_hammering() {
    let ca = DevCa::new("Test federation CA").unwrap();
    let mut idp = OidcProvider::start(
        &ca,
        "key-1",
        json!([clinician_client("ward-app", "user/*.rs", json!({}))]),
    );
    let fed = Builder::new(&["dorset", "hampshire"])
        .with_ca(ca)
        .first_region_auth(&discovery_auth(&idp.issuer(), ""))
        .start()
        .await;
    let nhs = fed.everywhere();
    let first = idp.token("ward-app", Some("user/*.rs")).await;
    let r = everything(&fed, &nhs, &first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(types_of(&r.body).len() > 3);

    // Tokens signed by keys the provider never published: refused, and however many arrive
    // the provider is asked again at most once per minimum interval (two seconds here).
    let before = metric_sum(&fed, 0, "gateway_idp_key_fetches_total{outcome=\"fetched\"").await;
    let forger = rcgen::KeyPair::generate().unwrap();
    for i in 0..20 {
        let forged = forge(&forger, &idp.issuer(), &format!("forged-{i}"));
        let r = everything(&fed, &nhs, &forged).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
    let after = metric_sum(&fed, 0, "gateway_idp_key_fetches_total{outcome=\"fetched\"").await;
    assert!(
        after - before <= 1.0,
        "{before} -> {after} fetches for 20 forged tokens"
    );
    assert!(metric_sum(&fed, 0, "gateway_idp_key_fetches_total{outcome=\"skipped\"").await >= 19.0);

    // The provider rotates its key: a token under the new key id is accepted once the gateway
    // has fetched the new set (it does so for the unknown kid, after the minimum interval).
    idp.rotate("key-2");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let rotated = idp.token("ward-app", Some("user/*.rs")).await;
    assert_eq!(gateway::auth::token_kid(&rotated).as_deref(), Some("key-2"));
    let r = everything(&fed, &nhs, &rotated).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The provider is down: the keys held are kept, so its tokens still verify.
    let unused = idp.token("ward-app", Some("user/*.rs")).await;
    drop(idp);
    let r = everything(&fed, &nhs, &unused).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// A token like the provider's, signed with a key it never published.
fn forge(key: &rcgen::KeyPair, issuer: &str, kid: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "iss": issuer, "aud": GATEWAY_AUDIENCE, "sub": "forger", "exp": now + 600, "iat": now,
        "nhs_role": "R8000", "ods": "RBD", "pou": "TREAT", "scope": "user/*.rs",
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

#[tokio::test]
async fn scopes_and_the_patient_context_bound_what_a_token_sees() {
    let ca = DevCa::new("Test federation CA").unwrap();
    // The test federation's patients come from the generator's fixed seed: the provider's
    // patient claim names one of them before the federation starts.
    let data = gateway::demo::data::generate(&["dorset".into(), "hampshire".into()], 4, 42);
    let a = data.seen_everywhere.to_string();
    let b = data
        .patients
        .iter()
        .map(|p| p.nhs.to_string())
        .find(|n| *n != a)
        .unwrap();
    let idp = OidcProvider::start(
        &ca,
        "key-1",
        json!([
            clinician_client("full", "user/*.rs", json!({})),
            clinician_client("observations", "user/Observation.rs", json!({})),
            clinician_client("patient-app", "patient/*.rs", json!({"patient": a})),
            clinician_client("no-scope", "", json!({})),
            {"client_id": "default-names", "client_secret": "default-names", "scope": "user/*.rs",
             "claims": {"role": "R8000", "org": "RBD", "purpose_of_use": "TREAT"}},
        ]),
    );
    let fed = Builder::new(&["dorset", "hampshire"])
        .patients(4)
        .with_ca(ca)
        .first_region_auth(&discovery_auth(&idp.issuer(), ""))
        .start()
        .await;
    assert_eq!(fed.everywhere(), a, "the same generated patients");

    let full = everything(&fed, &a, &idp.token("full", Some("user/*.rs")).await).await;
    assert_eq!(full.status, StatusCode::OK, "{}", full.body);
    let all = types_of(&full.body);
    let observations = all.iter().filter(|t| *t == "Observation").count();
    assert!(observations > 0 && observations < all.len(), "{all:?}");

    // user/Observation.rs: Observations only, and the total counts only them.
    let obs = everything(
        &fed,
        &a,
        &idp.token("observations", Some("user/Observation.rs")).await,
    )
    .await;
    assert_eq!(obs.status, StatusCode::OK, "{}", obs.body);
    let seen = types_of(&obs.body);
    assert!(seen.iter().all(|t| t == "Observation"), "{seen:?}");
    assert_eq!(seen.len(), observations);
    assert_eq!(obs.body["total"].as_u64(), Some(observations as u64));
    save_artifact("smart-observations-only", &obs.body);
    // A search of another type finds nothing it may show, and says nothing of how many.
    let token = idp.token("observations", Some("user/Observation.rs")).await;
    let conditions = fed
        .get(
            0,
            &format!("/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{a}"),
            Some(&token),
        )
        .await;
    assert_eq!(conditions.status, StatusCode::OK, "{}", conditions.body);
    assert_eq!(conditions.body["total"], 0);
    assert!(types_of(&conditions.body).is_empty());

    // patient/*.rs with patient A: A's record, and 403 for B.
    let token = idp.token("patient-app", Some("patient/*.rs")).await;
    let mine = everything(&fed, &a, &token).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
    assert_eq!(types_of(&mine.body).len(), all.len());
    let theirs = everything(&fed, &b, &token).await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN, "{}", theirs.body);
    assert_eq!(theirs.body["resourceType"], "OperationOutcome");
    let search = fed
        .get(
            0,
            &format!("/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{b}"),
            Some(&token),
        )
        .await;
    assert_eq!(search.status, StatusCode::FORBIDDEN);

    // No scope in the token: what the role allows (no default is configured here).
    let scopeless = everything(&fed, &a, &idp.token("no-scope", None).await).await;
    assert_eq!(scopeless.status, StatusCode::OK, "{}", scopeless.body);
    assert_eq!(types_of(&scopeless.body).len(), all.len());

    // The region reads its provider's claim names: a token with other names lacks the role.
    let r = everything(
        &fed,
        &a,
        &idp.token("default-names", Some("user/*.rs")).await,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .contains("nhs_role"),
        "{}",
        r.body
    );

    // SMART discovery: the configuration names the provider's endpoints, and so does the
    // CapabilityStatement.
    let response = fed
        .client()
        .get(format!("{}/.well-known/smart-configuration", fed.base(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let config: Value = response.json().await.unwrap();
    assert_eq!(config["token_endpoint"], format!("{}/token", idp.issuer()));
    assert_eq!(config["issuer"], idp.issuer());
    assert!(
        config["authorization_endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&idp.issuer())
    );
    let cs = get_json(&fed.client(), &format!("{}/metadata", fed.base(0)), None).await;
    let uris = &cs.body["rest"][0]["security"]["extension"][0]["extension"];
    assert_eq!(uris[1]["valueUri"], format!("{}/token", idp.issuer()));

    // A SMART client library from PyPI (fhirclient) discovers the same and calls the gateway.
    let token = idp.token("full", Some("user/*.rs")).await;
    let said = fhirclient(&fed, &fed_ca(&fed), &token, &a).await;
    assert_eq!(
        said["token_uri"],
        format!("{}/token", idp.issuer()),
        "{said}"
    );
    assert_eq!(
        said["authorize_uri"], config["authorization_endpoint"],
        "{said}"
    );
    assert_eq!(said["bundle_type"], "searchset", "{said}");
    assert!(said["entries"].as_u64().unwrap() > 0, "{said}");
}

/// The federation's CA file, as its gateways trust it.
fn fed_ca(fed: &TestFederation) -> PathBuf {
    fed.dir.path().join("certs/ca.pem")
}

/// Runs `tests/oidc/smart_client.py` (fhirclient) against the first region (off the test's
/// runtime thread, which serves the gateway).
async fn fhirclient(fed: &TestFederation, ca: &Path, token: &str, nhs: &str) -> Value {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/oidc/smart_client.py"))
        .arg(fed.base(0))
        .arg(nhs)
        .env("REQUESTS_CA_BUNDLE", ca)
        .env("GATEWAY_TOKEN", token);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the Python SMART client runs (scripts/test installs fhirclient in .venv)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The token check in front of the record server (`tests/oidc/token-proxy.mjs`); stopped when
/// dropped.
struct TokenProxy {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl TokenProxy {
    fn start(port: u16, upstream: &str, idp: &OidcProvider) -> TokenProxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.json");
        let cfg = json!({
            "port": port,
            "upstream": upstream,
            "issuer": idp.issuer(),
            "audience": GATEWAY_AUDIENCE,
            "scope": "system/*.rs",
        });
        std::fs::write(&config, cfg.to_string()).unwrap();
        let child = node(
            "token-proxy.mjs",
            &config,
            &[("NODE_EXTRA_CA_CERTS", &idp.ca_pem)],
        );
        TokenProxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn tokens(&self) -> Value {
        reqwest::get(format!("{}/__tokens", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn backend_services_get_the_gateway_a_token_for_a_record_server_that_requires_one() {
    use base64::Engine;
    let ca = DevCa::new("Test federation CA").unwrap();
    // The gateway's key for its assertions; its public half registered with the provider.
    let key = rcgen::KeyPair::generate().unwrap();
    // The uncompressed point: 0x04, then x and y.
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                     "kid": "dorset-gw-1", "use": "sig", "alg": "ES256"});
    let idp = OidcProvider::start(
        &ca,
        "key-1",
        json!([{"client_id": "dorset-gateway", "jwks": {"keys": [jwk]}, "scope": "system/*.rs"}]),
    );
    let proxy_port = free_port();
    let hfs =
        crate::real_server::Hfs::start_as(Some(&format!("http://127.0.0.1:{proxy_port}"))).await;
    let proxy = TokenProxy::start(proxy_port, &hfs.base, &idp);
    let keys = tempfile::tempdir().unwrap();
    let key_file = write(
        &keys.path().join("record-client.key"),
        &key.serialize_pem(),
        true,
    )
    .unwrap();
    let fed = Builder::new(&["dorset", "hampshire"])
        .local_record(&proxy.url, 30_000)
        .record_keys(&format!(
            r#"auth = {{ token_endpoint = "{}/token", client_id = "dorset-gateway", private_key = "{}", key_id = "dorset-gw-1", scope = "system/*.rs", resource = "{GATEWAY_AUDIENCE}", ca = "{}" }}"#,
            idp.issuer(),
            key_file.display(),
            idp.ca_pem.display(),
        ))
        .start()
        .await;
    hfs.load(&fed.data.records["dorset"]).await;

    // The server refuses what carries no token.
    let bare = reqwest::get(format!("{}/Patient", proxy.url))
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

    // Three different questions (none answered from a cache), each reaching the server with
    // the gateway's token: dorset's items are in every answer.
    let nhs = fed.everywhere();
    let token = fed.token("R8000");
    for path in [
        format!("/Patient/{nhs}/$everything"),
        format!("/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
        format!("/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
    ] {
        let r = fed.get(0, &path, Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        let text = r.body.to_string();
        assert!(
            !text.contains("could not be reached") && !text.contains("HTTP 401"),
            "{path}: {text}"
        );
        let from_dorset = entries(&r.body, "match")
            .iter()
            .filter(|e| e["fullUrl"].as_str().unwrap_or("").contains("/dorset."))
            .count();
        assert!(
            from_dorset > 0,
            "{path}: nothing from the record server: {text}"
        );
    }
    // A request's W3C trace reaches the record server: the gateway sends its span as the
    // parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = fed
        .client()
        .get(format!(
            "{}/MedicationRequest?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}",
            fed.base(0)
        ))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // One token served all of them: it is kept until shortly before it expires.
    let seen = proxy.tokens().await;
    let traces: Vec<&str> = seen["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(traces.contains(&trace), "{seen}");
    assert_eq!(seen["accepted"], 1, "{seen}");
    // The refusal counted is the bare request's only.
    assert_eq!(seen["refused"], 1, "{seen}");
}
