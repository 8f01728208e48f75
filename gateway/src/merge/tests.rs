use super::*;
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use crate::query::{parse_everything, parse_search};

const NHS: &str = "9000000009";

/// A region as the merge tests name it.
pub(super) fn region(code: &str) -> RegionInfo {
    RegionInfo {
        code: code.into(),
        name: code.to_uppercase(),
        base_url: format!("https://{code}.example/fhir"),
    }
}

fn patient(local: &str, updated: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": local, "meta": {"lastUpdated": updated},
           "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}, {"system": format!("urn:local:{local}"), "value": local}],
           "name": [{"family": family}], "birthDate": "1980-01-01"})
}

fn allergy(id: &str, local_patient: &str, recorded: &str) -> Value {
    json!({"resourceType": "AllergyIntolerance", "id": id, "patient": {"reference": format!("Patient/{local_patient}")},
           "code": {"text": "Penicillin"}, "recordedDate": recorded})
}

fn answered(code: &str, patients: Vec<Value>, items: Vec<Value>) -> RegionResult {
    RegionResult {
        region: region(code),
        outcome: Ok(RecordAnswer {
            patients,
            items: crate::fhir::item::items_of(items),
            ..RecordAnswer::default()
        }),
        elapsed_ms: 5,
    }
}

fn failed(code: &str, kind: FailureKind) -> RegionResult {
    RegionResult {
        region: region(code),
        outcome: Err(RegionFailure {
            kind,
            reason: "test".into(),
        }),
        elapsed_ms: 5,
    }
}

fn ctx() -> MergeContext<'static> {
    MergeContext {
        gateway_base: "https://gw.example/fhir",
        bundle_id: "b1",
        now: "2024-01-01T00:00:00Z",
        self_link: "https://gw.example/fhir/x",
        issues: vec![],
        on_mismatch: MismatchPolicy::Warn,
    }
}

fn allergy_query() -> PatientQuery {
    parse_search(
        "AllergyIntolerance",
        &[(
            "patient.identifier".into(),
            format!("{NHS_NUMBER_SYSTEM}|{NHS}"),
        )],
        false,
    )
    .unwrap()
    .query
}

fn entries(b: &Value) -> Vec<Value> {
    b["entry"].as_array().cloned().unwrap_or_default()
}

fn matches(b: &Value) -> Vec<Value> {
    entries(b)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .collect()
}

#[test]
fn identical_items_from_two_regions_appear_once_tagged_with_both() {
    let merged = merge(
        &allergy_query(),
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                vec![allergy("a", "d1", "2020-01-01")],
            ),
            answered(
                "hampshire",
                vec![patient("h7", "2023-02-01T00:00:00Z", "Smith")],
                vec![allergy("zz", "h7", "2020-01-01")],
            ),
        ],
        ctx(),
    );
    let m = matches(&merged.bundle);
    assert_eq!(m.len(), 1);
    assert_eq!(merged.total, 1);
    assert_eq!(merged.bundle["total"], 1);
    assert_eq!(merged.deduplicated, 1);
    let tags: Vec<&str> = m[0]["resource"]["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap())
        .collect();
    assert_eq!(tags, vec!["dorset", "hampshire"]);
    assert_eq!(
        m[0]["resource"]["meta"]["source"],
        "https://dorset.example/fhir"
    );
    // Addressed at the gateway, under an id naming the region whose copy is shown.
    assert_eq!(
        m[0]["fullUrl"],
        "https://gw.example/fhir/AllergyIntolerance/dorset.a"
    );
    assert_eq!(m[0]["resource"]["id"], "dorset.a");
    assert_eq!(
        m[0]["resource"]["patient"]["reference"],
        "https://gw.example/fhir/Patient/9000000009"
    );
}

#[test]
fn different_items_are_kept_newest_first() {
    let merged = merge(
        &allergy_query(),
        vec![answered(
            "dorset",
            vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
            vec![
                allergy("old", "d1", "2010-01-01"),
                allergy("new", "d1", "2022-01-01"),
            ],
        )],
        ctx(),
    );
    let ids: Vec<String> = matches(&merged.bundle)
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["dorset.new", "dorset.old"]);
}

