//! The trail as FHIR: each record becomes an R4 `AuditEvent` shaped after the IHE Basic Audit
//! Log Patterns (BALP: a RESTful query, its user, the client and server, the patient and the
//! query as entities), and `GET /admin/audit`'s parameters become a [`Filter`]. Pure.

use base64::Engine;
use serde_json::{Value, json};

use super::{AuditRecord, EventKind, Filter};
use crate::fhir::date::{Prefix, parse_interval};
use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};

pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 500;

/// The IHE Basic Audit Log Patterns profiles, by the interaction and whether a patient is
/// the subject.
const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";

/// The BALP profile an event follows, if any: queries (searches and `$everything`), reads,
/// creates, updates and deletes, each in its patient form when a patient is the subject.
/// Refusals before authentication (a token, a certificate, a rate) follow none.
pub fn balp_profile(record: &AuditRecord) -> Option<String> {
    let e = &record.event;
    if matches!(
        e.kind,
        EventKind::RefusedToken | EventKind::RefusedCertificate | EventKind::RefusedRateLimit
    ) {
        return None;
    }
    let pattern = match e.interaction().0 {
        "search" | "operation" => "Query",
        "read" => "Read",
        "create" => "Create",
        "update" => "Update",
        "delete" => "Delete",
        _ => return None,
    };
    let patient = if e.patient.is_some() { "Patient" } else { "" };
    Some(format!("{BALP}{patient}{pattern}"))
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// NHS national RBAC job role codes (R8000, R0001, ...).
pub const JOB_ROLE_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode";
/// The user ids the identity provider issues.
pub const USER_ID_SYSTEM: &str = "urn:gateway:user-id";
/// ODS organisation codes.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// Why a parameter of `GET /admin/audit` was refused; names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct FilterError {
    pub parameter: String,
    pub message: String,
}

fn bad(parameter: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        parameter: parameter.to_owned(),
        message: message.into(),
    }
}

/// Reads the query parameters of `GET /admin/audit` into a filter. Unknown parameters are
/// refused, so a misspelt filter never silently widens the answer.
pub fn parse_filter(pairs: &[(String, String)]) -> Result<Filter, FilterError> {
    let mut f = Filter {
        count: DEFAULT_COUNT,
        ..Filter::default()
    };
    for (name, value) in pairs {
        let value = value.trim();
        match name.as_str() {
            "patient" | "patient.identifier" => {
                let number = value
                    .strip_prefix(&format!("{NHS_NUMBER_SYSTEM}|"))
                    .unwrap_or(value);
                let nhs = NhsNumber::parse(number)
                    .map_err(|e| bad(name, format!("not a valid NHS number ({e})")))?;
                f.patient = Some(nhs.as_str().to_owned());
            }
            "user" => f.user = Some(nonempty(name, value)?),
            "region" => f.region = Some(nonempty(name, value)?),
            "request-id" => f.request_id = Some(nonempty(name, value)?),
            "kind" => {
                f.kind = Some(EventKind::parse(value).ok_or_else(|| {
                    bad(
                        name,
                        format!(
                            "one of {}",
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        ),
                    )
                })?)
            }
            "date" => {
                let (prefix, date) = Prefix::split(value);
                let i = parse_interval(date).map_err(|e| bad(name, e.to_string()))?;
                let (from, until) = match prefix {
                    Prefix::Eq => (Some(i.start), Some(i.end)),
                    Prefix::Ge => (Some(i.start), None),
                    Prefix::Gt => (Some(i.end), None),
                    Prefix::Le => (None, Some(i.end)),
                    Prefix::Lt => (None, Some(i.start)),
                    _ => return Err(bad(name, "use eq, ge, gt, le or lt")),
                };
                if let Some(from) = from {
                    f.from = Some(f.from.map_or(from, |x| x.max(from)));
                }
                if let Some(until) = until {
                    f.until = Some(f.until.map_or(until, |x| x.min(until)));
                }
            }
            "break-glass" => {
                f.break_glass_only = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(name, "true or false")),
                }
            }
            "outcome" => {
                f.outcome = Some(match value {
                    "0" => 0,
                    "4" => 4,
                    "8" => 8,
                    _ => return Err(bad(name, "0 (success), 4 (refused) or 8 (failed)")),
                })
            }
            "_count" => {
                f.count = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| bad(name, format!("a number from 1 to {MAX_COUNT}")))?;
            }
            "before" => {
                f.before_seq = Some(
                    value
                        .parse()
                        .map_err(|_| bad(name, "a record number from a `next` link"))?,
                )
            }
            other => {
                return Err(bad(
                    other,
                    "unknown parameter (patient, user, region, kind, date, break-glass, outcome, request-id, _count)",
                ));
            }
        }
    }
    Ok(f)
}

