//! The production record source (a FHIR R4 server) answers exactly as the embedded directory
//! record does, over real HTTP with paging.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use gateway::record::RecordSource;
use gateway::record::directory::DirectoryRecord;
use gateway::record::fhir_server::{FhirServerRecord, ServerSettings};
use gateway::record::pages::Bounds;

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
        links.push(json!({"relation": "next", "url": format!("{}/{}?{}_page={}", store.base, t, rest, page + 1)}));
    }
    let body = json!({"resourceType": "Bundle", "type": "searchset", "total": hits.len(), "link": links, "entry": chunk});
    axum::response::Response::builder()
        .header("content-type", "application/fhir+json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_fhir_server_record_answers_like_the_directory_record() {
    let data =
        gateway::demo::data::generate(&["dorset".to_string(), "hampshire".to_string()], 15, 9);
    let resources = data.records["dorset"].clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let store = Arc::new(Store {
        base: base.clone(),
        resources: resources.clone(),
    });
    let app = axum::Router::new()
        .route("/fhir/{type}", axum::routing::get(search))
        .with_state(store);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let remote = FhirServerRecord::new(settings(&base)).unwrap();
    let local = DirectoryRecord::from_resources(resources).unwrap();
    let ids = |a: &gateway::record::RecordAnswer| -> (BTreeSet<String>, BTreeSet<String>) {
        (
            a.patients
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect(),
            a.items
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect(),
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
