//! The merge's correctness as properties (proptest): independent of the order regions
//! answer in; each region answering twice changes nothing; and every item is accounted for
//! (shown, folded into another entry as a duplicate, or discarded by screening or a
//! wrong-patient withholding).

use super::*;
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use proptest::prelude::*;

const NHS: &str = "9000000009";

fn query() -> PatientQuery {
    crate::query::parse_everything(NHS, &[], false)
        .unwrap()
        .query
}

/// The context every merge test uses.
pub(super) fn ctx(on_mismatch: MismatchPolicy) -> MergeContext<'static> {
    MergeContext {
        gateway_base: "https://gw.example/fhir",
        bundle_id: "b1",
        now: "2024-01-01T00:00:00Z",
        self_link: "https://gw.example/fhir/x",
        issues: vec![],
        on_mismatch,
    }
}

/// (type, code, date, business identifier, lastUpdated, about the patient)
type Item = (u8, u8, u8, Option<u8>, u8, bool);
/// (date-of-birth variant, patient lastUpdated, items)
type Answer = (u8, u8, Vec<Item>);

/// One item drawn from a small space, so that duplicates and conflicts are common.
fn item() -> impl Strategy<Value = Item> {
    // (type, code, date, business identifier, lastUpdated, about the patient)
    (
        0..2u8,
        0..3u8,
        0..3u8,
        proptest::option::of(0..3u8),
        0..3u8,
        prop::bool::weighted(0.9),
    )
}

fn region_answer() -> impl Strategy<Value = Answer> {
    // (birth year variant, patient lastUpdated, items)
    (0..4u8, 0..3u8, prop::collection::vec(item(), 0..7))
}

fn build(code: &str, (birth, updated, items): &Answer) -> RegionResult {
    let local = format!("{code}-p");
    // Mostly the same date of birth; sometimes another (a wrong-patient candidate).
    let dob = if *birth == 0 {
        "1990-02-02"
    } else {
        "1980-01-01"
    };
    let patient = json!({"resourceType": "Patient", "id": local,
        "meta": {"lastUpdated": format!("2023-0{}-01T00:00:00Z", updated + 1)},
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
        "name": [{"family": "Smith"}], "birthDate": dob});
    let items = items
        .iter()
        .enumerate()
        .map(|(i, (t, c, d, ident, u, ours))| {
            let (rtype, link, date) = if *t == 0 {
                ("AllergyIntolerance", "patient", "recordedDate")
            } else {
                ("Condition", "subject", "recordedDate")
            };
            let mut v = json!({"resourceType": rtype, "id": format!("{code}-{i}"),
                "meta": {"lastUpdated": format!("2022-0{}-01T00:00:00Z", u + 1)},
                "code": {"text": format!("code-{c}")},
                date: format!("202{d}-01-01")});
            v[link] = json!({"reference": format!("Patient/{}", if *ours { &local } else { "someone-else" })});
            if let Some(n) = ident {
                v["identifier"] = json!([{"system": "urn:gp:item", "value": format!("{rtype}-{n}")}]);
            }
            v
        });
    let items = crate::fhir::item::items_of(items);
    RegionResult {
        region: RegionInfo {
            code: code.into(),
            name: code.to_uppercase(),
            base_url: format!("https://{code}.example/fhir"),
        },
        outcome: Ok(RecordAnswer {
            patients: vec![patient],
            items,
            ..RecordAnswer::default()
        }),
        elapsed_ms: 1,
    }
}

fn federation() -> impl Strategy<Value = Vec<RegionResult>> {
    prop::collection::vec(region_answer(), 1..4).prop_map(|answers| {
        answers
            .iter()
            .enumerate()
            .map(|(i, a)| build(["alpha", "bravo", "charlie"][i], a))
            .collect()
    })
}

fn policy() -> impl Strategy<Value = MismatchPolicy> {
    prop_oneof![Just(MismatchPolicy::Warn), Just(MismatchPolicy::Withhold)]
}

fn shown(m: &Merged) -> Vec<Value> {
    m.bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_order_regions_answer_in_does_not_matter(results in federation(), seed in any::<u64>(), on in policy()) {
        let mut shuffled = results.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let a = merge(&query(), results, ctx(on));
        let b = merge(&query(), shuffled, ctx(on));
        prop_assert_eq!(crate::fhir::canonical_json(&a.bundle), crate::fhir::canonical_json(&b.bundle));
    }

    #[test]
    fn every_region_answering_twice_changes_nothing(results in federation(), on in policy()) {
        let once = merge(&query(), results.clone(), ctx(on));
        let twice_input: Vec<RegionResult> = results.iter().chain(results.iter()).cloned().collect();
        let twice = merge(&query(), twice_input, ctx(on));
        prop_assert_eq!(shown(&once), shown(&twice));
        prop_assert_eq!(once.total, twice.total);
    }

    #[test]
    fn every_item_is_shown_deduplicated_or_discarded(results in federation(), on in policy()) {
        let input: usize = results
            .iter()
            .map(|r| r.outcome.as_ref().map_or(0, |a| a.items.len()))
            .sum();
        let m = merge(&query(), results, ctx(on));
        let items_shown = shown(&m).iter().filter(|r| r["resourceType"] != "Patient").count();
        prop_assert_eq!(items_shown + m.deduplicated + m.discarded, input);
    }
}
