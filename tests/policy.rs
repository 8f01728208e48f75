//! Consent and role policy across real gateways: both decision points, purpose of use,
//! sensitive categories and break-glass.

use std::collections::BTreeSet;

use crate::common::*;
use http::StatusCode;

fn types(bundle: &serde_json::Value) -> BTreeSet<String> {
    entries(bundle, "match")
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect()
}

fn has_code(bundle: &serde_json::Value, snomed: &str) -> bool {
    entries(bundle, "match")
        .iter()
        .any(|e| e["resource"]["code"]["coding"][0]["code"] == snomed)
}

const HIV: &str = "86406008";
const DEPRESSION: &str = "35489007";

async fn get_as(
    fed: &TestFederation,
    token: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut req = fed
        .client()
        .get(format!("{}{}", fed.base(0), path))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_student_sees_less_than_a_clinical_practitioner_and_nothing_of_what_is_withheld() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let path = format!("/Patient/{}/$everything", fed.everywhere());
    let (s1, practitioner) = get_as(&fed, &fed.token("R8000"), &path, &[]).await;
    let (s2, student) = get_as(&fed, &fed.token("R8004"), &path, &[]).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert!(has_code(&practitioner, HIV) && has_code(&practitioner, DEPRESSION));
    assert!(!has_code(&student, HIV) && !has_code(&student, DEPRESSION));
    let seen = types(&practitioner);
    assert!(
        seen.contains("DocumentReference")
            || seen.contains("DiagnosticReport")
            || seen.contains("Procedure")
            || seen.contains("ServiceRequest")
    );
    for hidden in [
        "DocumentReference",
        "DiagnosticReport",
        "Procedure",
        "ServiceRequest",
    ] {
        assert!(
            !types(&student).contains(hidden),
            "students do not see {hidden}"
        );
    }
    assert!(student["total"].as_u64() < practitioner["total"].as_u64());
    assert_eq!(
        student["total"].as_u64().unwrap() as usize,
        entries(&student, "match").len(),
        "total counts only what was released"
    );
    // The student is told something was withheld, and nothing about what.
    let issues = outcome_issues(&student);
    assert!(
        issues.iter().any(|(code, _, _)| code == "suppressed"),
        "{issues:?}"
    );
    let text = student.to_string();
    for hidden in [
        "DocumentReference",
        "DiagnosticReport",
        "Human immunodeficiency",
        "HIV",
        "Depressive",
    ] {
        assert!(!text.contains(hidden), "the response mentions {hidden}");
    }
    assert!(outcome_issues(&practitioner).is_empty());
}

#[tokio::test]
async fn hiv_items_are_withheld_from_clerical_staff_and_from_break_glass() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let path = format!(
        "/Condition?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.everywhere()
    );
    let (_, clinician) = get_as(&fed, &fed.token("R8000"), &path, &[]).await;
    assert!(has_code(&clinician, HIV));
    // Clerical staff may not read conditions at all.
    let (status, clerical) = get_as(&fed, &fed.token("R8008"), &path, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entries(&clerical, "match").len(), 0);
    let (status, glass) = get_as(
        &fed,
        &fed.token("R8000"),
        &path,
        &[(
            "x-break-glass-reason",
            "Unconscious in ED, no history available",
        )],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !has_code(&glass, HIV),
        "break-glass never unlocks legally restricted categories"
    );
    assert!(
        has_code(&glass, DEPRESSION),
        "mental health items remain visible to a clinician"
    );
    let issues = outcome_issues(&glass);
    assert!(
        issues
            .iter()
            .any(|(_, _, text)| text.contains("break-glass")),
        "{issues:?}"
    );
    let (status, body) = get_as(
        &fed,
        &fed.token("R8000"),
        &path,
        &[("x-break-glass-reason", "because")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("at least 10")
    );
}

