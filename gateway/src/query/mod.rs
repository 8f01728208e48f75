//! Query parsing: a clinician's or a peer's FHIR request becomes a typed [`PatientQuery`], or a
//! [`QueryError`] that says exactly which parameter is wrong. Pure: no I/O.
//!
//! Every query the gateway federates is about one patient, named by NHS number, so the parser
//! insists on one and verifies its check digit before anything leaves the building.

use serde_json::Value;

use crate::fhir::date::{self, Interval, Prefix};
use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, NhsNumber, NhsNumberError};
use crate::fhir::outcome::{Issue, Severity};
use crate::fhir::types::{CategoryKind, DateParam, ResourceType, element};

/// The largest `_count` honoured; larger values are capped (FHIR lets a server do so).
pub const MAX_COUNT: u32 = 1000;

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `GET Patient?identifier=…`
    PatientSearch,
    /// `GET Patient/{nhs}`
    PatientRead,
    /// `GET Patient/{nhs}/$everything`, optionally limited by `_type`.
    Everything { types: Vec<ResourceType> },
    /// `GET {Type}?patient.identifier=…`
    Search(ResourceType),
}

/// A date condition: `date=ge2023-01-01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFilter {
    pub param: DateParam,
    pub prefix: Prefix,
    pub interval: Interval,
    /// The value as given (prefix included), forwarded verbatim to peers.
    pub raw: String,
}

/// One token of a token search: `system|code`, `code`, `system|` or `|code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub system: Option<String>,
    pub code: Option<String>,
}

/// A parsed, validated query about one patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientQuery {
    pub operation: Operation,
    pub nhs_number: NhsNumber,
    /// All must hold (repeated parameters are ANDed).
    pub dates: Vec<DateFilter>,
    /// Each inner list is one `category` parameter whose comma-separated values are ORed.
    pub categories: Vec<(String, Vec<Token>)>,
    /// `$everything`'s `start`, `end` and `_since` (all must hold).
    pub window: Vec<WindowFilter>,
    /// `_count`; `Some(0)` (or `_summary=count`) asks for the total alone.
    pub count: Option<u32>,
}

/// One of `$everything`'s conditions: `start` and `end` on each item's clinical date (the
/// date its type is ordered by), `_since` on its last update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowFilter {
    pub param: WindowParam,
    pub interval: Interval,
    /// The value as given, forwarded verbatim.
    pub raw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowParam {
    Start,
    End,
    Since,
}

impl WindowParam {
    pub fn name(self) -> &'static str {
        match self {
            WindowParam::Start => "start",
            WindowParam::End => "end",
            WindowParam::Since => "_since",
        }
    }
}

/// `_lastUpdated`, which every search accepts: the resource's `meta.lastUpdated`.
pub const LAST_UPDATED: DateParam = DateParam {
    name: "_lastUpdated",
    elements: &["meta.lastUpdated"],
};

/// Everything that can be wrong with a query. Messages never repeat an NHS number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the resource type '{0}' is not supported by this gateway (see /fhir/metadata)")]
    UnsupportedType(String),
    #[error("a patient must be named: use {0}=https://fhir.nhs.uk/Id/nhs-number|{{NHS number}}")]
    MissingPatient(&'static str),
    #[error("parameter '{param}' must use the NHS number system https://fhir.nhs.uk/Id/nhs-number")]
    WrongIdentifierSystem { param: String },
    #[error("parameter '{param}': {source}")]
    InvalidNhsNumber {
        param: String,
        source: NhsNumberError,
    },
    #[error("parameter '{0}' is given more than once; only one patient can be queried at a time")]
    RepeatedPatient(String),
    #[error(
        "unknown search parameter '{param}' for {resource} (send 'Prefer: handling=lenient' to ignore unknown parameters)"
    )]
    UnknownParameter { param: String, resource: String },
    #[error("parameter '{param}': {message}")]
    InvalidValue { param: String, message: String },
}