#[test]
fn failed_regions_are_named_in_an_outcome_entry() {
    let merged = merge(
        &allergy_query(),
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                vec![allergy("a", "d1", "2020")],
            ),
            failed("hampshire", FailureKind::Timeout),
            failed("wiltshire", FailureKind::Refused(403)),
        ],
        ctx(),
    );
    assert_eq!((merged.regions_answered, merged.regions_failed), (1, 2));
    assert!(!merged.all_failures_timeouts);
    let outcome: Vec<Value> = entries(&merged.bundle)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .collect();
    assert_eq!(outcome.len(), 1);
    let issues = outcome[0]["resource"]["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 2);
    assert_eq!(issues[0]["code"], "timeout");
    assert!(
        issues[0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("hampshire")
    );
    assert_eq!(issues[1]["code"], "forbidden");
    assert!(
        issues[1]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("wiltshire")
    );
    let regions: BTreeSet<&str> = issues
        .iter()
        .map(|i| i["details"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(regions, BTreeSet::from(["hampshire", "wiltshire"]));
    assert_eq!(merged.bundle["total"], 1, "outcomes are not counted");
}

#[test]
fn all_timeouts_is_flagged() {
    let merged = merge(
        &allergy_query(),
        vec![
            failed("a", FailureKind::Timeout),
            failed("b", FailureKind::Timeout),
        ],
        ctx(),
    );
    assert!(merged.all_failures_timeouts);
    assert_eq!(merged.regions_answered, 0);
}

#[test]
fn a_peer_cannot_slip_in_another_patients_items() {
    let stranger = json!({"resourceType": "Patient", "id": "x", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}]});
    let merged = merge(
        &allergy_query(),
        vec![answered(
            "dorset",
            vec![patient("d1", "2023-01-01T00:00:00Z", "Smith"), stranger],
            vec![
                allergy("mine", "d1", "2020"),
                allergy("theirs", "x", "2020"),
                json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/d1"}}),
            ],
        )],
        ctx(),
    );
    assert_eq!(
        merged.discarded, 3,
        "the other patient, their allergy and the unasked-for Condition"
    );
    let ids: Vec<String> = matches(&merged.bundle)
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        vec!["dorset.mine"],
        "the id names the region holding it"
    );
}

#[test]
fn count_truncates_but_total_is_the_whole() {
    let mut q = allergy_query();
    q.count = Some(1);
    let merged = merge(
        &q,
        vec![answered(
            "dorset",
            vec![patient("d1", "2023-01-01T00:00:00Z", "S")],
            vec![allergy("a", "d1", "2020"), allergy("b", "d1", "2021")],
        )],
        ctx(),
    );
    assert_eq!(matches(&merged.bundle).len(), 1);
    assert_eq!(merged.bundle["total"], 2);
}

#[test]
fn everything_has_one_merged_patient_first() {
    let q = parse_everything(NHS, &[], false).unwrap().query;
    let merged = merge(
        &q,
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Old")],
                vec![allergy("a", "d1", "2020")],
            ),
            answered(
                "hampshire",
                vec![patient("h1", "2024-01-01T00:00:00Z", "New")],
                vec![],
            ),
        ],
        ctx(),
    );
    let m = matches(&merged.bundle);
    assert_eq!(m[0]["resource"]["resourceType"], "Patient");
    assert_eq!(m[0]["resource"]["id"], NHS);
    assert_eq!(
        m[0]["fullUrl"],
        "https://gw.example/fhir/Patient/9000000009"
    );
    assert_eq!(
        m[0]["resource"]["name"][0]["family"], "New",
        "most recently updated first"
    );
    assert_eq!(m[0]["resource"]["name"].as_array().unwrap().len(), 2);
    // NHS number once, two local identifiers.
    assert_eq!(m[0]["resource"]["identifier"].as_array().unwrap().len(), 3);
    assert_eq!(merged.total, 2);
    // Each identifier and name names the regions that hold it.
    let sources = |v: &Value| -> Vec<String> {
        v["extension"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["url"] == SOURCE_REGION_EXTENSION)
            .map(|e| e["valueCoding"]["code"].as_str().unwrap().to_owned())
            .collect()
    };
    let p = &m[0]["resource"];
    assert_eq!(sources(&p["identifier"][0]), ["dorset", "hampshire"]);
    assert_eq!(sources(&p["name"][0]), ["hampshire"], "New");
    assert_eq!(sources(&p["name"][1]), ["dorset"], "Old");
}

