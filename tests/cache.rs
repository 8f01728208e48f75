//! The response cache across real gateways and a counting fake peer: repeat queries are
//! answered from the cache per user, break-glass goes around it, the peer's Cache-Control is
//! honoured, errors are never cached, a stale answer covers a failure with a warning, and
//! concurrent identical queries make one upstream request.

use http::StatusCode;
use serde_json::json;

use crate::common::*;

/// dorset and hampshire, with dorset also peering with a fake 'kent' that answers one
/// Condition for the patient seen everywhere.
async fn with_kent() -> (TestFederation, FakePeer, String) {
    let ca = gateway::tls::devca::DevCa::new("Test federation CA").unwrap();
    let kent = FakePeer::start(&ca, "kent", Behaviour::Hang).await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .with_ca(ca)
        .extra_peer(kent.as_peer("kent", 2000))
        .timeouts(2500, 2000)
        .start()
        .await;
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Patient", "id": "k1", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": fed.everywhere()}]}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "Condition", "id": "kent-c1", "subject": {"reference": "Patient/k1"}, "code": {"text": "Asthma"}}, "search": {"mode": "match"}},
    ]})
    .to_string();
    kent.set(Behaviour::AnswerWith(bundle.clone(), vec![]));
    (fed, kent, bundle)
}

fn has_kent_item(r: &Reply) -> bool {
    entries(&r.body, "match")
        .iter()
        .any(|e| region_tags(&e["resource"]).contains(&"kent".to_string()))
}

async fn break_glass(fed: &TestFederation) -> Reply {
    let url = format!(
        "{}/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.base(0),
        fed.everywhere()
    );
    let r = fed
        .client()
        .get(url)
        .bearer_auth(fed.token("R8000"))
        .header("x-break-glass-reason", "Unconscious, history unavailable")
        .send()
        .await
        .unwrap();
    let status = r.status();
    Reply {
        status,
        version: r.version(),
        headers: r.headers().clone(),
        body: r.json().await.unwrap(),
    }
}

#[tokio::test]
async fn repeat_queries_are_served_from_the_cache_per_user_and_break_glass_goes_around_it() {
    let (fed, kent, _) = with_kent().await;
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(has_kent_item(&r));
    assert_eq!(kent.hit_count(), 1);
    let again = fed.search_as_clinician("Condition").await;
    assert_eq!(again.body["total"], r.body["total"]);
    assert!(has_kent_item(&again));
    assert_eq!(kent.hit_count(), 1, "the repeat came from the cache");

    // Another role is another key: kent's release policy may answer a nurse otherwise.
    let path = format!(
        "/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.everywhere()
    );
    let nurse = fed.get(0, &path, Some(&fed.token("R8001"))).await;
    assert_eq!(nurse.status, StatusCode::OK);
    assert_eq!(kent.hit_count(), 2);
    let other_org = fed.token_with(|c| c.org = "RDZ".into());
    fed.get(0, &path, Some(&other_org)).await;
    assert_eq!(kent.hit_count(), 3);

    // Break-glass neither reads nor writes the cache.
    for expected in [4, 5] {
        let r = break_glass(&fed).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(kent.hit_count(), expected);
    }
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 5);
}

#[tokio::test]
async fn the_peers_cache_control_is_honoured_and_a_stale_answer_covers_a_failure() {
    let (fed, kent, bundle) = with_kent().await;
    kent.set(Behaviour::AnswerWith(
        bundle.clone(),
        vec![("cache-control", "no-store".into())],
    ));
    fed.search_as_clinician("Condition").await;
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 2, "no-store: never kept");

    kent.set(Behaviour::AnswerWith(
        bundle.clone(),
        vec![("cache-control", "private, max-age=0".into())],
    ));
    fed.search_as_clinician("Condition").await;
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 4, "max-age=0: never fresh");

    // Kent fails: its last answer is shown, with a warning saying how old it is.
    kent.set(Behaviour::Answer(
        500,
        "application/fhir+json",
        json!({"resourceType": "OperationOutcome", "issue": []}).to_string(),
    ));
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(kent.hit_count(), 5);
    assert!(has_kent_item(&r), "the stale answer is served");
    let issues = outcome_issues(&r.body);
    assert!(
        issues.iter().any(|(code, region, text)| code == "transient"
            && region == "kent"
            && text.contains("could not answer just now")),
        "{issues:?}"
    );

    // The failure was not cached: kent is asked again, and its fresh answer has no warning.
    kent.set(Behaviour::AnswerWith(bundle, vec![]));
    let r = fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 6);
    assert!(
        outcome_issues(&r.body).is_empty(),
        "{:?}",
        outcome_issues(&r.body)
    );
}

