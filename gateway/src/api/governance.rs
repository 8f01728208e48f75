//! The governance API (JSON, bearer tokens, governance roles only; every call audited by the
//! clinician face's audit middleware): policy versions, checks, diffs, simulation, activation
//! and rollback; the break-glass review queue; consent lookup; and who the caller is.
//!
//! | route | action |
//! |---|---|
//! | `GET /admin/api/whoami` | any signed-in user: what the console may show them |
//! | `GET /admin/api/policies` | `edit-policy`: versions, activations, the active one |
//! | `GET /admin/api/policies/{id}` | `edit-policy`: one version's files |
//! | `POST /admin/api/policies/check` | `edit-policy`: problems, test cases and diff of unsaved text |
//! | `POST /admin/api/policies` | `edit-policy`: save a draft version |
//! | `GET /admin/api/policies/{id}/diff` | `edit-policy`: against the active version |
//! | `POST /admin/api/policies/simulate` | `edit-policy`: a decision, or a patient's record, under the active set and a draft |
//! | `POST /admin/api/policies/{id}/activate` | `edit-policy`: activate (or roll back to) a version, with a reason |
//! | `GET /admin/api/break-glass` | `read-audit`: break-glass accesses and their reviews |
//! | `POST /admin/api/break-glass/{seq}/review` | `review-break-glass` |
//! | `GET /admin/api/consent?patient=` | `read-consent` |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use policy::version::{self, SourceFile};
use policy::{DecisionPoint, PolicySet};
use serde::Deserialize;
use serde_json::{Value, json};

use super::clinician::{Ask, ask};
use crate::access::Gatekeeper;
use crate::app::Gateway;
use crate::audit::EventKind;
use crate::auth::UserContext;
use crate::error::ApiError;
use crate::fhir::nhs::NhsNumber;
use crate::governance::ActivateError;
use crate::store::StoreError;
use crate::store::governance::{NewVersion, ORIGIN_CONSOLE, Review};

/// The shortest reason accepted for an activation or a review note.
pub const MIN_REASON_CHARS: usize = 10;

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn store_unavailable(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the governance store cannot be reached just now; nothing was changed",
    )
    .internal(e.to_string())
}

/// A reason, comment or note: trimmed, and long enough to say something.
fn stated(text: &str, ask: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.chars().count() < MIN_REASON_CHARS {
        return Err(invalid(format!(
            "{ask} (at least {MIN_REASON_CHARS} characters)"
        )));
    }
    Ok(text.to_owned())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
}

/// The caller, if their role may take `action` (decided by the active policy set).
fn authorise(
    gateway: &Gateway,
    parts: &http::request::Parts,
    raw: Option<&str>,
    action: &str,
    resource_type: &str,
    kind: EventKind,
) -> Result<Ask, ApiError> {
    super::audit::note(parts, |e| e.kind = kind);
    let ask = ask(gateway, parts, raw)?;
    let set = gateway.policies.load_full();
    let region = &gateway.region.code;
    let d = Gatekeeper::new(&set, &ask.user, region, DecisionPoint::View, region).request_decision(
        action,
        resource_type,
        region,
    );
    super::audit::note(parts, |e| e.policies = d.policies.clone());
    if !d.allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role may not {}", action.replace('-', " ")),
        ));
    }
    Ok(ask)
}

/// Reads a JSON body (the body limit applies below).
async fn body<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| invalid(format!("the request body could not be read: {e}")))?;
    // serde's message can quote the value it refused (an NHS number, say): it is echoed
    // only when it holds no run of digits, since the message also goes to the log.
    serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "the request body: {}",
            crate::fhir::echo(&e.to_string(), 300)
        ))
    })
}