#[test]
fn one_item_told_by_two_regions_without_an_identifier_is_folded_by_code_and_date() {
    let coded = |id: &str, local: &str, status: &str, updated: &str| {
        let mut a = allergy(id, local, "2020-03-04");
        a["code"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]});
        a["clinicalStatus"] = json!({"coding": [{"code": status}]});
        a["meta"] = json!({"lastUpdated": updated});
        a
    };
    // Another allergy of Dorset's with the same code and date stays a separate entry.
    let mut twin = coded("a2", "d1", "active", "2021-01-01T00:00:00Z");
    twin["note"] = json!([{"text": "second reaction"}]);
    let merged = merge(
        &allergy_query(),
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                vec![coded("a1", "d1", "active", "2021-01-01T00:00:00Z"), twin],
            ),
            answered(
                "hampshire",
                vec![patient("h7", "2023-02-01T00:00:00Z", "Smith")],
                vec![
                    coded("b1", "h7", "resolved", "2024-01-01T00:00:00Z"),
                    // Same code, another date: another item.
                    {
                        let mut other = coded("b2", "h7", "active", "2024-01-01T00:00:00Z");
                        other["recordedDate"] = json!("2022-05-06");
                        other
                    },
                ],
            ),
        ],
        ctx(),
    );
    let m = matches(&merged.bundle);
    assert_eq!(m.len(), 3, "{m:#?}");
    assert_eq!(merged.deduplicated, 1);
    let folded: Vec<&Value> = m
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["meta"]["tag"].as_array().unwrap().len() == 2)
        .collect();
    assert_eq!(folded.len(), 1, "one entry carries both regions");
    let r = folded[0];
    assert_eq!(
        r["clinicalStatus"]["coding"][0]["code"], "resolved",
        "the newer"
    );
    assert_eq!(r["recordedDate"], "2020-03-04");
    assert_eq!(r["meta"]["extension"][0]["url"], OTHER_VERSION_EXTENSION);
    assert_eq!(
        r["meta"]["extension"][0]["extension"][0]["valueCode"],
        "dorset"
    );
}

#[test]
fn merge_is_independent_of_answer_order() {
    let a = answered(
        "dorset",
        vec![patient("d1", "2023-01-01T00:00:00Z", "S")],
        vec![allergy("a", "d1", "2020"), allergy("b", "d1", "2020")],
    );
    let b = answered(
        "wiltshire",
        vec![patient("w1", "2023-01-01T00:00:00Z", "S")],
        vec![allergy("c", "w1", "2021"), allergy("d", "w1", "2020")],
    );
    let one = merge(&allergy_query(), vec![a.clone(), b.clone()], ctx());
    let two = merge(&allergy_query(), vec![b, a], ctx());
    assert_eq!(one.bundle, two.bundle);
}

#[test]
fn identical_items_are_merged_whatever_order_their_keys_came_in() {
    let a: Value = serde_json::from_str(r#"{"resourceType":"AllergyIntolerance","id":"x","patient":{"reference":"Patient/d1"},"code":{"text":"Penicillin","coding":[{"system":"s","code":"c"}]},"recordedDate":"2020"}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"recordedDate":"2020","code":{"coding":[{"code":"c","system":"s"}],"text":"Penicillin"},"patient":{"reference":"Patient/h1"},"id":"y","resourceType":"AllergyIntolerance"}"#).unwrap();
    let merged = merge(
        &allergy_query(),
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "S")],
                vec![a],
            ),
            answered(
                "hampshire",
                vec![patient("h1", "2023-01-01T00:00:00Z", "S")],
                vec![b],
            ),
        ],
        ctx(),
    );
    assert_eq!(matches(&merged.bundle).len(), 1);
    assert_eq!(merged.deduplicated, 1);
}

