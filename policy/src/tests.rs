use super::*;

fn repo_policies() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn schema() -> String {
    std::fs::read_to_string(repo_policies().join("schema.cedarschema")).unwrap()
}

#[test]
fn the_default_set_loads_and_passes_its_cases() {
    let set = PolicySet::load(&repo_policies()).unwrap();
    let files = cases::load_dir(&repo_policies().join("tests")).unwrap();
    let outcomes = cases::run(&set, &files);
    assert!(outcomes.len() > 100, "{} cases", outcomes.len());
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "failing cases: {failed:#?}");
}

#[test]
fn a_case_with_the_wrong_expectation_fails() {
    let set = PolicySet::load(&repo_policies()).unwrap();
    let mut files = cases::load_dir(&repo_policies().join("tests")).unwrap();
    let case = &mut files[0].1[0];
    case.expect = match case.expect {
        cases::Expect::Allow => cases::Expect::Deny,
        cases::Expect::Deny => cases::Expect::Allow,
    };
    assert!(!cases::run(&set, &files)[0].passed);
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let files = vec![
        (
            "a.cedar".to_owned(),
            "@id(\"ok\")\npermit (principal, action, resource);\n".to_owned(),
        ),
        (
            "b.cedar".to_owned(),
            "// comment\n@id(\"broken\")\npermit (principal, action resource);\n".to_owned(),
        ),
    ];
    let err = PolicySet::from_sources(&schema(), files).unwrap_err();
    let PolicyError::Invalid(problems) = err else {
        panic!("{err}")
    };
    assert_eq!(problems[0].file, "b.cedar");
    assert_eq!(problems[0].line, 3, "{problems:?}");
    assert!(problems[0].column > 1);
}

#[test]
fn a_policy_that_does_not_fit_the_schema_is_refused_with_its_place() {
    let files = vec![("c.cedar".to_owned(), "@id(\"typo\")\npermit (principal, action, resource)\nwhen { principal.rol == \"R8000\" };\n".to_owned())];
    let PolicyError::Invalid(problems) = PolicySet::from_sources(&schema(), files).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(problems[0].file, "c.cedar");
    assert_eq!(problems[0].line, 3, "{problems:?}");
    assert!(problems[0].message.contains("rol"), "{problems:?}");
}

#[test]
fn every_policy_needs_a_unique_id() {
    let files = vec![(
        "d.cedar".to_owned(),
        "permit (principal, action, resource);\n".to_owned(),
    )];
    let PolicyError::Invalid(p) = PolicySet::from_sources(&schema(), files).unwrap_err() else {
        panic!()
    };
    assert!(p[0].message.contains("@id"));
    let twice = "@id(\"x\")\npermit (principal, action, resource);\n@id(\"x\")\nforbid (principal, action, resource);\n";
    let PolicyError::Invalid(p) =
        PolicySet::from_sources(&schema(), vec![("e.cedar".into(), twice.into())]).unwrap_err()
    else {
        panic!()
    };
    assert!(p[0].message.contains("twice"));
    assert_eq!(p[0].line, 3);
}

fn question_parts(resource_type: &str) -> (Principal, ItemClass, Circumstances) {
    (
        Principal {
            id: "u".into(),
            role: "R8000".into(),
            organisation: "RBD".into(),
            home_region: "dorset".into(),
        },
        ItemClass {
            resource_type: resource_type.into(),
            region: "dorset".into(),
            confidentiality: "N".into(),
            sensitivity: BTreeSet::new(),
            patient_home_region: "dorset".into(),
            patient_objects_to_sharing: false,
            consent_denies: false,
            consent_permits: false,
        },
        Circumstances {
            purpose_of_use: "TREAT".into(),
            break_glass: false,
            decision_point: DecisionPoint::View,
            requesting_region: "dorset".into(),
            break_glass_reason: String::new(),
            time: 1_767_225_600,
            granted_types: crate::all_types(),
        },
    )
}

#[test]
fn decisions_name_their_policies_and_unknown_types_fail_closed() {
    let set = PolicySet::load(&repo_policies()).unwrap();
    let (p, i, c) = question_parts("Observation");
    let d = set.decide(&Question {
        principal: &p,
        item: &i,
        circumstances: &c,
    });
    assert!(d.allowed);
    assert_eq!(d.policies, vec!["direct-care-clinicians"]);
    let (p, i, c) = question_parts("Flag");
    let d = set.decide(&Question {
        principal: &p,
        item: &i,
        circumstances: &c,
    });
    assert!(!d.allowed);
    assert!(!d.errors.is_empty());
}

#[test]
fn policies_are_described_by_their_comments() {
    let set = PolicySet::load(&repo_policies()).unwrap();
    let (file, text) = set.describe("direct-care-students").unwrap();
    assert_eq!(file, "10-direct-care.cedar");
    assert!(text.starts_with("Students (R8004)"), "{text}");
    assert!(set.describe("no-such-policy").is_none());
}