impl QueryError {
    /// The query parameter at fault, for `OperationOutcome.issue.expression`.
    pub fn parameter(&self) -> Option<&str> {
        match self {
            QueryError::UnsupportedType(_) => None,
            QueryError::MissingPatient(p) => Some(p),
            QueryError::WrongIdentifierSystem { param }
            | QueryError::InvalidNhsNumber { param, .. }
            | QueryError::UnknownParameter { param, .. }
            | QueryError::InvalidValue { param, .. } => Some(param),
            QueryError::RepeatedPatient(p) => Some(p),
        }
    }

    /// The FHIR IssueType code that best describes the error.
    pub fn issue_code(&self) -> &'static str {
        match self {
            QueryError::UnsupportedType(_) => "not-supported",
            QueryError::MissingPatient(_) => "required",
            QueryError::UnknownParameter { .. } => "not-supported",
            _ => "invalid",
        }
    }
}

/// The outcome of parsing: the query, and warnings for parameters ignored under lenient handling.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub query: PatientQuery,
    pub ignored: Vec<Issue>,
}

/// Parameters every interaction accepts and the gateway handles itself.
const FORMAT_PARAMS: [&str; 2] = ["_format", "_pretty"];

/// Parses a search `{type}?{params}` where `type` is the path segment after `/fhir/`.
pub fn parse_search(
    type_name: &str,
    params: &[(String, String)],
    lenient: bool,
) -> Result<Parsed, QueryError> {
    if type_name == "Patient" {
        return parse_patient_search(params, lenient);
    }
    let rtype = ResourceType::parse(type_name)
        .ok_or_else(|| QueryError::UnsupportedType(crate::fhir::echo(type_name, 64)))?;
    let mut ignored = Vec::new();
    let mut nhs: Option<NhsNumber> = None;
    let mut dates = Vec::new();
    let mut categories = Vec::new();
    let mut count = None;
    for (name, value) in params {
        let name = name.as_str();
        match name {
            "patient.identifier" | "subject.identifier" | "patient" | "subject"
                if name.starts_with("patient") || rtype.patient_element() == "subject" =>
            {
                if nhs.is_some() {
                    return Err(QueryError::RepeatedPatient(name.to_owned()));
                }
                nhs = Some(if name.ends_with(".identifier") {
                    parse_nhs_token(name, value)?
                } else {
                    parse_patient_reference(name, value)?
                });
            }
            "_count" => count = Some(parse_count(value)?),
            "_summary" => count = Some(parse_summary(value)?),
            "_lastUpdated" => dates.push(parse_date(LAST_UPDATED, value)?),
            "category" => match rtype.category() {
                Some(_) => categories.push((value.clone(), parse_tokens(name, value)?)),
                None => unknown(name, rtype.as_str(), lenient, &mut ignored)?,
            },
            _ if FORMAT_PARAMS.contains(&name) => check_format(name, value)?,
            _ => match rtype.date_params().iter().find(|d| d.name == name) {
                Some(param) => dates.push(parse_date(*param, value)?),
                None => unknown(name, rtype.as_str(), lenient, &mut ignored)?,
            },
        }
    }
    let nhs_number = nhs.ok_or(QueryError::MissingPatient("patient.identifier"))?;
    Ok(Parsed {
        query: PatientQuery {
            operation: Operation::Search(rtype),
            nhs_number,
            dates,
            categories,
            window: Vec::new(),
            count,
        },
        ignored,
    })
}

fn parse_patient_search(params: &[(String, String)], lenient: bool) -> Result<Parsed, QueryError> {
    let mut ignored = Vec::new();
    let mut nhs = None;
    let mut count = None;
    for (name, value) in params {
        match name.as_str() {
            "identifier" => {
                if nhs.is_some() {
                    return Err(QueryError::RepeatedPatient(name.clone()));
                }
                nhs = Some(parse_nhs_token(name, value)?);
            }
            "_id" => {
                if nhs.is_some() {
                    return Err(QueryError::RepeatedPatient(name.clone()));
                }
                nhs = Some(parse_nhs(name, value)?);
            }
            "_count" => count = Some(parse_count(value)?),
            "_summary" => count = Some(parse_summary(value)?),
            n if FORMAT_PARAMS.contains(&n) => check_format(n, value)?,
            n => unknown(n, "Patient", lenient, &mut ignored)?,
        }
    }
    let nhs_number = nhs.ok_or(QueryError::MissingPatient("identifier"))?;
    Ok(Parsed {
        query: PatientQuery::new(Operation::PatientSearch, nhs_number, count),
        ignored,
    })
}