fn issues_of(b: &Value) -> Vec<(String, String, String)> {
    entries(b)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .flat_map(|e| {
            e["resource"]["issue"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|i| {
            (
                i["severity"].as_str().unwrap_or("").to_owned(),
                i["details"]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                i["diagnostics"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn two_regions_disagreeing_on_birth() -> Vec<RegionResult> {
    let mut wrong = patient("h7", "2022-01-01T00:00:00Z", "smith ");
    wrong["birthDate"] = json!("1990-05-05");
    vec![
        answered(
            "dorset",
            vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
            vec![allergy("a", "d1", "2020-01-01")],
        ),
        answered(
            "hampshire",
            vec![wrong],
            vec![allergy("b", "h7", "2021-01-01")],
        ),
    ]
}

#[test]
fn regions_disagreeing_on_demographics_are_named_as_a_possible_wrong_patient() {
    let merged = merge(&allergy_query(), two_regions_disagreeing_on_birth(), ctx());
    let issues = issues_of(&merged.bundle);
    let warning = issues
        .iter()
        .find(|(_, region, _)| region == "hampshire")
        .expect("hampshire is named");
    assert_eq!(warning.0, "warning");
    assert!(warning.2.contains("wrong-patient"), "{}", warning.2);
    assert!(warning.2.contains("date of birth"));
    assert!(
        !warning.2.contains("family name"),
        "family names compare without case or spaces"
    );
    assert_eq!(
        matches(&merged.bundle).len(),
        2,
        "warn: both regions' items shown"
    );

    // The same with `withhold`: hampshire's items are left out, and said so.
    let merged = merge(
        &allergy_query(),
        two_regions_disagreeing_on_birth(),
        MergeContext {
            on_mismatch: MismatchPolicy::Withhold,
            ..ctx()
        },
    );
    let m = matches(&merged.bundle);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["resource"]["id"], "dorset.a");
    assert_eq!(merged.discarded, 1);
    assert!(
        issues_of(&merged.bundle)
            .iter()
            .any(|(sev, region, text)| sev == "error"
                && region == "hampshire"
                && text.contains("withheld"))
    );
}

#[test]
fn one_item_in_two_versions_keeps_the_newer_and_names_the_other() {
    let with_id = |id: &str, status: &str, updated: &str| {
        let mut a = allergy(id, "x", "2020-01-01");
        a["identifier"] = json!([{"system": "urn:gp:allergy", "value": "A-17"}]);
        a["clinicalStatus"] = json!({"coding": [{"code": status}]});
        a["meta"] = json!({"lastUpdated": updated});
        a
    };
    let mut d = with_id("a", "active", "2021-01-01T00:00:00Z");
    d["patient"] = json!({"reference": "Patient/d1"});
    let mut h = with_id("b", "resolved", "2024-01-01T00:00:00Z");
    h["patient"] = json!({"reference": "Patient/h7"});
    let merged = merge(
        &allergy_query(),
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                vec![d],
            ),
            answered(
                "hampshire",
                vec![patient("h7", "2023-02-01T00:00:00Z", "Smith")],
                vec![h],
            ),
        ],
        ctx(),
    );
    let m = matches(&merged.bundle);
    assert_eq!(m.len(), 1, "one item, shown once");
    let r = &m[0]["resource"];
    assert_eq!(
        r["clinicalStatus"]["coding"][0]["code"], "resolved",
        "the newer"
    );
    assert_eq!(r["meta"]["source"], "https://hampshire.example/fhir");
    let other = &r["meta"]["extension"][0];
    assert_eq!(other["url"], OTHER_VERSION_EXTENSION);
    assert_eq!(other["extension"][0]["valueCode"], "dorset");
    assert_eq!(
        other["extension"][1]["valueInstant"],
        "2021-01-01T00:00:00Z"
    );
    let tags: Vec<&str> = r["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap())
        .collect();
    assert_eq!(tags, vec!["dorset", "hampshire"]);
}

#[test]
fn each_answering_region_has_a_provenance_naming_what_it_contributed() {
    let merged = merge(
        &allergy_query(),
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                vec![
                    allergy("a", "d1", "2020-01-01"),
                    allergy("only-d", "d1", "2019-01-01"),
                ],
            ),
            answered(
                "hampshire",
                vec![patient("h7", "2023-02-01T00:00:00Z", "Smith")],
                vec![allergy("zz", "h7", "2020-01-01")],
            ),
            failed("kent", FailureKind::Timeout),
        ],
        ctx(),
    );
    let provenance: Vec<Value> = entries(&merged.bundle)
        .into_iter()
        .filter(|e| e["resource"]["resourceType"] == "Provenance")
        .collect();
    assert_eq!(provenance.len(), 2, "one per region that answered");
    assert!(provenance.iter().all(|e| e["search"]["mode"] == "include"));
    let targets = |code: &str| -> Vec<String> {
        let p = provenance
            .iter()
            .find(|e| e["resource"]["agent"][0]["who"]["identifier"]["value"] == code)
            .unwrap();
        p["resource"]["target"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["reference"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(targets("dorset").len(), 2);
    assert_eq!(targets("hampshire").len(), 1, "the shared allergy");
    // Every target resolves to an entry of the Bundle.
    let urls: Vec<String> = matches(&merged.bundle)
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().to_owned())
        .collect();
    for t in targets("dorset").iter().chain(&targets("hampshire")) {
        assert!(urls.contains(t), "{t}");
    }
    assert_eq!(merged.total, 2, "Provenance entries are not counted");
}

#[test]
fn references_resolve_inside_the_bundle_or_are_qualified_by_region() {
    let query = parse_everything(NHS, &[], false).unwrap().query;
    let obs = |id: &str, p: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "subject": {"reference": format!("Patient/{p}")},
               "code": {"text": "Haemoglobin"}, "effectiveDateTime": "2024-03-01"})
    };
    let report = |id: &str, p: &str, result: &str| {
        json!({"resourceType": "DiagnosticReport", "id": id, "status": "final", "subject": {"reference": format!("Patient/{p}")},
               "code": {"text": "FBC"}, "effectiveDateTime": format!("2024-03-0{}", if id.starts_with('d') { 1 } else { 2 }),
               "result": [{"reference": result}], "encounter": {"reference": "Encounter/e9"},
               "performer": [{"reference": format!("Patient/{p}")}, {"reference": "#contained"}, {"reference": "urn:uuid:x"}]})
    };
    let merged = merge(
        &query,
        vec![
            answered(
                "dorset",
                vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                vec![obs("o1", "d1"), report("dr1", "d1", "Observation/o1")],
            ),
            answered(
                "hampshire",
                vec![patient("h7", "2023-02-01T00:00:00Z", "Smith")],
                // The same observation under hampshire's own id, and a report pointing at it.
                vec![obs("o7", "h7"), report("hr2", "h7", "Observation/o7")],
            ),
        ],
        ctx(),
    );
    let m = matches(&merged.bundle);
    let urls: Vec<&str> = m.iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
    let observation_url = m
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Observation")
        .unwrap()["fullUrl"]
        .as_str()
        .unwrap();
    let reports: Vec<&Value> = m
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "DiagnosticReport")
        .collect();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        // Both regions' reports point at the one Observation entry, whichever id it kept.
        assert_eq!(r["result"][0]["reference"], observation_url);
        assert!(urls.contains(&r["result"][0]["reference"].as_str().unwrap()));
        assert_eq!(
            r["performer"][0]["reference"],
            "https://gw.example/fhir/Patient/9000000009"
        );
        assert_eq!(r["performer"][1]["reference"], "#contained");
        assert_eq!(r["performer"][2]["reference"], "urn:uuid:x");
    }
    // Not in the Bundle: at this gateway, under an id naming the region that holds it.
    let encounters: BTreeSet<&str> = reports
        .iter()
        .map(|r| r["encounter"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        encounters,
        BTreeSet::from([
            "https://gw.example/fhir/Encounter/dorset.e9",
            "https://gw.example/fhir/Encounter/hampshire.e9"
        ])
    );
}

#[test]
fn a_merge_spread_over_the_cores_is_the_merge_done_in_place() {
    // Three regions, 360 items each: a third told by every region (folded), a third by two
    // regions in two versions, the rest their own; enough to be split.
    let answers = || {
        ["hants", "dorset", "wilts"]
            .iter()
            .enumerate()
            .map(|(r, code)| {
                let local = format!("p-{code}");
                let items: Vec<Value> = (0..360)
                    .map(|i| {
                        let mut a = allergy(
                            &format!("{code}-{i}"),
                            &local,
                            &format!("2020-01-{:02}", 1 + i % 28),
                        );
                        let concept = match i % 3 {
                            0 => format!("shared-{i}"),
                            1 if r < 2 => format!("versions-{i}"),
                            _ => format!("{code}-{i}"),
                        };
                        a["code"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": concept}]});
                        if i % 3 == 1 && r < 2 {
                            a["meta"] =
                                json!({"lastUpdated": format!("2024-0{}-01T00:00:00Z", r + 1)});
                            a["note"] = json!([{"text": format!("version of {code}")}]);
                        }
                        a
                    })
                    .collect();
                answered(
                    code,
                    vec![patient(&local, "2024-01-01T00:00:00Z", "Smith")],
                    items,
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        crate::parallel::worth_splitting(1080)
            || std::thread::available_parallelism().map_or(1, |n| n.get()) == 1
    );
    let in_place = crate::parallel::serially(|| merge(&allergy_query(), answers(), ctx()));
    let spread = merge(&allergy_query(), answers(), ctx());
    assert_eq!(spread.bundle, in_place.bundle);
    assert_eq!(
        (spread.total, spread.deduplicated),
        (in_place.total, in_place.deduplicated)
    );
    // 120 items told by all three (two folded each), 120 by two in two versions (one folded).
    assert_eq!(spread.deduplicated, 120 * 2 + 120);
    assert_eq!(spread.total, 1080 - spread.deduplicated);
}

#[test]
fn the_most_recently_updated_copy_is_shown_whatever_order_copies_come_in() {
    // One item under one identifier, held by three regions: two copies of one content
    // (January and March) and another version (February). March is shown, February named as
    // the other version, whichever region holds which copy and however often they answer.
    let copy = |id: &str, updated: &str, text: &str| {
        let mut a = allergy(id, "p", "2020-01-01");
        a["meta"] = json!({"lastUpdated": updated});
        a["code"] = json!({"text": text});
        a["identifier"] = json!([{"system": "urn:gp:item", "value": "A-1"}]);
        a
    };
    let jan = copy("jan", "2022-01-01T00:00:00Z", "Penicillin");
    let mar = copy("mar", "2022-03-01T00:00:00Z", "Penicillin");
    let feb = copy("feb", "2022-02-01T00:00:00Z", "Penicillin V");
    let shown = |items: Vec<Value>| {
        // The n-th copy is held by the n-th region (regions are merged in code order).
        let results = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                answered(
                    &format!("r{i}"),
                    vec![patient("p", "2023-01-01T00:00:00Z", "Smith")],
                    vec![item],
                )
            })
            .collect();
        let b = merge(&allergy_query(), results, ctx()).bundle;
        let m = matches(&b);
        assert_eq!(m.len(), 1, "one item");
        let r = &m[0]["resource"];
        (r["id"].clone(), r["meta"]["extension"].clone())
    };
    let expected = shown(vec![jan.clone(), mar.clone(), feb.clone()]);
    assert!(
        expected.0.as_str().unwrap().ends_with(".mar"),
        "{}",
        expected.0
    );
    let other = expected.1.to_string();
    assert!(other.contains("2022-02-01"), "{other}");
    for order in [
        vec![feb.clone(), jan.clone(), mar.clone()],
        vec![mar.clone(), feb.clone(), jan.clone()],
        vec![
            jan.clone(),
            mar.clone(),
            feb.clone(),
            jan.clone(),
            mar.clone(),
            feb.clone(),
        ],
    ] {
        let (id, extension) = shown(order);
        assert!(id.as_str().unwrap().ends_with(".mar"), "{id}");
        assert!(extension.to_string().contains("2022-02-01"), "{extension}");
    }
}

#[test]
fn records_one_region_holds_twice_stay_two_and_another_regions_copy_folds_into_one() {
    // A repeated measurement stored twice by one region (two ids, the same content), and the
    // same content held once by a second region.
    let obs = |id: &str| {
        let local = if id.starts_with('w') {
            "Patient/q"
        } else {
            "Patient/p"
        };
        json!({"resourceType": "AllergyIntolerance", "id": id, "patient": {"reference": local},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "764146007"}]},
               "recordedDate": "2020-01-01"})
    };
    let one_region = merge(
        &allergy_query(),
        vec![answered(
            "dorset",
            vec![patient("p", "2023-01-01T00:00:00Z", "Smith")],
            vec![obs("a1"), obs("a2")],
        )],
        ctx(),
    );
    assert_eq!(one_region.total, 2, "the region knows them as two");
    assert_eq!(one_region.deduplicated, 0);
    // Dorset's two records beside wessex's `ids`.
    let with_wessex = |ids: &[&str]| {
        merge(
            &allergy_query(),
            vec![
                answered(
                    "dorset",
                    vec![patient("p", "2023-01-01T00:00:00Z", "Smith")],
                    vec![obs("a1"), obs("a2")],
                ),
                answered(
                    "wessex",
                    vec![patient("q", "2023-01-01T00:00:00Z", "Smith")],
                    ids.iter().map(|id| obs(id)).collect(),
                ),
            ],
            ctx(),
        )
    };
    let two_regions = with_wessex(&["w1"]);
    assert_eq!(
        two_regions.total, 2,
        "dorset's two records, one of them also wessex's"
    );
    assert_eq!(two_regions.deduplicated, 1);
    let tags: Vec<Vec<String>> = matches(&two_regions.bundle)
        .iter()
        .map(|e| region_tags_of(&e["resource"]))
        .collect();
    assert!(
        tags.contains(&vec!["dorset".to_owned(), "wessex".to_owned()]),
        "{tags:?}"
    );
    assert!(tags.contains(&vec!["dorset".to_owned()]), "{tags:?}");
    // The same, when the second region holds both copies too: each of its records folds into
    // one of dorset's.
    let both_twice = with_wessex(&["w1", "w2"]);
    assert_eq!((both_twice.total, both_twice.deduplicated), (2, 2));
}

