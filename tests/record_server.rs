//! The production record source (a FHIR R4 server) answers exactly as the embedded directory
//! record does, over real HTTP with paging.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use gateway::record::RecordSource;
use gateway::record::directory::DirectoryRecord;
use gateway::record::fhir_server::{FhirServerRecord, ServerSettings};
use gateway::record::pages::{Bounds, CutReason};

const BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

fn settings(base: &str) -> ServerSettings {
    ServerSettings {
        base: base.to_owned(),
        timeout: BUDGET,
        page_size: 2,
        bounds: Bounds {
            max_items: 50_000,
            max_bytes: 1 << 20,
        },
    }
}
use serde_json::{Value, json};

struct Store {
    base: String,
    resources: Vec<Value>,
    /// How the server misbehaves from the second page of a search on.
    fault: std::sync::Mutex<Fault>,
}

/// A record server that lies or breaks after its first page.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Page 3's next link goes back to page 1.
    Loop,
    /// Page 2's next link is on another server.
    Elsewhere,
    /// Page 2 is a Patient, not a Bundle.
    NotABundle,
    /// Page 2 answers 500.
    Fails,
}

/// A small FHIR server: `Patient?identifier=system|value` and `{Type}?patient=Patient/{id}`,
/// two entries a page with `next` links.
async fn search(
    State(store): State<Arc<Store>>,
    Path(t): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    let get = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let page: usize = get("_page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let fault = *store.fault.lock().unwrap();
    let respond = |status: u16, body: Value| {
        axum::response::Response::builder()
            .status(status)
            .header("content-type", "application/fhir+json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    if page == 1 && t != "Patient" {
        match fault {
            Fault::NotABundle => {
                return respond(200, json!({"resourceType": "Patient", "id": "x"}));
            }
            Fault::Fails => {
                return respond(
                    500,
                    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}),
                );
            }
            _ => {}
        }
    }
    let hits: Vec<&Value> = store
        .resources
        .iter()
        .filter(|r| r["resourceType"] == t.as_str())
        .filter(|r| match (t.as_str(), get("identifier"), get("patient")) {
            ("Patient", Some(ident), _) => {
                let (sys, val) = ident.split_once('|').unwrap();
                r["identifier"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["system"] == sys && i["value"] == val)
            }
            (_, _, Some(p)) => {
                r["subject"]["reference"] == p.as_str() || r["patient"]["reference"] == p.as_str()
            }
            _ => false,
        })
        .collect();
    let chunk: Vec<Value> = hits
        .iter()
        .skip(page * 2)
        .take(2)
        .map(|r| json!({"resource": r, "search": {"mode": "match"}}))
        .collect();
    let mut links = vec![];
    if (page + 1) * 2 < hits.len() {
        let rest: String = q
            .iter()
            .filter(|(k, _)| k != "_page")
            .map(|(k, v)| format!("{k}={}&", v.replace('|', "%7C")))
            .collect();
        let next_page = match fault {
            Fault::Loop if page == 2 && t != "Patient" => 1,
            _ => page + 1,
        };
        let base = match fault {
            Fault::Elsewhere if page == 1 && t != "Patient" => {
                store.base.replace("127.0.0.1", "localhost")
            }
            _ => store.base.clone(),
        };
        links.push(json!({"relation": "next", "url": format!("{}/{}?{}_page={}", base, t, rest, next_page)}));
    }
    let body = json!({"resourceType": "Bundle", "type": "searchset", "total": hits.len(), "link": links, "entry": chunk});
    respond(200, body)
}

/// Starts the small FHIR server on `resources`; gives its base.
async fn start_server(resources: Vec<Value>) -> (String, Arc<Store>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let store = Arc::new(Store {
        base: base.clone(),
        resources,
        fault: std::sync::Mutex::new(Fault::None),
    });
    let app = axum::Router::new()
        .route("/fhir/{type}", axum::routing::get(search))
        .with_state(store.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, store)
}

fn observations_of(nhs: &str) -> gateway::query::PatientQuery {
    gateway::query::parse_search(
        "Observation",
        &[(
            "patient.identifier".into(),
            format!("https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
        )],
        false,
    )
    .unwrap()
    .query
}

/// A patient with `n` Observations on the small server.
fn one_patient_with_observations(n: usize) -> (String, Vec<Value>) {
    let nhs = "9000000009".to_owned();
    let mut resources = vec![json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]})];
    for i in 0..n {
        resources.push(
            json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": "Heart rate"}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-01T10:00:00Z"}),
        );
    }
    (nhs, resources)
}

