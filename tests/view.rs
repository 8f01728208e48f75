//! The clinician's one view (`/view/`) in a real browser (Debian's chromium, driven by
//! tests/view/view.mjs), signing in at a real OpenID provider (panva's oidc-provider) by SMART
//! App Launch: EHR launch in a patient's context and standalone launch, over real gateways.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use gateway::tls::devca::DevCa;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Builder, ExtraPeer, TestFederation, entries, link, repo_root};
use crate::smart::{OidcProvider, clinician_client, discovery_auth};

const CLINICIAN: &str = "dr-patel:correct horse";
const NURSE: &str = "nurse-okafor:battery staple";
const LAUNCH_SECRET: &str = "partner-system-secret";
const GLASS_REASON: &str = "Unresponsive in the emergency department";

/// A provider with two users of the region (a clinician, R8000, and a nurse, R8001), the
/// one-view page as a public client, a partner system that may register launches, a privacy
/// officer's client for reading the audit trail and a clinical system's (R8000).
fn provider(ca: &DevCa) -> OidcProvider {
    let user = |login: &str, name: &str, role: &str| {
        let (username, password) = login.split_once(':').unwrap();
        json!({"username": username, "password": password, "name": name,
               "claims": {"nhs_role": role, "ods": "RBD", "pou": "TREAT"}})
    };
    OidcProvider::start_with(
        ca,
        "key-1",
        json!([
            clinician_client(
                "privacy-office",
                "user/*.rs",
                json!({"nhs_role": "R0001", "pou": "HOPERAT"})
            ),
            clinician_client("clinical-system", "user/*.rs", json!({})),
        ]),
        json!({
            "users": [user(CLINICIAN, "Dr Asha Patel", "R8000"), user(NURSE, "Chidi Okafor", "R8001")],
            "public_clients": [{
                "client_id": "one-view",
                "redirect_uris": ["https://localhost/view/"],
                "scope": "openid fhirUser launch patient/*.rs user/*.rs",
            }],
            "launch_secret": LAUNCH_SECRET,
        }),
    )
}

/// A peer address nothing listens on: that region fails.
fn dead_address() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