#[tokio::test]
async fn concurrent_identical_queries_make_one_upstream_request() {
    let (fed, kent, bundle) = with_kent().await;
    kent.set(Behaviour::Slow(300, bundle));
    let queries = (0..8).map(|_| fed.search_as_clinician("Condition"));
    let replies = futures::future::join_all(queries).await;
    assert!(
        replies
            .iter()
            .all(|r| r.status == StatusCode::OK && has_kent_item(r))
    );
    assert_eq!(kent.hit_count(), 1);
}

#[tokio::test]
async fn governance_staff_purge_a_patients_cached_answers_and_it_is_audited() {
    let (fed, kent, _) = with_kent().await;
    fed.search_as_clinician("Condition").await;
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 1);
    let purge = |token: String, query: String| {
        let client = fed.client();
        let url = format!(
            "https://localhost:{}/admin/cache?{query}",
            fed.regions[0].clinician.port()
        );
        async move {
            client
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let patient = format!("patient={}", fed.everywhere());
    assert_eq!(
        purge(fed.token("R8000"), patient.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        purge(fed.token("R0001"), "region=Not-A-Code".into()).await,
        StatusCode::BAD_REQUEST
    );
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 1, "a refused purge purged nothing");
    assert_eq!(purge(fed.token("R0001"), patient).await, StatusCode::OK);
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 2, "asked again after the purge");
    assert_eq!(
        purge(fed.token("R5105"), "region=kent".into()).await,
        StatusCode::OK
    );
    fed.search_as_clinician("Condition").await;
    assert_eq!(kent.hit_count(), 3);

    let purges = fed.audit_events(0, "kind=cache-purge", 4).await;
    assert_eq!(purges.len(), 4, "{purges:#?}");
    assert_eq!(
        purges.iter().filter(|e| e["outcome"] == "0").count(),
        2,
        "two purges done, two refused"
    );
}

#[tokio::test]
async fn a_repeated_view_is_kept_whole_and_changes_at_once_with_the_patients_consent() {
    let (fed, kent, _) = with_kent().await;
    let first = fed.search_as_clinician("Condition").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(has_kent_item(&first));
    let second = fed.search_as_clinician("Condition").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(kent.hit_count(), 1, "no region was asked again");

    // The same entries, byte for byte, in a Bundle that names the second request.
    assert_eq!(
        entries(&first.body, "match"),
        entries(&second.body, "match")
    );
    assert_eq!(first.body["total"], second.body["total"]);
    assert_ne!(first.body["id"], second.body["id"]);
    let bundle_id = second.body["id"].as_str().unwrap();
    let provenance = entries(&second.body, "include");
    assert_eq!(provenance.len(), entries(&first.body, "include").len());
    assert!(!provenance.is_empty());
    for p in &provenance {
        let id = p["resource"]["id"].as_str().unwrap();
        assert!(id.ends_with(bundle_id), "{id} names this request");
        assert_eq!(p["resource"]["recorded"], second.body["timestamp"]);
    }
    assert!(
        second.body["link"][0]["url"]
            .as_str()
            .unwrap()
            .contains("/Condition?")
    );

    // The second access is audited in full, and says it was shown a kept view.
    let released = |e: &serde_json::Value| audit_detail(e, "released");
    let events = fed
        .audit_events(0, &format!("patient={}", fed.everywhere()), 2)
        .await;
    let by_request = |id: &str| {
        events
            .iter()
            .find(|e| e["entity"].to_string().contains(id))
            .unwrap_or_else(|| panic!("an audit record for request {id}"))
            .clone()
    };
    let (a, b) = (
        by_request(first.body["id"].as_str().unwrap()),
        by_request(bundle_id),
    );
    assert_eq!(released(&a), released(&b));
    assert_eq!(
        released(&b).as_deref(),
        Some(first.body["total"].to_string().as_str())
    );
    assert_eq!(audit_detail(&b, "view_kept").as_deref(), Some("true"));
    assert_eq!(audit_detail(&a, "view_kept"), None);

    // The patient's directive against sharing Conditions, recorded at dorset, applies to the
    // very next request: the kept view is not shown again.
    let directive = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": fed.everywhere()}},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit", "provision": [{"type": "deny",
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}]}
    });
    let created = fed
        .client()
        .post(format!("{}/Consent", fed.base(0)))
        .bearer_auth(fed.token("R0001"))
        .header("content-type", "application/fhir+json")
        .body(directive.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let after = fed.search_as_clinician("Condition").await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!has_kent_item(&after), "{}", after.body);
    assert_eq!(entries(&after.body, "match").len(), 0);
    assert!(
        outcome_issues(&after.body)
            .iter()
            .any(|(code, region, _)| code == "suppressed" && region.is_empty()),
        "{:?}",
        outcome_issues(&after.body)
    );
}
