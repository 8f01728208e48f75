//! The embedded record: a directory of FHIR R4 JSON (Bundles, single resources, or NDJSON),
//! loaded into memory and indexed by patient, answering with the same search semantics as the
//! FHIR server source.

use std::collections::HashMap;
use std::path::Path;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::fhir::item::Item;

use super::{PatientLink, RecordAnswer, RecordError, RecordSource, has_nhs_number, patient_link};
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use crate::fhir::types::{ResourceType, resource_type};
use crate::query::PatientQuery;

/// Why a record directory could not be loaded. Names the file and line, never its content.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not FHIR JSON: {message}")]
    Json {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: a resource without a resourceType or id")]
    NotAResource { path: String },
}

/// A region's record held in memory.
#[derive(Debug, Default)]
pub struct DirectoryRecord {
    patients: Vec<Value>,
    patients_by_nhs: HashMap<String, Vec<usize>>,
    /// Each item as a tree (what queries match against) and as text with its view (what
    /// answers carry, shared rather than copied).
    items: Vec<(ResourceType, Value, Item)>,
    items_by_link: HashMap<PatientLink, Vec<usize>>,
    consents: Vec<Value>,
    consents_by_link: HashMap<PatientLink, Vec<usize>>,
    /// Resources of other types (practitioners, organisations, medicines, ...), which items
    /// reference.
    others: Vec<(Value, Item)>,
    /// Every resource by (type, id): where it is held.
    by_ref: HashMap<(String, String), Held>,
}

/// Where a resource is held in a [`DirectoryRecord`].
#[derive(Debug, Clone, Copy)]
enum Held {
    Patient(usize),
    Item(usize),
    Other(usize),
}