/// `GET /admin/api/whoami`: the caller and what their role may do here.
pub async fn whoami(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    super::audit::note(&parts, |e| e.kind = EventKind::GovernanceRead);
    let ask = ask(&gateway, &parts, None)?;
    let set = gateway.policies.load_full();
    let region = &gateway.region.code;
    let gk = Gatekeeper::new(&set, &ask.user, region, DecisionPoint::View, region);
    let may: BTreeMap<&str, bool> = [
        ("edit-policy", "Policy"),
        ("read-audit", "AuditEvent"),
        ("review-break-glass", "AuditEvent"),
        ("read-consent", "Consent"),
    ]
    .into_iter()
    .map(|(a, t)| (a, gk.request_decision(a, t, region).allowed))
    .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "user": ask.user.user_id,
            "role": ask.user.role,
            "organisation": ask.user.organisation,
            "purpose_of_use": ask.user.purpose_of_use,
            "region": {"code": gateway.region.code, "name": gateway.region.name},
            "may": may,
        }),
    ))
}

fn version_summary(v: &crate::store::governance::PolicyVersion, active: i64) -> Value {
    json!({
        "id": v.id,
        "based_on": v.based_on,
        "author": v.author,
        "created_at": v.created_at,
        "comment": v.comment,
        "origin": v.origin,
        "digest": v.digest,
        "files": v.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        "active": v.id == active,
    })
}

/// `GET /admin/api/policies`: every version (newest first), every activation, the active one.
pub async fn list(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::GovernanceRead,
    )?;
    let versions = gateway
        .governance
        .versions()
        .await
        .map_err(store_unavailable)?;
    let activations = gateway
        .governance
        .activations()
        .await
        .map_err(store_unavailable)?;
    let active = gateway.applied_policy().version;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "active": active,
            "versions": versions.iter().map(|v| version_summary(v, active)).collect::<Vec<_>>(),
            "activations": activations,
        }),
    ))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid("a policy version is a positive number"))
}

async fn stored_version(
    gateway: &Gateway,
    id: i64,
) -> Result<crate::store::governance::PolicyVersion, ApiError> {
    gateway
        .governance
        .version(id)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("there is no policy version {id}")))
}

/// `GET /admin/api/policies/{id}`: one version, with its files.
pub async fn get_version(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::GovernanceRead,
    )?;
    let v = stored_version(&gateway, parse_id(&id)?).await?;
    let active = gateway.applied_policy().version;
    let mut out = version_summary(&v, active);
    out["files"] = json!(v.files);
    Ok(json_response(StatusCode::OK, &out))
}

/// The active version's files.
async fn active_files(gateway: &Gateway) -> Result<(i64, Vec<SourceFile>), ApiError> {
    let id = gateway.applied_policy().version;
    Ok((id, stored_version(gateway, id).await?.files))
}

/// Problems, test cases and the diff against the active version, for a version's text.
async fn report(gateway: &Gateway, files: &[SourceFile]) -> Result<Value, ApiError> {
    let (report, _) = version::check(&gateway.policy_schema, files);
    let (active, active_files) = active_files(gateway).await?;
    Ok(json!({
        "activatable": report.activatable(),
        "problems": report.problems,
        "cases": {
            "passed": report.cases_passed,
            "failed": report.cases_failed,
            "failures": report.cases.iter().filter(|c| !c.passed).collect::<Vec<_>>(),
        },
        "diff": {"against": active, "files": version::diff(&active_files, files)},
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DraftBody {
    files: Vec<SourceFile>,
    #[serde(default)]
    based_on: Option<i64>,
    #[serde(default)]
    comment: String,
}

/// `POST /admin/api/policies/check`: checks unsaved text (the editor's inline validation).
pub async fn check(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, b) = request.into_parts();
    authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::GovernanceRead,
    )?;
    let draft: DraftBody = body(b).await?;
    Ok(json_response(
        StatusCode::OK,
        &report(&gateway, &draft.files).await?,
    ))
}

/// `POST /admin/api/policies`: saves a draft version, valid or not (activation checks it).
pub async fn create(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, b) = request.into_parts();
    let ask = authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::PolicyChange,
    )?;
    let draft: DraftBody = body(b).await?;
    if draft.files.is_empty() {
        return Err(invalid("a version needs at least one policy file"));
    }
    let comment = stated(&draft.comment, "say what the draft changes and why")?;
    let id = gateway
        .governance
        .add_version(NewVersion {
            based_on: draft.based_on,
            files: draft.files.clone(),
            author: ask.user.user_id.clone(),
            created_at: crate::fhir::instant(time::OffsetDateTime::now_utc()),
            comment,
            origin: ORIGIN_CONSOLE.into(),
        })
        .await
        .map_err(store_unavailable)?;
    super::audit::note(&parts, |e| {
        e.detail["policy_version"] = json!(id);
        e.detail["digest"] = json!(crate::store::governance::files_digest(&draft.files));
    });
    let mut out = report(&gateway, &draft.files).await?;
    out["id"] = json!(id);
    Ok(json_response(StatusCode::CREATED, &out))
}

