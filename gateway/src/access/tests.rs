use super::*;
use serde_json::json;

fn user(role: &str, purpose: &str, break_glass: Option<&str>) -> UserContext {
    UserContext {
        user_id: "u".into(),
        role: role.into(),
        organisation: "RBD".into(),
        purpose_of_use: Some(purpose.into()),
        break_glass: break_glass.map(str::to_owned),
        scope: None,
        patient: None,
    }
}

/// The view decision point of a Dorset user asking of Dorset's record.
fn in_dorset<'a>(set: &'a policy::PolicySet, user: &UserContext) -> Gatekeeper<'a> {
    Gatekeeper::new(set, user, "dorset", DecisionPoint::View, "dorset")
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
        items: crate::fhir::item::items_of(vec![
            item("Condition", json!([])),
            item("Condition", json!([])),
            item("DocumentReference", json!([])),
            item(
                "Condition",
                json!([{"system": ACT_CODE_SYSTEM, "code": "HIV"}]),
            ),
        ]),
        ..RecordAnswer::default()
    };
    let mut report = Filtered::default();
    let mut clinician = in_dorset(&set, &user("R8000", "TREAT", None));
    let kept = clinician.filter(answer.clone(), "dorset", &mut report);
    assert_eq!((kept.patients.len(), kept.items.len()), (1, 4));
    assert_eq!(
        clinician.decisions_made(),
        4,
        "patient, condition, document, HIV condition"
    );

    let mut report = Filtered::default();
    let mut student = in_dorset(&set, &user("R8004", "TREAT", None));
    let kept = student.filter(answer.clone(), "dorset", &mut report);
    assert_eq!(
        kept.items.len(),
        2,
        "two plain conditions: no letter, no HIV item"
    );
    assert_eq!(report.withheld, 2);
    // The second plain condition, decided as the first was, is counted as released too.
    assert_eq!(report.released, 3);
    assert!(report.policies.contains("sensitive-legally-restricted"));

    let mut report = Filtered::default();
    let mut emergency = in_dorset(
        &set,
        &user("R8000", "TREAT", Some("collapsed, unable to consent")),
    );
    let kept = emergency.filter(answer.clone(), "dorset", &mut report);
    assert_eq!(
        kept.items.len(),
        3,
        "break-glass never unlocks the legally restricted item"
    );

    let mut report = Filtered::default();
    let mut research = in_dorset(&set, &user("R8000", "HRESCH", None));
    let kept = research.filter(answer, "dorset", &mut report);
    assert_eq!(kept.patients.len() + kept.items.len(), 0);
    assert!(report.policies.contains("purpose-direct-care-only"));
}

#[test]
fn a_draft_is_compared_with_the_active_set_item_by_item() {
    let active = embedded_policy_set().unwrap();
    let mut files = embedded_policy_files();
    files.push((
        "90-pilot.cedar".into(),
        "@id(\"pilot-no-allergies\")\nforbid (principal, action == Gateway::Action::\"read:AllergyIntolerance\", resource)\nwhen { principal.organisation == \"RXX01\" };\n".into(),
    ));
    let draft = PolicySet::from_sources(EMBEDDED_SCHEMA, files).unwrap();
    let mut pilot = user("R8000", "TREAT", None);
    pilot.organisation = "RXX01".into();
    let record = [
        json!({"resourceType": "Patient", "id": "p"}),
        item("AllergyIntolerance", json!([])),
        item("AllergyIntolerance", json!([])),
        item("Condition", json!([])),
    ];
    let resources: Vec<&Value> = record.iter().collect();
    let gk = |set| Gatekeeper::new(set, &pilot, "dorset", DecisionPoint::View, "dorset");
    let c = compare(
        &mut gk(&active),
        Some(&mut gk(&draft)),
        &resources,
        "dorset",
    );
    assert_eq!(
        (c.items, c.released_active, c.released_draft),
        (4, 4, Some(2))
    );
    assert_eq!(
        c.changes,
        std::collections::BTreeMap::from([(("AllergyIntolerance".to_owned(), true, false), 2)])
    );
    assert_eq!(
        c.summary("R8000"),
        "2 items would now be withheld from R8000 users"
    );
    // Without a draft: what the active set releases. The active set as its own draft: no change.
    let alone = compare(&mut gk(&active), None, &resources, "dorset");
    assert_eq!(
        alone.summary("R8000"),
        "4 of 4 items would be released to R8000 users"
    );
    let same = compare(
        &mut gk(&active),
        Some(&mut gk(&active)),
        &resources,
        "dorset",
    );
    assert_eq!(same.summary("R8000"), "no change for R8000 users");
}

#[test]
fn items_of_one_type_are_decided_apart_when_a_directive_reads_their_categories() {
    // The patient refuses laboratory results to everyone: two Observations of one type and
    // no labels differ by category alone, and only one of them is released.
    let consent = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": crate::consent::CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "provision": {"type": "permit", "provision": [{"type": "deny",
            "code": [{"coding": [{"code": "laboratory"}]}]}]}
    });
    let directives = crate::consent::read(&[consent], 1_767_225_600);
    assert!(directives.has_rules());
    let obs = |id: &str, category: &str| {
        json!({"resourceType": "Observation", "id": id,
            "category": [{"coding": [{"code": category}]}]})
    };
    let answer = RecordAnswer {
        items: crate::fhir::item::items_of(vec![
            obs("a", "vital-signs"),
            obs("b", "laboratory"),
            obs("c", "vital-signs"),
        ]),
        ..RecordAnswer::default()
    };
    let set = embedded_policy_set().unwrap();
    let mut report = Filtered::default();
    let mut clinician =
        in_dorset(&set, &user("R8000", "TREAT", None)).with_consent(directives, "dorset");
    let kept = clinician.filter(answer, "dorset", &mut report);
    let ids: Vec<&str> = kept.items.iter().map(|i| i.id()).collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!((report.released, report.withheld), (2, 1));
}

#[test]
fn a_scoped_token_is_refused_where_the_policy_set_cannot_apply_scopes() {
    // A policy directory from before scopes: its schema lacks granted_types.
    let old_schema: String = EMBEDDED_SCHEMA
        .lines()
        .filter(|l| !l.contains("granted_types"))
        .collect::<Vec<_>>()
        .join("\n");
    let files: Vec<(String, String)> = embedded_policy_files()
        .into_iter()
        .filter(|(name, _)| name != "70-scopes.cedar")
        .collect();
    let old = PolicySet::from_sources(&old_schema, files).unwrap();
    assert!(!old.knows_scopes());
    let mut scoped = user("R8000", "TREAT", None);
    scoped.scope = Some("user/Observation.rs".into());
    assert_eq!(
        in_dorset(&old, &scoped).admit("dorset"),
        Err(Refusal::Scopes)
    );
    // Unscoped (or every type granted): decided as before.
    assert_eq!(
        in_dorset(&old, &user("R8000", "TREAT", None)).admit("dorset"),
        Ok(())
    );
    scoped.scope = Some("user/*.rs".into());
    assert_eq!(in_dorset(&old, &scoped).admit("dorset"), Ok(()));
    // The shipped set applies them.
    let set = embedded_policy_set().unwrap();
    scoped.scope = Some("user/Observation.rs".into());
    assert_eq!(in_dorset(&set, &scoped).admit("dorset"), Ok(()));
}
