//! Writes the Bundles and OperationOutcomes the gateway produces from the demo data to a
//! directory, for the independent FHIR R4 validator that `scripts/test` runs after cargo
//! (`scripts/validate_fhir.py`, Python fhir.resources 6.4.0). The test also checks the basics.

use std::path::PathBuf;

use crate::common::*;

fn artifact_dir() -> PathBuf {
    std::env::var_os("FHIR_ARTIFACT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fhir-artifacts")
        })
}

#[tokio::test]
async fn merged_bundles_from_the_demo_data_are_written_for_validation() {
    let dead = dead_address().await;
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .patients(40)
        .start()
        .await;
    let with_failure = Builder::new(&["dorset", "hampshire"])
        .extra_peer(ExtraPeer::new("kent", dead, 1000))
        .start()
        .await;
    let dir = artifact_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let token = fed.token("R8000");
    let mut written = 0;
    let mut save = |name: String, body: &serde_json::Value| {
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(body).unwrap(),
        )
        .unwrap();
        written += 1;
    };
    for (i, p) in fed.data.patients.iter().take(12).enumerate() {
        let r = fed
            .get(
                i % 3,
                &format!("/Patient/{}/$everything", p.nhs),
                Some(&token),
            )
            .await;
        assert_eq!(r.status, http::StatusCode::OK);
        follow_references(&fed, i % 3, &r.body, &token).await;
        save(format!("everything-{i:02}"), &r.body);
    }
    let nhs = fed.everywhere();
    for t in gateway::fhir::types::ResourceType::ALL {
        let r = fed
            .get(
                0,
                &format!(
                    "/{}?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}",
                    t.as_str()
                ),
                Some(&token),
            )
            .await;
        assert_eq!(r.status, http::StatusCode::OK);
        follow_references(&fed, 0, &r.body, &token).await;
        save(format!("search-{}", t.as_str()), &r.body);
    }
    let r = fed
        .get(
            0,
            &format!(
                "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
                fed.data.mismatched
            ),
            Some(&token),
        )
        .await;
    save("patient-search-mismatched".into(), &r.body);
    let r = fed.get(0, &format!("/Patient/{nhs}"), Some(&token)).await;
    save("patient-read".into(), &r.body);
    let r = fed.get(0, "/metadata", None).await;
    save("metadata".into(), &r.body);
    let r = with_failure
        .get(
            0,
            &format!("/Patient/{}/$everything", with_failure.everywhere()),
            Some(&with_failure.token("R8000")),
        )
        .await;
    assert!(!outcome_issues(&r.body).is_empty());
    follow_references(&with_failure, 0, &r.body, &with_failure.token("R8000")).await;
    save("everything-with-failed-region".into(), &r.body);
    let r = fed
        .get(
            0,
            "/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C9000000008",
            Some(&token),
        )
        .await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
    save("error-invalid-nhs".into(), &r.body);
    let r = fed.get(0, "/Condition?patient.identifier=x", None).await;
    save("error-unauthenticated".into(), &r.body);
    // The audit trail as AuditEvents: queries, a break-glass access, refusals, a federation
    // answer (region 1 answered dorset's queries).
    let r = fed
        .client()
        .get(format!("{}/Patient/{nhs}/$everything", fed.base(0)))
        .bearer_auth(&token)
        .header("x-break-glass-reason", "Anaphylaxis, history unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), http::StatusCode::OK);
    let officer = fed.token("R0001");
    for (region, name) in [(0, "audit-trail-requesting"), (1, "audit-trail-answering")] {
        let r = fed.audit(region, "_count=100", &officer).await;
        assert_eq!(r.status, http::StatusCode::OK);
        assert!(entries(&r.body, "match").len() >= 10);
        save(name.into(), &r.body);
    }
    assert!(written >= 27);
}