/// Parses `GET Patient/{id}`: the logical id is the NHS number.
pub fn parse_read(
    id: &str,
    params: &[(String, String)],
    lenient: bool,
) -> Result<Parsed, QueryError> {
    let mut ignored = Vec::new();
    for (name, value) in params {
        if FORMAT_PARAMS.contains(&name.as_str()) {
            check_format(name, value)?;
        } else {
            unknown(name, "Patient read", lenient, &mut ignored)?;
        }
    }
    let nhs_number = parse_nhs("id", id)?;
    Ok(Parsed {
        query: PatientQuery::new(Operation::PatientRead, nhs_number, None),
        ignored,
    })
}

/// Parses `GET Patient/{id}/$everything` with `_type` and `_count`.
pub fn parse_everything(
    id: &str,
    params: &[(String, String)],
    lenient: bool,
) -> Result<Parsed, QueryError> {
    let mut ignored = Vec::new();
    let mut types: Vec<ResourceType> = Vec::new();
    let mut count = None;
    let mut window = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_type" => {
                for t in value.split(',') {
                    let t = t.trim();
                    if t == "Patient" {
                        continue; // the Patient is always part of $everything
                    }
                    let rt = ResourceType::parse(t).ok_or_else(|| QueryError::InvalidValue {
                        param: "_type".into(),
                        message: format!(
                            "'{}' is not a supported resource type",
                            crate::fhir::echo(t, 64)
                        ),
                    })?;
                    if !types.contains(&rt) {
                        types.push(rt);
                    }
                }
            }
            "_count" => count = Some(parse_count(value)?),
            "_summary" => count = Some(parse_summary(value)?),
            "start" => window.push(parse_window(WindowParam::Start, value)?),
            "end" => window.push(parse_window(WindowParam::End, value)?),
            "_since" => window.push(parse_window(WindowParam::Since, value)?),
            n if FORMAT_PARAMS.contains(&n) => check_format(n, value)?,
            n => unknown(n, "Patient/$everything", lenient, &mut ignored)?,
        }
    }
    types.sort();
    let nhs_number = parse_nhs("id", id)?;
    let mut query = PatientQuery::new(Operation::Everything { types }, nhs_number, count);
    query.window = window;
    Ok(Parsed { query, ignored })
}

fn unknown(
    name: &str,
    resource: &str,
    lenient: bool,
    ignored: &mut Vec<Issue>,
) -> Result<(), QueryError> {
    let param: String = crate::fhir::echo(name, 64);
    if lenient {
        ignored.push(
            Issue::new(
                Severity::Information,
                "not-supported",
                format!("search parameter '{param}' is not supported and was ignored"),
            )
            .at(param),
        );
        Ok(())
    } else {
        Err(QueryError::UnknownParameter {
            param,
            resource: resource.to_owned(),
        })
    }
}

fn parse_nhs(param: &str, value: &str) -> Result<NhsNumber, QueryError> {
    NhsNumber::parse(value).map_err(|source| QueryError::InvalidNhsNumber {
        param: param.to_owned(),
        source,
    })
}

/// `https://fhir.nhs.uk/Id/nhs-number|9000000009`; the system is required so that a local
/// hospital number is never mistaken for an NHS number.
fn parse_nhs_token(param: &str, value: &str) -> Result<NhsNumber, QueryError> {
    match value.split_once('|') {
        Some((NHS_NUMBER_SYSTEM, number)) => parse_nhs(param, number),
        _ => Err(QueryError::WrongIdentifierSystem {
            param: param.to_owned(),
        }),
    }
}

