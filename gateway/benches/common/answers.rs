//! Regions' answers for the merge benchmarks (shared by `hot_paths` and `merge_memory`).
#![allow(dead_code)]

use gateway::demo::data::generate;
use gateway::fhir::item::Item;
use gateway::merge::{MergeContext, MismatchPolicy, RegionInfo, RegionResult};
use gateway::query::PatientQuery;
use gateway::record::RecordAnswer;
use serde_json::Value;

/// The merge's context in every benchmark.
pub fn context() -> MergeContext<'static> {
    MergeContext {
        gateway_base: "https://gw/fhir",
        bundle_id: "b",
        now: "2026-01-01T00:00:00Z",
        self_link: "https://gw/fhir/x",
        issues: vec![],
        on_mismatch: MismatchPolicy::Warn,
    }
}

/// The demo generator's patient seen in every region: the `$everything` query for them, and
/// each region's record's answer to it.
pub fn one_patient(
    regions: &[&str],
    patients: usize,
    seed: u64,
) -> (PatientQuery, Vec<(String, RecordAnswer)>) {
    let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
    let data = generate(&regions, patients, seed);
    let query = gateway::query::parse_everything(data.seen_everywhere.as_str(), &[], false)
        .unwrap()
        .query;
    let answers = regions
        .iter()
        .map(|code| {
            let record = gateway::record::directory::DirectoryRecord::from_resources(
                data.records[code].clone(),
            )
            .unwrap();
            (code.clone(), record.answer(&query))
        })
        .collect();
    (query, answers)
}

/// Each answer as its region's result.
pub fn results(answers: Vec<(String, RecordAnswer)>) -> Vec<RegionResult> {
    answers
        .into_iter()
        .map(|(code, answer)| RegionResult {
            region: RegionInfo {
                name: code.clone(),
                base_url: format!("https://{code}/fhir"),
                code,
            },
            outcome: Ok(answer),
            elapsed_ms: 1,
        })
        .collect()
}

/// The `k`th copy of an item: a new id and a new business identifier of `region`.
fn copy(item: &Item, region: &str, k: usize) -> Item {
    let mut copy = item.to_value();
    copy["id"] = Value::String(format!("{}-{k}", item.id()));
    copy["identifier"] = serde_json::json!([{"system": "urn:bench", "value": format!("{region}-{k}-{}", copy["id"])}]);
    Item::from_value(&copy).expect("an object")
}

/// Each region's answer for one patient, grown to about `bytes` of JSON by repeating its
/// items under new business identifiers (shared GP items stay shared across regions).
pub fn large_answers(bytes: usize) -> (PatientQuery, Vec<RegionResult>) {
    let (query, mut answers) = one_patient(&["dorset", "hampshire", "wiltshire"], 50, 5);
    for (code, answer) in &mut answers {
        let base = answer.items.clone();
        let mut size: usize = base.iter().map(Item::bytes).sum();
        let mut k = 0;
        while size < bytes {
            k += 1;
            for item in &base {
                let c = copy(item, code, k);
                size += c.bytes();
                answer.items.push(c);
            }
        }
    }
    (query, results(answers))
}

/// `n` regions' answers for one patient of about `bytes` each (items taken, and repeated under
/// new business identifiers, until the answer holds that much): the load benchmark's
/// scenario (b) is eight regions of 20 kB.
pub fn regions_answers(n: usize, bytes: usize) -> (PatientQuery, Vec<RegionResult>) {
    let names: Vec<String> = (1..=n).map(|i| format!("peer{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (query, mut answers) = one_patient(&names, 20, 11);
    for (code, answer) in &mut answers {
        let base = std::mem::take(&mut answer.items);
        let mut size: usize = answer.patients.iter().map(|v| v.to_string().len()).sum();
        'grow: for k in 0.. {
            for item in &base {
                let c = if k == 0 {
                    item.clone()
                } else {
                    copy(item, code, k)
                };
                size += c.bytes();
                if size > bytes {
                    break 'grow;
                }
                answer.items.push(c);
            }
        }
    }
    (query, results(answers))
}

/// A region's answer as the searchset text a peer sends (the examples read it as the gateway
/// reads a peer's body).
pub fn searchset_text(result: &RegionResult) -> gateway::fhir::item::Source {
    let a = result.outcome.as_ref().expect("an answer");
    let mut entries: Vec<Value> = a
        .patients
        .iter()
        .map(|p| serde_json::json!({"resource": p, "search": {"mode": "match"}}))
        .collect();
    entries.extend(a.items.iter().map(|i| {
        serde_json::json!({"fullUrl": format!("https://x/fhir/{}/{}", i.rtype(), i.id()), "resource": i.to_value(), "search": {"mode": "match"}})
    }));
    serde_json::json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})
        .to_string()
        .into()
}

/// The user the examples ask as: a clinician treating the patient.
pub fn clinician() -> gateway::auth::UserContext {
    gateway::auth::UserContext {
        user_id: "bench".into(),
        role: "R8000".into(),
        organisation: "RBD".into(),
        purpose_of_use: Some("TREAT".into()),
        break_glass: None,
        scope: None,
        patient: None,
    }
}

/// How the examples merge: as the gateway does, under the benchmarks' base.
pub fn view_context() -> gateway::merge::ViewContext<'static> {
    gateway::merge::ViewContext {
        gateway_base: "https://gw/fhir",
        issues: vec![],
        on_mismatch: MismatchPolicy::Warn,
    }
}

/// What names the examples' requests in their Bundles.
pub fn envelope() -> gateway::merge::Envelope<'static> {
    gateway::merge::Envelope {
        bundle_id: "b",
        now: "2026-01-01T00:00:00Z",
        self_link: "https://gw/fhir/x",
    }
}