fn shots_dir() -> PathBuf {
    let d = repo_root().join("target/view-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the browser script with the scenario's environment; returns its standard output.
async fn browse(
    fed: &TestFederation,
    idp: Option<&OidcProvider>,
    scenario: &str,
    vars: &[(&str, String)],
) -> String {
    let node = std::env::var("GATEWAY_TEST_NODE").unwrap_or_else(|_| "node".into());
    let mut command = Command::new(node);
    command
        .arg(repo_root().join("tests/view/view.mjs"))
        .env("VIEW_URL", fed.base(0).replace("/fhir", "/view/"))
        .env("ISS", fed.base(0))
        .env("LAUNCH_SECRET", LAUNCH_SECRET)
        .env("CLINICIAN", CLINICIAN)
        .env("NURSE", NURSE)
        .env("SCREENSHOTS", shots_dir())
        .env("SCENARIO", scenario);
    if let Some(idp) = idp {
        command
            .env("IDP", idp.issuer())
            .env("NODE_EXTRA_CA_CERTS", &idp.ca_pem);
    }
    for (k, v) in vars {
        command.env(k, v);
    }
    // The gateways run on this runtime; the browser runs beside it.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("node is required for the browser test (scripts/test installs it): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the one-view browser test failed (scripts/test installs chromium, playwright-core and axe-core in tests/view):\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    stdout
}

/// GETs a file of the page's (no token: the page carries no data).
async fn view_get(fed: &TestFederation, file: &str) -> reqwest::Response {
    let url = fed.base(0).replace("/fhir", "/view/");
    fed.client()
        .get(format!("{url}{file}"))
        .send()
        .await
        .unwrap()
}

fn assert_screenshots(names: &[&str]) {
    for name in names {
        let p = shots_dir().join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "screenshot {} missing",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_view_opens_from_a_partner_system_and_shows_every_state_a_clinician_meets() {
    let ca = DevCa::new("Test federation CA").unwrap();
    let codes = ["dorset", "hampshire"];
    let idp = provider(&ca);
    let fed = Builder::new(&codes)
        .with_ca(ca)
        .first_region_auth(&discovery_auth(&idp.issuer(), ""))
        .extra_peer(ExtraPeer::new("kent", dead_address(), 1000))
        .start()
        .await;
    // The objecting patient's home region must be another region than the one the page asks,
    // or their objection would not withhold anything from it.
    let objecting = fed.data.patients[3].clone();
    assert_eq!(objecting.nhs, fed.data.objecting);
    assert!(
        objecting.regions.contains(&0) && objecting.regions[0] != 0,
        "the generated objecting patient is seen in dorset, with another home: {:?}",
        objecting.regions
    );

    // The page's own headers: its policy lets it reach the gateway and the provider's token
    // endpoint, nothing else; the record's answers are not kept by the browser.
    let page = view_get(&fed, "").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("connect-src 'self' {};", idp.issuer())),
        "{csp}"
    );
    assert_eq!(page.headers()["cache-control"], "no-store");
    let settings: serde_json::Value = view_get(&fed, "settings").await.json().await.unwrap();
    assert_eq!(settings["identity_provider"], true);
    let smart: serde_json::Value = fed
        .client()
        .get(format!("{}/.well-known/smart-configuration", fed.base(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        smart["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("launch-ehr")),
        "{smart}"
    );

    let out = browse(
        &fed,
        Some(&idp),
        "states",
        &[
            ("PATIENT_EVERYWHERE", fed.everywhere()),
            ("PATIENT_MISMATCHED", fed.data.mismatched.to_string()),
            ("PATIENT_OBJECTING", objecting.nhs.to_string()),
            ("FAILED_REGION", "kent".into()),
            ("WITHHELD_TEXT", "Human immunodeficiency virus".into()),
            ("GLASS_REASON", GLASS_REASON.into()),
        ],
    )
    .await;
    assert!(out.contains("all steps passed"), "{out}");
    assert_screenshots(&[
        "01-ehr-launch",
        "02-print",
        "03-tablet",
        "04-nhs-check-digit",
        "05-withheld",
        "06-demographic-conflict",
        "07-break-glass-dialog",
        "08-break-glass",
    ]);

    // What the browser did is in the audit trail, under the users who signed in.
    let officer = idp.token("privacy-office", Some("user/*.rs")).await;
    let launched = fed
        .audit(
            0,
            &format!("patient={}&user=dr-patel", fed.everywhere()),
            &officer,
        )
        .await;
    assert_eq!(launched.status, StatusCode::OK, "{}", launched.body);
    assert!(
        !entries(&launched.body, "match").is_empty(),
        "the EHR launch's query is audited under the clinician: {}",
        launched.body
    );
    let glass = fed
        .audit(0, "break-glass=true&user=nurse-okafor", &officer)
        .await;
    assert_eq!(glass.status, StatusCode::OK, "{}", glass.body);
    let glass = entries(&glass.body, "match");
    assert!(!glass.is_empty(), "the break-glass view is audited");
    let text = serde_json::to_string(&glass).unwrap();
    assert!(text.contains(GLASS_REASON), "with its reason: {text}");
    assert!(
        text.contains(r#""code":"BTG""#),
        "marked as break the glass: {text}"
    );
}

/// The realistic patient with thousands of items across three regions: the page reads every
/// page of the answer and stays interactive. How long it took is printed (and reported in the
/// note), not asserted: timing belongs in benchmarks.
#[tokio::test(flavor = "multi_thread")]
async fn the_one_view_of_a_patient_with_thousands_of_items_is_whole() {
    let ca = DevCa::new("Test federation CA").unwrap();
    let idp = provider(&ca);
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .patients(4)
        .realistic(1, 1200)
        .with_ca(ca)
        .first_region_auth(&discovery_auth(&idp.issuer(), ""))
        .start()
        .await;
    let nhs = fed.realistic[0].nhs.to_string();
    // The clinical items the gateway answers with, counted page by page as the page must.
    let clinician = idp.token("clinical-system", Some("user/*.rs")).await;
    let context = [
        "Patient",
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "Medication",
        "Provenance",
        "OperationOutcome",
        "Consent",
    ];
    let mut items = 0usize;
    let mut next = Some(format!("/Patient/{nhs}/$everything?_count=1000"));
    while let Some(path) = next {
        let r = fed.get(0, &path, Some(&clinician)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        items += entries(&r.body, "match")
            .iter()
            .filter(|e| !context.contains(&e["resource"]["resourceType"].as_str().unwrap_or("")))
            .count();
        next = link(&r.body, "next").map(|u| {
            let at = u.find("/fhir").unwrap() + "/fhir".len();
            u[at..].to_owned()
        });
    }
    assert!(items > 2000, "thousands of items: {items}");

    let out = browse(
        &fed,
        Some(&idp),
        "large",
        &[
            ("PATIENT_LARGE", nhs),
            ("AT_LEAST_ITEMS", items.to_string()),
        ],
    )
    .await;
    let shown: usize = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("items="))
        .and_then(|n| n.parse().ok())
        .expect("the script reports the items shown");
    assert_eq!(shown, items, "every clinical item is on the timeline");
    assert_screenshots(&["09-large-record"]);
}

/// Without single sign-on (the demo, or a region yet to register the page with its provider)
/// the page takes a pasted token, as the console does; a launch naming another server is
/// refused. The record's answers tell the browser not to keep them.
#[tokio::test(flavor = "multi_thread")]
async fn without_single_sign_on_the_one_view_takes_a_pasted_token() {
    let fed = Builder::new(&["dorset", "hampshire"])
        .patients(4)
        .start()
        .await;
    let page = view_get(&fed, "").await;
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("connect-src 'self';"), "{csp}");
    let token = fed.token("R8000");
    let record = fed
        .get(
            0,
            &format!("/Patient/{}/$everything", fed.everywhere()),
            Some(&token),
        )
        .await;
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(record.headers["cache-control"], "no-store");
    let out = browse(
        &fed,
        None,
        "pasted",
        &[("PATIENT_EVERYWHERE", fed.everywhere()), ("TOKEN", token)],
    )
    .await;
    assert!(out.contains("all steps passed"), "{out}");
}