/// `GET /admin/api/policies/{id}/diff`: a version against the active one.
pub async fn diff(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::GovernanceRead,
    )?;
    let v = stored_version(&gateway, parse_id(&id)?).await?;
    let (active, active_files) = active_files(&gateway).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"version": v.id, "against": active, "files": version::diff(&active_files, &v.files)}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    reason: String,
}

/// `POST /admin/api/policies/{id}/activate`: activates a version that passes its checks, or
/// rolls back to an earlier one. The audit record is written before the change is made.
pub async fn activate(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, b) = request.into_parts();
    let ask = authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::PolicyActivation,
    )?;
    let id = parse_id(&id)?;
    let req: ActivateBody = body(b).await?;
    let reason = stated(&req.reason, "an activation needs a reason")?;
    let v = stored_version(&gateway, id).await?;
    let (checked, _) = version::check(&gateway.policy_schema, &v.files);
    if !checked.activatable() {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "business-rule",
            format!(
                "version {id} cannot be activated: {} problem(s), {} failing test case(s)",
                checked.problems.len(),
                checked.cases_failed
            ),
        );
        with_findings(&mut e, &checked);
        return Err(e);
    }
    let previous = gateway.applied_policy().version;
    if let Some(slot) = super::audit::AuditSlot::of(&parts) {
        slot.update(|e| {
            e.detail["policy_version"] = json!(id);
            e.detail["previous_version"] = json!(previous);
            e.detail["digest"] = json!(v.digest);
            e.detail["reason"] = json!(reason);
        });
        slot.write_ahead(&gateway, StatusCode::OK).await?;
    }
    let (activation, n) = gateway
        .activate_version(id, &ask.user.user_id, &reason)
        .await
        .map_err(|e| match e {
            ActivateError::NoSuchVersion(id) => {
                ApiError::not_found(format!("there is no policy version {id}"))
            }
            ActivateError::Invalid(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "business-rule",
                e.to_string(),
            ),
            ActivateError::Store(e) => store_unavailable(e),
        })?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"activation": activation, "policies": n, "previous": previous}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct SimUser {
    role: String,
    organisation: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    /// A stored version to compare with the active one.
    #[serde(default)]
    version: Option<i64>,
    /// Or unsaved text.
    #[serde(default)]
    files: Option<Vec<SourceFile>>,
    user: SimUser,
    #[serde(default = "treat")]
    purpose_of_use: String,
    #[serde(default)]
    break_glass_reason: String,
    /// One item, by class...
    #[serde(default)]
    item: Option<policy::cases::CaseItem>,
    #[serde(default)]
    resource_type: Option<String>,
    /// ... or a patient's record held in this region.
    #[serde(default)]
    patient: Option<String>,
}

fn treat() -> String {
    "TREAT".into()
}

