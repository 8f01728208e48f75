//! Fan-out across real gateways and misbehaving peers: whatever happens to a neighbour, the
//! clinician gets the healthy regions' records in time and is told which region is missing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use http::StatusCode;
use serde_json::json;

const NHS_PARAM: &str = "patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C";

#[tokio::test]
async fn a_patient_seen_in_three_regions_comes_back_as_one_bundle() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let token = fed.token("R8000");
    let nhs = fed.everywhere();
    let r = fed
        .get(0, &format!("/Patient/{nhs}/$everything"), Some(&token))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let b = &r.body;
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    assert!(
        outcome_issues(b).is_empty(),
        "no region failed: {:?}",
        outcome_issues(b)
    );
    let matches = entries(b, "match");
    assert_eq!(b["total"].as_u64().unwrap() as usize, matches.len());

    // One Patient, first, known to all three regions, with the NHS number as its id.
    let patients: Vec<_> = matches
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .collect();
    assert_eq!(patients.len(), 1);
    assert_eq!(matches[0]["resource"]["resourceType"], "Patient");
    assert_eq!(matches[0]["resource"]["id"], nhs.as_str());
    assert_eq!(
        region_tags(&matches[0]["resource"]),
        vec!["dorset", "hampshire", "wiltshire"]
    );

    // Every region contributed items; every item is tagged and points at the merged Patient.
    let mut contributing = BTreeSet::new();
    for e in &matches[1..] {
        let tags = region_tags(&e["resource"]);
        assert!(!tags.is_empty());
        contributing.extend(tags.iter().cloned());
        // Addressed at this gateway, under an id naming the region whose copy is shown.
        let url = e["fullUrl"].as_str().unwrap();
        assert!(url.starts_with(&format!("{}/", fed.base(0))), "{url}");
        let id = e["resource"]["id"].as_str().unwrap();
        assert!(url.ends_with(&format!("/{id}")), "{url}");
        assert!(
            tags.iter().any(|t| id.starts_with(&format!("{t}."))),
            "{id}"
        );
    }
    assert_eq!(
        contributing,
        BTreeSet::from([
            "dorset".to_string(),
            "hampshire".to_string(),
            "wiltshire".to_string()
        ])
    );

    // What the regions hold for this patient, counted independently from the generated records.
    let expected: usize = fed
        .data
        .records
        .values()
        .map(|rs| {
            let local: BTreeSet<String> = rs
                .iter()
                .filter(|r| {
                    r["resourceType"] == "Patient" && gateway::record::has_nhs_number(r, &nhs)
                })
                .map(|r| format!("Patient/{}", r["id"].as_str().unwrap()))
                .collect();
            rs.iter()
                .filter(|r| {
                    r["resourceType"] != "Patient"
                        && (local.contains(r["subject"]["reference"].as_str().unwrap_or(""))
                            || local.contains(r["patient"]["reference"].as_str().unwrap_or("")))
                })
                .count()
        })
        .sum();
    // The GP allergies are the same in all three regions: each appears once, tagged thrice.
    let allergies: Vec<_> = matches
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "AllergyIntolerance")
        .collect();
    assert_eq!(
        allergies.len(),
        2,
        "the showcase patient has two GP allergies"
    );
    for a in &allergies {
        assert_eq!(region_tags(&a["resource"]).len(), 3);
    }
    assert_eq!(
        matches.len() - 1,
        expected - 2 * 2,
        "everything, less the four duplicate allergy copies"
    );

    // Newest first.
    let dates: Vec<String> = matches[1..]
        .iter()
        .filter_map(|e| {
            let r = &e["resource"];
            [
                "recordedDate",
                "effectiveDateTime",
                "authoredOn",
                "occurrenceDateTime",
                "performedDateTime",
                "date",
                "onsetDateTime",
            ]
            .iter()
            .find_map(|k| r[k].as_str())
            .or_else(|| r["period"]["start"].as_str())
            .map(|d| d[..10].to_owned())
        })
        .collect();
    let mut sorted = dates.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(dates, sorted);
}

#[tokio::test]
async fn type_searches_filter_by_date_and_category_across_regions() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let t = fed.token("R8000");
    let nhs = fed.everywhere();
    let all = fed
        .get(1, &format!("/Observation?{NHS_PARAM}{nhs}"), Some(&t))
        .await
        .body;
    let vitals = fed
        .get(
            1,
            &format!("/Observation?{NHS_PARAM}{nhs}&category=vital-signs"),
            Some(&t),
        )
        .await
        .body;
    let recent = fed
        .get(
            1,
            &format!("/Observation?{NHS_PARAM}{nhs}&date=ge2021-01-01"),
            Some(&t),
        )
        .await
        .body;
    let count = |b: &serde_json::Value| entries(b, "match").len();
    assert!(count(&all) > 0);
    assert!(
        count(&vitals) < count(&all)
            || entries(&all, "match")
                .iter()
                .all(|e| e["resource"]["category"][0]["coding"][0]["code"] == "vital-signs")
    );
    for e in entries(&vitals, "match") {
        assert_eq!(
            e["resource"]["category"][0]["coding"][0]["code"],
            "vital-signs"
        );
    }
    for e in entries(&recent, "match") {
        assert!(e["resource"]["effectiveDateTime"].as_str().unwrap() >= "2021-01-01");
    }
    let paged = fed
        .get(
            1,
            &format!("/Observation?{NHS_PARAM}{nhs}&_count=1"),
            Some(&t),
        )
        .await
        .body;
    assert_eq!(entries(&paged, "match").len(), 1);
    assert_eq!(paged["total"], all["total"]);
}