/// What `GET /fhir/AuditEvent` asks, as a filter; `matches_nothing` when a parameter names
/// something no record of this gateway can be (another event `type`), so the answer is an
/// empty searchset rather than an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    pub filter: Filter,
    pub matches_nothing: bool,
}

/// The codes of `http://hl7.org/fhir/restful-interaction` an event's subtype can be.
pub const SUBTYPES: [&str; 6] = ["search", "read", "operation", "create", "update", "delete"];
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";

/// A token parameter's value: `code`, `system|code` or `|code`; the code when the system is
/// absent or `system`, None when it is another system.
fn token<'a>(value: &'a str, system: &str) -> Option<&'a str> {
    match value.split_once('|') {
        None => Some(value),
        Some(("", code)) => Some(code),
        Some((s, code)) if s == system => Some(code),
        Some(_) => None,
    }
}

/// Reads the FHIR R4 search parameters of `GET /fhir/AuditEvent` (`patient`, `date`,
/// `agent`, `entity`, `type`, `subtype`, `outcome`, `_count`, and the `before` of a `next`
/// link) into a filter. Unknown parameters are refused, as in [`parse_filter`].
///
/// * `patient`: the patient's NHS number (`patient=9000000009`, `patient.identifier=` or
///   `patient:identifier=` with the NHS number system).
/// * `agent`: the user id the identity provider issued (`agent:identifier=` with
///   [`USER_ID_SYSTEM`], or the id alone).
/// * `entity`: a region the query reached (`urn:gateway:region:{code}`), or the patient as
///   an identifier (`entity:identifier=https://fhir.nhs.uk/Id/nhs-number|...`).
/// * `type`: every record here is `rest`; another code matches nothing.
/// * `subtype`: `search`, `read`, `operation`, `create`, `update` or `delete`.
pub fn parse_search(pairs: &[(String, String)]) -> Result<Search, FilterError> {
    let mut passed: Vec<(String, String)> = Vec::new();
    let mut out = Search::default();
    for (name, value) in pairs {
        let v = value.trim();
        match name.as_str() {
            "patient" | "patient.identifier" | "patient:identifier" => {
                passed.push(("patient".into(), v.to_owned()))
            }
            "date" | "outcome" | "_count" | "before" => passed.push((name.clone(), v.to_owned())),
            "agent" | "agent:identifier" => {
                let user = v.strip_prefix(&format!("{USER_ID_SYSTEM}|")).unwrap_or(v);
                passed.push(("user".into(), user.to_owned()));
            }
            "entity" | "entity:identifier" => {
                if let Some(code) = v.strip_prefix("urn:gateway:region:") {
                    passed.push(("region".into(), code.to_owned()));
                } else if v.starts_with(&format!("{NHS_NUMBER_SYSTEM}|"))
                    || name == "entity:identifier"
                {
                    passed.push(("patient".into(), v.to_owned()));
                } else {
                    return Err(bad(
                        name,
                        "a region (urn:gateway:region:{code}) or the patient's identifier (entity:identifier=https://fhir.nhs.uk/Id/nhs-number|{number})",
                    ));
                }
            }
            "type" => {
                if token(v, EVENT_TYPE) != Some("rest") {
                    out.matches_nothing = true;
                }
            }
            "subtype" => match token(v, RESTFUL_INTERACTION) {
                Some(code) if SUBTYPES.contains(&code) => {
                    if out.filter.subtype.as_deref().is_some_and(|s| s != code) {
                        out.matches_nothing = true;
                    }
                    out.filter.subtype = Some(code.to_owned());
                }
                Some(_) => {
                    return Err(bad(name, format!("one of {}", SUBTYPES.join(", "))));
                }
                None => out.matches_nothing = true,
            },
            other => {
                return Err(bad(
                    other,
                    "unknown parameter (patient, date, agent, entity, type, subtype, outcome, _count)",
                ));
            }
        }
    }
    // A repeated parameter ANDs: two patients or two users match no record; two regions
    // cannot be asked in one search here.
    let distinct = |key: &str| {
        passed
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.rsplit('|').next().unwrap_or(v))
            .collect::<std::collections::BTreeSet<&str>>()
            .len()
    };
    if distinct("patient") > 1 || distinct("user") > 1 {
        out.matches_nothing = true;
    }
    if passed.iter().filter(|(k, _)| k == "region").count() > 1 {
        return Err(bad("entity", "one region per search"));
    }
    let subtype = out.filter.subtype.take();
    out.filter = parse_filter(&passed).map_err(|mut e| {
        // Name the parameter as the caller wrote it.
        if let Some((name, _)) = pairs.iter().find(|(n, _)| {
            n == &e.parameter
                || (e.parameter == "user" && n.starts_with("agent"))
                || (e.parameter == "region" && n.starts_with("entity"))
                || (e.parameter == "patient"
                    && (n.starts_with("patient") || n.starts_with("entity")))
        }) {
            e.parameter.clone_from(name);
        }
        e
    })?;
    out.filter.subtype = subtype;
    Ok(out)
}

