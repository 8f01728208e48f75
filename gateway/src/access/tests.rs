use super::*;
use serde_json::json;

fn user(role: &str, purpose: &str, break_glass: Option<&str>) -> UserContext {
    UserContext {
        user_id: "u".into(),
        role: role.into(),
        organisation: "RBD".into(),
        purpose_of_use: Some(purpose.into()),
        break_glass: break_glass.map(str::to_owned),
    }
}

fn item(t: &str, security: serde_json::Value) -> Value {
    json!({"resourceType": t, "id": "x", "meta": {"security": security}})
}

#[test]
fn labels_are_read_from_meta_security() {
    let r = item(
        "Condition",
        json!([{"system": CONFIDENTIALITY_SYSTEM, "code": "R"}, {"system": ACT_CODE_SYSTEM, "code": "HIV"}, {"system": "urn:other", "code": "PSY"}]),
    );
    let (c, s) = labels(&r);
    assert_eq!(c, "R");
    assert_eq!(s, BTreeSet::from(["HIV".to_string()]));
    assert_eq!(labels(&json!({"resourceType": "Condition"})).0, "N");
    // The most restrictive wins; an unknown code is treated as very restricted.
    let r = item(
        "Condition",
        json!([{"system": CONFIDENTIALITY_SYSTEM, "code": "V"}, {"system": CONFIDENTIALITY_SYSTEM, "code": "L"}]),
    );
    assert_eq!(labels(&r).0, "V");
    let r = item(
        "Condition",
        json!([{"system": CONFIDENTIALITY_SYSTEM, "code": "Q"}]),
    );
    assert_eq!(labels(&r).0, "V");
}

#[test]
fn break_glass_needs_a_reason() {
    assert_eq!(break_glass_reason(None), Ok(None));
    assert_eq!(break_glass_reason(Some("  short ")), Err(BreakGlassError));
    assert_eq!(
        break_glass_reason(Some("unconscious in ED, no history"))
            .unwrap()
            .as_deref(),
        Some("unconscious in ED, no history")
    );
}

#[test]
fn the_embedded_set_is_the_files_under_policies() {
    embedded_policy_set().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default");
    let on_disk = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cedar")
        })
        .count();
    assert_eq!(
        on_disk,
        embedded_policy_files().len(),
        "a policy file was added without embedding it"
    );
}

#[test]
fn filtering_keeps_what_policy_releases_and_memoises_per_class() {
    let set = embedded_policy_set().unwrap();
    let answer = RecordAnswer {
        patients: vec![json!({"resourceType": "Patient", "id": "p"})],
        items: vec![
            item("Condition", json!([])),
            item("Condition", json!([])),
            item("DocumentReference", json!([])),
            item(
                "Condition",
                json!([{"system": ACT_CODE_SYSTEM, "code": "HIV"}]),
            ),
        ],
        withheld: 0,
        stale_seconds: None,
    };
    let mut report = Filtered::default();
    let mut clinician = Gatekeeper::new(
        &set,
        &user("R8000", "TREAT", None),
        "dorset",
        DecisionPoint::View,
        "dorset",
    );
    let kept = clinician.filter(answer.clone(), "dorset", &mut report);
    assert_eq!((kept.patients.len(), kept.items.len()), (1, 4));
    assert_eq!(
        clinician.decisions_made(),
        4,
        "patient, condition, document, HIV condition"
    );

    let mut report = Filtered::default();
    let mut student = Gatekeeper::new(
        &set,
        &user("R8004", "TREAT", None),
        "dorset",
        DecisionPoint::View,
        "dorset",
    );
    let kept = student.filter(answer.clone(), "dorset", &mut report);
    assert_eq!(
        kept.items.len(),
        2,
        "two plain conditions: no letter, no HIV item"
    );
    assert_eq!(report.withheld, 2);
    assert!(report.policies.contains("sensitive-legally-restricted"));

    let mut report = Filtered::default();
    let mut emergency = Gatekeeper::new(
        &set,
        &user("R8000", "TREAT", Some("collapsed, unable to consent")),
        "dorset",
        DecisionPoint::View,
        "dorset",
    );
    let kept = emergency.filter(answer.clone(), "dorset", &mut report);
    assert_eq!(
        kept.items.len(),
        3,
        "break-glass never unlocks the legally restricted item"
    );

    let mut report = Filtered::default();
    let mut research = Gatekeeper::new(
        &set,
        &user("R8000", "HRESCH", None),
        "dorset",
        DecisionPoint::View,
        "dorset",
    );
    let kept = research.filter(answer, "dorset", &mut report);
    assert_eq!(kept.patients.len() + kept.items.len(), 0);
    assert!(report.policies.contains("purpose-direct-care-only"));
}