#[tokio::test]
async fn a_peer_that_is_down_is_named_and_the_others_still_answer() {
    let dead = dead_address().await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .extra_peer(ExtraPeer::new("kent", dead, 2000))
        .start()
        .await;
    let r = fed
        .get(
            0,
            &format!("/Patient/{}/$everything", fed.everywhere()),
            Some(&fed.token("R8000")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let issues = outcome_issues(&r.body);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].0, "transient");
    assert_eq!(issues[0].1, "kent");
    assert!(issues[0].2.contains("unreachable"));
    let tags: BTreeSet<String> = entries(&r.body, "match")
        .iter()
        .flat_map(|e| region_tags(&e["resource"]))
        .collect();
    assert_eq!(
        tags,
        BTreeSet::from(["dorset".to_string(), "hampshire".to_string()])
    );
}

/// A two-region federation whose first region also peers with a fake 'kent' (same CA).
async fn start_with_fake(behaviour: Behaviour, timeout_ms: u64) -> (TestFederation, FakePeer) {
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let fake = FakePeer::start(&ca, "kent", behaviour).await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .with_ca(ca)
        .extra_peer(fake.as_peer("kent", timeout_ms))
        .timeouts(2500, 2000)
        .start()
        .await;
    (fed, fake)
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out_and_the_others_are_returned_in_time() {
    let (fed, _fake) = start_with_fake(Behaviour::Hang, 400).await;
    let started = Instant::now();
    let r = fed.search_as_clinician("AllergyIntolerance").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        took < Duration::from_secs(2),
        "answered in {took:?}, not waiting for the hung peer"
    );
    let issues = outcome_issues(&r.body);
    assert_eq!(issues.len(), 1);
    assert_eq!(
        (issues[0].0.as_str(), issues[0].1.as_str()),
        ("timeout", "kent")
    );
    let tags: BTreeSet<String> = entries(&r.body, "match")
        .iter()
        .flat_map(|e| region_tags(&e["resource"]))
        .collect();
    assert_eq!(
        tags,
        BTreeSet::from(["dorset".to_string(), "hampshire".to_string()])
    );
    // And the next query still works.
    let again = fed.search_as_clinician("AllergyIntolerance").await;
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test]
async fn peers_that_answer_nonsense_are_reported_and_ignored() {
    let cases: Vec<(Behaviour, &str)> = vec![
        (
            Behaviour::Answer(
                500,
                "application/fhir+json",
                json!({"resourceType": "OperationOutcome", "issue": []}).to_string(),
            ),
            "exception",
        ),
        (
            Behaviour::Answer(200, "application/fhir+json", "{not json".into()),
            "invalid",
        ),
        (
            Behaviour::Answer(200, "text/html", "<html>maintenance</html>".into()),
            "invalid",
        ),
        (
            Behaviour::Answer(
                200,
                "application/fhir+json",
                json!({"resourceType": "Patient"}).to_string(),
            ),
            "invalid",
        ),
        (
            Behaviour::Answer(
                403,
                "application/fhir+json",
                json!({"resourceType": "OperationOutcome"}).to_string(),
            ),
            "forbidden",
        ),
    ];
    for (behaviour, code) in cases {
        let (fed, _fake) = start_with_fake(behaviour, 2000).await;
        let r = fed.search_as_clinician("Condition").await;
        assert_eq!(r.status, StatusCode::OK);
        let issues = outcome_issues(&r.body);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(
            (issues[0].0.as_str(), issues[0].1.as_str()),
            (code, "kent"),
            "{issues:?}"
        );
    }
}

#[tokio::test]
async fn a_peer_slipping_in_another_patients_records_is_screened() {
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Patient", "id": "k1", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/k1"}}, "search": {"mode": "match"}},
    ]});
    let (fed, _fake) = start_with_fake(
        Behaviour::Answer(200, "application/fhir+json", bundle.to_string()),
        2000,
    )
    .await;
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        entries(&r.body, "match")
            .iter()
            .all(|e| !region_tags(&e["resource"]).contains(&"kent".to_string()))
    );
    let issues = outcome_issues(&r.body);
    assert!(
        issues
            .iter()
            .any(|(code, region, text)| code == "processing"
                && region == "kent"
                && text.contains("discarded")),
        "{issues:?}"
    );
}

