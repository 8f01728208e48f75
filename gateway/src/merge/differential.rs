//! The byte path against the tree path it replaced (issue 16): on generated federations and
//! on the demo's realistic records, [`merge`] gives the Bundle the old merge
//! ([`super::oracle`]) gave, entry for entry: the same resources, tags, references,
//! outcomes, order and totals. Compared as JSON values: the byte path keeps a region's own
//! number and string spellings (`1.50`, `\u00e9`), which the tree path re-encoded.

use super::*;
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use proptest::prelude::*;

const NHS: &str = "9000000009";

use super::props::ctx;
use super::tests::region;

/// Both merges of the same results give the same Bundle.
fn same_as_oracle(query: &PatientQuery, results: Vec<RegionResult>, on: MismatchPolicy) {
    let old: Vec<super::oracle::RegionResult> = results
        .iter()
        .map(|r| super::oracle::RegionResult {
            region: r.region.clone(),
            outcome: r
                .outcome
                .as_ref()
                .map(super::oracle::RecordAnswer::of)
                .map_err(Clone::clone),
            elapsed_ms: r.elapsed_ms,
        })
        .collect();
    let new = merge(query, results, ctx(on));
    let want = super::oracle::merge(query, old, ctx(on));
    let entries = |b: &Value| b["entry"].as_array().cloned().unwrap_or_default();
    let (got, expected) = (entries(&new.bundle), entries(&want.bundle));
    assert_eq!(got.len(), expected.len(), "entries");
    for (i, (g, w)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, w, "entry {i}");
    }
    assert_eq!(new.bundle, want.bundle);
    assert_eq!(
        (new.total, new.deduplicated, new.discarded),
        (want.total, want.deduplicated, want.discarded)
    );
}

/// (type, code, date, identifier, lastUpdated, performer, value spelling, about the patient)
type Drawn = (u8, u8, u8, Option<u8>, u8, Option<u8>, u8, bool);

fn drawn() -> impl Strategy<Value = Drawn> {
    (
        0..3u8,
        0..3u8,
        0..3u8,
        proptest::option::of(0..3u8),
        0..3u8,
        proptest::option::of(0..3u8),
        0..3u8,
        prop::bool::weighted(0.9),
    )
}

