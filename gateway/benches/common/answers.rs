//! Large answers for the merge benchmarks (shared by `hot_paths` and `merge_memory`).

use gateway::demo::data::generate;
use gateway::merge::{RegionInfo, RegionResult};
use serde_json::Value;

/// Each region's answer for one patient, grown to about `bytes` of JSON by repeating its
/// items under new business identifiers (shared GP items stay shared across regions).
pub fn large_answers(bytes: usize) -> (gateway::query::PatientQuery, Vec<RegionResult>) {
    let regions = vec![
        "dorset".to_string(),
        "hampshire".to_string(),
        "wiltshire".to_string(),
    ];
    let data = generate(&regions, 50, 5);
    let nhs = data.seen_everywhere.clone();
    let query = gateway::query::parse_everything(nhs.as_str(), &[], false)
        .unwrap()
        .query;
    let results = regions
        .iter()
        .map(|code| {
            let record = gateway::record::directory::DirectoryRecord::from_resources(
                data.records[code].clone(),
            )
            .unwrap();
            let mut answer = record.answer(&query);
            let base = answer.items.clone();
            let mut size: usize = base.iter().map(|v| v.to_string().len()).sum();
            let mut k = 0;
            while size < bytes {
                k += 1;
                for item in &base {
                    let mut copy = item.clone();
                    copy["id"] = Value::String(format!("{}-{k}", item["id"].as_str().unwrap_or("x")));
                    copy["identifier"] = serde_json::json!([{"system": "urn:bench", "value": format!("{code}-{k}-{}", copy["id"])}]);
                    size += copy.to_string().len();
                    answer.items.push(copy);
                }
            }
            RegionResult {
                region: RegionInfo {
                    code: code.clone(),
                    name: code.clone(),
                    base_url: format!("https://{code}/fhir"),
                },
                outcome: Ok(answer),
                elapsed_ms: 1,
            }
        })
        .collect();
    (query, results)
}

/// `n` regions' answers for one patient of about `bytes` each (items taken, and repeated under
/// new business identifiers, until the answer holds that much): the load benchmark's
/// scenario (b) is eight regions of 20 kB.
#[allow(dead_code)]
pub fn regions_answers(
    n: usize,
    bytes: usize,
) -> (gateway::query::PatientQuery, Vec<RegionResult>) {
    let regions: Vec<String> = (1..=n).map(|i| format!("peer{i}")).collect();
    let data = generate(&regions, 20, 11);
    let nhs = data.seen_everywhere.clone();
    let query = gateway::query::parse_everything(nhs.as_str(), &[], false)
        .unwrap()
        .query;
    let results = regions
        .iter()
        .map(|code| {
            let record = gateway::record::directory::DirectoryRecord::from_resources(
                data.records[code].clone(),
            )
            .unwrap();
            let mut answer = record.answer(&query);
            let base = std::mem::take(&mut answer.items);
            let mut size: usize = answer.patients.iter().map(|v| v.to_string().len()).sum();
            let mut k = 0;
            'grow: loop {
                for item in &base {
                    let mut copy = item.clone();
                    if k > 0 {
                        copy["id"] =
                            Value::String(format!("{}-{k}", item["id"].as_str().unwrap_or("x")));
                        copy["identifier"] = serde_json::json!([{"system": "urn:bench", "value": format!("{code}-{k}-{}", copy["id"])}]);
                    }
                    size += copy.to_string().len();
                    if size > bytes {
                        break 'grow;
                    }
                    answer.items.push(copy);
                }
                k += 1;
            }
            RegionResult {
                region: RegionInfo {
                    code: code.clone(),
                    name: code.clone(),
                    base_url: format!("https://{code}/fhir"),
                },
                outcome: Ok(answer),
                elapsed_ms: 1,
            }
        })
        .collect();
    (query, results)
}