#[test]
fn load_checked_refuses_a_set_whose_own_cases_fail() {
    let dir = std::env::temp_dir().join(format!("policy-checked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("default")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(dir.join("schema.cedarschema"), schema()).unwrap();
    std::fs::write(
        dir.join("default/a.cedar"),
        "@id(\"all\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    std::fs::write(dir.join("tests/t.json"), r#"[{"name": "students never read letters", "principal": {"role": "R8004"}, "resource_type": "DocumentReference", "expect": "deny"}]"#).unwrap();
    let err = PolicySet::load_checked(&dir).unwrap_err();
    assert!(
        matches!(err, PolicyError::CasesFail(ref f) if f.len() == 1 && f[0].contains("students never read letters")),
        "{err}"
    );
    std::fs::write(dir.join("default/a.cedar"), "@id(\"clinicians\")\npermit (principal, action, resource) when { principal.role == \"R8000\" };\n").unwrap();
    assert!(PolicySet::load_checked(&dir).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn remembered_decisions_are_the_decisions() {
    // The cases share one time, so the second run is answered from the memo.
    let set = PolicySet::load(&repo_policies()).unwrap();
    let files = cases::load_dir(&repo_policies().join("tests")).unwrap();
    let first = cases::run(&set, &files);
    assert!(set.memo.lock().unwrap().len > 0);
    let second = cases::run(&set, &files);
    let summary = |o: &[cases::Outcome]| -> Vec<(String, bool, String)> {
        o.iter()
            .map(|o| (o.name.clone(), o.passed, o.detail.clone()))
            .collect()
    };
    assert_eq!(summary(&first), summary(&second));
    // Another set (no policy permits anything) shares nothing with it.
    let strict = PolicySet::from_sources(
        &schema(),
        vec![(
            "a.cedar".into(),
            "@id(\"nothing\")\nforbid (principal, action, resource);\n".into(),
        )],
    )
    .unwrap();
    assert!(cases::run(&strict, &files).iter().any(|o| !o.passed));
}

/// A set of one policy, permitting everything when `body` holds.
fn permit_when(body: &str) -> PolicySet {
    PolicySet::from_sources(
        &schema(),
        vec![(
            "a.cedar".to_owned(),
            format!("@id(\"a\")\npermit (principal, action, resource) when {{ {body} }};\n"),
        )],
    )
    .unwrap()
}

#[test]
fn a_set_reads_the_time_only_when_a_policy_can() {
    // The shipped set never reads the time.
    assert!(!PolicySet::load(&repo_policies()).unwrap().reads_time());
    assert!(!permit_when("context.purpose_of_use == \"TREAT\"").reads_time());
    assert!(!permit_when("context has break_glass_reason && context.break_glass").reads_time());
    assert!(permit_when("context.time > 1700000000").reads_time());
    assert!(permit_when("context has time").reads_time());
    assert!(permit_when("context.purpose_of_use == \"TREAT\" || context.time < 0").reads_time());
    // `context` used whole: any attribute may matter, the time among them.
    assert!(permit_when("context == context").reads_time());
}

#[test]
fn decisions_outlive_their_second_only_when_no_policy_reads_the_time() {
    let (p, i, mut c) = question_parts("Observation");
    let at = |set: &PolicySet, c: &Circumstances| {
        set.decide(&Question {
            principal: &p,
            item: &i,
            circumstances: c,
        })
        .allowed
    };
    // A set that cannot read the time: a later second finds the decision remembered.
    let timeless = permit_when("context.purpose_of_use == \"TREAT\"");
    assert!(at(&timeless, &c));
    c.time += 7;
    assert!(at(&timeless, &c));
    assert_eq!(timeless.memo.lock().unwrap().len, 1);
    // A set that reads it decides each second anew: the later second is refused.
    let (_, _, mut c) = question_parts("Observation");
    let cutoff = c.time;
    let timed = permit_when(&format!("context.time <= {cutoff}"));
    assert!(at(&timed, &c));
    c.time += 1;
    assert!(!at(&timed, &c));
    c.time -= 1;
    assert!(at(&timed, &c));
}

#[test]
fn a_remembered_decision_is_only_ever_its_own_question_s() {
    // One memo, questions that differ in one part each: each is decided as itself.
    let set = permit_when(
        "principal.role == \"R8000\" && context.purpose_of_use == \"TREAT\" && resource.confidentiality == \"N\"",
    );
    let (p, i, c) = question_parts("Observation");
    let decide = |p: &Principal, i: &ItemClass, c: &Circumstances, action: Option<&str>| {
        let q = Question {
            principal: p,
            item: i,
            circumstances: c,
        };
        match action {
            Some(a) => set.decide_action(a, &q).allowed,
            None => set.decide(&q).allowed,
        }
    };
    assert!(decide(&p, &i, &c, None));
    let other_role = Principal {
        role: "R0001".into(),
        ..p.clone()
    };
    assert!(!decide(&other_role, &i, &c, None));
    let other_purpose = Circumstances {
        purpose_of_use: "RESEARCH".into(),
        ..c.clone()
    };
    assert!(!decide(&p, &i, &other_purpose, None));
    let restricted = ItemClass {
        confidentiality: "R".into(),
        ..i.clone()
    };
    assert!(!decide(&p, &restricted, &c, None));
    // And again, now that each is remembered: the same answers.
    assert!(decide(&p, &i, &c, None));
    assert!(!decide(&other_role, &i, &c, None));
    assert!(!decide(&p, &i, &other_purpose, None));
    assert!(!decide(&p, &restricted, &c, None));
    assert_eq!(set.memo.lock().unwrap().len, 4);
}

#[test]
fn a_policy_directory_from_before_scopes_still_decides() {
    // Its schema has no granted_types: requests are made without them, not refused.
    let old_schema: String = schema()
        .lines()
        .filter(|l| !l.contains("granted_types"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(old_schema, schema());
    let files = vec![(
        "10-direct-care.cedar".to_owned(),
        "@id(\"direct-care-clinicians\")\npermit (principal, action in Gateway::Action::\"read\", resource) when { principal.role == \"R8000\" };\n".to_owned(),
    )];
    let set = PolicySet::from_sources(&old_schema, files).unwrap();
    let (p, i, c) = question_parts("Observation");
    let d = set.decide(&Question {
        principal: &p,
        item: &i,
        circumstances: &c,
    });
    assert!(d.allowed, "{d:?}");
    assert!(d.errors.is_empty(), "{d:?}");
}