impl DirectoryRecord {
    /// Loads every `*.json` and `*.ndjson` file in a directory (not recursively).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut record = DirectoryRecord::default();
        for path in files {
            let shown = path.display().to_string();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "json" && ext != "ndjson" {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                path: shown.clone(),
                source,
            })?;
            if ext == "ndjson" {
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let v = serde_json::from_str(line).map_err(|e| LoadError::Json {
                        path: shown.clone(),
                        line: n + 1,
                        message: e.to_string(),
                    })?;
                    record.add(v, &shown)?;
                }
            } else {
                let v = serde_json::from_str(&text).map_err(|e| LoadError::Json {
                    path: shown.clone(),
                    line: e.line(),
                    message: e.to_string(),
                })?;
                record.add(v, &shown)?;
            }
        }
        Ok(record)
    }

    /// Builds a record from resources already in memory (tests, benchmarks).
    pub fn from_resources(resources: impl IntoIterator<Item = Value>) -> Result<Self, LoadError> {
        let mut record = DirectoryRecord::default();
        for r in resources {
            record.add(r, "<memory>")?;
        }
        Ok(record)
    }

    fn add(&mut self, v: Value, path: &str) -> Result<(), LoadError> {
        let key = match (resource_type(&v), v.get("id").and_then(Value::as_str)) {
            (Some(t), Some(id)) if t != "Bundle" => Some((t.to_owned(), id.to_owned())),
            _ => None,
        };
        let held = match resource_type(&v) {
            Some("Patient") => Some(Held::Patient(self.patients.len())),
            Some("Consent" | "Bundle") | None => None,
            Some(t) if ResourceType::parse(t).is_some() => Some(Held::Item(self.items.len())),
            Some(_) => Some(Held::Other(self.others.len())),
        };
        if let (Some(key), Some(held)) = (key, held) {
            self.by_ref.insert(key, held);
        }
        match resource_type(&v) {
            Some("Bundle") => {
                let entries = v
                    .get("entry")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for e in entries {
                    if let Some(r) = e.get("resource") {
                        self.add(r.clone(), path)?;
                    }
                }
                Ok(())
            }
            Some(_) if v.get("id").and_then(Value::as_str).is_none() => {
                Err(LoadError::NotAResource {
                    path: path.to_owned(),
                })
            }
            Some("Patient") => {
                let index = self.patients.len();
                for ident in v
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if ident.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM)
                        && let Some(nhs) = ident.get("value").and_then(Value::as_str)
                    {
                        self.patients_by_nhs
                            .entry(nhs.to_owned())
                            .or_default()
                            .push(index);
                    }
                }
                self.patients.push(v);
                Ok(())
            }
            Some("Consent") => {
                if let Some(link) = patient_link(&v, "patient") {
                    self.consents_by_link
                        .entry(link)
                        .or_default()
                        .push(self.consents.len());
                }
                self.consents.push(v);
                Ok(())
            }
            Some(t) => {
                // Types the gateway does not federate are kept out of the index, counted.
                match ResourceType::parse(t) {
                    Some(rt) => {
                        if let Some(link) = patient_link(&v, rt.patient_element()) {
                            self.items_by_link
                                .entry(link)
                                .or_default()
                                .push(self.items.len());
                        }
                        let item = Item::from_value(&v).map_err(|_| LoadError::NotAResource {
                            path: path.to_owned(),
                        })?;
                        self.items.push((rt, v, item));
                    }
                    None => {
                        let item = Item::from_value(&v).map_err(|_| LoadError::NotAResource {
                            path: path.to_owned(),
                        })?;
                        self.others.push((v, item));
                    }
                }
                Ok(())
            }
            None => Err(LoadError::NotAResource {
                path: path.to_owned(),
            }),
        }
    }

    /// Counts for the start-up log line: (patients, items, resources of other types).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.patients.len(), self.items.len(), self.others.len())
    }

    /// One resource by type and id.
    pub fn resource(&self, rtype: &str, id: &str) -> Option<&Value> {
        match self.by_ref.get(&(rtype.to_owned(), id.to_owned()))? {
            Held::Patient(i) => self.patients.get(*i),
            Held::Item(i) => self.items.get(*i).map(|(_, v, _)| v),
            Held::Other(i) => self.others.get(*i).map(|(v, _)| v),
        }
    }

    /// One resource other than a Patient by type and id, as text with its view.
    fn item(&self, rtype: &str, id: &str) -> Option<&Item> {
        match self.by_ref.get(&(rtype.to_owned(), id.to_owned()))? {
            Held::Patient(_) => None,
            Held::Item(i) => self.items.get(*i).map(|(_, _, item)| item),
            Held::Other(i) => self.others.get(*i).map(|(_, item)| item),
        }
    }

    /// The patient's Patient resources: indexed under the NHS number, and carrying it.
    fn patients_of(&self, nhs: &str) -> Vec<&Value> {
        self.patients_by_nhs
            .get(nhs)
            .into_iter()
            .flatten()
            .map(|&i| &self.patients[i])
            .filter(|p| has_nhs_number(p, nhs))
            .collect()
    }

    /// Indices of what references the patient (by local Patient id or by NHS number), in order.
    fn linked(
        index: &HashMap<PatientLink, Vec<usize>>,
        patients: &[&Value],
        nhs: &str,
    ) -> Vec<usize> {
        let mut links: Vec<PatientLink> = patients
            .iter()
            .filter_map(|p| p.get("id").and_then(Value::as_str))
            .map(|id| PatientLink::Local(id.to_owned()))
            .collect();
        links.push(PatientLink::Nhs(nhs.to_owned()));
        let mut indices: Vec<usize> = links
            .iter()
            .filter_map(|l| index.get(l))
            .flatten()
            .copied()
            .collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    }

    /// The patient's Consent resources (by local Patient id or NHS number).
    pub fn consents_of(&self, nhs: &str) -> Vec<Value> {
        let patients = self.patients_of(nhs);
        Self::linked(&self.consents_by_link, &patients, nhs)
            .into_iter()
            .map(|i| self.consents[i].clone())
            .collect()
    }

    /// Answers a query synchronously (the whole record is in memory).
    pub fn answer(&self, query: &PatientQuery) -> RecordAnswer {
        let nhs = query.nhs_number.as_str();
        let patients = self.patients_of(nhs);
        let types = query.types();
        let indices = Self::linked(&self.items_by_link, &patients, nhs);
        let items: Vec<Item> = indices
            .into_iter()
            .map(|i| &self.items[i])
            .filter(|(rt, v, _)| types.contains(rt) && query.matches(*rt, v))
            .map(|(_, _, item)| item.clone())
            .collect();
        // `$everything` also gives what the items reference, as a FHIR server's does.
        let patients: Vec<Value> = patients.into_iter().cloned().collect();
        let included = match query.operation {
            crate::query::Operation::Everything { .. } => {
                super::referenced_elsewhere(&items, &patients)
                    .iter()
                    .filter_map(|(t, id)| self.item(t, id).cloned())
                    .collect()
            }
            _ => Vec::new(),
        };
        RecordAnswer {
            patients,
            items,
            included,
            ..RecordAnswer::default()
        }
    }
}