/// A decision with the policies behind it, in words.
fn explain(set: &PolicySet, d: &policy::Decision) -> Value {
    let because: Vec<Value> = d
        .policies
        .iter()
        .map(|id| {
            let (file, comment) = set.describe(id).unwrap_or_default();
            json!({"id": id, "file": file, "comment": comment})
        })
        .collect();
    json!({
        "allowed": d.allowed,
        "because": because,
        "errors": d.errors,
        "summary": if d.allowed { "released" } else if d.policies.is_empty() { "withheld: no rule permits it" } else { "withheld" },
    })
}

/// `POST /admin/api/policies/simulate`: what the active set decides, and what a draft would.
pub async fn simulate(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, b) = request.into_parts();
    authorise(
        &gateway,
        &parts,
        None,
        "edit-policy",
        "Policy",
        EventKind::GovernanceRead,
    )?;
    let sim: SimulateBody = body(b).await?;
    if sim.user.role.trim().is_empty() {
        return Err(invalid("name the role to simulate (for example R8000)"));
    }
    let active = gateway.policies.load_full();
    let (draft_label, draft): (Value, Option<PolicySet>) = match (&sim.version, &sim.files) {
        (Some(id), None) => {
            let v = stored_version(&gateway, *id).await?;
            let (r, set) = version::check(&gateway.policy_schema, &v.files);
            (json!(id), Some(set.ok_or_else(|| problems_error(&r))?))
        }
        (None, Some(files)) => {
            let (r, set) = version::check(&gateway.policy_schema, files);
            (
                json!("unsaved"),
                Some(set.ok_or_else(|| problems_error(&r))?),
            )
        }
        (None, None) => (Value::Null, None),
        (Some(_), Some(_)) => return Err(invalid("give a version or files, not both")),
    };
    let user = UserContext {
        user_id: "simulated".into(),
        role: sim.user.role.trim().to_owned(),
        organisation: sim.user.organisation.trim().to_owned(),
        purpose_of_use: Some(sim.purpose_of_use.clone()),
        break_glass: (!sim.break_glass_reason.trim().is_empty())
            .then(|| sim.break_glass_reason.trim().to_owned()),
        scope: None,
        patient: None,
    };
    let region = gateway.region.code.clone();
    let gk = |set| Gatekeeper::new(set, &user, &region, DecisionPoint::View, &region);
    let mut out = json!({
        "active": gateway.applied_policy().version,
        "draft": draft_label,
    });
    match (&sim.item, &sim.patient) {
        (Some(item), None) => {
            let resource_type = sim
                .resource_type
                .clone()
                .ok_or_else(|| invalid("name the item's resource_type"))?;
            let class = policy::ItemClass {
                resource_type,
                region: item.region.clone(),
                confidentiality: item.confidentiality.clone(),
                sensitivity: item.sensitivity.clone(),
                patient_home_region: item.patient_home_region.clone(),
                patient_objects_to_sharing: item.patient_objects_to_sharing,
                consent_denies: item.consent_denies,
                consent_permits: item.consent_permits,
            };
            let a = gk(&active).decide(class.clone()).clone();
            out["item"] = json!({"active": explain(&active, &a)});
            if let Some(d) = &draft {
                let dd = gk(d).decide(class).clone();
                out["item"]["draft"] = explain(d, &dd);
                out["item"]["changed"] = json!(a.allowed != dd.allowed);
            }
        }
        (None, Some(nhs)) => {
            let nhs = NhsNumber::parse(nhs).map_err(|e| invalid(format!("patient: {e}")))?;
            super::audit::note(&parts, |e| e.patient = Some(nhs.as_str().to_owned()));
            out["record"] = simulate_record(&gateway, &user, &nhs, &active, draft.as_ref()).await?;
        }
        _ => {
            return Err(invalid(
                "give either an item (with resource_type) or a patient",
            ));
        }
    }
    Ok(json_response(StatusCode::OK, &out))
}