#[test]
fn a_cut_region_is_named_with_its_types_and_what_was_left_out() {
    use crate::record::pages::{Cut, CutReason};
    let mut result = answered(
        "dorset",
        vec![patient("p", "2023-01-01T00:00:00Z", "Smith")],
        vec![allergy("a1", "p", "2020-01-01")],
    );
    if let Ok(a) = &mut result.outcome {
        a.cuts.push(Cut::new(
            CutReason::ItemLimit,
            "AllergyIntolerance",
            Some(41),
            "record.max_items is 1".into(),
        ));
    }
    let merged = merge(&allergy_query(), vec![result], ctx());
    assert_eq!(merged.total, 1, "total counts what is shown");
    let issue = merged
        .issues
        .iter()
        .find(|i| i.code == "incomplete")
        .expect("the cut is named");
    assert!(
        issue.diagnostics.contains("Region dorset"),
        "{}",
        issue.diagnostics
    );
    assert!(
        issue
            .diagnostics
            .contains("41 item(s) of type AllergyIntolerance"),
        "{}",
        issue.diagnostics
    );
    assert_eq!(issue.details[0].1, "dorset");
    assert_eq!(issue.details[1].1, "item-limit");
}

#[test]
fn everything_includes_what_items_reference_once_across_regions() {
    let query = crate::query::parse_everything(NHS, &[], false)
        .unwrap()
        .query;
    let org = |id: &str, name: &str| {
        json!({"resourceType": "Organization", "id": id, "name": name,
               "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "J82001"}]})
    };
    let encounter = |id: &str, p: &str, org: &str| {
        json!({"resourceType": "Encounter", "id": id, "status": "finished", "subject": {"reference": format!("Patient/{p}")},
               "class": {"code": "AMB"}, "period": {"start": format!("2024-0{}-01", id.len())},
               "serviceProvider": {"reference": format!("Organization/{org}")},
               "participant": [{"individual": {"reference": "Practitioner/pr1"}}]})
    };
    let merged = merge(
        &query,
        vec![
            RegionResult {
                outcome: Ok(RecordAnswer {
                    patients: vec![patient("d1", "2023-01-01T00:00:00Z", "Smith")],
                    items: crate::fhir::item::items_of([encounter("e1", "d1", "o1")]),
                    included: crate::fhir::item::items_of([
                        org("o1", "Border Surgery"),
                        // Nothing of dorset's references these: not shown.
                        org("o-unused", "Elsewhere"),
                        patient("someone-else", "2023-01-01T00:00:00Z", "Jones"),
                    ]),
                    ..RecordAnswer::default()
                }),
                ..answered("dorset", vec![], vec![])
            },
            RegionResult {
                outcome: Ok(RecordAnswer {
                    patients: vec![patient("h1", "2023-01-01T00:00:00Z", "Smith")],
                    items: crate::fhir::item::items_of([encounter("e22", "h1", "org-9")]),
                    // The same practice (one ODS code) under hampshire's own id.
                    included: crate::fhir::item::items_of([org("org-9", "Border Surgery (Hants)")]),
                    ..RecordAnswer::default()
                }),
                ..answered("hampshire", vec![], vec![])
            },
        ],
        ctx(),
    );
    let includes: Vec<Value> = entries(&merged.bundle)
        .into_iter()
        .filter(|e| {
            e["search"]["mode"] == "include" && e["resource"]["resourceType"] == "Organization"
        })
        .collect();
    assert_eq!(
        includes.len(),
        1,
        "one practice, however many regions hold it"
    );
    let practice = &includes[0];
    assert_eq!(
        region_tags_of(&practice["resource"]),
        vec!["dorset", "hampshire"]
    );
    assert_eq!(
        practice["fullUrl"],
        "https://gw.example/fhir/Organization/dorset.o1"
    );
    // Both regions' encounters point at the one entry; the practitioner, not included, at
    // this gateway under the region's id.
    for e in matches(&merged.bundle)
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Encounter")
    {
        assert_eq!(
            e["resource"]["serviceProvider"]["reference"],
            practice["fullUrl"]
        );
        let who = e["resource"]["participant"][0]["individual"]["reference"]
            .as_str()
            .unwrap();
        assert!(
            who == "https://gw.example/fhir/Practitioner/dorset.pr1"
                || who == "https://gw.example/fhir/Practitioner/hampshire.pr1",
            "{who}"
        );
    }
    assert_eq!(
        merged.discarded, 2,
        "the unreferenced organisation and the other Patient"
    );
    assert_eq!(merged.total, 3, "includes are not counted in total");
}

fn region_tags_of(resource: &Value) -> Vec<String> {
    resource["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap().to_owned())
        .collect()
}

/// A key digested from its parts is the digest of the parts joined: identities stay what
/// they were when keys were digested from one formatted string.
#[test]
fn keys_of_parts_are_digests_of_the_joined_text() {
    use sha2::Digest;
    let joined = "id:Observation:urn:lab|L-1";
    let want: [u8; 32] = sha2::Sha256::digest(joined.as_bytes()).into();
    assert_eq!(identifier_key("Observation", "urn:lab", "L-1"), want);
    assert_ne!(identifier_key("Observation", "urn:lab", "L-2"), want);
}

#[test]
fn a_views_entries_hold_their_resources_unchanged_text_by_reference_not_as_copies() {
    // An allergy with a long note the gateway never changes: its entry takes it as a run of
    // the region's answer, so a kept view holds the few bytes the gateway wrote, not a second
    // copy of the record.
    let note = "n".repeat(4000);
    let mut item = allergy("a1", "p1", "2020-01-01");
    item["note"] = json!([{"text": note}]);
    let results = vec![answered(
        "dorset",
        vec![patient("p1", "2020-01-01T00:00:00Z", "Smith")],
        vec![item],
    )];
    let view = merge_view(
        &allergy_query(),
        results,
        ViewContext {
            gateway_base: "https://gw.example/fhir",
            issues: vec![],
            on_mismatch: MismatchPolicy::Warn,
        },
    );
    let entry = view
        .matches
        .iter()
        .find(|w| w.full_url.ends_with("/AllergyIntolerance/dorset.a1"))
        .expect("the allergy's entry");
    let written: Value = serde_json::from_str(&entry.json.as_text()).unwrap();
    assert_eq!(written["resource"]["note"][0]["text"], note.as_str());
    assert_eq!(
        written["resource"]["patient"]["reference"],
        format!("https://gw.example/fhir/Patient/{NHS}")
    );
    assert!(
        entry.json.held() < 1000,
        "the entry holds {} of its {} bytes itself",
        entry.json.held(),
        entry.json.len()
    );
}

/// A region's Provenance, written straight out, is the text serde_json writes of the same
/// elements (names and an answer's age included, escapes and all).
#[test]
fn provenance_is_written_as_serde_json_would_write_it() {
    for stale in [None, Some(3_700)] {
        let c = Contribution {
            region: RegionInfo {
                code: "dorset".into(),
                name: "Dorset \"care\" record \u{e9}".into(),
                base_url: "https://dorset.example/fhir".into(),
            },
            targets: vec![
                Arc::from("https://g/fhir/Observation/a"),
                Arc::from("urn:x\\y"),
            ],
            stale_seconds: stale,
            elapsed_ms: 17,
        };
        let envelope = Envelope {
            bundle_id: "req-1",
            now: "2026-12-04T10:00:00Z",
            self_link: "https://g/fhir/Patient/9000000009/$everything",
        };
        let text = match stale {
            Some(age) => format!(
                "could not answer; its answer of {} ago is shown",
                crate::fhir::describe_age(age)
            ),
            None => "answered the federated query in 17 ms".to_owned(),
        };
        let resource = json!({
            "resourceType": "Provenance",
            "id": "dorset-req-1",
            "target": [{"reference": "https://g/fhir/Observation/a"}, {"reference": "urn:x\\y"}],
            "recorded": "2026-12-04T10:00:00Z",
            "activity": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE", "display": "create"}],
                "text": text,
            },
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian", "display": "Custodian"}]},
                "who": {"identifier": {"system": REGION_TAG_SYSTEM, "value": "dorset"}, "display": "Dorset \"care\" record \u{e9}"},
            }],
        });
        let entry = provenance(&c, 17, &envelope);
        let written = entry.to_value();
        assert_eq!(written["resource"], resource);
        assert!(
            entry
                .json
                .contains(&serde_json::to_string(&resource).unwrap()),
            "{}",
            entry.json
        );
    }
}

/// The other-version extension written as text is what serde_json writes of its tree, with
/// and without a time, for codes and times that need escaping.
#[test]
fn other_version_text_is_its_tree_written() {
    for code in ["wessex", "a\"b", "é\\\n"] {
        let region = RegionInfo {
            code: code.into(),
            name: "N".into(),
            base_url: "https://x/fhir".into(),
        };
        for updated in [None, Some("2024-01-01T00:00:00Z"), Some("q\"\u{1}")] {
            let text = other_version(&region, updated);
            assert_eq!(
                text.get(),
                other_version_tree(&region, updated).to_string(),
                "{code:?} {updated:?}"
            );
        }
    }
}
