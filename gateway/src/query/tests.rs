use super::*;
use serde_json::json;

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number|9000000009";

#[test]
fn parses_a_type_search() {
    let parsed = parse_search(
        "Observation",
        &p(&[
            ("patient.identifier", NHS),
            ("date", "ge2023-01-01"),
            ("category", "vital-signs"),
            ("_count", "5"),
        ]),
        false,
    )
    .unwrap();
    let q = parsed.query;
    assert_eq!(q.operation, Operation::Search(ResourceType::Observation));
    assert_eq!(q.nhs_number.as_str(), "9000000009");
    assert_eq!(q.dates.len(), 1);
    assert_eq!(q.categories.len(), 1);
    assert_eq!(q.count, Some(5));
}

#[test]
fn an_invalid_check_digit_is_refused_naming_the_parameter() {
    let err = parse_search(
        "AllergyIntolerance",
        &p(&[(
            "patient.identifier",
            "https://fhir.nhs.uk/Id/nhs-number|9000000008",
        )]),
        false,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        QueryError::InvalidNhsNumber {
            source: NhsNumberError::CheckDigit,
            ..
        }
    ));
    assert_eq!(err.parameter(), Some("patient.identifier"));
    assert!(
        !err.to_string().contains("9000000008"),
        "errors never echo the number"
    );
}

#[test]
fn the_identifier_system_is_required() {
    let err = parse_search(
        "Condition",
        &p(&[("patient.identifier", "9000000009")]),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, QueryError::WrongIdentifierSystem { .. }));
    let err = parse_search(
        "Condition",
        &p(&[("patient.identifier", "urn:local|9000000009")]),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, QueryError::WrongIdentifierSystem { .. }));
}

#[test]
fn a_patient_is_required() {
    let err =
        parse_search("Condition", &p(&[("category", "problem-list-item")]), false).unwrap_err();
    assert_eq!(err, QueryError::MissingPatient("patient.identifier"));
}

#[test]
fn two_patients_are_refused() {
    let err = parse_search(
        "Condition",
        &p(&[("patient.identifier", NHS), ("patient", "9434765919")]),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, QueryError::RepeatedPatient(_)));
}

#[test]
fn unknown_parameters_are_refused_unless_lenient() {
    let params = p(&[("patient.identifier", NHS), ("code", "1234")]);
    let err = parse_search("Condition", &params, false).unwrap_err();
    assert!(matches!(err, QueryError::UnknownParameter { ref param, .. } if param == "code"));
    let parsed = parse_search("Condition", &params, true).unwrap();
    assert_eq!(parsed.ignored.len(), 1);
}

#[test]
fn date_is_only_where_fhir_defines_it() {
    // Condition has no `date` parameter in R4; it has onset-date and recorded-date.
    assert!(
        parse_search(
            "Condition",
            &p(&[("patient.identifier", NHS), ("date", "2020")]),
            false
        )
        .is_err()
    );
    assert!(
        parse_search(
            "Condition",
            &p(&[("patient.identifier", NHS), ("onset-date", "2020")]),
            false
        )
        .is_ok()
    );
    // Encounter has no category in R4.
    assert!(
        parse_search(
            "Encounter",
            &p(&[("patient.identifier", NHS), ("category", "x")]),
            false
        )
        .is_err()
    );
}

#[test]
fn unsupported_types_and_bad_values() {
    assert!(matches!(
        parse_search("Flag", &p(&[("patient.identifier", NHS)]), false),
        Err(QueryError::UnsupportedType(_))
    ));
    let err = parse_search(
        "Observation",
        &p(&[("patient.identifier", NHS), ("date", "ge2023-13-01")]),
        false,
    )
    .unwrap_err();
    assert_eq!(err.parameter(), Some("date"));
    let err = parse_search(
        "Observation",
        &p(&[("patient.identifier", NHS), ("_count", "-1")]),
        false,
    )
    .unwrap_err();
    assert_eq!(err.parameter(), Some("_count"));
    let err = parse_search(
        "Observation",
        &p(&[("patient.identifier", NHS), ("_format", "xml")]),
        false,
    )
    .unwrap_err();
    assert_eq!(err.parameter(), Some("_format"));
}

