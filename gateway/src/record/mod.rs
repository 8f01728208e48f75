//! Where a region's own record comes from: a FHIR R4 server in production, or a directory of
//! FHIR JSON served from memory. Both answer the same question the same way: the Patient
//! resources that carry the NHS number, and the items that belong to them.

pub mod backend_auth;
pub mod directory;
pub mod fhir_server;
pub mod pages;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::fhir::item::Item;
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use crate::query::PatientQuery;

/// A region's answer about one patient, before tagging and merging.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordAnswer {
    /// The region's Patient resources carrying the NHS number (normally one).
    pub patients: Vec<Value>,
    /// The items that match the query and reference one of those patients.
    pub items: Vec<Item>,
    /// How many items the region's release policy withheld (never which ones).
    pub withheld: usize,
    /// Set when the region failed and this is its cached answer, this many seconds old.
    pub stale_seconds: Option<u64>,
    /// Where the answer stopped short (a bound, the deadline, a bad page); empty when whole.
    pub cuts: Vec<pages::Cut>,
    /// Resources the items reference (practitioners, organisations, locations, medications,
    /// ...), held by the same region.
    pub included: Vec<Item>,
}

impl RecordAnswer {
    /// Whether the same question could be answered in full a moment later (so the answer is
    /// not worth keeping).
    pub fn cut_for_now(&self) -> bool {
        self.cuts.iter().any(|c| c.reason.transient())
    }

    /// The bytes of its resources' JSON (what it weighs in a cache).
    pub fn bytes(&self) -> usize {
        let patients: usize = self
            .patients
            .iter()
            .map(|p| serde_json::to_vec(p).map_or(0, |v| v.len()))
            .sum();
        patients
            + self
                .items
                .iter()
                .chain(&self.included)
                .map(Item::bytes)
                .sum::<usize>()
    }
}

/// Why a record could not answer. Messages carry no patient data.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record server could not be reached: {0}")]
    Unreachable(String),
    #[error("the record server answered HTTP {0}")]
    Status(u16),
    #[error("the record server's answer is not a FHIR Bundle: {0}")]
    Invalid(String),
    #[error("the record server took longer than its timeout")]
    Timeout,
}

/// A region's own record.
pub trait RecordSource: Send + Sync {
    /// Whether answers are worth caching (not for a record already held in memory).
    fn cacheable(&self) -> bool {
        true
    }
    /// Whether every answer is a pure function of the query for as long as this source
    /// lives (a record loaded once into memory), so a view built from one can be kept.
    fn immutable(&self) -> bool {
        false
    }
    /// Answers `query` within `budget` (a source that reads pages stops short of it, with a
    /// cut, rather than run out of time with nothing).
    fn search<'a>(
        &'a self,
        query: &'a PatientQuery,
        budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<RecordAnswer, RecordError>>;

    /// One resource by type and this record's id (`None` when it holds none): what
    /// `GET /fhir/{Type}/{region}.{id}` resolves.
    fn read<'a>(
        &'a self,
        rtype: &'a str,
        id: &'a str,
        budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<Value>, RecordError>>;

    /// The patient's Consent resources held in this record (any status; the reader decides).
    fn consents<'a>(
        &'a self,
        nhs: &'a crate::fhir::nhs::NhsNumber,
    ) -> BoxFuture<'a, Result<Vec<Value>, RecordError>>;
}

/// What `items` (and `patients`: their GP practice, their managing organisation) reference
/// that is not among the items: `(type, id)` of every relative reference to a resource other
/// than a Patient, in order, each once. A `$everything` includes these.
pub fn referenced_elsewhere(items: &[Item], patients: &[Value]) -> Vec<(String, String)> {
    let held: std::collections::HashSet<(&str, &str)> =
        items.iter().map(|i| (i.rtype(), i.id())).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let referenced = items.iter().flat_map(|i| i.relative_references()).chain(
        patients
            .iter()
            .flat_map(crate::fhir::reference::relative_references),
    );
    for (t, id) in referenced {
        if t != "Patient" && !held.contains(&(t, id)) && seen.insert((t, id)) {
            out.push((t.to_owned(), id.to_owned()));
        }
    }
    out
}