/// Adds a check's problems and failing cases (the first twenty of each) to an error.
fn with_findings(e: &mut ApiError, r: &version::Report) {
    use crate::fhir::outcome::{Issue, Severity};
    for p in r.problems.iter().take(20) {
        e.issues
            .push(Issue::new(Severity::Error, "invalid", p.to_string()));
    }
    for c in r.cases.iter().filter(|c| !c.passed).take(20) {
        e.issues.push(Issue::new(
            Severity::Error,
            "business-rule",
            format!("test case {}: {}: {}", c.file, c.name, c.detail),
        ));
    }
}

fn problems_error(r: &version::Report) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "the draft does not parse or validate; fix it before simulating",
    );
    with_findings(&mut e, r);
    e
}

/// Every item of the patient's record held in this region, decided under the active set and
/// the draft: the counts, and what changes, by type.
async fn simulate_record(
    gateway: &Gateway,
    user: &UserContext,
    nhs: &NhsNumber,
    active: &PolicySet,
    draft: Option<&PolicySet>,
) -> Result<Value, ApiError> {
    let query = crate::query::parse_everything(nhs.as_str(), &[], false)?.query;
    let answer = tokio::time::timeout(
        gateway.local_timeout(),
        gateway.local.search(&query, gateway.local_timeout()),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the regional record did not answer",
        )
    })?
    .map_err(super::record_unreadable)?;
    let consent = super::read_consent(gateway, nhs).await?;
    let region = &gateway.region.code;
    let mut a = Gatekeeper::new(active, user, region, DecisionPoint::View, region)
        .with_consent(consent.clone(), region);
    let mut d = draft.map(|set| {
        Gatekeeper::new(set, user, region, DecisionPoint::View, region)
            .with_consent(consent.clone(), region)
    });
    let items: Vec<Value> = answer.items.iter().map(|i| i.to_value()).collect();
    let resources: Vec<&Value> = answer.patients.iter().chain(&items).collect();
    let c = crate::access::compare(&mut a, d.as_mut(), &resources, region);
    Ok(json!({
        "items": c.items,
        "released_active": c.released_active,
        "released_draft": c.released_draft,
        "types": c.types,
        "summary": c.summary(&user.role),
        "changes": c.changes.into_iter().map(|((t, from, to), n)| json!({
            "resource_type": t,
            "from": if from { "released" } else { "withheld" },
            "to": if to { "released" } else { "withheld" },
            "count": n,
        })).collect::<Vec<_>>(),
    }))
}

