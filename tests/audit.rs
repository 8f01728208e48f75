//! The audit trail across real gateways: what is recorded for each access, in the asking and
//! the answering region; who may read it; paging; and fail-closed when it cannot be written.

use base64::Engine;
use gateway::config::Config;
use http::StatusCode;
use serde_json::Value;
use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn a_query_is_recorded_by_the_asking_and_every_answering_region_under_one_request_id() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let r = fed.search_as_clinician("AllergyIntolerance").await;
    assert_eq!(r.status, StatusCode::OK);
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    let total = r.body["total"].as_u64().unwrap();
    assert!(total > 0);

    let events = fed
        .audit_events(0, &format!("request-id={request_id}"), 1)
        .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["resourceType"], "AuditEvent");
    assert_eq!(e["type"]["code"], "rest");
    assert_eq!(e["subtype"][0]["code"], "search");
    assert_eq!(e["action"], "E");
    assert_eq!(e["outcome"], "0");
    assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "test-user");
    assert_eq!(e["agent"][0]["role"][0]["coding"][0]["code"], "R8000");
    assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    assert_eq!(
        e["entity"][0]["what"]["identifier"]["value"],
        fed.everywhere()
    );
    let query = base64::engine::general_purpose::STANDARD
        .decode(e["entity"][1]["query"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(query)
            .unwrap()
            .starts_with("/fhir/AllergyIntolerance?")
    );
    let regions: Vec<(&str, &str)> = e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"]["code"] == "3")
        .map(|x| {
            (
                x["name"].as_str().unwrap(),
                x["description"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        regions,
        vec![
            ("dorset", "answered"),
            ("hampshire", "answered"),
            ("wiltshire", "answered")
        ]
    );
    assert_eq!(
        audit_detail(e, "released").unwrap(),
        total.to_string(),
        "released counts what the clinician received"
    );

    // Each neighbour recorded what it released, under the same request id.
    for region in [1, 2] {
        let answered = fed
            .audit_events(region, &format!("request-id={request_id}"), 1)
            .await;
        assert_eq!(answered.len(), 1, "region {region}: {answered:#?}");
        assert_eq!(
            audit_detail(&answered[0], "calling_region").as_deref(),
            Some("dorset")
        );
        assert_eq!(
            answered[0]["agent"][0]["who"]["identifier"]["value"], "test-user",
            "the forwarded user is recorded"
        );
    }
}

#[tokio::test]
async fn the_gateway_mints_every_request_id_and_keeps_the_clients_as_its_correlation_id() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let url = format!(
        "{}/AllergyIntolerance?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.base(0),
        fed.everywhere()
    );
    // Two users send the same X-Request-Id.
    let mut ids = Vec::new();
    for user in ["alice", "bob"] {
        let token = fed.token_with(|c| c.sub = user.into());
        let r = fed
            .client()
            .get(&url)
            .bearer_auth(token)
            .header("x-request-id", "shared-123")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, "shared-123", "the client's id is not the request's id");
        assert_eq!(r.headers()["x-client-request-id"], "shared-123");
        ids.push((user, id));
    }
    assert_ne!(ids[0].1, ids[1].1);
    for (user, id) in &ids {
        let events = fed.audit_events(0, &format!("request-id={id}"), 1).await;
        assert_eq!(
            events.len(),
            1,
            "one record under each minted id: {events:#?}"
        );
        assert_eq!(events[0]["agent"][0]["who"]["identifier"]["value"], *user);
        assert_eq!(
            audit_detail(&events[0], "client_request_id").as_deref(),
            Some("shared-123"),
            "the client's own id kept beside the gateway's"
        );
    }
    // The answering region's record joins on the minted id (the second user was answered
    // from the cache: one peer query in all).
    let answered = fed
        .audit_events(1, &format!("request-id={}", ids[0].1), 1)
        .await;
    assert_eq!(answered.len(), 1, "{answered:#?}");
    assert_eq!(
        answered[0]["agent"][0]["who"]["identifier"]["value"],
        "alice"
    );
    for region in [0, 1] {
        assert!(
            fed.audit_events(region, "request-id=shared-123", 0)
                .await
                .is_empty(),
            "no record is named by the client's id"
        );
    }
}

#[tokio::test]
async fn only_governance_roles_read_the_trail_and_every_reading_is_recorded() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let nosy = fed.token_with(|c| c.sub = "nosy-clinician".into());
    let r = fed.audit(0, "", &nosy).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    for role in ["R8001", "R8004", "R8008"] {
        assert_eq!(
            fed.audit(0, "", &fed.token(role)).await.status,
            StatusCode::FORBIDDEN,
            "{role}"
        );
    }
    let guardian = fed.token_with(|c| {
        c.role = "R5105".into();
        c.purpose_of_use = "HOPERAT".into();
    });
    let r = fed.audit(0, "_count=5", &guardian).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["type"], "searchset");

    // A misspelt filter is refused, not ignored (it would widen the answer).
    let r = fed.audit(0, "pateint=9000000009", &guardian).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("pateint")
    );

    let refused = fed
        .audit_events(0, "kind=audit-read&user=nosy-clinician", 1)
        .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["outcome"], "4");
}