/// One region's answer: its Patient, items that collide often (same codes, dates and
/// identifiers across regions, other versions), the practitioners they reference (with or
/// without a registration number), and sometimes a cut or a failure.
fn answer(code: &'static str) -> impl Strategy<Value = RegionResult> {
    (
        0..4u8,
        0..3u8,
        prop::collection::vec(drawn(), 0..8),
        prop::collection::vec(proptest::option::of(0..2u8), 3),
        0..8u8,
    )
        .prop_map(move |(birth, updated, items, practitioners, fate)| {
            let local = format!("{code}-p");
            let patient = json!({"resourceType": "Patient", "id": local,
                "meta": {"lastUpdated": format!("2023-0{}-01T00:00:00Z", updated + 1)},
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
                "generalPractitioner": [{"reference": "Practitioner/pr0"}],
                "name": [{"family": "Smith"}], "birthDate": if birth == 0 { "1990-02-02" } else { "1980-01-01" }});
            let items = items.iter().enumerate().map(|(i, &(t, c, d, ident, u, performer, spelling, ours))| {
                let (rtype, link, date) = [
                    ("AllergyIntolerance", "patient", "recordedDate"),
                    ("Condition", "subject", "recordedDate"),
                    ("Observation", "subject", "effectiveDateTime"),
                ][t as usize];
                let mut v = json!({"resourceType": rtype, "id": format!("{code}-{i}"),
                    "meta": {"lastUpdated": format!("2022-0{}-01T00:00:00Z", u + 1)},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": format!("{c}")}]},
                    date: format!("202{d}-01-01")});
                v[link] = json!({"reference": format!("Patient/{}", if ours { &local } else { "someone-else" }), "display": "S"});
                if let Some(n) = ident {
                    v["identifier"] = json!([{"system": "urn:gp:item", "value": format!("{rtype}-{n}")}]);
                }
                if let Some(p) = performer {
                    v["recorder"] = json!({"reference": format!("Practitioner/pr{p}")});
                }
                let text = ["a", "b", "a\u{e9}"][spelling as usize];
                v["note"] = json!([{"text": text}]);
                v
            });
            let included = practitioners.iter().enumerate().map(|(i, reg)| {
                let mut p = json!({"resourceType": "Practitioner", "id": format!("pr{i}"),
                    "name": [{"family": format!("Doctor {i}")}]});
                if let Some(n) = reg {
                    p["identifier"] = json!([{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": format!("G{n}")}]);
                }
                p
            });
            let outcome = match fate {
                0 => Err(RegionFailure { kind: FailureKind::Timeout, reason: "no answer".into() }),
                1 => Ok(RecordAnswer {
                    patients: vec![patient],
                    items: crate::fhir::item::items_of(items),
                    included: crate::fhir::item::items_of(included),
                    cuts: vec![crate::record::pages::Cut::new(
                        crate::record::pages::CutReason::ItemLimit, "Observation", Some(3), String::new())],
                    stale_seconds: Some(40),
                    withheld: 1,
                }),
                _ => Ok(RecordAnswer {
                    patients: vec![patient],
                    items: crate::fhir::item::items_of(items),
                    included: crate::fhir::item::items_of(included),
                    ..RecordAnswer::default()
                }),
            };
            RegionResult { region: region(code), outcome, elapsed_ms: 3 }
        })
}

fn operation() -> impl Strategy<Value = PatientQuery> {
    prop_oneof![
        Just(
            crate::query::parse_everything(NHS, &[], false)
                .unwrap()
                .query
        ),
        Just(
            crate::query::parse_search(
                "Condition",
                &[(
                    "patient.identifier".into(),
                    format!("{NHS_NUMBER_SYSTEM}|{NHS}")
                )],
                false
            )
            .unwrap()
            .query
        ),
        Just(
            crate::query::parse_everything(NHS, &[("_count".into(), "3".into())], false)
                .unwrap()
                .query
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_byte_path_answers_what_the_tree_path_did(
        a in answer("alpha"), b in answer("bravo"), c in answer("charlie"),
        query in operation(),
        withhold in any::<bool>(),
    ) {
        let on = if withhold { MismatchPolicy::Withhold } else { MismatchPolicy::Warn };
        same_as_oracle(&query, vec![c, a, b], on);
    }
}

#[test]
fn the_byte_path_answers_the_realistic_records_as_the_tree_path_did() {
    let regions: Vec<String> = ["dorset", "hampshire", "wiltshire"]
        .map(String::from)
        .to_vec();
    let (records, patients) = crate::demo::realistic::generate(&regions, 2, 350, 7);
    for patient in &patients {
        for params in [vec![], vec![("_count".to_owned(), "50".to_owned())]] {
            let query = crate::query::parse_everything(patient.nhs.as_str(), &params, false)
                .unwrap()
                .query;
            let results: Vec<RegionResult> = records
                .iter()
                .map(|(code, resources)| {
                    let record = crate::record::directory::DirectoryRecord::from_resources(
                        resources.clone(),
                    )
                    .unwrap();
                    RegionResult {
                        region: region(code),
                        outcome: Ok(record.answer(&query)),
                        elapsed_ms: 9,
                    }
                })
                .collect();
            let items: usize = results
                .iter()
                .map(|r| r.outcome.as_ref().map_or(0, |a| a.items.len()))
                .sum();
            assert!(items > 500, "a realistic record: {items} items");
            same_as_oracle(&query, results, MismatchPolicy::Warn);
        }
    }
}

/// A region's Provenance written as text is the tree the old merge built, for a fresh answer
/// and for a stale one, with targets whose addresses need escaping.
#[test]
fn provenance_text_is_the_old_tree() {
    let envelope = Envelope {
        bundle_id: "b-1",
        now: "2026-01-01T00:00:00Z",
        self_link: "https://gw/fhir/x",
    };
    for (targets, stale) in [
        (vec![], None),
        (
            vec![
                "https://gw/fhir/Observation/a".to_owned(),
                "urn:uuid:\"quoted\"\\é".to_owned(),
            ],
            Some(3_700),
        ),
    ] {
        let c = Contribution {
            region: region("dorset"),
            targets: targets.into_iter().map(Into::into).collect(),
            stale_seconds: stale,
            elapsed_ms: 12,
        };
        let text = provenance(&c, 12, &envelope);
        assert_eq!(text.mode, SearchMode::Include);
        assert_eq!(
            text.to_value(),
            super::oracle::provenance(&c, 12, &envelope)
        );
    }
}
