//! Misbehaving peers, with real TLS: the gateway answers with the healthy regions' data and an
//! OperationOutcome naming the bad one, stops asking a peer that keeps failing, and the next
//! query still works.

use http::StatusCode;

use crate::common::*;

/// dorset and hampshire; dorset also peers with a fake 'kent'.
async fn with_kent(behaviour: Behaviour, timeout_ms: u64) -> (TestFederation, FakePeer) {
    with_kent_and(behaviour, timeout_ms, "").await
}

async fn with_kent_and(
    behaviour: Behaviour,
    timeout_ms: u64,
    toml: &str,
) -> (TestFederation, FakePeer) {
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let kent = FakePeer::start(&ca, "kent", behaviour).await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .with_ca(ca)
        .extra_peer(kent.as_peer("kent", timeout_ms))
        .timeouts(2500, 2000)
        .first_region_toml(toml)
        .start()
        .await;
    (fed, kent)
}

fn kent_issue(r: &Reply) -> (String, String) {
    outcome_issues(&r.body)
        .into_iter()
        .find(|(_, region, _)| region == "kent")
        .map(|(code, _, text)| (code, text))
        .unwrap_or_else(|| panic!("no issue for kent: {}", r.body))
}

fn healthy_regions(r: &Reply) -> std::collections::BTreeSet<String> {
    entries(&r.body, "match")
        .iter()
        .flat_map(|e| region_tags(&e["resource"]))
        .collect()
}

#[tokio::test]
async fn a_peer_that_keeps_failing_is_paused_and_then_probed() {
    // No cache, so that every query needs kent; a short pause, so the test need not wait long.
    let (fed, kent) = with_kent_and(
        Behaviour::Hang,
        300,
        "[cache]\nenabled = false\n[resilience]\nbreaker_open_ms = 600\n",
    )
    .await;
    // Five timeouts in a row open kent's circuit (the default `breaker_failures`).
    for _ in 0..5 {
        let r = fed.search_as_clinician("Condition").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(kent_issue(&r).0, "timeout");
    }
    assert_eq!(kent.hit_count(), 5);
    // Now kent is not asked at all; the clinician is told why, and still gets the rest.
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::OK);
    let (_, text) = kent_issue(&r);
    assert!(text.contains("failed repeatedly"), "{text}");
    assert_eq!(kent.hit_count(), 5, "an open circuit sends nothing");
    assert!(healthy_regions(&r).contains("hampshire"));

    // After the pause one probe goes through; kent still hangs, so the circuit opens again.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(kent_issue(&r).0, "timeout");
    assert_eq!(kent.hit_count(), 6, "one probe");
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 6, "open again");

    // Kent recovers: the next probe closes the circuit and kent is asked every time again.
    kent.set(Behaviour::Answer(
        200,
        "application/fhir+json",
        serde_json::json!({"resourceType": "Bundle", "type": "searchset"}).to_string(),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    for expected in [7, 8] {
        let r = fed.search_as_clinician("Condition").await;
        assert!(
            outcome_issues(&r.body)
                .iter()
                .all(|(_, region, _)| region != "kent"),
            "{}",
            r.body
        );
        assert_eq!(kent.hit_count(), expected);
    }
}

#[tokio::test]
async fn a_peer_with_an_expired_certificate_is_not_trusted() {
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "searchset"}).to_string();
    let kent = FakePeer::start_expired(
        &ca,
        "kent",
        Behaviour::Answer(200, "application/fhir+json", bundle),
    )
    .await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .with_ca(ca)
        .extra_peer(kent.as_peer("kent", 1500))
        .start()
        .await;
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::OK);
    let (code, text) = kent_issue(&r);
    assert_eq!(code, "transient");
    assert!(text.to_lowercase().contains("expired"), "{text}");
    assert_eq!(
        kent.hit_count(),
        0,
        "no request is sent over an untrusted connection"
    );
    assert!(healthy_regions(&r).contains("hampshire"));
}

#[tokio::test]
async fn peers_that_reset_drip_or_flood_are_named_and_the_next_query_works() {
    for (behaviour, code) in [
        (Behaviour::Reset, "transient"),
        (Behaviour::Drip, "timeout"),
        (Behaviour::Huge(200 * 1024 * 1024), "invalid"),
    ] {
        let label = format!("{behaviour:?}");
        let (fed, _kent) = with_kent(behaviour, 1500).await;
        let r = fed.search_as_clinician("Condition").await;
        assert_eq!(r.status, StatusCode::OK, "{label}");
        assert_eq!(kent_issue(&r).0, code, "{label}: {}", r.body);
        assert!(healthy_regions(&r).contains("hampshire"), "{label}");
        let again = fed.search_as_clinician("Condition").await;
        assert_eq!(
            again.status,
            StatusCode::OK,
            "{label}: the next query works"
        );
    }
}