/// Does a Patient resource carry this NHS number?
pub fn has_nhs_number(patient: &Value, nhs: &str) -> bool {
    patient
        .get("identifier")
        .and_then(Value::as_array)
        .is_some_and(|ids| {
            ids.iter().any(|i| {
                i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM)
                    && i.get("value").and_then(Value::as_str) == Some(nhs)
            })
        })
}

/// The NHS number a Patient resource carries.
pub fn nhs_of(patient: &Value) -> Option<crate::fhir::nhs::NhsNumber> {
    patient
        .get("identifier")?
        .as_array()?
        .iter()
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
        .find_map(|i| crate::fhir::nhs::NhsNumber::parse(i.get("value")?.as_str()?).ok())
}

/// Which patient a clinical resource read by id is about, given the Patient resources sent
/// with it:
/// `Some(None)` for a type about no patient, `None` when it cannot be told (then it is not
/// shown: consent could not be applied).
pub fn patient_of(
    resource: &Value,
    patients: &[Value],
) -> Option<Option<crate::fhir::nhs::NhsNumber>> {
    let rtype = resource.get("resourceType").and_then(Value::as_str)?;
    let Some(rt) = crate::fhir::types::ResourceType::parse(rtype) else {
        return Some(None);
    };
    match patient_link(resource, rt.patient_element())? {
        PatientLink::Nhs(n) => crate::fhir::nhs::NhsNumber::parse(&n).ok().map(Some),
        PatientLink::Local(id) => patients
            .iter()
            .filter(|p| p.get("id").and_then(Value::as_str) == Some(id.as_str()))
            .find_map(nhs_of)
            .map(Some),
    }
}

/// What an item's patient reference points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatientLink {
    /// A literal reference to a region-local Patient id.
    Local(String),
    /// A logical reference by NHS number.
    Nhs(String),
}

/// Reads an item's patient reference (`subject` or `patient`): a literal `Patient/{id}`
/// (relative or absolute) or a logical reference by NHS number.
pub fn patient_link(item: &Value, element: &str) -> Option<PatientLink> {
    let r = item.get(element)?;
    if let Some(reference) = r.get("reference").and_then(Value::as_str) {
        let mut parts = reference.rsplit('/');
        let id = parts.next()?;
        return (parts.next() == Some("Patient") && !id.is_empty())
            .then(|| PatientLink::Local(id.to_owned()));
    }
    let ident = r.get("identifier")?;
    (ident.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
        .then(|| {
            ident
                .get("value")
                .and_then(Value::as_str)
                .map(|v| PatientLink::Nhs(v.to_owned()))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::nhs::NhsNumber;
    use serde_json::json;

    #[test]
    fn links_from_literal_and_logical_references() {
        let a = json!({"subject": {"reference": "Patient/p1"}});
        assert_eq!(
            patient_link(&a, "subject"),
            Some(PatientLink::Local("p1".into()))
        );
        let b = json!({"subject": {"reference": "https://r.example/fhir/Patient/p2"}});
        assert_eq!(
            patient_link(&b, "subject"),
            Some(PatientLink::Local("p2".into()))
        );
        let c = json!({"patient": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9000000009"}}});
        assert_eq!(
            patient_link(&c, "patient"),
            Some(PatientLink::Nhs("9000000009".into()))
        );
        let d = json!({"subject": {"reference": "Group/g1"}});
        assert_eq!(patient_link(&d, "subject"), None);
    }

    #[test]
    fn a_clinical_resource_is_about_the_patient_it_links_to_or_not_shown() {
        let patient = json!({"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9000000009"}]});
        let obs = json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            patient_of(&obs, std::slice::from_ref(&patient)),
            Some(Some(NhsNumber::parse("9000000009").unwrap()))
        );
        // Its Patient was not sent: consent cannot be applied, so it is not shown.
        assert_eq!(patient_of(&obs, &[]), None);
        let orphan = json!({"resourceType": "Observation", "id": "o"});
        assert_eq!(patient_of(&orphan, &[patient]), None);
        let practitioner = json!({"resourceType": "Practitioner", "id": "pr"});
        assert_eq!(patient_of(&practitioner, &[]), Some(None));
    }
}