#[test]
fn count_is_capped() {
    let q = parse_search(
        "Observation",
        &p(&[("patient.identifier", NHS), ("_count", "999999")]),
        false,
    )
    .unwrap()
    .query;
    assert_eq!(q.count, Some(MAX_COUNT));
}

#[test]
fn patient_search_read_and_everything() {
    let q = parse_search("Patient", &p(&[("identifier", NHS)]), false)
        .unwrap()
        .query;
    assert_eq!(q.operation, Operation::PatientSearch);
    let q = parse_read("9000000009", &[], false).unwrap().query;
    assert_eq!(q.operation, Operation::PatientRead);
    assert!(parse_read("9000000008", &[], false).is_err());
    let q = parse_everything(
        "9000000009",
        &p(&[("_type", "Observation,Condition,Patient")]),
        false,
    )
    .unwrap()
    .query;
    assert_eq!(
        q.types(),
        vec![ResourceType::Condition, ResourceType::Observation]
    );
    assert_eq!(
        parse_everything("9000000009", &[], false)
            .unwrap()
            .query
            .types()
            .len(),
        ResourceType::ALL.len()
    );
}

#[test]
fn to_request_round_trips_through_the_parser() {
    let original = parse_search(
        "Observation",
        &p(&[
            ("patient.identifier", NHS),
            ("date", "ge2023-01-01"),
            ("date", "lt2024"),
            ("category", "http://x|laboratory,vital-signs"),
            ("_count", "3"),
        ]),
        false,
    )
    .unwrap()
    .query;
    let (path, params) = original.to_request();
    let again = parse_search(&path, &params, false).unwrap().query;
    assert_eq!(again.count, None, "_count is not forwarded");
    assert_eq!(
        PatientQuery {
            count: Some(3),
            ..again
        },
        original
    );

    let everything = parse_everything("9000000009", &p(&[("_type", "Condition")]), false)
        .unwrap()
        .query;
    let (path, params) = everything.to_request();
    assert_eq!(path, "Patient/9000000009/$everything");
    let again = parse_everything("9000000009", &params, false)
        .unwrap()
        .query;
    assert_eq!(again, everything);
}

#[test]
fn matching_dates_and_categories() {
    let q = parse_search(
        "Observation",
        &p(&[
            ("patient.identifier", NHS),
            ("date", "ge2023-01-01"),
            ("category", "vital-signs"),
        ]),
        false,
    )
    .unwrap()
    .query;
    let cat = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]);
    let yes = json!({"resourceType": "Observation", "effectiveDateTime": "2023-06-01T10:00:00Z", "category": cat});
    let old =
        json!({"resourceType": "Observation", "effectiveDateTime": "2022-06-01", "category": cat});
    let lab = json!({"resourceType": "Observation", "effectiveDateTime": "2023-06-01", "category": [{"coding": [{"code": "laboratory"}]}]});
    let undated = json!({"resourceType": "Observation", "category": cat});
    assert!(q.matches(ResourceType::Observation, &yes));
    assert!(!q.matches(ResourceType::Observation, &old));
    assert!(!q.matches(ResourceType::Observation, &lab));
    assert!(!q.matches(ResourceType::Observation, &undated));
}

#[test]
fn allergy_category_is_a_code_list() {
    let q = parse_search(
        "AllergyIntolerance",
        &p(&[
            ("patient.identifier", NHS),
            (
                "category",
                "http://hl7.org/fhir/allergy-intolerance-category|medication",
            ),
        ]),
        false,
    )
    .unwrap()
    .query;
    assert!(q.matches(
        ResourceType::AllergyIntolerance,
        &json!({"category": ["food", "medication"]})
    ));
    assert!(!q.matches(
        ResourceType::AllergyIntolerance,
        &json!({"category": ["food"]})
    ));
}