/// `GET /admin/api/break-glass`: the newest break-glass accesses, each with its review.
pub async fn break_glass(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = authorise(
        &gateway,
        &parts,
        raw.as_deref(),
        "read-audit",
        "AuditEvent",
        EventKind::AuditRead,
    )?;
    let mut pending_only = false;
    for (k, v) in &ask.pairs {
        match (k.as_str(), v.as_str()) {
            ("reviewed", "false") => pending_only = true,
            ("reviewed", "any") => {}
            _ => return Err(invalid("the only parameter is reviewed=false|any")),
        }
    }
    let filter = crate::audit::Filter {
        break_glass_only: true,
        count: 200,
        ..Default::default()
    };
    let page = gateway
        .audit
        .search(&filter)
        .await
        .map_err(store_unavailable)?;
    let reviews: BTreeMap<u64, Review> = gateway
        .governance
        .reviews()
        .await
        .map_err(store_unavailable)?
        .into_iter()
        .map(|r| (r.audit_seq, r))
        .collect();
    let accesses: Vec<Value> = page
        .records
        .iter()
        .filter(|r| !pending_only || !reviews.contains_key(&r.seq))
        .map(|r| {
            let e = &r.event;
            json!({
                "seq": r.seq,
                "time": e.time,
                "user": e.user_id,
                "role": e.role,
                "organisation": e.organisation,
                "patient": e.patient,
                "reason": e.break_glass_reason,
                "status": e.status,
                "released": e.released,
                "withheld": e.withheld,
                "review": reviews.get(&r.seq),
            })
        })
        .collect();
    super::audit::note(&parts, |e| e.released = accesses.len());
    Ok(json_response(
        StatusCode::OK,
        &json!({"accesses": accesses}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    note: String,
}

/// `POST /admin/api/break-glass/{seq}/review`: marks an access reviewed (once).
pub async fn review(
    State(gateway): State<Arc<Gateway>>,
    Path(seq): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, b) = request.into_parts();
    let ask = authorise(
        &gateway,
        &parts,
        None,
        "review-break-glass",
        "AuditEvent",
        EventKind::BreakGlassReview,
    )?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| invalid("an access is named by its audit sequence number"))?;
    let req: ReviewBody = body(b).await?;
    let note = stated(&req.note, "a review needs a note")?;
    // Only a break-glass access can be reviewed.
    let filter = crate::audit::Filter {
        break_glass_only: true,
        before_seq: Some(seq + 1),
        count: 1,
        ..Default::default()
    };
    let found = gateway
        .audit
        .search(&filter)
        .await
        .map_err(store_unavailable)?;
    let Some(access) = found.records.into_iter().find(|r| r.seq == seq) else {
        return Err(ApiError::not_found(format!(
            "audit record {seq} is not a break-glass access"
        )));
    };
    super::audit::note(&parts, |e| {
        e.patient.clone_from(&access.event.patient);
        e.detail["reviewed_access"] = json!(seq);
    });
    let r = Review {
        audit_seq: seq,
        reviewer: ask.user.user_id.clone(),
        reviewed_at: crate::fhir::instant(time::OffsetDateTime::now_utc()),
        note,
    };
    if !gateway
        .governance
        .review(r.clone())
        .await
        .map_err(store_unavailable)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate",
            format!("access {seq} has been reviewed already"),
        ));
    }
    Ok(json_response(StatusCode::OK, &json!({"review": r})))
}

/// `GET /admin/api/consent?patient={nhs}`: the patient's directives, stored here and in the
/// record, and what they mean for sharing.
pub async fn consent(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = authorise(
        &gateway,
        &parts,
        raw.as_deref(),
        "read-consent",
        "Consent",
        EventKind::GovernanceRead,
    )?;
    let nhs = match ask.pairs.as_slice() {
        [(k, v)] if k == "patient" => {
            NhsNumber::parse(v).map_err(|e| invalid(format!("patient: {e}")))?
        }
        _ => return Err(invalid("the one parameter is patient={NHS number}")),
    };
    super::audit::note(&parts, |e| e.patient = Some(nhs.as_str().to_owned()));
    let stored = gateway
        .consents
        .for_patient(nhs.as_str())
        .await
        .map_err(store_unavailable)?;
    let in_record = gateway
        .local
        .consents(&nhs)
        .await
        .map_err(super::record_unreadable)?;
    // What they mean for sharing, from the directives just read (not read again).
    let all: Vec<Value> = stored
        .iter()
        .map(|c| c.resource.clone())
        .chain(in_record.iter().cloned())
        .collect();
    let view = crate::consent::read(&all, time::OffsetDateTime::now_utc().unix_timestamp());
    let directives: Vec<Value> = stored
        .into_iter()
        .map(|c| {
            json!({"source": "recorded through the gateway", "recorded_by": c.recorded_by,
                   "recorded_at": c.recorded_at, "version": c.version, "resource": c.resource})
        })
        .chain(
            in_record
                .into_iter()
                .map(|c| json!({"source": "the regional record", "resource": c})),
        )
        .collect();
    super::audit::note(&parts, |e| e.released = directives.len());
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "patient": nhs.as_str(),
            "objects_to_sharing": view.objects_to_sharing,
            "directives": directives,
        }),
    ))
}