/// `patient=Patient/9000000009` or `patient=9000000009` (the NHS number as the logical id).
fn parse_patient_reference(param: &str, value: &str) -> Result<NhsNumber, QueryError> {
    parse_nhs(param, value.strip_prefix("Patient/").unwrap_or(value))
}

fn parse_count(value: &str) -> Result<u32, QueryError> {
    let n: u32 = value.parse().map_err(|_| QueryError::InvalidValue {
        param: "_count".into(),
        message: "must be a whole number from 0".into(),
    })?;
    Ok(n.min(MAX_COUNT))
}

/// `_summary=count` asks for the total alone (as `_count=0` does); no other summary is served.
fn parse_summary(value: &str) -> Result<u32, QueryError> {
    match value {
        "count" => Ok(0),
        _ => Err(QueryError::InvalidValue {
            param: "_summary".into(),
            message: "only _summary=count is supported".into(),
        }),
    }
}

/// `start`, `end` (dates) or `_since` (an instant) of `$everything`; no prefixes.
fn parse_window(param: WindowParam, value: &str) -> Result<WindowFilter, QueryError> {
    let interval = date::parse_interval(value).map_err(|e| QueryError::InvalidValue {
        param: param.name().to_owned(),
        message: e.to_string(),
    })?;
    Ok(WindowFilter {
        param,
        interval,
        raw: value.to_owned(),
    })
}

fn check_format(param: &str, value: &str) -> Result<(), QueryError> {
    let ok = match param {
        "_format" => matches!(value, "json" | "application/json" | "application/fhir+json"),
        _ => matches!(value, "true" | "false"),
    };
    if ok {
        Ok(())
    } else {
        Err(QueryError::InvalidValue {
            param: param.to_owned(),
            message: if param == "_format" {
                "only JSON is supported (json, application/fhir+json)".into()
            } else {
                "must be true or false".into()
            },
        })
    }
}

fn parse_date(param: DateParam, value: &str) -> Result<DateFilter, QueryError> {
    let (prefix, rest) = Prefix::split(value);
    let interval = date::parse_interval(rest).map_err(|e| QueryError::InvalidValue {
        param: param.name.to_owned(),
        message: e.to_string(),
    })?;
    Ok(DateFilter {
        param,
        prefix,
        interval,
        raw: value.to_owned(),
    })
}