fn nonempty(name: &str, value: &str) -> Result<String, FilterError> {
    if value.is_empty() || value.len() > 128 {
        Err(bad(name, "1 to 128 characters"))
    } else {
        Ok(value.to_owned())
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn detail(kind: &str, value: impl Into<String>) -> Value {
    json!({"type": kind, "valueString": value.into()})
}

/// One record as a FHIR R4 AuditEvent.
pub fn to_audit_event(record: &AuditRecord, observer: &str, site: &str) -> Value {
    let e = &record.event;
    let (subtype, action) = e.interaction();
    let mut subtypes = vec![coding(RESTFUL_INTERACTION, subtype, subtype)];
    if subtype == "operation" {
        // `$everything` is a search of the patient's compartment: BALP's query pattern asks
        // for the `search` code, and a `subtype=search` search finds it.
        subtypes.push(coding(RESTFUL_INTERACTION, "search", "search"));
    }
    let mut purpose = Vec::new();
    if !e.purpose_of_use.is_empty() {
        purpose.push(json!({"coding": [{"system": ACT_REASON, "code": e.purpose_of_use}]}));
    }
    if e.break_glass_reason.is_some() {
        purpose.push(json!({"coding": [coding(ACT_CODE, "BTG", "break the glass")]}));
    }
    let mut agents = Vec::new();
    if !e.user_id.is_empty() {
        let mut user = json!({
            "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser", "human user")]},
            "who": {"identifier": {"system": USER_ID_SYSTEM, "value": e.user_id}},
            "requestor": true,
        });
        if !e.role.is_empty() {
            user["role"] = json!([{"coding": [{"system": JOB_ROLE_SYSTEM, "code": e.role}]}]);
        }
        if !e.organisation.is_empty() {
            // R4's agent has no organisation element; BALP names it in `who.display`, and the
            // ODS code is kept as a detail of the record entity below.
            user["who"]["display"] = json!(format!("{} at {}", e.user_id, e.organisation));
        }
        if !purpose.is_empty() {
            user["purposeOfUse"] = json!(purpose.clone());
        }
        agents.push(user);
    }
    let calling = e.detail["calling_region"].as_str();
    agents.push(json!({
        "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
        "who": {"display": calling.map_or_else(|| "clinician application".to_owned(), |c| format!("urn:gateway:region:{c}"))},
        "requestor": e.user_id.is_empty(),
    }));
    agents.push(json!({
        "type": {"coding": [coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": observer},
        "requestor": false,
    }));
    let mut entities = Vec::new();
    if let Some(nhs) = &e.patient {
        entities.push(json!({
            "what": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs}},
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    if let Some(q) = e.detail["query"].as_str() {
        entities.push(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "query": base64::engine::general_purpose::STANDARD.encode(q),
        }));
    }
    for r in &e.regions {
        entities.push(json!({
            "what": {"display": format!("urn:gateway:region:{}", r.region)},
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "3", "Report"),
            "name": r.region,
            "description": r.outcome,
            "detail": [detail("items", r.items.to_string())],
        }));
    }
    let mut decision = vec![
        detail("released", e.released.to_string()),
        detail("withheld", e.withheld.to_string()),
        detail("http-status", e.status.to_string()),
        detail("sequence", record.seq.to_string()),
        detail("hash", record.hash.clone()),
        detail("previous-hash", record.prev_hash.clone()),
    ];
    if !e.organisation.is_empty() {
        decision.push(detail(
            "organisation",
            format!("{ODS_SYSTEM}|{}", e.organisation),
        ));
    }
    if !e.policies.is_empty() {
        decision.push(detail("policies", e.policies.join(" ")));
    }
    if let Some(reason) = &e.break_glass_reason {
        decision.push(detail("break-glass-reason", reason.clone()));
    }
    if let Some(obj) = e.detail.as_object() {
        for (k, v) in obj {
            if k == "query" || k == "method" {
                continue;
            }
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            decision.push(detail(k, text));
        }
    }
    entities.push(json!({
        "what": {"display": format!("audit record {}", record.seq)},
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "name": e.kind.as_str(),
        "description": format!("request {}", e.request_id),
        "detail": decision,
    }));
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("{}", record.seq),
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"),
        "subtype": subtypes,
        "action": action,
        "recorded": e.time,
        "outcome": e.outcome_code().to_string(),
        "agent": agents,
        "source": {
            "site": site,
            "observer": {"display": observer},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
        },
        "entity": entities,
    });
    if e.outcome != "success" {
        event["outcomeDesc"] = json!(e.outcome);
    }
    if let Some(profile) = balp_profile(record) {
        event["meta"] = json!({"profile": [profile]});
    }
    if !purpose.is_empty() {
        event["purposeOfEvent"] = json!(purpose);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, RegionOutcome, chain};

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn filters_are_read_and_bad_ones_named() {
        let f = parse_filter(&pairs(&[
            ("patient", "https://fhir.nhs.uk/Id/nhs-number|9000000009"),
            ("date", "ge2026-01-01"),
            ("date", "lt2026-02"),
            ("break-glass", "true"),
            ("outcome", "4"),
            ("kind", "federation-query"),
            ("_count", "20"),
        ]))
        .unwrap();
        assert_eq!(f.patient.as_deref(), Some("9000000009"));
        assert_eq!(f.from, Some(1_767_225_600));
        assert_eq!(f.until, Some(1_769_904_000));
        assert!(f.break_glass_only);
        assert_eq!(
            (f.outcome, f.kind, f.count),
            (Some(4), Some(EventKind::FederationQuery), 20)
        );
        assert_eq!(parse_filter(&[]).unwrap().count, DEFAULT_COUNT);
        for (name, value) in [
            ("patient", "9000000008"),
            ("date", "yesterday"),
            ("date", "sa2026"),
            ("outcome", "12"),
            ("_count", "0"),
            ("_count", "501"),
            ("kind", "everything"),
            ("pateint", "9000000009"),
            ("user", ""),
        ] {
            let e = parse_filter(&pairs(&[(name, value)])).unwrap_err();
            assert_eq!(e.parameter, name, "{name}={value}: {e}");
        }
    }

    #[test]
    fn a_record_becomes_a_balp_shaped_audit_event() {
        let mut e = AuditEvent::new(
            EventKind::ClinicianQuery,
            "2026-03-01T10:00:00Z".into(),
            "req-1",
        );
        e.user_id = "u-7".into();
        e.role = "R8000".into();
        e.organisation = "RBD".into();
        e.purpose_of_use = "TREAT".into();
        e.patient = Some("9000000009".into());
        e.regions = vec![RegionOutcome {
            region: "wessex".into(),
            outcome: "timed out".into(),
            items: 0,
        }];
        e.break_glass_reason = Some("unconscious, allergies unknown".into());
        e.detail =
            json!({"query": "/fhir/AllergyIntolerance?patient.identifier=x", "method": "GET"});
        e.status = 200;
        let r = chain(None, e);
        let v = to_audit_event(&r, "urn:gateway:region:dorset", "Dorset");
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["subtype"][0]["code"], "search");
        assert_eq!(v["action"], "E");
        assert_eq!(v["outcome"], "0");
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "u-7");
        assert_eq!(v["agent"][0]["role"][0]["coding"][0]["code"], "R8000");
        assert_eq!(v["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
        assert_eq!(v["entity"][0]["what"]["identifier"]["value"], "9000000009");
        let q = base64::engine::general_purpose::STANDARD
            .decode(v["entity"][1]["query"].as_str().unwrap())
            .unwrap();
        assert!(
            String::from_utf8(q)
                .unwrap()
                .starts_with("/fhir/AllergyIntolerance")
        );
        assert_eq!(v["entity"][2]["description"], "timed out");
        let text = v.to_string();
        assert!(text.contains("unconscious, allergies unknown"));
        assert!(text.contains(&r.hash));
    }

    #[test]
    fn fhir_search_parameters_become_the_same_filter() {
        let s = parse_search(&pairs(&[
            (
                "patient:identifier",
                "https://fhir.nhs.uk/Id/nhs-number|9000000009",
            ),
            ("agent:identifier", "urn:gateway:user-id|u-7"),
            ("entity", "urn:gateway:region:wessex"),
            (
                "type",
                "http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
            ),
            ("subtype", "read"),
            ("outcome", "0"),
            ("date", "ge2026-01-01"),
            ("_count", "20"),
        ]))
        .unwrap();
        assert!(!s.matches_nothing);
        let f = s.filter;
        assert_eq!(f.patient.as_deref(), Some("9000000009"));
        assert_eq!(f.user.as_deref(), Some("u-7"));
        assert_eq!(f.region.as_deref(), Some("wessex"));
        assert_eq!(f.subtype.as_deref(), Some("read"));
        assert_eq!(
            (f.outcome, f.count, f.from),
            (Some(0), 20, Some(1_767_225_600))
        );
        // What no record here can be matches nothing; it is not an error.
        for q in [
            [("type", "http://other|rest")],
            [("type", "login")],
            [("subtype", "http://other|read")],
        ] {
            assert!(parse_search(&pairs(&q)).unwrap().matches_nothing, "{q:?}");
        }
        for q in [
            [("agent", "a"), ("agent", "b")],
            [
                ("patient", "9000000009"),
                ("entity:identifier", "9434765919"),
            ],
            [("subtype", "read"), ("subtype", "search")],
        ] {
            assert!(parse_search(&pairs(&q)).unwrap().matches_nothing, "{q:?}");
        }
        for (name, value) in [
            ("subtype", "vread"),
            ("entity", "Practitioner/1"),
            ("agent", ""),
            ("patient", "123"),
            ("user", "u-7"),
            ("kind", "audit-read"),
        ] {
            let e = parse_search(&pairs(&[(name, value)])).unwrap_err();
            assert_eq!(e.parameter, name, "{name}={value}: {e}");
        }
    }

    #[test]
    fn each_record_names_the_balp_pattern_it_follows() {
        let record = |kind, query: &str, method: &str, patient: bool| {
            let mut e = AuditEvent::new(kind, "2026-03-01T10:00:00Z".into(), "r");
            e.detail = json!({"query": query, "method": method});
            e.patient = patient.then(|| "9000000009".to_owned());
            chain(None, e)
        };
        let profile =
            |r: &AuditRecord| balp_profile(r).map(|p| p.trim_start_matches(BALP).to_owned());
        let cases = [
            (
                record(
                    EventKind::ClinicianQuery,
                    "/fhir/Patient/9000000009/$everything",
                    "GET",
                    true,
                ),
                Some("PatientQuery"),
            ),
            (
                record(
                    EventKind::FederationQuery,
                    "/federation/Observation?patient=x",
                    "GET",
                    true,
                ),
                Some("PatientQuery"),
            ),
            (
                record(
                    EventKind::ClinicianQuery,
                    "/fhir/Patient/9000000009",
                    "GET",
                    true,
                ),
                Some("PatientRead"),
            ),
            (
                record(EventKind::ConsentChange, "/fhir/Consent", "POST", true),
                Some("PatientCreate"),
            ),
            (
                record(EventKind::ConsentChange, "/fhir/Consent/c1", "PUT", true),
                Some("PatientUpdate"),
            ),
            (
                record(EventKind::AuditRead, "/admin/audit?_count=5", "GET", false),
                Some("Query"),
            ),
            (
                record(
                    EventKind::PolicyChange,
                    "/admin/api/policies",
                    "POST",
                    false,
                ),
                Some("Create"),
            ),
            (
                record(EventKind::CachePurge, "/admin/cache", "DELETE", false),
                Some("Delete"),
            ),
            (
                record(
                    EventKind::RefusedToken,
                    "/fhir/Patient/9000000009",
                    "GET",
                    false,
                ),
                None,
            ),
        ];
        for (r, want) in &cases {
            assert_eq!(
                profile(r).as_deref(),
                *want,
                "{:?} {}",
                r.event.kind,
                r.event.detail
            );
            let v = to_audit_event(r, "urn:gateway:region:dorset", "Dorset");
            assert_eq!(
                v["meta"]["profile"][0]
                    .as_str()
                    .map(|p| p.trim_start_matches(BALP)),
                *want
            );
        }
        // `$everything` carries the search code BALP's query pattern asks for.
        let v = to_audit_event(&cases[0].0, "urn:gateway:region:dorset", "Dorset");
        assert_eq!(v["subtype"][0]["code"], "operation");
        assert_eq!(v["subtype"][1]["code"], "search");
        let search = Filter {
            subtype: Some("search".into()),
            ..Filter::default()
        };
        assert!(search.matches(&cases[0].0) && search.matches(&cases[1].0));
        assert!(!search.matches(&cases[2].0));
    }
}