#[tokio::test]
async fn only_direct_care_is_a_purpose_and_only_clinicians_break_the_glass() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let path = format!("/Patient/{}/$everything", fed.everywhere());
    // Research is refused before any region is asked, with the reason.
    let research = fed.token_with(|c| c.purpose_of_use = "HRESCH".into());
    let (status, body) = get_as(&fed, &research, &path, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("purpose of use"),
        "{body}"
    );
    // Emergency treatment claimed without break-glass is refused up front too.
    let etreat = fed.token_with(|c| c.purpose_of_use = "ETREAT".into());
    let (status, _) = get_as(&fed, &etreat, &path, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A student may not break the glass.
    let (status, body) = get_as(
        &fed,
        &fed.token("R8004"),
        &path,
        &[("x-break-glass-reason", "Unconscious in ED, no history")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("break the glass")
    );
    // An unknown role may not search at all.
    let (status, _) = get_as(&fed, &fed.token("R9999"), &path, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_peers_release_policy_decides_what_leaves_it() {
    // Hampshire releases no Observations to other regions; its own view is unaffected.
    let no_observations = r#"
// Test rule: Observations never leave this region.
@id("test-no-observations-leave")
forbid (principal, action == Gateway::Action::"read:Observation", resource)
when { context.decision_point == "release" };
"#;
    let fed = Builder::new(&["dorset", "hampshire"])
        .extra_policy(1, "90-test.cedar", no_observations)
        .start()
        .await;
    let path = format!(
        "/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.everywhere()
    );
    let (status, from_dorset) = get_as(&fed, &fed.token("R8000"), &path, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let regions: BTreeSet<String> = entries(&from_dorset, "match")
        .iter()
        .flat_map(|e| region_tags(&e["resource"]))
        .collect();
    assert!(
        !regions.contains("hampshire"),
        "hampshire's observations did not leave it: {regions:?}"
    );
    assert!(regions.contains("dorset"));
    let issues = outcome_issues(&from_dorset);
    assert!(
        issues
            .iter()
            .any(|(code, region, _)| code == "suppressed" && region == "hampshire"),
        "{issues:?}"
    );
    // Asked at hampshire itself, its own clinicians see its observations.
    let r = get_json(
        &fed.client(),
        &format!("{}{}", fed.base(1), path),
        Some(&fed.token("R8000")),
    )
    .await;
    let regions: BTreeSet<String> = entries(&r.body, "match")
        .iter()
        .flat_map(|e| region_tags(&e["resource"]))
        .collect();
    assert!(regions.contains("hampshire"));
}

#[tokio::test]
async fn a_gateway_with_an_invalid_policy_set_refuses_to_start() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let opts = gateway::demo::DemoOptions {
        dir: dir.path().to_owned(),
        port_base: 40_000,
        patients: 3,
        regions: vec!["dorset".into(), "hampshire".into()],
    };
    gateway::demo::prepare(&opts).unwrap();
    let pdir = dir.path().join("bad-policies");
    std::fs::create_dir_all(pdir.join("default")).unwrap();
    std::fs::write(
        pdir.join("schema.cedarschema"),
        gateway::access::EMBEDDED_SCHEMA,
    )
    .unwrap();
    std::fs::write(
        pdir.join("default/10.cedar"),
        "@id(\"x\")\npermit (principal, action, resource) when { principal.rol == \"R8000\" };\n",
    )
    .unwrap();
    let config_path = dir.path().join("dorset.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let text = text.replace("directory = \"policies\"", "directory = \"bad-policies\"");
    std::fs::write(&config_path, text).unwrap();
    let config = gateway::config::Config::load(&config_path).unwrap();
    let err = gateway::app::Gateway::from_config(config)
        .await
        .err()
        .expect("an invalid policy set stops the start")
        .to_string();
    assert!(err.contains("10.cedar:2"), "{err}");
}

#[tokio::test]
async fn an_objecting_patients_records_never_leave_their_home_region_except_by_break_glass() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .start()
        .await;
    let objecting = fed.data.patients[3].clone();
    assert_eq!(objecting.regions.len(), 2);
    let home = objecting.regions[0];
    let other = objecting.regions[1];
    let codes = ["dorset", "hampshire", "wiltshire"];
    let path = format!("/Patient/{}/$everything", objecting.nhs);
    let regions_in = |b: &serde_json::Value| -> BTreeSet<String> {
        entries(b, "match")
            .iter()
            .filter(|e| e["resource"]["resourceType"] != "Patient")
            .flat_map(|e| region_tags(&e["resource"]))
            .collect()
    };

    // Asked from the other region: nothing of the home region's record comes out.
    let t = fed.token("R8000");
    let r = get_json(
        &fed.client(),
        &format!("{}{}", fed.base(other), path),
        Some(&t),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = regions_in(&r.body);
    assert!(
        !seen.contains(codes[home]),
        "the home region released items: {seen:?}"
    );
    assert!(
        seen.contains(codes[other]),
        "the other region's own items are still shown"
    );
    assert!(
        outcome_issues(&r.body)
            .iter()
            .any(|(code, region, _)| code == "suppressed" && region == codes[home]),
        "{:?}",
        outcome_issues(&r.body)
    );

    // Break-glass unlocks it for emergency direct care, with the warning.
    let glass = fed
        .client()
        .get(format!("{}{}", fed.base(other), path))
        .bearer_auth(&t)
        .header(
            "x-break-glass-reason",
            "Unresponsive on arrival, anaphylaxis suspected",
        )
        .send()
        .await
        .unwrap();
    let glass: serde_json::Value = glass.json().await.unwrap();
    assert!(
        regions_in(&glass).contains(codes[home]),
        "break-glass overrides the objection"
    );
    assert!(
        outcome_issues(&glass)
            .iter()
            .any(|(_, _, text)| text.contains("break-glass"))
    );

    // Both regions recorded it, flagged for review; the home region's trail shows that it
    // withheld everything before and released items under break-glass.
    let query = format!("kind=federation-query&patient={}", objecting.nhs);
    let released = fed.audit_events(home, &query, 2).await;
    assert_eq!(released.len(), 2, "{released:#?}");
    let (glass_event, plain_event) = (&released[0], &released[1]);
    assert!(audit_detail(glass_event, "break-glass-reason").is_some());
    assert_ne!(audit_detail(glass_event, "released").as_deref(), Some("0"));
    assert!(audit_detail(plain_event, "break-glass-reason").is_none());
    assert_eq!(audit_detail(plain_event, "released").as_deref(), Some("0"));
    assert_ne!(audit_detail(plain_event, "withheld").as_deref(), Some("0"));
    assert!(
        audit_detail(plain_event, "policies")
            .unwrap()
            .contains("consent-objection"),
        "the deciding policy is named: {plain_event:#}"
    );
    let flagged = fed
        .audit_events(
            other,
            &format!("break-glass=true&patient={}", objecting.nhs),
            1,
        )
        .await;
    assert_eq!(flagged.len(), 1);

    // The home region's own clinicians see the whole record, their own region's included.
    let r = get_json(
        &fed.client(),
        &format!("{}{}", fed.base(home), path),
        Some(&t),
    )
    .await;
    let seen = regions_in(&r.body);
    assert!(
        seen.contains(codes[home]) && seen.contains(codes[other]),
        "{seen:?}"
    );
}

#[tokio::test]
async fn policies_reload_on_change_and_a_broken_set_is_refused_while_the_old_one_decides() {
    let placeholder = "@id(\"test-placeholder\")\nforbid (principal, action, resource) when { context.purpose_of_use == \"NEVER\" };\n";
    let fed = Builder::new(&["dorset", "hampshire"])
        .extra_policy(0, "90-test.cedar", placeholder)
        .start()
        .await;
    let file = fed.dir.path().join("policies-dorset/default/90-test.cedar");
    let path = format!(
        "/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.everywhere()
    );
    let token = fed.token("R8000");
    let count = || async {
        entries(
            &get_json(
                &fed.client(),
                &format!("{}{}", fed.base(0), path),
                Some(&token),
            )
            .await
            .body,
            "match",
        )
        .len()
    };
    assert!(count().await > 0);

    // A valid change: observations are no longer shown to dorset's users.
    std::fs::write(&file, "@id(\"test-no-observations\")\nforbid (principal, action == Gateway::Action::\"read:Observation\", resource);\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed policy was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A broken file is refused: the previous set (no observations) keeps deciding.
    std::fs::write(
        &file,
        "@id(\"broken\")\nforbid (principal, action resource);\n",
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        count().await,
        0,
        "the broken set was not loaded, the previous one still applies"
    );

    // A set that parses but fails the directory's own test cases is refused too.
    std::fs::create_dir_all(fed.dir.path().join("policies-dorset/tests")).unwrap();
    std::fs::write(fed.dir.path().join("policies-dorset/tests/local.json"), r#"[{"name": "observations are readable", "principal": {"role": "R8000"}, "resource_type": "Observation", "expect": "allow"}]"#).unwrap();
    std::fs::write(&file, "@id(\"test-no-observations-still\")\nforbid (principal, action == Gateway::Action::\"read:Observation\", resource);\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Fixing the file so that the cases pass brings observations back.
    std::fs::write(&file, placeholder).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fixed policy was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Every activation and every refused reload is in the audit trail, with the files' digest.
    let activations = fed.audit_events(0, "kind=policy-activation", 3).await;
    assert!(
        activations.iter().any(|e| e["outcome"] == "0"),
        "{activations:#?}"
    );
    let refused: Vec<_> = activations.iter().filter(|e| e["outcome"] == "4").collect();
    assert!(refused.len() >= 2, "the two broken sets: {activations:#?}");
    assert!(
        refused
            .iter()
            .all(|e| e["outcomeDesc"].as_str().unwrap().starts_with("refused:"))
    );
    assert!(
        activations
            .iter()
            .all(|e| audit_detail(e, "digest").is_some_and(|d| d.len() == 64))
    );
}

#[tokio::test]
async fn consent_recorded_through_the_api_applies_from_the_next_query_and_can_be_withdrawn() {
    consent_round_trip(
        Builder::new(&["dorset", "hampshire", "wiltshire"])
            .start()
            .await,
    )
    .await;
}

#[tokio::test]
async fn consent_round_trip_with_the_postgres_store() {
    let fed = Builder::new(&["dorset", "hampshire", "wiltshire"])
        .postgres()
        .start()
        .await;
    assert_eq!(fed.pg_schemas.len(), 3);
    let fed = consent_round_trip(fed).await;
    fed.drop_pg_schemas().await;
}

async fn consent_round_trip(fed: TestFederation) -> TestFederation {
    let nhs = fed.everywhere();
    let path = format!("/Patient/{nhs}/$everything");
    let clinician = fed.token("R8000");
    let officer = fed.token("R0001");
    let from_dorset = || async {
        let r = get_json(
            &fed.client(),
            &format!("{}{}", fed.base(0), path),
            Some(&clinician),
        )
        .await;
        entries(&r.body, "match")
            .iter()
            .filter(|e| e["resource"]["resourceType"] != "Patient")
            .flat_map(|e| region_tags(&e["resource"]))
            .collect::<BTreeSet<String>>()
    };
    assert!(from_dorset().await.contains("hampshire"));

    // Hampshire's privacy officer records the patient's objection with hampshire.
    let post = |token: String, body: serde_json::Value| {
        let client = fed.client();
        let url = format!("{}/Consent", fed.base(1));
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    let created = post(officer.clone(), objection(&nhs)).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(
        created.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/Consent/")
    );
    let created: serde_json::Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["meta"]["versionId"], "1");

    // The next query from dorset gets nothing of hampshire's record, and is told so.
    let seen = from_dorset().await;
    assert!(
        !seen.contains("hampshire") && seen.contains("dorset") && seen.contains("wiltshire"),
        "{seen:?}"
    );

    // The directive can be found by patient.
    let listed = get_json(
        &fed.client(),
        &format!(
            "{}/Consent?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}",
            fed.base(1)
        ),
        Some(&officer),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        entries(&listed.body, "match")
            .iter()
            .any(|e| e["resource"]["id"] == id.as_str())
    );

    // Withdrawn (status inactive): the record flows again.
    let mut withdrawn = objection(&nhs);
    withdrawn["id"] = serde_json::json!(id);
    withdrawn["status"] = serde_json::json!("inactive");
    let put = fed
        .client()
        .put(format!("{}/Consent/{id}", fed.base(1)))
        .bearer_auth(&officer)
        .header("content-type", "application/fhir+json")
        .body(withdrawn.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let put: serde_json::Value = put.json().await.unwrap();
    assert_eq!(put["meta"]["versionId"], "2");
    assert!(from_dorset().await.contains("hampshire"));

    // A student may not record directives; a malformed one is refused with the reason.
    let r = post(fed.token("R8004"), objection(&nhs)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(officer.clone(), objection("9000000008")).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("NHS number")
    );
    let r = fed
        .client()
        .post(format!("{}/Consent", fed.base(1)))
        .bearer_auth(&officer)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Every change is in hampshire's audit trail: the objection and its withdrawal, and the
    // three refused attempts.
    let changes = fed
        .audit_events(
            1,
            &format!("kind=consent-change&patient={nhs}&outcome=0"),
            2,
        )
        .await;
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(
        audit_detail(&changes[0], "consent_status").as_deref(),
        Some("inactive")
    );
    assert_eq!(
        audit_detail(&changes[1], "consent_status").as_deref(),
        Some("active")
    );
    assert_eq!(changes[1]["subtype"][0]["code"], "create");
    assert_eq!(changes[0]["subtype"][0]["code"], "update");
    let refused = fed
        .audit_events(1, "kind=consent-change&outcome=4", 3)
        .await;
    assert_eq!(refused.len(), 3, "{refused:#?}");
    fed
}