#[tokio::test]
async fn a_peer_presenting_another_regions_certificate_is_not_trusted() {
    // The fake serves a valid federation certificate for 'surrey' where 'kent' is expected.
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let fake = FakePeer::start(
        &ca,
        "surrey",
        Behaviour::Answer(
            200,
            "application/fhir+json",
            json!({"resourceType": "Bundle", "type": "searchset"}).to_string(),
        ),
    )
    .await;
    let fed = Builder::new(&["dorset"])
        .with_ca(ca)
        .extra_peer(fake.as_peer("kent", 2000))
        .start()
        .await;
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::OK);
    let issues = outcome_issues(&r.body);
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].1, "kent");
    assert!(issues[0].2.contains("expected identity"), "{issues:?}");
}

#[tokio::test]
async fn when_no_region_answers_the_status_is_502_and_when_all_time_out_504() {
    // The region's own record server is down, and so is its only peer: 502.
    let dead_record = dead_address().await;
    let dead_peer = dead_address().await;
    let fed = Builder::new(&["dorset"])
        .local_record(
            &format!("http://127.0.0.1:{}/fhir", dead_record.port()),
            1000,
        )
        .extra_peer(ExtraPeer::new("kent", dead_peer, 1000))
        .start()
        .await;
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let regions: BTreeSet<&str> = r.body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["details"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(regions, BTreeSet::from(["dorset", "kent"]));

    // Both hang: 504.
    let (silent_record, _t1) = silent_server().await;
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let hang = FakePeer::start(&ca, "kent", Behaviour::Hang).await;
    let fed = Builder::new(&["dorset"])
        .with_ca(ca)
        .local_record(
            &format!("http://127.0.0.1:{}/fhir", silent_record.port()),
            300,
        )
        .extra_peer(hang.as_peer("kent", 300))
        .start()
        .await;
    let r = fed
        .get(
            0,
            &format!("/Patient/{}", fed.everywhere()),
            Some(&fed.token("R8000")),
        )
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.body["issue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["code"] == "timeout")
    );
}

#[tokio::test]
async fn a_patient_no_region_holds_is_an_empty_bundle_or_404() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let t = fed.token("R8000");
    let r = fed
        .get(0, &format!("/Condition?{NHS_PARAM}9434765919"), Some(&t))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["total"], 0);
    let r = fed.get(0, "/Patient/9434765919", Some(&t)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = fed
        .get(0, &format!("/Patient/{}", fed.everywhere()), Some(&t))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["resourceType"], "Patient");
    assert_eq!(r.body["id"], fed.everywhere().as_str());
}

#[tokio::test]
async fn the_deliberately_mismatched_patient_carries_a_wrong_patient_warning() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let r = fed
        .get(
            0,
            &format!("/Patient/{}/$everything", fed.data.mismatched),
            Some(&fed.token("R8000")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let warnings: Vec<_> = outcome_issues(&r.body)
        .into_iter()
        .filter(|(code, _, text)| code == "business-rule" && text.contains("wrong-patient"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", outcome_issues(&r.body));
    assert!(warnings[0].2.contains("date of birth"), "{warnings:?}");
    // The patient seen everywhere agrees everywhere: no such warning.
    let r = fed
        .get(
            0,
            &format!("/Patient/{}/$everything", fed.everywhere()),
            Some(&fed.token("R8000")),
        )
        .await;
    assert!(
        outcome_issues(&r.body)
            .iter()
            .all(|(code, _, _)| code != "business-rule")
    );
}

#[tokio::test]
async fn count_pages_the_merged_result_with_stable_next_links_for_the_same_user_only() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let token = fed.token("R8000");
    let first = fed
        .get(
            0,
            &format!("/Patient/{}/$everything?_count=5", fed.everywhere()),
            Some(&token),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let total = first.body["total"].as_u64().unwrap() as usize;
    assert!(total > 10, "{total}");
    let next_of = |b: &serde_json::Value| {
        b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned())
    };
    let mut seen: Vec<String> = entries(&first.body, "match")
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 5);
    let mut next = next_of(&first.body);
    let first_next = next.clone().unwrap();
    while let Some(url) = next {
        let page = get_json(&fed.client(), &url, Some(&token)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.body["total"].as_u64().unwrap() as usize, total);
        seen.extend(
            entries(&page.body, "match")
                .iter()
                .map(|e| e["fullUrl"].as_str().unwrap().to_owned()),
        );
        next = next_of(&page.body);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), total, "every entry once");
    assert_eq!(unique.len(), total);
    // The same link again gives the same page (stable), but not to another user.
    let again = get_json(&fed.client(), &first_next, Some(&token)).await;
    assert_eq!(again.status, StatusCode::OK);
    let other = fed.token_with(|c| c.sub = "someone-else".into());
    let r = get_json(&fed.client(), &first_next, Some(&other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let bogus = first_next.replace("cursor=", "cursor=0");
    assert_eq!(
        get_json(&fed.client(), &bogus, Some(&token)).await.status,
        StatusCode::NOT_FOUND
    );
}
