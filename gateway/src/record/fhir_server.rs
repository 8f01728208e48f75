//! The production record: the region's own FHIR R4 server. The gateway finds the patient by NHS
//! number, then reads the patient's items: through `Patient/$everything` when the server's
//! CapabilityStatement offers it and the query is an `$everything` without filters the operation
//! does not take, otherwise one search per asked type, all at once.
//!
//! Every page of every answer is read. What bounds a region's answer is items and bytes per
//! request ([`Bounds`], `record.max_items` and `record.max_bytes`) and the query's deadline,
//! never a page count; whatever stops an answer short is a [`Cut`] the clinician is told about
//! (see [`super::pages`]).

use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use serde_json::Value;
use tokio::time::Instant;

use super::pages::{Allowance, Bounds, Cut, CutReason, Followed, Page, ServerBase, add_cut};
use super::{RecordAnswer, RecordError, RecordSource, has_nhs_number};
use crate::client::{FetchError, describe, get_fhir_body, get_fhir_json_with_meta};
use crate::fhir::item::Item;
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use crate::fhir::types::ResourceType;
use crate::query::{Operation, PatientQuery};

/// What the record server source is told by its configuration.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The server's FHIR base.
    pub base: String,
    /// Its timeout for one request (and the source's whole budget when the query gives none).
    pub timeout: Duration,
    /// The `_count` asked for (the server may give fewer a page).
    pub page_size: u32,
    pub bounds: Bounds,
}

pub struct FhirServerRecord {
    settings: ServerSettings,
    server: ServerBase,
    client: reqwest::Client,
    /// The token every request carries, when the server requires one (SMART Backend
    /// Services, [`super::backend_auth`]).
    backend: Option<super::backend_auth::BackendToken>,
    /// Whether the server offers `Patient/$everything`, once its CapabilityStatement was read.
    everything: tokio::sync::OnceCell<bool>,
}

/// What one search read before it ended, whole or cut.
#[derive(Default)]
struct Read {
    matches: Vec<Item>,
    includes: Vec<Item>,
    cut: Option<Cut>,
}

/// The part of the budget kept back so a cut answer still reaches the merge in time.
fn working_time(budget: Duration) -> Duration {
    budget.saturating_sub((budget / 10).max(Duration::from_millis(20)))
}