#[tokio::test]
async fn break_glass_and_refused_tokens_are_flagged_for_review() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let path = format!("{}/Patient/{}/$everything", fed.base(0), fed.everywhere());
    let reason = "Unconscious in ED, allergies unknown";
    let r = fed
        .client()
        .get(&path)
        .bearer_auth(fed.token("R8000"))
        .header("x-break-glass-reason", reason)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let expired = fed.token_with(|c| {
        c.iat -= 7200;
        c.nbf -= 7200;
        c.exp -= 7200;
    });
    for token in ["not-a-jwt", expired.as_str()] {
        let r = get_json(&fed.client(), &path, Some(token)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    let glass = fed.audit_events(0, "break-glass=true", 1).await;
    assert_eq!(glass.len(), 1, "{glass:#?}");
    assert_eq!(
        audit_detail(&glass[0], "break-glass-reason").as_deref(),
        Some(reason)
    );
    let purposes: Vec<&str> = glass[0]["purposeOfEvent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert!(purposes.contains(&"BTG"), "{purposes:?}");
    assert_eq!(glass[0]["subtype"][0]["code"], "operation");
    // The answering region flags it too.
    assert_eq!(fed.audit_events(1, "break-glass=true", 1).await.len(), 1);

    let refused = fed.audit_events(0, "kind=refused-token", 2).await;
    assert_eq!(refused.len(), 2);
    let said: Vec<&str> = refused
        .iter()
        .map(|e| e["outcomeDesc"].as_str().unwrap())
        .collect();
    assert!(said.iter().any(|s| s.contains("expired")), "{said:?}");
    assert!(said.iter().any(|s| s.contains("well-formed")), "{said:?}");
    // The refusals are outcome 4; the break-glass access is a success.
    assert_eq!(fed.audit_events(0, "outcome=4", 2).await.len(), 2);
}

#[tokio::test]
async fn paging_and_filters_walk_a_long_trail_once() {
    let fed = Builder::new(&["dorset", "hampshire"])
        .patients(6)
        .start()
        .await;
    let token = fed.token("R8000");
    let others: Vec<String> = fed
        .data
        .patients
        .iter()
        .map(|p| p.nhs.to_string())
        .filter(|n| *n != fed.everywhere())
        .take(2)
        .collect();
    for i in 0..23 {
        let nhs = if i % 4 == 3 {
            others[1].clone()
        } else {
            fed.everywhere()
        };
        let r = fed
            .get(0, &format!("/Patient/{nhs}/$everything"), Some(&token))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let officer = fed.token("R0001");
    let mut url = format!(
        "https://localhost:{}/admin/audit?patient={}&_count=4",
        fed.regions[0].clinician.port(),
        fed.everywhere()
    );
    let mut seen = Vec::new();
    let mut total = None;
    loop {
        let page = get_json(&fed.client(), &url, Some(&officer)).await;
        assert_eq!(page.status, StatusCode::OK);
        total.get_or_insert(page.body["total"].as_u64().unwrap());
        let ids: Vec<u64> = entries(&page.body, "match")
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(ids.len() <= 4);
        seen.extend(ids);
        let next = page.body["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first, across pages");
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no record twice");
    assert_eq!(seen.len() as u64, total.unwrap());
    assert_eq!(
        seen.len(),
        18,
        "18 of the 23 queries were about this patient"
    );

    // Time filters: everything is from today; nothing from 2020.
    let today = time::OffsetDateTime::now_utc().date();
    assert!(
        fed.audit_events(0, &format!("date=ge{today}"), 23)
            .await
            .len()
            >= 23
    );
    assert!(fed.audit_events(0, "date=lt2020-01-01", 0).await.is_empty());
    assert_eq!(
        fed.audit_events(0, &format!("patient={}", others[1]), 5)
            .await
            .len(),
        5,
        "the other five were about one other patient"
    );
}

/// Runs a query at dorset and checks it was refused for want of an audit record.
async fn assert_refused_without_audit(fed: &TestFederation) {
    let r = fed.search_as_clinician("AllergyIntolerance").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert!(
        r.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("audit trail"),
        "{}",
        r.body
    );
    let text = r.body.to_string();
    assert!(!text.contains("AllergyIntolerance\""), "no data: {text}");
    assert!(!text.contains(&fed.everywhere()), "no NHS number: {text}");
}

#[tokio::test]
async fn nothing_is_released_when_the_sqlite_trail_cannot_be_written() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    assert_eq!(
        fed.search_as_clinician("AllergyIntolerance").await.status,
        StatusCode::OK
    );
    // Another process holds the database's write lock (a stuck backup, an operator's shell).
    let intruder = rusqlite::Connection::open(fed.dir.path().join("dorset.sqlite")).unwrap();
    intruder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_refused_without_audit(&fed).await;
    intruder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        fed.search_as_clinician("AllergyIntolerance").await.status,
        StatusCode::OK
    );
    // Nothing half-written: the trail still verifies.
    let config = Config::load(&fed.config_path("dorset")).unwrap();
    let report = gateway::app::verify_trail(&config, &[]).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.records >= 2);
}

#[tokio::test]
async fn nothing_is_released_when_the_postgres_trail_cannot_be_written() {
    let fed = Builder::new(&["dorset", "hampshire"])
        .postgres()
        .start()
        .await;
    let conninfo = std::env::var("GATEWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schema = &fed.pg_schemas[0];
    assert_eq!(
        fed.search_as_clinician("AllergyIntolerance").await.status,
        StatusCode::OK
    );
    client
        .batch_execute(&format!("ALTER TABLE {schema}.audit RENAME TO audit_gone"))
        .await
        .unwrap();
    assert_refused_without_audit(&fed).await;
    // Not ready while the store cannot answer.
    let ready = reqwest::get(format!("http://{}/readyz", fed.regions[0].operations))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("store: not answering"));
    client
        .batch_execute(&format!("ALTER TABLE {schema}.audit_gone RENAME TO audit"))
        .await
        .unwrap();
    assert_eq!(
        fed.search_as_clinician("AllergyIntolerance").await.status,
        StatusCode::OK
    );
    let config = Config::load(&fed.config_path("dorset")).unwrap();
    let report = gateway::app::verify_trail(&config, &[]).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    fed.drop_pg_schemas().await;
}

#[tokio::test]
async fn one_traceparent_crosses_three_regions_and_is_in_every_audit_trail() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = fed
        .client()
        .get(format!(
            "{}/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
            fed.base(0),
            fed.everywhere()
        ))
        .bearer_auth(fed.token("R8000"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    for region in 0..3 {
        let events = fed
            .audit_events(region, &format!("request-id={id}"), 1)
            .await;
        assert_eq!(events.len(), 1, "region {region}: {events:#?}");
        assert_eq!(
            audit_detail(&events[0], "trace_id").as_deref(),
            Some(trace),
            "region {region}"
        );
    }
    // Without one, a trace is started, and the peers continue it.
    let r = fed.search_as_clinician("Observation").await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    let started = audit_detail(
        &fed.audit_events(0, &format!("request-id={id}"), 1).await[0],
        "trace_id",
    )
    .unwrap();
    assert_eq!(started.len(), 32);
    assert_ne!(started, trace);
    let continued = audit_detail(
        &fed.audit_events(1, &format!("request-id={id}"), 1).await[0],
        "trace_id",
    );
    assert_eq!(continued.as_deref(), Some(started.as_str()));
}

#[tokio::test]
async fn fhir_audit_event_searches_give_the_trails_records_as_balp_audit_events() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let nhs = fed.everywhere();
    let clinician = fed.token_with(|c| c.sub = "dr-searcher".into());
    for path in [
        format!("/Patient/{nhs}/$everything"),
        format!("/AllergyIntolerance?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
        format!("/Patient/{nhs}"),
    ] {
        let r = fed.get(0, &path, Some(&clinician)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    assert_eq!(
        get_json(
            &fed.client(),
            &format!("{}/Patient/{nhs}", fed.base(0)),
            Some("forged")
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let officer = fed.token_with(|c| {
        c.role = "R0001".into();
        c.sub = "privacy-officer".into();
        c.purpose_of_use = "HOPERAT".into();
    });
    let fhir = |query: String| {
        let url = format!("{}/AuditEvent?{query}", fed.base(0));
        let client = fed.client();
        let officer = officer.clone();
        async move { get_json(&client, &url, Some(&officer)).await }
    };
    let ids = |body: &Value| -> Vec<String> {
        entries(body, "match")
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // The same records as the console's trail, as the same AuditEvents.
    let by_fhir = fhir("agent=dr-searcher&_count=50".into()).await;
    assert_eq!(by_fhir.status, StatusCode::OK, "{}", by_fhir.body);
    crate::common::save_artifact("audit-event-search", &by_fhir.body);
    let by_admin = fed.audit(0, "user=dr-searcher&_count=50", &officer).await;
    assert_eq!(ids(&by_fhir.body), ids(&by_admin.body));
    assert_eq!(ids(&by_fhir.body).len(), 3, "{}", by_fhir.body);
    assert_eq!(by_fhir.body["total"], 3);
    let resources = |b: &Value| -> Vec<Value> {
        entries(b, "match")
            .iter()
            .map(|e| e["resource"].clone())
            .collect()
    };
    assert_eq!(resources(&by_fhir.body), resources(&by_admin.body));

    // Each follows the BALP pattern for what it recorded, named in meta.profile.
    let balp = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
    let profile_of = |subtype: &str| -> String {
        let r = resources(&by_fhir.body)
            .into_iter()
            .find(|r| r["subtype"][0]["code"] == subtype)
            .unwrap_or_else(|| panic!("no {subtype} in {}", by_fhir.body));
        r["meta"]["profile"][0].as_str().unwrap().to_owned()
    };
    assert_eq!(profile_of("operation"), format!("{balp}PatientQuery"));
    assert_eq!(profile_of("search"), format!("{balp}PatientQuery"));
    assert_eq!(profile_of("read"), format!("{balp}PatientRead"));
    let token_refusal = fhir("outcome=4&_count=50".into()).await;
    let refused: Vec<Value> = resources(&token_refusal.body)
        .into_iter()
        .filter(|r| r["outcomeDesc"].as_str().unwrap_or("").contains("token"))
        .collect();
    assert!(!refused.is_empty(), "{}", token_refusal.body);
    assert!(
        refused.iter().all(|r| r.get("meta").is_none()),
        "a refused token follows no BALP pattern"
    );

    // The FHIR search parameters.
    let count = |query: &str| {
        let q = format!("agent=dr-searcher&{query}");
        let query = query.to_owned();
        let fhir = &fhir;
        async move {
            let r = fhir(q).await;
            assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
            r.body["total"].as_u64().unwrap()
        }
    };
    assert_eq!(count("subtype=read").await, 1);
    assert_eq!(
        count("subtype=http://hl7.org/fhir/restful-interaction|operation").await,
        1
    );
    assert_eq!(
        count("subtype=search").await,
        2,
        "$everything is a search too"
    );
    assert_eq!(count("subtype=create").await, 0);
    assert_eq!(count("type=rest").await, 3);
    assert_eq!(
        count("type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest").await,
        3
    );
    assert_eq!(
        count("type=http://dicom.nema.org/resources/ontology/DCM|110100").await,
        0
    );
    assert_eq!(count(&format!("patient={nhs}")).await, 3);
    assert_eq!(
        count(&format!(
            "patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
        ))
        .await,
        3
    );
    assert_eq!(
        count(&format!(
            "entity:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
        ))
        .await,
        3
    );
    assert_eq!(
        count("entity=urn:gateway:region:hampshire&subtype=operation").await,
        1
    );
    assert_eq!(count("outcome=0").await, 3);
    assert_eq!(
        count("agent:identifier=urn:gateway:user-id|dr-searcher&agent=someone-else").await,
        0
    );
    let today = time::OffsetDateTime::now_utc().date();
    assert_eq!(count(&format!("date=ge{today}")).await, 3);
    assert_eq!(count("date=lt2020-01-01").await, 0);

    // Paging follows the next link on the FHIR path.
    let first = fhir("agent=dr-searcher&_count=2".into()).await;
    let next = link(&first.body, "next").expect("a next link");
    assert!(
        next.starts_with(&format!("{}/AuditEvent?", fed.base(0))),
        "{next}"
    );
    let second = get_json(&fed.client(), &next, Some(&officer)).await;
    let mut walked = ids(&first.body);
    walked.extend(ids(&second.body));
    assert_eq!(walked, ids(&by_fhir.body));

    // One record by its id.
    let one = &ids(&by_fhir.body)[0];
    let read = get_json(
        &fed.client(),
        &format!("{}/AuditEvent/{one}", fed.base(0)),
        Some(&officer),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, resources(&by_fhir.body)[0]);
    crate::common::save_artifact("audit-event-read", &read.body);
    let missing = get_json(
        &fed.client(),
        &format!("{}/AuditEvent/999999", fed.base(0)),
        Some(&officer),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["resourceType"], "OperationOutcome");

    // Bad parameters are named; a clinician's role may not read the trail.
    for (query, named) in [
        ("pateint=9000000009", "pateint"),
        ("subtype=fly", "subtype"),
        ("agent=", "agent"),
        ("patient=123", "patient"),
        ("entity=Location/x", "entity"),
    ] {
        let r = fhir(query.into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        let said = r.body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(said.starts_with(named), "{query}: {said}");
    }
    for url in [
        format!("{}/AuditEvent", fed.base(0)),
        format!("{}/AuditEvent/{one}", fed.base(0)),
    ] {
        let r = get_json(&fed.client(), &url, Some(&clinician)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}");
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
    // The CapabilityStatement offers the search.
    let cs = get_json(&fed.client(), &format!("{}/metadata", fed.base(0)), None).await;
    let audit = cs.body["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .expect("AuditEvent in the CapabilityStatement")
        .clone();
    let names: Vec<&str> = audit["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "patient", "date", "agent", "entity", "type", "subtype", "outcome", "_count",
    ] {
        assert!(names.contains(&p), "{p}");
    }
}

/// An OTLP/HTTP (JSON) receiver: every span posted to `/v1/traces`, with its service name.
async fn otlp_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
) {
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).unwrap_or_default();
                for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or("")
                        .to_owned();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            kept.lock().unwrap().push((service.clone(), span.clone()));
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test]
async fn spans_of_every_region_a_query_reaches_join_one_trace_at_an_otlp_receiver() {
    let (endpoint, spans) = otlp_receiver().await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .every_region_toml(&format!(
            "[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 200\n"
        ))
        .start()
        .await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let r = fed
        .client()
        .get(format!(
            "{}/Patient/{}/$everything",
            fed.base(0),
            fed.everywhere()
        ))
        .bearer_auth(fed.token("R8000"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let wanted = [
        "fan out",
        "policy",
        "merge",
        "audit write",
        "local record",
        "peer call",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ours = loop {
        let ours: Vec<(String, Value)> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s["traceId"] == trace)
            .cloned()
            .collect();
        let names: Vec<&str> = ours
            .iter()
            .map(|(_, s)| s["name"].as_str().unwrap_or(""))
            .collect();
        let answered = ours
            .iter()
            .any(|(svc, _)| svc == "federation-gateway-hampshire");
        // The request's own span ends last (after the answer is written), so it may reach
        // the receiver in a later batch than its phases: wait for it too.
        let requested = names.iter().any(|n| n.starts_with("GET /fhir/Patient/"));
        if (wanted.iter().all(|w| names.contains(w)) && answered && requested)
            || std::time::Instant::now() > deadline
        {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named = |service: &str, name: &str| -> Value {
        ours.iter()
            .find(|(svc, s)| {
                svc == service && s["name"].as_str().is_some_and(|n| n.starts_with(name))
            })
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no span {name} from {service}: {ours:#?}"))
    };
    // Dorset's request span continues the caller's; its phases are its children.
    let request = named("federation-gateway-dorset", "GET /fhir/Patient/");
    assert_eq!(request["parentSpanId"], caller);
    for phase in wanted {
        let span = named("federation-gateway-dorset", phase);
        assert_eq!(span["parentSpanId"], request["spanId"], "{phase}");
    }
    // Hampshire's request span is the child of dorset's call to it, in the same trace.
    let call = named("federation-gateway-dorset", "peer call");
    let answered = named("federation-gateway-hampshire", "GET /fhir/");
    assert_eq!(answered["parentSpanId"], call["spanId"]);
    // No patient data leaves in a span: no NHS number in any name or attribute.
    let text = serde_json::to_string(&ours).unwrap();
    assert!(!text.contains(&fed.everywhere()), "{text}");
}