#[tokio::test]
async fn every_page_is_read_and_no_page_count_cuts_an_answer() {
    // 150 Observations two a page: 75 pages, past the 50 pages that used to drop a region.
    let (nhs, resources) = one_patient_with_observations(150);
    let (base, _) = start_server(resources).await;
    let remote = FhirServerRecord::new(settings(&base)).unwrap();
    let a = remote.search(&observations_of(&nhs), BUDGET).await.unwrap();
    assert_eq!(a.items.len(), 150);
    assert!(a.cuts.is_empty(), "{:?}", a.cuts);
}

#[tokio::test]
async fn a_lying_or_broken_server_ends_the_answer_with_a_named_cut() {
    let (nhs, resources) = one_patient_with_observations(10);
    let (base, store) = start_server(resources).await;
    let remote = FhirServerRecord::new(settings(&base)).unwrap();
    for (fault, reason, kept) in [
        (Fault::Loop, CutReason::LinkLoop, 6),
        (Fault::Elsewhere, CutReason::LinkElsewhere, 4),
        (Fault::NotABundle, CutReason::InvalidPage, 2),
        (Fault::Fails, CutReason::PageFailed, 2),
    ] {
        *store.fault.lock().unwrap() = fault;
        let a = remote.search(&observations_of(&nhs), BUDGET).await.unwrap();
        assert_eq!(a.items.len(), kept, "{fault:?}");
        assert_eq!(a.cuts.len(), 1, "{fault:?}: {:?}", a.cuts);
        let cut = &a.cuts[0];
        assert_eq!(cut.reason, reason, "{fault:?}");
        assert_eq!(cut.left_out, Some(10 - kept), "{fault:?}");
        assert_eq!(cut.types.iter().collect::<Vec<_>>(), ["Observation"]);
    }
}

#[tokio::test]
async fn more_than_the_bounds_is_cut_and_said() {
    let (nhs, resources) = one_patient_with_observations(30);
    let (base, _) = start_server(resources).await;
    let mut s = settings(&base);
    s.bounds.max_items = 11;
    let remote = FhirServerRecord::new(s).unwrap();
    let a = remote.search(&observations_of(&nhs), BUDGET).await.unwrap();
    // The Patient's page takes one item of the allowance; then five pages of two.
    assert_eq!(a.items.len(), 10);
    assert_eq!(a.cuts[0].reason, CutReason::ItemLimit);
    assert_eq!(a.cuts[0].left_out, Some(20));
    assert!(
        a.cuts[0].detail.contains("record.max_items"),
        "{}",
        a.cuts[0].detail
    );
    let mut s = settings(&base);
    s.bounds.max_bytes = 4096;
    let remote = FhirServerRecord::new(s).unwrap();
    let a = remote.search(&observations_of(&nhs), BUDGET).await.unwrap();
    assert!(a.items.len() < 30);
    assert_eq!(a.cuts[0].reason, CutReason::ByteLimit);
    assert_eq!(a.cuts[0].left_out, Some(30 - a.items.len()));
}

#[tokio::test]
async fn a_fhir_server_record_answers_like_the_directory_record() {
    let data =
        gateway::demo::data::generate(&["dorset".to_string(), "hampshire".to_string()], 15, 9);
    let resources = data.records["dorset"].clone();
    let (base, _) = start_server(resources.clone()).await;

    let remote = FhirServerRecord::new(settings(&base)).unwrap();
    let local = DirectoryRecord::from_resources(resources).unwrap();
    let ids = |a: &gateway::record::RecordAnswer| -> (BTreeSet<String>, BTreeSet<String>) {
        (
            a.patients
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect(),
            a.items.iter().map(|p| p.id().to_owned()).collect(),
        )
    };
    let mut compared = 0;
    for p in data.patients.iter().filter(|p| p.regions.contains(&0)) {
        let everything = gateway::query::parse_everything(p.nhs.as_str(), &[], false)
            .unwrap()
            .query;
        let r = remote.search(&everything, BUDGET).await.unwrap();
        let l = local.search(&everything, BUDGET).await.unwrap();
        assert_eq!(ids(&r), ids(&l));
        assert!(!l.items.is_empty());
        let conditions = gateway::query::parse_search(
            "Observation",
            &[(
                "patient.identifier".into(),
                format!("https://fhir.nhs.uk/Id/nhs-number|{}", p.nhs),
            )],
            false,
        )
        .unwrap()
        .query;
        assert_eq!(
            ids(&remote.search(&conditions, BUDGET).await.unwrap()),
            ids(&local.search(&conditions, BUDGET).await.unwrap())
        );
        compared += 1;
    }
    assert!(compared >= 3);
}
