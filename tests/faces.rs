//! The two faces' front doors: tokens on the clinician face, certificates on the federation face,
//! and query validation.

use crate::common::*;
use gateway::tls::devca::{DevCa, LeafKind};
use http::StatusCode;

const NHS_PARAM: &str = "patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C";

fn first_issue(body: &serde_json::Value) -> (String, String) {
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    (
        body["issue"][0]["code"].as_str().unwrap().to_owned(),
        body["issue"][0]["diagnostics"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn tokens_that_are_missing_expired_forged_or_misaddressed_get_401() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let path = format!("/AllergyIntolerance?{NHS_PARAM}{}", fed.everywhere());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let r = fed.get(0, &path, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first_issue(&r.body).0, "login");
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let expired = fed.token_with(|c| {
        c.exp = now - 3600;
        c.iat = now - 7200;
        c.nbf = now - 7200;
    });
    let r = fed.get(0, &path, Some(&expired)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first_issue(&r.body).0, "expired");

    let wrong_audience = fed.token_with(|c| c.aud = "another-service".into());
    let r = fed.get(0, &path, Some(&wrong_audience)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(first_issue(&r.body).1.contains("audience"));

    // Signed by a key the gateway does not know.
    let rogue = rcgen::KeyPair::generate().unwrap();
    let claims = gateway::auth::DevTokenClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "x".into(),
        role: "R8000".into(),
        org: "RBD".into(),
        purpose_of_use: "TREAT".into(),
        iat: now,
        nbf: now,
        exp: now + 600,
    };
    let wrongly_signed =
        gateway::auth::mint_dev_token(&claims, &rogue.serialize_pem(), None).unwrap();
    let r = fed.get(0, &path, Some(&wrongly_signed)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(first_issue(&r.body).1.contains("signature"));

    // alg: none, with the good token's claims.
    let good = fed.token("R8000");
    let mut parts = good.split('.');
    let (_, body) = (parts.next(), parts.next().unwrap());
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
    let r = fed.get(0, &path, Some(&none)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(first_issue(&r.body).1.contains("algorithm"));

    // And the good token works.
    let r = fed.get(0, &path, Some(&good)).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_queries_get_400_naming_the_problem() {
    let fed = Builder::new(&["dorset"]).start().await;
    let t = fed.token("R8000");
    let r = fed
        .get(
            0,
            &format!("/AllergyIntolerance?{NHS_PARAM}9000000008"),
            Some(&t),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let (code, text) = first_issue(&r.body);
    assert_eq!(code, "invalid");
    assert!(text.contains("check digit"), "{text}");
    assert_eq!(r.body["issue"][0]["expression"][0], "patient.identifier");
    assert!(!text.contains("9000000008"), "the number is not echoed");

    let r = fed
        .get(
            0,
            &format!("/Condition?{NHS_PARAM}{}&colour=blue", fed.everywhere()),
            Some(&t),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(first_issue(&r.body).1.contains("colour"));

    // Lenient handling ignores it, with an information issue in the Bundle.
    let resp = fed
        .client()
        .get(format!(
            "{}/Condition?{NHS_PARAM}{}&colour=blue",
            fed.base(0),
            fed.everywhere()
        ))
        .bearer_auth(&t)
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        outcome_issues(&body)
            .iter()
            .any(|(code, _, text)| code == "not-supported" && text.contains("colour"))
    );

    let r = fed
        .get(
            0,
            &format!("/Flag?{NHS_PARAM}{}", fed.everywhere()),
            Some(&t),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(first_issue(&r.body).0, "not-supported");

    let r = fed.get(0, "/Observation?date=ge2020", Some(&t)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(first_issue(&r.body).0, "required");

    let r = fed.get(0, "/Patient/12345/$everything", Some(&t)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metadata_is_public_and_truthful() {
    let fed = Builder::new(&["dorset"]).start().await;
    let r = fed.get(0, "/metadata", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["resourceType"], "CapabilityStatement");
    assert_eq!(r.body["fhirVersion"], "4.0.1");
    let types: Vec<&str> = r.body["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["type"].as_str().unwrap())
        .collect();
    for t in gateway::fhir::types::ResourceType::ALL {
        assert!(types.contains(&t.as_str()));
    }
}

#[tokio::test]
async fn http2_and_http1_are_both_served() {
    let fed = Builder::new(&["dorset"]).start().await;
    let r = fed.get(0, "/metadata", None).await;
    assert_eq!(r.version, http::Version::HTTP_2, "ALPN negotiates h2");
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(fed.ca.cert_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let r = get_json(&h1, &format!("{}/metadata", fed.base(0)), None).await;
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn the_federation_face_refuses_anyone_without_a_federation_certificate() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let url = format!(
        "{}/AllergyIntolerance?{NHS_PARAM}{}",
        fed.fed_base(0),
        fed.everywhere()
    );

    // No client certificate: the TLS handshake fails, no HTTP is spoken.
    let err = mtls_client(&fed.ca.cert_pem, None)
        .get(&url)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // A certificate for 'hampshire' from another CA: refused in the handshake.
    let other_ca = DevCa::new("Somebody else's CA").unwrap();
    let forged = other_ca
        .issue("hampshire", LeafKind::Client, &[], 30)
        .unwrap();
    let err = mtls_client(&fed.ca.cert_pem, Some((&forged.cert_pem, &forged.key_pem)))
        .get(&url)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // A valid federation certificate of a region dorset does not federate with: 403.
    let kent = fed.ca.issue("kent", LeafKind::Client, &[], 30).unwrap();
    let r = get_json(
        &mtls_client(&fed.ca.cert_pem, Some((&kent.cert_pem, &kent.key_pem))),
        &url,
        Some("whatever"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(first_issue(&r.body).0, "security");

    // Hampshire's own certificate, but no forwarded user context: 401.
    let hampshire_cert =
        std::fs::read_to_string(fed.dir.path().join("certs/hampshire/client.pem")).unwrap();
    let hampshire_key =
        std::fs::read_to_string(fed.dir.path().join("certs/hampshire/client.key")).unwrap();
    let hampshire = mtls_client(&fed.ca.cert_pem, Some((&hampshire_cert, &hampshire_key)));
    let r = get_json(&hampshire, &url, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A clinician token is not a forwarded context: it is not signed by hampshire's key.
    let r = get_json(&hampshire, &url, Some(&fed.token("R8000"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A context signed by hampshire's key for dorset: answered from dorset's record only.
    let identity = gateway::tls::identity::parse_certificate(
        &gateway::tls::load_certs(&fed.dir.path().join("certs/hampshire/client.pem")).unwrap()[0],
    )
    .unwrap();
    let signer = gateway::auth::ForwardSigner::new(
        "urn:gateway:region:hampshire",
        &hampshire_key,
        &identity.public_key,
    )
    .unwrap();
    let user = gateway::auth::UserContext {
        user_id: "u".into(),
        role: "R8000".into(),
        organisation: "RBD".into(),
        purpose_of_use: Some("TREAT".into()),
        break_glass: None,
        scope: None,
        patient: None,
    };
    let token = signer
        .sign(
            &user,
            "urn:gateway:region:dorset",
            "req-1",
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .unwrap();
    let r = get_json(&hampshire, &url, Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        entries(&r.body, "include")
            .iter()
            .all(|e| e["resource"]["resourceType"] == "Patient")
    );
    assert!(
        entries(&r.body, "match")
            .iter()
            .all(|e| region_tags(&e["resource"]).is_empty()),
        "raw local answer, not a merge"
    );

    // The same context presented to hampshire's own federation face is for the wrong audience.
    let r = get_json(
        &hampshire,
        &format!(
            "{}/AllergyIntolerance?{NHS_PARAM}{}",
            fed.fed_base(1),
            fed.everywhere()
        ),
        Some(&token),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "hampshire does not peer with itself"
    );

    // Dorset's audit trail holds every refusal: the two certificates refused in the handshake
    // and kent's, the two tokens refused, and the one answer, joined to hampshire's request.
    let refused = fed.audit_events(0, "kind=refused-certificate", 3).await;
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert!(refused.iter().all(|e| e["outcome"] == "4"));
    let tokens = fed.audit_events(0, "kind=refused-token", 2).await;
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    let answered = fed.audit_events(0, "kind=federation-query", 1).await;
    assert_eq!(answered.len(), 1);
    assert_eq!(
        audit_detail(&answered[0], "calling_request_id").as_deref(),
        Some("req-1")
    );
    assert_eq!(
        audit_detail(&answered[0], "calling_region").as_deref(),
        Some("hampshire")
    );
}