impl FhirServerRecord {
    pub fn new(settings: ServerSettings) -> Result<Self, RecordError> {
        let server = ServerBase::parse(&settings.base)
            .map_err(|e| RecordError::Unreachable(format!("record.fhir_base: {e}")))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RecordError::Unreachable(describe(e)))?;
        Ok(FhirServerRecord {
            settings: ServerSettings {
                base: settings.base.trim_end_matches('/').to_owned(),
                ..settings
            },
            server,
            client,
            backend: None,
            everything: tokio::sync::OnceCell::new(),
        })
    }

    /// Every request carries a token from `backend` (the server requires one).
    pub fn with_backend_auth(mut self, backend: super::backend_auth::BackendToken) -> Self {
        self.backend = Some(backend);
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.base)
    }

    /// A GET of `url`, with the token held when the server requires one and the serving
    /// request's `traceparent`.
    fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        let mut request = self.client.get(url);
        if let Some(parent) = crate::trace::outgoing() {
            request = request.header(crate::trace::TRACEPARENT, parent);
        }
        match self.backend.as_ref().and_then(|b| b.current()) {
            Some(token) => request.bearer_auth(token.as_str()),
            None => request,
        }
    }

    /// Runs one of the source's reads with a fresh token when the server requires one; a token
    /// the server refuses (401) is dropped, so the next read fetches another.
    async fn authorized<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, RecordError>>,
    ) -> Result<T, RecordError> {
        let Some(backend) = &self.backend else {
            return read.await;
        };
        backend.ensure().await.map_err(|e| {
            RecordError::Unreachable(format!("no token for the record server: {e}"))
        })?;
        let sent = backend.current();
        let result = read.await;
        if let (Err(RecordError::Status(401)), Some(token)) = (&result, sent) {
            backend.refused(&token).await;
        }
        result
    }

    /// Reads every page of a search that starts at `first`, within `allowance` and by
    /// `deadline`. `label` names the type the search is for, in a cut. Only a first page that
    /// cannot be read at all is an error; anything later ends the search with a cut.
    async fn read_all(
        &self,
        first: reqwest::RequestBuilder,
        label: &str,
        allowance: &Allowance,
        deadline: Instant,
    ) -> Result<Read, RecordError> {
        let mut read = Read::default();
        let mut followed = Followed::default();
        let mut request = first;
        let mut total: Option<usize> = None;
        let mut page_number = 0usize;
        loop {
            // What a cut now leaves out: the rest of the server's total, when it gave one.
            let known_total = total;
            let cut = |reason: CutReason, read: &Read, detail: String| {
                let left_out = known_total.map(|t| t.saturating_sub(read.matches.len()));
                Some(Cut::new(reason, label, left_out, detail))
            };
            let time_left = deadline.saturating_duration_since(Instant::now());
            if time_left.is_zero() {
                if page_number == 0 {
                    return Err(RecordError::Timeout);
                }
                read.cut = cut(CutReason::Deadline, &read, String::new());
                return Ok(read);
            }
            let max_bytes = allowance.bytes_left();
            let fetched =
                get_fhir_body(request, max_bytes, time_left.min(self.settings.timeout)).await;
            let (body, bytes) = match fetched {
                Ok((body, _)) => {
                    let bytes = body.len();
                    (body, bytes)
                }
                Err(FetchError::TooLarge(_)) => {
                    read.cut = cut(CutReason::ByteLimit, &read, allowance.byte_cut_detail());
                    return Ok(read);
                }
                Err(FetchError::Timeout(_)) if page_number > 0 => {
                    read.cut = cut(CutReason::Deadline, &read, String::new());
                    return Ok(read);
                }
                Err(e) if page_number == 0 => return Err(record_error(e)),
                Err(e) => {
                    read.cut = cut(CutReason::PageFailed, &read, e.to_string());
                    return Ok(read);
                }
            };
            let Some(page) = Page::read(body) else {
                if page_number == 0 {
                    return Err(RecordError::Invalid(
                        "the answer is not a FHIR searchset Bundle".into(),
                    ));
                }
                read.cut = cut(CutReason::InvalidPage, &read, String::new());
                return Ok(read);
            };
            if page_number == 0 {
                total = page.total;
            }
            page_number += 1;
            if let Err((reason, detail)) =
                allowance.take(page.matches.len() + page.includes.len(), bytes)
            {
                read.cut = cut(reason, &read, detail);
                return Ok(read);
            }
            read.matches.extend(page.matches);
            read.includes.extend(page.includes);
            let Some(next) = page.next else {
                return Ok(read);
            };
            match followed.next(&self.server, &next) {
                Ok(url) => request = self.get(url),
                Err(reason) => {
                    read.cut = cut(reason, &read, String::new());
                    return Ok(read);
                }
            }
        }
    }

    /// Whether the server's CapabilityStatement offers `Patient/$everything` (read once; a
    /// server that cannot say is searched type by type).
    async fn offers_everything(&self, deadline: Instant) -> bool {
        *self
            .everything
            .get_or_init(|| async {
                let time_left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.settings.timeout);
                match get_fhir_json_with_meta(
                    self.get(self.url("metadata")),
                    4 * 1024 * 1024,
                    time_left,
                )
                .await
                {
                    Ok((cs, _, _)) => capability_offers_everything(&cs),
                    Err(e) => {
                        tracing::warn!(error = %e, "the record server's CapabilityStatement could not be read; searching type by type");
                        false
                    }
                }
            })
            .await
    }

    async fn answer(
        &self,
        query: &PatientQuery,
        budget: Duration,
    ) -> Result<RecordAnswer, RecordError> {
        let deadline = Instant::now() + working_time(budget);
        let allowance = &Allowance::new(self.settings.bounds);
        let nhs = query.nhs_number.as_str();
        let patient_read = self
            .read_all(
                self.get(self.url("Patient")).query(&[
                    ("identifier", format!("{NHS_NUMBER_SYSTEM}|{nhs}")),
                    ("_count", self.settings.page_size.to_string()),
                ]),
                "Patient",
                allowance,
                deadline,
            )
            .await?;
        if let Some(cut) = patient_read.cut {
            // Without every Patient resource the items cannot be found: nothing partial here.
            return Err(RecordError::Invalid(format!(
                "the patient could not be looked up: {}",
                cut.describe()
            )));
        }
        let mut answer = RecordAnswer {
            patients: patient_read
                .matches
                .iter()
                .map(Item::to_value)
                .filter(|p| has_nhs_number(p, nhs))
                .collect(),
            ..RecordAnswer::default()
        };
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
        // Each search with the types it reads (named in a cut if it fails outright).
        let reads: Vec<(String, Result<Read, RecordError>)> = match everything_request(query) {
            Some(params) if self.offers_everything(deadline).await => {
                let label = query
                    .types()
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                join_all(ids.iter().map(|id| {
                    let mut params = params.clone();
                    params.push(("_count".into(), self.settings.page_size.to_string()));
                    let label = label.clone();
                    async move {
                        let read = self
                            .read_all(
                                self.get(self.url(&format!("Patient/{id}/$everything")))
                                    .query(&params),
                                &label,
                                allowance,
                                deadline,
                            )
                            .await;
                        (label, read)
                    }
                }))
                .await
            }
            _ => {
                let searches = query
                    .types()
                    .into_iter()
                    .flat_map(|t| ids.iter().map(move |id| (t, id)))
                    .map(|(t, id)| {
                        let mut params = vec![
                            ("patient".to_owned(), format!("Patient/{id}")),
                            ("_count".to_owned(), self.settings.page_size.to_string()),
                        ];
                        params.extend(search_filters(query, t));
                        async move {
                            let read = self
                                .read_all(
                                    self.get(self.url(t.as_str())).query(&params),
                                    t.as_str(),
                                    allowance,
                                    deadline,
                                )
                                .await;
                            (t.as_str().to_owned(), read)
                        }
                    });
                join_all(searches).await
            }
        };
        let mut first_error = None;
        let mut any_read = false;
        for (label, read) in reads {
            match read {
                Ok(read) => {
                    any_read = true;
                    for r in read.matches {
                        match r.rtype() {
                            // `$everything` gives the Patient as a match too.
                            "Patient" | "" => {}
                            _ => answer.items.push(r),
                        }
                    }
                    answer.included.extend(read.includes);
                    if let Some(cut) = read.cut {
                        add_cut(&mut answer.cuts, cut);
                    }
                }
                Err(e) => {
                    // One search failed outright: the rest still answer, and the failure is
                    // named as a cut of that search's types.
                    tracing::warn!(error = %e, "a search of the record server failed");
                    let reason = match e {
                        RecordError::Timeout => CutReason::Deadline,
                        _ => CutReason::PageFailed,
                    };
                    let mut cut = Cut::new(reason, "", None, e.to_string());
                    cut.types = label.split(", ").map(str::to_owned).collect();
                    add_cut(&mut answer.cuts, cut);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !any_read => Err(e),
            _ => {
                if matches!(query.operation, Operation::Everything { .. }) {
                    self.include_referenced(&mut answer, allowance, deadline)
                        .await;
                }
                Ok(answer)
            }
        }
    }

    /// Adds to an `$everything` answer what its items reference that the server did not
    /// include itself, asked by `_id`, a type at a time, within the same bounds.
    async fn include_referenced(
        &self,
        answer: &mut RecordAnswer,
        allowance: &Allowance,
        deadline: Instant,
    ) {
        let held: std::collections::HashSet<(String, String)> = answer
            .included
            .iter()
            .map(|r| (r.rtype().to_owned(), r.id().to_owned()))
            .collect();
        let mut wanted: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (t, id) in super::referenced_elsewhere(&answer.items, &answer.patients) {
            if !held.contains(&(t.clone(), id.clone())) {
                wanted.entry(t).or_default().push(id);
            }
        }
        let batches = wanted.iter().flat_map(|(t, ids)| {
            ids.chunks(ID_BATCH)
                .map(move |chunk| (t.as_str(), chunk.join(",")))
        });
        let reads = join_all(batches.map(|(t, ids)| async move {
            let read = self
                .read_all(
                    self.get(self.url(t)).query(&[
                        ("_id", ids),
                        ("_count", self.settings.page_size.to_string()),
                    ]),
                    t,
                    allowance,
                    deadline,
                )
                .await;
            (t, read)
        }))
        .await;
        for (t, read) in reads {
            match read {
                Ok(read) => {
                    answer.included.extend(read.matches);
                    if let Some(cut) = read.cut {
                        add_cut(&mut answer.cuts, cut);
                    }
                }
                Err(e) => add_cut(
                    &mut answer.cuts,
                    Cut::new(CutReason::PageFailed, t, None, e.to_string()),
                ),
            }
        }
    }
}

/// How many ids one `_id` search asks for.
const ID_BATCH: usize = 50;

/// The `$everything` parameters that ask the same question as `query`, when the operation can:
/// an `$everything` whose filters the operation takes (`_type`, and the clinical dates and
/// last update it defines).
fn everything_request(query: &PatientQuery) -> Option<Vec<(String, String)>> {
    let Operation::Everything { .. } = &query.operation else {
        return None;
    };
    if !query.dates.is_empty() || !query.categories.is_empty() {
        return None;
    }
    let types: Vec<&str> = query.types().iter().map(|t| t.as_str()).collect();
    let mut params = vec![("_type".to_owned(), types.join(","))];
    params.extend(query.everything_window());
    Some(params)
}

/// The filters of one type's search that the record server applies: the query's date and
/// category conditions and `_lastUpdated` as the clinician gave them, and an `$everything`
/// window as the type's own search parameters (`start` and `end` on its first date parameter,
/// `_since` as `_lastUpdated`).
fn search_filters(query: &PatientQuery, rtype: ResourceType) -> Vec<(String, String)> {
    use crate::query::WindowParam;
    let (_, filters) = query.to_request();
    let mut out: Vec<(String, String)> = filters
        .into_iter()
        .filter(|(k, _)| {
            k != "patient.identifier"
                && k != "_type"
                && !matches!(k.as_str(), "start" | "end" | "_since")
        })
        .collect();
    let date = rtype.date_params().first().map_or("date", |d| d.name);
    for w in &query.window {
        out.push(match w.param {
            WindowParam::Start => (date.to_owned(), format!("ge{}", w.raw)),
            WindowParam::End => (date.to_owned(), format!("le{}", w.raw)),
            WindowParam::Since => ("_lastUpdated".to_owned(), format!("ge{}", w.raw)),
        });
    }
    out
}

/// Does a CapabilityStatement offer `Patient/$everything` (on the Patient resource, or at
/// the system level)?
pub fn capability_offers_everything(cs: &Value) -> bool {
    let is_everything = |op: &Value| {
        op.get("name").and_then(Value::as_str) == Some("everything")
            || op
                .get("definition")
                .and_then(Value::as_str)
                .is_some_and(|d| d.ends_with("/Patient-everything"))
    };
    cs.get("rest")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|rest| {
            let on_patient = rest
                .get("resource")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|r| r.get("type").and_then(Value::as_str) == Some("Patient"))
                .flat_map(|r| {
                    r.get("operation")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .any(is_everything);
            on_patient
                || rest
                    .get("operation")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(is_everything)
        })
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
        budget: Duration,
    ) -> BoxFuture<'a, Result<RecordAnswer, RecordError>> {
        Box::pin(self.authorized(self.answer(query, budget)))
    }

    fn read<'a>(
        &'a self,
        rtype: &'a str,
        id: &'a str,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Option<Value>, RecordError>> {
        Box::pin(self.authorized(async move {
            // The id is checked by the caller; the path is built from a FHIR type and id only.
            let request = self.get(self.url(&format!("{rtype}/{id}")));
            match get_fhir_json_with_meta(request, self.settings.bounds.max_bytes, budget).await {
                Ok((resource, _, _)) => {
                    let same = resource.get("resourceType").and_then(Value::as_str) == Some(rtype)
                        && resource.get("id").and_then(Value::as_str) == Some(id);
                    if same {
                        Ok(Some(resource))
                    } else {
                        Err(RecordError::Invalid(
                            "the record server answered a read with another resource".into(),
                        ))
                    }
                }
                Err(FetchError::Status(404 | 410)) => Ok(None),
                Err(e) => Err(record_error(e)),
            }
        }))
    }

    fn consents<'a>(
        &'a self,
        nhs: &'a crate::fhir::nhs::NhsNumber,
    ) -> BoxFuture<'a, Result<Vec<Value>, RecordError>> {
        Box::pin(self.authorized(async move {
            let read = PatientQuery::new(Operation::PatientRead, nhs.clone(), None);
            let budget = self.settings.timeout;
            let deadline = Instant::now() + working_time(budget);
            let patients = self.answer(&read, budget).await?.patients;
            let mut consents = Vec::new();
            let allowance = Allowance::new(self.settings.bounds);
            for id in patients
                .iter()
                .filter_map(|p| p.get("id").and_then(Value::as_str))
            {
                let read = self
                    .read_all(
                        self.get(self.url("Consent")).query(&[
                            ("patient", format!("Patient/{id}")),
                            ("_count", self.settings.page_size.to_string()),
                        ]),
                        "Consent",
                        &allowance,
                        deadline,
                    )
                    .await?;
                // Consent read in part could release what a missing directive withholds.
                if let Some(cut) = read.cut {
                    return Err(RecordError::Invalid(format!(
                        "the patient's consent directives could not all be read: {}",
                        cut.describe()
                    )));
                }
                consents.extend(
                    read.matches
                        .iter()
                        .filter(|r| r.rtype() == "Consent")
                        .map(Item::to_value),
                );
            }
            Ok(consents)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn everything_is_found_on_the_patient_resource_or_the_system() {
        let on_patient = json!({"rest": [{"resource": [{"type": "Patient", "operation": [
            {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]}]}]});
        assert!(capability_offers_everything(&on_patient));
        let by_definition = json!({"rest": [{"resource": [{"type": "Patient", "operation": [
            {"name": "patient-everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]}]}]});
        assert!(capability_offers_everything(&by_definition));
        let system = json!({"rest": [{"operation": [{"name": "everything"}]}]});
        assert!(capability_offers_everything(&system));
        let other = json!({"rest": [{"resource": [{"type": "Encounter", "operation": [{"name": "everything"}]}]}]});
        assert!(!capability_offers_everything(&other));
        assert!(!capability_offers_everything(&json!({})));
    }

    #[test]
    fn an_everything_window_becomes_each_types_own_search_parameters() {
        let q = crate::query::parse_everything(
            "9000000009",
            &[
                ("start".into(), "2020-01-01".into()),
                ("end".into(), "2021".into()),
                ("_since".into(), "2024-01-01T00:00:00Z".into()),
            ],
            false,
        )
        .unwrap()
        .query;
        assert_eq!(
            search_filters(&q, ResourceType::MedicationRequest),
            vec![
                ("authoredon".to_owned(), "ge2020-01-01".to_owned()),
                ("authoredon".to_owned(), "le2021".to_owned()),
                (
                    "_lastUpdated".to_owned(),
                    "ge2024-01-01T00:00:00Z".to_owned()
                ),
            ]
        );
        // A type search's own filters go as given.
        let s = crate::query::parse_search(
            "Observation",
            &[
                (
                    "patient.identifier".into(),
                    "https://fhir.nhs.uk/Id/nhs-number|9000000009".into(),
                ),
                ("date".into(), "ge2023".into()),
                ("category".into(), "laboratory".into()),
            ],
            false,
        )
        .unwrap()
        .query;
        assert_eq!(
            search_filters(&s, ResourceType::Observation),
            vec![
                ("date".to_owned(), "ge2023".to_owned()),
                ("category".to_owned(), "laboratory".to_owned())
            ]
        );
    }

    #[test]
    fn working_time_keeps_a_reserve() {
        assert_eq!(
            working_time(Duration::from_secs(5)),
            Duration::from_millis(4500)
        );
        assert_eq!(
            working_time(Duration::from_millis(100)),
            Duration::from_millis(80)
        );
        assert_eq!(working_time(Duration::from_millis(10)), Duration::ZERO);
    }
}