fn parse_tokens(param: &str, value: &str) -> Result<Vec<Token>, QueryError> {
    value
        .split(',')
        .map(|t| {
            let token = match t.split_once('|') {
                Some((s, c)) => Token {
                    system: non_empty(s),
                    code: non_empty(c),
                },
                None => Token {
                    system: None,
                    code: non_empty(t),
                },
            };
            if token.system.is_none() && token.code.is_none() {
                Err(QueryError::InvalidValue {
                    param: param.to_owned(),
                    message: "an empty token".into(),
                })
            } else {
                Ok(token)
            }
        })
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl PatientQuery {
    pub fn new(operation: Operation, nhs_number: NhsNumber, count: Option<u32>) -> Self {
        PatientQuery {
            operation,
            nhs_number,
            dates: Vec::new(),
            categories: Vec::new(),
            window: Vec::new(),
            count,
        }
    }

    /// `$everything`'s window as request parameters (`start`, `end`, `_since`).
    pub fn everything_window(&self) -> Vec<(String, String)> {
        self.window
            .iter()
            .map(|w| (w.param.name().to_owned(), w.raw.clone()))
            .collect()
    }

    /// The clinical resource types this query asks for.
    pub fn types(&self) -> Vec<ResourceType> {
        match &self.operation {
            Operation::PatientSearch | Operation::PatientRead => Vec::new(),
            Operation::Everything { types } if types.is_empty() => ResourceType::ALL.to_vec(),
            Operation::Everything { types } => types.clone(),
            Operation::Search(t) => vec![*t],
        }
    }

    /// The FHIR request (path relative to a FHIR base, and query pairs) that asks a peer or a
    /// FHIR server the same question. `_count` is not forwarded: the gateway pages the merge.
    pub fn to_request(&self) -> (String, Vec<(String, String)>) {
        let nhs_token = format!("{NHS_NUMBER_SYSTEM}|{}", self.nhs_number);
        match &self.operation {
            Operation::PatientSearch | Operation::PatientRead => {
                ("Patient".into(), vec![("identifier".into(), nhs_token)])
            }
            Operation::Everything { types } => {
                let mut q = Vec::new();
                if !types.is_empty() {
                    q.push((
                        "_type".into(),
                        types
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ));
                }
                q.extend(self.everything_window());
                (format!("Patient/{}/$everything", self.nhs_number), q)
            }
            Operation::Search(t) => {
                let mut q = vec![("patient.identifier".to_owned(), nhs_token)];
                q.extend(
                    self.dates
                        .iter()
                        .map(|d| (d.param.name.to_owned(), d.raw.clone())),
                );
                q.extend(
                    self.categories
                        .iter()
                        .map(|(raw, _)| ("category".to_owned(), raw.clone())),
                );
                (t.as_str().to_owned(), q)
            }
        }
    }

    /// Does a resource of the query's type satisfy its date and category conditions?
    /// (That the resource is about the patient is the record's business.)
    pub fn matches(&self, rtype: ResourceType, resource: &Value) -> bool {
        self.dates.iter().all(|f| date_matches(f, resource))
            && self
                .window
                .iter()
                .all(|w| window_matches(w, rtype, resource))
            && self
                .categories
                .iter()
                .all(|(_, tokens)| category_matches(rtype, tokens, resource))
    }
}

fn date_matches(filter: &DateFilter, resource: &Value) -> bool {
    // A resource without the element does not match a date condition (FHIR search semantics).
    filter
        .param
        .elements
        .iter()
        .filter_map(|path| element(resource, path))
        .filter_map(date::element_interval)
        .any(|target| filter.prefix.matches(filter.interval, target))
}

/// `start`: the item's clinical date ends at or after the start; `end`: it begins at or before
/// the end; `_since`: it was last updated at or after the instant. An item without the date
/// does not match.
fn window_matches(w: &WindowFilter, rtype: ResourceType, resource: &Value) -> bool {
    let target = match w.param {
        WindowParam::Since => {
            element(resource, "meta.lastUpdated").and_then(date::element_interval)
        }
        WindowParam::Start | WindowParam::End => rtype
            .sort_elements()
            .iter()
            .filter_map(|p| element(resource, p))
            .find_map(date::element_interval),
    };
    let Some(target) = target else {
        return false;
    };
    match w.param {
        WindowParam::Start | WindowParam::Since => target.end > w.interval.start,
        WindowParam::End => target.start < w.interval.end,
    }
}

fn category_matches(rtype: ResourceType, tokens: &[Token], resource: &Value) -> bool {
    let Some(kind) = rtype.category() else {
        return false;
    };
    let Some(category) = resource.get("category") else {
        return false;
    };
    let codings: Vec<(Option<&str>, Option<&str>)> = match kind {
        CategoryKind::Codes(system) => as_list(category)
            .filter_map(Value::as_str)
            .map(|c| (Some(system), Some(c)))
            .collect(),
        CategoryKind::CodeableConcepts => as_list(category)
            .filter_map(|cc| cc.get("coding").and_then(Value::as_array))
            .flatten()
            .map(|c| {
                (
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                )
            })
            .collect(),
    };
    tokens.iter().any(|t| {
        codings.iter().any(|(system, code)| {
            t.system.as_deref().is_none_or(|s| Some(s) == *system)
                && t.code.as_deref().is_none_or(|c| Some(c) == *code)
        })
    })
}

fn as_list(v: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match v {
        Value::Array(a) => Box::new(a.iter()),
        other => Box::new(std::iter::once(other)),
    }
}

#[cfg(test)]
mod tests;