#[test]
fn errors_never_echo_a_number_given_in_the_wrong_place() {
    for (name, value) in [("date", "9434765919"), ("9434765919", "x")] {
        let err = parse_search(
            "Observation",
            &p(&[("patient.identifier", NHS), (name, value)]),
            false,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("9434765919"), "{err}");
    }
    let err = parse_search("9434765919", &p(&[("patient.identifier", NHS)]), false).unwrap_err();
    assert!(!err.to_string().contains("9434765919"));
    let err = parse_everything("9000000009", &p(&[("_type", "9434765919")]), false).unwrap_err();
    assert!(!err.to_string().contains("9434765919"));
}

#[test]
fn everything_takes_a_window_of_clinical_dates_and_last_update() {
    let q = parse_everything(
        "9000000009",
        &p(&[
            ("start", "2020-01-01"),
            ("end", "2021-06"),
            ("_since", "2024-01-01T00:00:00Z"),
        ]),
        false,
    )
    .unwrap()
    .query;
    assert_eq!(q.window.len(), 3);
    // Forwarded as given, so a peer or a FHIR server applies the same window.
    let (_, params) = q.to_request();
    assert!(params.contains(&("start".into(), "2020-01-01".into())));
    assert!(params.contains(&("end".into(), "2021-06".into())));
    assert!(params.contains(&("_since".into(), "2024-01-01T00:00:00Z".into())));
    let obs = |effective: &str, updated: &str| json!({"resourceType": "Observation", "effectiveDateTime": effective, "meta": {"lastUpdated": updated}});
    let t = ResourceType::Observation;
    assert!(q.matches(t, &obs("2020-05-01", "2024-02-01T00:00:00Z")));
    assert!(
        q.matches(t, &obs("2021-06-30", "2024-02-01T00:00:00Z")),
        "end is the whole month"
    );
    assert!(
        !q.matches(t, &obs("2019-12-31", "2024-02-01T00:00:00Z")),
        "before start"
    );
    assert!(
        !q.matches(t, &obs("2021-07-01", "2024-02-01T00:00:00Z")),
        "after end"
    );
    assert!(
        !q.matches(t, &obs("2020-05-01", "2023-12-31T23:59:59Z")),
        "not updated since"
    );
    assert!(
        !q.matches(
            t,
            &json!({"resourceType": "Observation", "meta": {"lastUpdated": "2024-02-01T00:00:00Z"}})
        ),
        "without a clinical date it is outside any window"
    );
    let err = parse_everything("9000000009", &p(&[("start", "yesterday")]), false).unwrap_err();
    assert_eq!(err.parameter(), Some("start"));
}

#[test]
fn searches_take_last_updated_and_a_summary_count() {
    let q = parse_search(
        "Condition",
        &p(&[
            ("patient.identifier", NHS),
            ("_lastUpdated", "ge2024-01-01"),
            ("_summary", "count"),
        ]),
        false,
    )
    .unwrap()
    .query;
    assert_eq!(q.count, Some(0), "_summary=count asks for the total alone");
    let (_, params) = q.to_request();
    assert!(params.contains(&("_lastUpdated".into(), "ge2024-01-01".into())));
    let c = |updated: &str| json!({"resourceType": "Condition", "meta": {"lastUpdated": updated}});
    assert!(q.matches(ResourceType::Condition, &c("2024-03-01T00:00:00Z")));
    assert!(!q.matches(ResourceType::Condition, &c("2023-03-01T00:00:00Z")));
    let err = parse_search(
        "Condition",
        &p(&[("patient.identifier", NHS), ("_summary", "true")]),
        false,
    )
    .unwrap_err();
    assert_eq!(err.parameter(), Some("_summary"));
}
