//! The FHIR R4 resource types the gateway serves, and what FHIR R4 says about each one's
//! search parameters: where the patient reference lives, which date parameters exist and
//! which element they search, and whether `category` is defined (and on which element).

use serde_json::Value;

/// A clinical resource type the gateway federates (Patient is handled apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    AllergyIntolerance,
    Condition,
    DiagnosticReport,
    DocumentReference,
    Encounter,
    Immunization,
    MedicationRequest,
    MedicationStatement,
    Observation,
    Procedure,
    ServiceRequest,
}

/// How a category is coded on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CategoryKind {
    /// `category` is an array of codes from one system (AllergyIntolerance).
    Codes(&'static str),
    /// `category` is one CodeableConcept or an array of them.
    CodeableConcepts,
}

/// A date search parameter: its name and the elements (a choice type's variants) it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateParam {
    pub name: &'static str,
    pub elements: &'static [&'static str],
}

impl ResourceType {
    pub const ALL: [ResourceType; 11] = [
        ResourceType::AllergyIntolerance,
        ResourceType::Condition,
        ResourceType::DiagnosticReport,
        ResourceType::DocumentReference,
        ResourceType::Encounter,
        ResourceType::Immunization,
        ResourceType::MedicationRequest,
        ResourceType::MedicationStatement,
        ResourceType::Observation,
        ResourceType::Procedure,
        ResourceType::ServiceRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::AllergyIntolerance => "AllergyIntolerance",
            ResourceType::Condition => "Condition",
            ResourceType::DiagnosticReport => "DiagnosticReport",
            ResourceType::DocumentReference => "DocumentReference",
            ResourceType::Encounter => "Encounter",
            ResourceType::Immunization => "Immunization",
            ResourceType::MedicationRequest => "MedicationRequest",
            ResourceType::MedicationStatement => "MedicationStatement",
            ResourceType::Observation => "Observation",
            ResourceType::Procedure => "Procedure",
            ResourceType::ServiceRequest => "ServiceRequest",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The element that references the patient (`patient` search parameter's path).
    pub fn patient_element(self) -> &'static str {
        match self {
            ResourceType::AllergyIntolerance | ResourceType::Immunization => "patient",
            _ => "subject",
        }
    }

    /// Date search parameters FHIR R4 defines for the type, with the elements they search.
    pub fn date_params(self) -> &'static [DateParam] {
        use ResourceType::*;
        match self {
            AllergyIntolerance => &[DateParam {
                name: "date",
                elements: &["recordedDate"],
            }],
            Condition => &[
                DateParam {
                    name: "onset-date",
                    elements: &["onsetDateTime", "onsetPeriod"],
                },
                DateParam {
                    name: "recorded-date",
                    elements: &["recordedDate"],
                },
                DateParam {
                    name: "abatement-date",
                    elements: &["abatementDateTime", "abatementPeriod"],
                },
            ],
            DiagnosticReport => &[
                DateParam {
                    name: "date",
                    elements: &["effectiveDateTime", "effectivePeriod"],
                },
                DateParam {
                    name: "issued",
                    elements: &["issued"],
                },
            ],
            DocumentReference => &[
                DateParam {
                    name: "date",
                    elements: &["date"],
                },
                DateParam {
                    name: "period",
                    elements: &["context.period"],
                },
            ],
            Encounter => &[DateParam {
                name: "date",
                elements: &["period"],
            }],
            Immunization => &[DateParam {
                name: "date",
                elements: &["occurrenceDateTime"],
            }],
            MedicationRequest => &[DateParam {
                name: "authoredon",
                elements: &["authoredOn"],
            }],
            MedicationStatement => &[DateParam {
                name: "effective",
                elements: &["effectiveDateTime", "effectivePeriod"],
            }],
            Observation => &[DateParam {
                name: "date",
                elements: &["effectiveDateTime", "effectivePeriod", "effectiveInstant"],
            }],
            Procedure => &[DateParam {
                name: "date",
                elements: &["performedDateTime", "performedPeriod"],
            }],
            ServiceRequest => &[
                DateParam {
                    name: "authored",
                    elements: &["authoredOn"],
                },
                DateParam {
                    name: "occurrence",
                    elements: &["occurrenceDateTime", "occurrencePeriod"],
                },
            ],
        }
    }

    /// Where FHIR R4 defines a `category` search parameter for the type.
    pub fn category(self) -> Option<CategoryKind> {
        use ResourceType::*;
        match self {
            AllergyIntolerance => Some(CategoryKind::Codes(
                "http://hl7.org/fhir/allergy-intolerance-category",
            )),
            Condition | DiagnosticReport | DocumentReference | MedicationRequest
            | MedicationStatement | Observation | Procedure | ServiceRequest => {
                Some(CategoryKind::CodeableConcepts)
            }
            Encounter | Immunization => None,
        }
    }

    /// The clinically relevant date used to order a merged record, newest first.
    pub fn sort_elements(self) -> &'static [&'static str] {
        use ResourceType::*;
        match self {
            AllergyIntolerance => &["recordedDate", "onsetDateTime"],
            Condition => &["recordedDate", "onsetDateTime", "onsetPeriod"],
            DiagnosticReport => &["effectiveDateTime", "effectivePeriod", "issued"],
            DocumentReference => &["date", "context.period"],
            Encounter => &["period"],
            Immunization => &["occurrenceDateTime"],
            MedicationRequest => &["authoredOn"],
            MedicationStatement => &["effectiveDateTime", "effectivePeriod", "dateAsserted"],
            Observation => &[
                "effectiveDateTime",
                "effectivePeriod",
                "effectiveInstant",
                "issued",
            ],
            Procedure => &["performedDateTime", "performedPeriod"],
            ServiceRequest => &["authoredOn", "occurrenceDateTime"],
        }
    }
}

/// Follows a dotted element path (`context.period`) through a resource.
pub fn element<'a>(resource: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(resource, |v, key| v.get(key))
}

/// The `resourceType` of a JSON resource.
pub fn resource_type(resource: &Value) -> Option<&str> {
    resource.get("resourceType").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::parse(t.as_str()), Some(t));
        }
        assert_eq!(ResourceType::parse("Patient"), None);
        assert_eq!(ResourceType::parse("allergyintolerance"), None);
    }

    #[test]
    fn encounter_and_immunization_have_no_category() {
        assert_eq!(ResourceType::Encounter.category(), None);
        assert_eq!(ResourceType::Immunization.category(), None);
        assert!(ResourceType::Observation.category().is_some());
    }

    #[test]
    fn element_follows_paths() {
        let v = serde_json::json!({"context": {"period": {"start": "2020"}}});
        assert_eq!(element(&v, "context.period.start").unwrap(), "2020");
        assert!(element(&v, "context.nope").is_none());
    }
}
