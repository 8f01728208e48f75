//! The production record: the region's own FHIR R4 server. The gateway finds the patient by NHS
//! number, then searches each asked type by the server's local patient id, following `next`
//! links on the same server up to a page limit.

use std::time::Duration;

use futures::future::{BoxFuture, try_join_all};
use serde_json::Value;

use super::{RecordAnswer, RecordError, RecordSource, has_nhs_number};
use crate::client::{FetchError, bundle_to_answer, describe, get_fhir_json, next_link};
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use crate::query::{Operation, PatientQuery};

/// At most this many pages are read per search; a longer answer is an error, not a silent cut.
pub const MAX_PAGES: usize = 50;

pub struct FhirServerRecord {
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
}

impl FhirServerRecord {
    pub fn new(base: &str, timeout: Duration, max_bytes: usize) -> Result<Self, RecordError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RecordError::Unreachable(describe(e)))?;
        Ok(FhirServerRecord {
            base: base.trim_end_matches('/').to_owned(),
            client,
            timeout,
            max_bytes,
        })
    }

    async fn get_all(&self, first: reqwest::RequestBuilder) -> Result<Vec<Value>, RecordError> {
        let mut pages = vec![
            get_fhir_json(first, self.max_bytes, self.timeout)
                .await
                .map_err(record_error)?,
        ];
        while let Some(next) = pages.last().and_then(next_link).map(str::to_owned) {
            if pages.len() >= MAX_PAGES {
                return Err(RecordError::Invalid(format!("more than {MAX_PAGES} pages")));
            }
            // Only follow links on the same server.
            if !next.starts_with(&self.base) {
                return Err(RecordError::Invalid(
                    "a next link points to another server".into(),
                ));
            }
            pages.push(
                get_fhir_json(self.client.get(&next), self.max_bytes, self.timeout)
                    .await
                    .map_err(record_error)?,
            );
        }
        Ok(pages)
    }

    async fn answer(&self, query: &PatientQuery) -> Result<RecordAnswer, RecordError> {
        let nhs = query.nhs_number.as_str();
        let patient_pages = self
            .get_all(
                self.client
                    .get(format!("{}/Patient", self.base))
                    .query(&[("identifier", format!("{NHS_NUMBER_SYSTEM}|{nhs}"))]),
            )
            .await?;
        let mut answer = RecordAnswer::default();
        for page in patient_pages {
            let a = bundle_to_answer(page).map_err(record_error)?;
            answer
                .patients
                .extend(a.patients.into_iter().filter(|p| has_nhs_number(p, nhs)));
        }
        if matches!(
            query.operation,
            Operation::PatientSearch | Operation::PatientRead
        ) {
            return Ok(answer);
        }
        let ids: Vec<String> = answer
            .patients
            .iter()
            .filter_map(|p| p.get("id").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        let (_, filters) = query.to_request();
        let filters: Vec<(String, String)> = filters
            .into_iter()
            .filter(|(k, _)| k != "patient.identifier" && k != "_type")
            .collect();
        let searches = query
            .types()
            .into_iter()
            .flat_map(|t| ids.iter().map(move |id| (t, id)))
            .map(|(t, id)| {
                let mut params = vec![("patient".to_owned(), format!("Patient/{id}"))];
                params.extend(filters.iter().cloned());
                self.get_all(
                    self.client
                        .get(format!("{}/{}", self.base, t.as_str()))
                        .query(&params),
                )
            });
        for pages in try_join_all(searches).await? {
            for page in pages {
                answer
                    .items
                    .extend(bundle_to_answer(page).map_err(record_error)?.items);
            }
        }
        Ok(answer)
    }
}

fn record_error(e: FetchError) -> RecordError {
    match e {
        FetchError::Timeout(_) => RecordError::Timeout,
        FetchError::Connect(m) => RecordError::Unreachable(m),
        FetchError::Status(s) => RecordError::Status(s),
        other => RecordError::Invalid(other.to_string()),
    }
}

impl RecordSource for FhirServerRecord {
    fn search<'a>(
        &'a self,
        query: &'a PatientQuery,
    ) -> BoxFuture<'a, Result<RecordAnswer, RecordError>> {
        Box::pin(self.answer(query))
    }

    fn consents<'a>(
        &'a self,
        nhs: &'a crate::fhir::nhs::NhsNumber,
    ) -> BoxFuture<'a, Result<Vec<Value>, RecordError>> {
        Box::pin(async move {
            let read = PatientQuery::new(Operation::PatientRead, nhs.clone(), None);
            let patients = self.answer(&read).await?.patients;
            let mut consents = Vec::new();
            for id in patients
                .iter()
                .filter_map(|p| p.get("id").and_then(Value::as_str))
            {
                let pages = self
                    .get_all(
                        self.client
                            .get(format!("{}/Consent", self.base))
                            .query(&[("patient", format!("Patient/{id}"))]),
                    )
                    .await?;
                for page in pages {
                    for entry in page
                        .get("entry")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(r) = entry.get("resource").filter(|r| {
                            r.get("resourceType").and_then(Value::as_str) == Some("Consent")
                        }) {
                            consents.push(r.clone());
                        }
                    }
                }
            }
            Ok(consents)
        })
    }
}
