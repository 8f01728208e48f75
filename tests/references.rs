//! References a client can follow: `$everything` includes what a realistic record's items
//! reference, each shown once across regions, and every reference in every answer resolves
//! through the gateway (`GET /fhir/{Type}/{region}.{id}`), under policy, with crafted ids
//! refused alike.

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::Value;

use crate::common::*;

/// Dorset and Hampshire, with a few small patients and one realistic one in both.
async fn two_regions_and_a_realistic_patient() -> TestFederation {
    Builder::new(&["dorset", "hampshire"])
        .patients(4)
        .realistic(1, 60)
        .start()
        .await
}

#[tokio::test]
async fn a_realistic_record_includes_what_it_references_and_every_reference_is_followable() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .patients(6)
        .realistic(1, 150)
        .start()
        .await;
    let token = fed.token("R8000");
    let nhs = fed.realistic[0].nhs.clone();
    let r = fed
        .get(0, &format!("/Patient/{nhs}/$everything"), Some(&token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let includes = entries(&r.body, "include");
    let included_types: BTreeSet<&str> = includes
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    for t in [
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Medication",
    ] {
        assert!(
            included_types.contains(t),
            "{t} not included: {included_types:?}"
        );
    }
    // The GP practice every region knows by one ODS code is included once, with every region.
    let practices: Vec<&Value> = includes
        .iter()
        .map(|e| &e["resource"])
        .filter(|o| o["resourceType"] == "Organization" && o["identifier"][0]["value"] == "J82001")
        .collect();
    assert_eq!(practices.len(), 1);
    assert_eq!(
        region_tags(practices[0]),
        vec!["dorset", "hampshire", "wiltshire"]
    );
    // No reference is left to a region's own address, and every one outside the Bundle answers
    // (here none is outside: the includes hold what the items and the Patient reference).
    assert!(references_in(&r.body).len() > 500);
    follow_references(&fed, 0, &r.body, &token).await;
    // A type search carries no includes: its references resolve through the gateway.
    let obs = fed
        .get(
            0,
            &format!("/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}"),
            Some(&token),
        )
        .await;
    assert_eq!(obs.status, StatusCode::OK);
    assert!(
        entries(&obs.body, "include")
            .iter()
            .all(|e| e["resource"]["resourceType"] == "Provenance"),
        "a type search includes only the regions' Provenance"
    );
    let followed = follow_references(&fed, 0, &obs.body, &token).await;
    assert!(
        followed > 50,
        "encounters and practitioners of every region: {followed}"
    );
}

#[tokio::test]
async fn crafted_ids_unknown_regions_and_withheld_resources_answer_alike() {
    let fed = two_regions_and_a_realistic_patient().await;
    let clinician = fed.token("R8000");
    let nhs = fed.realistic[0].nhs.clone();
    // A letter held by hampshire, read by id through dorset.
    let r = fed
        .get(
            0,
            &format!(
                "/DocumentReference?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}"
            ),
            Some(&clinician),
        )
        .await;
    let letter_url = entries(&r.body, "match")
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .find(|u| u.contains("/DocumentReference/hampshire."))
        .expect("hampshire holds a letter")
        .to_owned();
    let audited_before = (
        fed.audit_events(0, &format!("patient={nhs}"), 1)
            .await
            .len(),
        fed.audit_events(1, &format!("patient={nhs}"), 1)
            .await
            .len(),
    );
    let letter = get_json(&fed.client(), &letter_url, Some(&clinician)).await;
    assert_eq!(letter.status, StatusCode::OK);
    assert_eq!(region_tags(&letter.body), vec!["hampshire"]);
    assert_eq!(
        letter.body["subject"]["reference"],
        format!("{}/Patient/{nhs}", fed.base(0)),
        "the letter's patient is the merged Patient"
    );
    // A student may not read letters: the same 404 as a letter that does not exist.
    let student = fed.token("R8004");
    let withheld = get_json(&fed.client(), &letter_url, Some(&student)).await;
    let missing = fed
        .get(
            0,
            "/DocumentReference/hampshire.no-such-letter",
            Some(&student),
        )
        .await;
    assert_eq!(withheld.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        withheld.body["issue"], missing.body["issue"],
        "existence does not leak"
    );
    // Ids that name no region this gateway federates with, or are not ids at all.
    for crafted in [
        "/Observation/kent.o1",
        "/Observation/hampshire",
        "/Observation/hampshire..",
        "/Observation/.o1",
        "/Observation/Hampshire.o1",
        "/Observation/hampshire.o1%2F..%2F..%2Fmetadata",
        "/Observation/hampshire.%2E%2E",
    ] {
        let r = fed.get(0, crafted, Some(&clinician)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{crafted}: {}", r.body);
        assert_eq!(r.body["resourceType"], "OperationOutcome", "{crafted}");
    }
    // A type that is not served by id.
    let r = fed.get(0, "/Flag/dorset.f1", Some(&clinician)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["issue"][0]["code"], "not-supported");
    // Without a token, nothing.
    let r = fed
        .get(0, &letter_url.replace(&fed.base(0), ""), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Both sides recorded the reads of the letter (the clinician's and the student's): here
    // as this region's users', there as the federation requests it answered.
    let here = fed
        .audit_events(0, &format!("patient={nhs}"), audited_before.0 + 2)
        .await;
    assert!(
        here.len() >= audited_before.0 + 2,
        "{} then {}",
        audited_before.0,
        here.len()
    );
    let there = fed
        .audit_events(1, &format!("patient={nhs}"), audited_before.1 + 2)
        .await;
    assert!(
        there.len() >= audited_before.1 + 2,
        "{} then {}",
        audited_before.1,
        there.len()
    );
}

#[tokio::test]
async fn a_count_alone_is_the_total_with_no_entries_and_no_next_link() {
    let fed = two_regions_and_a_realistic_patient().await;
    let token = fed.token("R8000");
    let nhs = fed.realistic[0].nhs.clone();
    let whole = fed
        .get(0, &format!("/Patient/{nhs}/$everything"), Some(&token))
        .await;
    let total = whole.body["total"].as_u64().unwrap();
    assert!(total > 100);
    for query in ["_count=0", "_summary=count"] {
        let r = fed
            .get(
                0,
                &format!("/Patient/{nhs}/$everything?{query}"),
                Some(&token),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
        assert_eq!(r.body["total"], total, "{query}");
        assert!(entries(&r.body, "match").is_empty(), "{query}");
        assert!(entries(&r.body, "include").is_empty(), "{query}");
        let links: Vec<&str> = r.body["link"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["relation"].as_str())
            .collect();
        assert_eq!(links, vec!["self"], "{query}");
    }
}

#[tokio::test]
async fn every_page_of_a_large_record_can_be_followed_and_carries_only_its_includes() {
    let fed = Builder::new(&["dorset", "hampshire"])
        .patients(4)
        .realistic(1, 200)
        // A page's references to items on other pages are hundreds of reads by one user.
        .first_region_toml("[limits]\nper_user_per_minute = 1000000\n")
        .start()
        .await;
    let token = fed.token("R8000");
    let nhs = fed.realistic[0].nhs.clone();
    let whole = fed
        .get(0, &format!("/Patient/{nhs}/$everything"), Some(&token))
        .await;
    let all_includes = entries(&whole.body, "include").len();
    let first = fed
        .get(
            0,
            &format!("/Patient/{nhs}/$everything?_count=40"),
            Some(&token),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(entries(&first.body, "match").len(), 40);
    assert!(entries(&first.body, "include").len() < all_includes);
    follow_references(&fed, 0, &first.body, &token).await;
    let next = link(&first.body, "next").expect("a next page");
    let second = get_json(&fed.client(), &next, Some(&token)).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(entries(&second.body, "match").len(), 40);
    follow_references(&fed, 0, &second.body, &token).await;
}
