//! Hot paths: per-item policy filtering of a large Bundle, the merge of three regions, and
//! the floor under any gateway that reads its peers' answers: parsing one and writing it back.
//! `cargo bench -p gateway --bench hot_paths`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway::access::{Filtered, Gatekeeper, embedded_policy_set};
use gateway::auth::UserContext;
use gateway::demo::data::generate;
use gateway::merge::merge;
use gateway::record::RecordAnswer;
use policy::DecisionPoint;
use serde_json::Value;

#[path = "common/answers.rs"]
mod answers;
use answers::{context, large_answers, one_patient, regions_answers, results};

// The allocator the gateway binary runs with, so the figures are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// About 5,000 items of every type, some labelled sensitive, from the demo generator.
fn items(n: usize) -> Vec<Value> {
    let regions = vec![
        "dorset".to_string(),
        "hampshire".to_string(),
        "wiltshire".to_string(),
    ];
    let data = generate(&regions, 2000, 7);
    data.records
        .values()
        .flatten()
        .filter(|r| r["resourceType"] != "Patient")
        .take(n)
        .cloned()
        .collect()
}

fn user(role: &str) -> UserContext {
    UserContext {
        user_id: "bench".into(),
        role: role.into(),
        organisation: "RBD".into(),
        purpose_of_use: Some("TREAT".into()),
        break_glass: None,
        scope: None,
        patient: None,
    }
}

fn filtering(c: &mut Criterion) {
    let set = embedded_policy_set().unwrap();
    let items = gateway::fhir::item::items_of(items(5000));
    assert_eq!(items.len(), 5000);
    for role in ["R8000", "R8004"] {
        let u = user(role);
        c.bench_function(&format!("policy filter 5000 items ({role})"), |b| {
            b.iter_batched(
                || RecordAnswer {
                    patients: vec![],
                    items: items.clone(),
                    ..RecordAnswer::default()
                },
                |answer| {
                    let mut gk = Gatekeeper::new(&set, &u, "dorset", DecisionPoint::View, "dorset");
                    let mut report = Filtered::default();
                    black_box(gk.filter(answer, "dorset", &mut report))
                },
                BatchSize::LargeInput,
            )
        });
    }
}

fn merging(c: &mut Criterion) {
    let (query, answers) = one_patient(&["dorset", "hampshire", "wiltshire"], 300, 3);
    let results = results(answers);
    c.bench_function("merge three regions' $everything (one patient)", |b| {
        b.iter(|| black_box(merge(&query, results.clone(), context())))
    });
}

fn merging_large(c: &mut Criterion) {
    let (query, results) = large_answers(2 * 1024 * 1024);
    let items: usize = results
        .iter()
        .map(|r| r.outcome.as_ref().map_or(0, |a| a.items.len()))
        .sum();
    eprintln!("merging three ~2 MB answers: {items} items");
    c.bench_function("merge three regions' ~2 MB $everything answers", |b| {
        b.iter_batched(
            || results.clone(),
            |r| black_box(merge(&query, r, context())),
            BatchSize::LargeInput,
        )
    });
}

/// One peer's ~20 kB answer (scenario (a) of the load benchmark) as JSON text: parsing it and
/// writing it back is the least a gateway that reads answers does per request, against
/// which a byte-forwarding proxy's whole cost per request can be set (see bench/results.md).
fn parsing(c: &mut Criterion) {
    let (_, results) = large_answers(20 * 1024);
    let answer = results[0].outcome.as_ref().expect("an answer");
    let mut size = 0;
    let items: Vec<Value> = answer.items.iter().map(|i| i.to_value()).collect();
    let entries: Vec<Value> = answer
        .patients
        .iter()
        .chain(&items)
        .map(|r| serde_json::json!({"fullUrl": format!("https://dorset/fhir/{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")), "resource": r, "search": {"mode": "match"}}))
        .take_while(|e| {
            size += e.to_string().len();
            size <= 22 * 1024
        })
        .collect();
    let text = serde_json::to_vec(
        &serde_json::json!({"resourceType": "Bundle", "type": "searchset", "entry": entries}),
    )
    .unwrap();
    eprintln!("one peer's answer: {} bytes", text.len());
    c.bench_function("parse and write back one peer's ~20 kB answer", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&text)).unwrap();
            black_box(serde_json::to_vec(&v).unwrap())
        })
    });
    // What the gateway does instead since issue 16: each resource kept as text, with its view.
    let text: gateway::fhir::item::Source = std::sync::Arc::new(String::from_utf8(text).unwrap());
    c.bench_function("read one peer's ~20 kB answer into items", |b| {
        b.iter(|| black_box(gateway::client::bundle_to_answer(black_box(&text)).unwrap()))
    });
}

/// Scenario (b) of the load benchmark, the merge alone: eight regions' ~20 kB answers.
fn merging_eight(c: &mut Criterion) {
    let (query, results) = regions_answers(8, 20 * 1024);
    let items: usize = results
        .iter()
        .map(|r| r.outcome.as_ref().map_or(0, |a| a.items.len()))
        .sum();
    eprintln!("merging eight ~20 kB answers: {items} items");
    c.bench_function("merge eight regions' ~20 kB answers", |b| {
        b.iter_batched(
            || results.clone(),
            |r| black_box(merge(&query, r, context())),
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(
    benches,
    filtering,
    merging,
    merging_large,
    parsing,
    merging_eight
);
criterion_main!(benches);
