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

#[tokio::test]
async fn a_clinician_over_the_rate_limit_gets_429_and_others_are_unaffected() {
    let fed = Builder::new(&["dorset", "hampshire"])
        .first_region_toml("[limits]\nper_user_per_minute = 3\n")
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(
            fed.search_as_clinician("Condition").await.status,
            StatusCode::OK
        );
    }
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let other = fed.token_with(|c| c.sub = "another-clinician".into());
    let path = format!(
        "/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.everywhere()
    );
    assert_eq!(fed.get(0, &path, Some(&other)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn beyond_the_concurrency_cap_requests_are_shed_with_503_and_retry_after() {
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "searchset"}).to_string();
    let kent = FakePeer::start(&ca, "kent", Behaviour::Slow(800, bundle)).await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .with_ca(ca)
        .extra_peer(kent.as_peer("kent", 2000))
        .timeouts(2500, 2000)
        .first_region_toml("[limits]\nmax_concurrent_requests = 1\n")
        .start()
        .await;
    let slow = fed.search_as_clinician("Condition");
    let shed = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        fed.get(0, "/metadata", None).await
    };
    let (slow, shed) = futures::join!(slow, shed);
    assert_eq!(
        slow.status,
        StatusCode::OK,
        "the request in flight finishes"
    );
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.body["issue"][0]["code"], "throttled");
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(
        fed.get(0, "/metadata", None).await.status,
        StatusCode::OK,
        "capacity is back once the slow request is done"
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_without_reading_it() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let r = fed
        .client()
        .post(format!("{}/Consent", fed.base(0)))
        .bearer_auth(fed.token("R0001"))
        .header("content-type", "application/fhir+json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["issue"][0]["code"], "too-long");
}

#[tokio::test]
async fn a_revoked_peer_is_refused_and_certificates_reload_without_restart() {
    // Dorset asks hampshire with nothing cached, so every query reaches hampshire.
    let fed = Builder::new(&["dorset", "hampshire"])
        .first_region_toml("[cache]\nenabled = false\n")
        .crl_at(1)
        .start()
        .await;
    let crl_file = fed.dir.path().join("certs/hampshire-crl.pem");
    let dorset_client =
        std::fs::read_to_string(fed.dir.path().join("certs/dorset/client.pem")).unwrap();
    let hampshire_answers = || async {
        let r = fed.search_as_clinician("Condition").await;
        assert_eq!(r.status, StatusCode::OK);
        !outcome_issues(&r.body)
            .iter()
            .any(|(_, region, _)| region == "hampshire")
    };
    /// Waits (up to five seconds) for a reload to show.
    async fn until(mut check: impl AsyncFnMut() -> bool) -> bool {
        for _ in 0..50 {
            if check().await {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }
    assert!(hampshire_answers().await);

    // Hampshire's CRL now revokes dorset's client certificate: picked up without a restart.
    std::fs::write(&crl_file, fed.ca.crl(&[&dorset_client], 2).unwrap()).unwrap();
    assert!(
        until(async || !hampshire_answers().await).await,
        "the revocation took effect"
    );
    // A new connection with the revoked certificate fails in the handshake itself.
    let dorset_key =
        std::fs::read_to_string(fed.dir.path().join("certs/dorset/client.key")).unwrap();
    let fresh = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(fed.ca.cert_pem.as_bytes()).unwrap()])
        .identity(
            reqwest::Identity::from_pem(format!("{dorset_client}{dorset_key}").as_bytes()).unwrap(),
        )
        .no_proxy()
        .build()
        .unwrap();
    let err = fresh
        .get(format!("{}/metadata", fed.fed_base(1)))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let refused = fed.audit_events(1, "kind=refused-certificate", 2).await;
    assert!(
        refused
            .iter()
            .any(|e| e["outcomeDesc"].as_str().unwrap_or("").contains("revoked")),
        "{refused:#?}"
    );

    // A broken file is refused and the current CRL stays in force.
    std::fs::write(&crl_file, "not a CRL").unwrap();
    let ops = format!("http://{}/metrics", fed.regions[1].operations);
    assert!(
        until(async || {
            reqwest::get(&ops)
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("gateway_tls_reloads_total{outcome=\"refused\"}")
        })
        .await
    );
    assert!(!hampshire_answers().await, "still revoked");

    // A CRL without dorset: answered again.
    std::fs::write(&crl_file, fed.ca.crl(&[], 3).unwrap()).unwrap();
    assert!(until(hampshire_answers).await, "the new CRL took effect");
}