impl RecordSource for DirectoryRecord {
    fn cacheable(&self) -> bool {
        false
    }

    /// Loaded once and never changed (no interior mutability).
    fn immutable(&self) -> bool {
        true
    }

    fn search<'a>(
        &'a self,
        query: &'a PatientQuery,
        _budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<RecordAnswer, RecordError>> {
        Box::pin(async move { Ok(self.answer(query)) })
    }

    fn read<'a>(
        &'a self,
        rtype: &'a str,
        id: &'a str,
        _budget: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<Value>, RecordError>> {
        Box::pin(async move { Ok(self.resource(rtype, id).cloned()) })
    }

    fn consents<'a>(
        &'a self,
        nhs: &'a crate::fhir::nhs::NhsNumber,
    ) -> BoxFuture<'a, Result<Vec<Value>, RecordError>> {
        Box::pin(async move { Ok(self.consents_of(nhs.as_str())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Operation, parse_search};
    use serde_json::json;

    fn record() -> DirectoryRecord {
        DirectoryRecord::from_resources([
            json!({"resourceType": "Patient", "id": "local-1", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9000000009"}]}),
            json!({"resourceType": "Patient", "id": "local-2", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}]}),
            json!({"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/local-1"}, "recordedDate": "2023-01-01"}),
            json!({"resourceType": "AllergyIntolerance", "id": "a2", "patient": {"reference": "Patient/local-2"}, "recordedDate": "2023-01-01"}),
            json!({"resourceType": "Condition", "id": "c1", "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9000000009"}}}),
            json!({"resourceType": "Flag", "id": "f1", "subject": {"reference": "Patient/local-1"}}),
        ])
        .unwrap()
    }

    fn q(t: &str, extra: &[(&str, &str)]) -> PatientQuery {
        let mut params = vec![(
            "patient.identifier".to_string(),
            format!("{NHS_NUMBER_SYSTEM}|9000000009"),
        )];
        params.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        parse_search(t, &params, false).unwrap().query
    }

    #[test]
    fn answers_only_the_named_patient() {
        let a = record().answer(&q("AllergyIntolerance", &[]));
        assert_eq!(a.patients.len(), 1);
        assert_eq!(a.items.len(), 1);
        assert_eq!(a.items[0].id(), "a1");
    }

    #[test]
    fn logical_references_by_nhs_number_are_found() {
        let a = record().answer(&q("Condition", &[]));
        assert_eq!(a.items.len(), 1);
    }

    #[test]
    fn applies_date_filters() {
        assert!(
            record()
                .answer(&q("AllergyIntolerance", &[("date", "ge2024")]))
                .items
                .is_empty()
        );
    }

    #[test]
    fn everything_returns_all_federated_types_and_not_others() {
        let mut query = q("Condition", &[]);
        query.operation = Operation::Everything { types: vec![] };
        let a = record().answer(&query);
        assert_eq!(a.items.len(), 2, "allergy and condition, not the Flag");
        assert_eq!(
            record().counts(),
            (2, 3, 1),
            "two patients, three items, the Flag skipped"
        );
    }

    #[test]
    fn loads_bundles_and_ndjson_from_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9000000009"}]}}]}).to_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.ndjson"), "{\"resourceType\":\"Condition\",\"id\":\"c\",\"subject\":{\"reference\":\"Patient/p\"}}\n\n").unwrap();
        std::fs::write(dir.path().join("README.txt"), "ignored").unwrap();
        let r = DirectoryRecord::load(dir.path()).unwrap();
        assert_eq!(r.counts(), (1, 1, 0));
        std::fs::write(
            dir.path().join("c.ndjson"),
            "{\"resourceType\":\"Condition\",\"id\":\"c2\"}\nnot json\n",
        )
        .unwrap();
        let err = DirectoryRecord::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("c.ndjson:2"), "{err}");
    }
}
