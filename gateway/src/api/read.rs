//! Reading one resource by id: `GET /fhir/{Type}/{region}.{id}`, so that every reference in
//! every answer can be followed. The id names the region that holds the resource
//! ([`crate::fhir::reference`]); this region's own record answers its ids, a peer's federation
//! face answers that peer's (`GET /fhir/{Type}/{id}` there, over mutual TLS, under its release
//! policy and audited there). Either way the view policy decides here, with the patient's
//! consent when the resource is about a patient, and the access is audited here.
//!
//! What the user may not see, and what does not exist, answer alike: 404, so that existence
//! itself does not leak.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::Value;

use crate::fhir::item::Item;

use super::clinician::ask;
use super::read_consent;
use crate::access::{Filtered, Gatekeeper};
use crate::app::Gateway;
use crate::error::{ApiError, fhir_response};
use crate::fhir::nhs::NhsNumber;
use crate::fhir::reference::{is_fhir_id, parse_federated_id, served_by_id};
use crate::fhir::types::ResourceType;
use crate::merge::{FailureKind, RegionInfo, present_read};
use crate::record::{PatientLink, RecordAnswer, patient_link, patient_of};

/// The one answer for a resource that is not there or may not be seen.
pub(super) fn not_here() -> ApiError {
    ApiError::not_found("no resource with this id can be shown to you")
}

/// A resource found by id, with the Patient resources it is about (clinical types).
pub(super) struct Found {
    pub answer: RecordAnswer,
    /// The patient the resource is about, for a clinical type.
    pub nhs: Option<NhsNumber>,
}

/// Reads a resource from this region's record, with its Patient when it is about one.
pub(super) async fn find_local(
    gateway: &Gateway,
    rtype: &str,
    id: &str,
) -> Result<Option<Found>, ApiError> {
    let budget = gateway.local_timeout();
    let unavailable = |e: crate::record::RecordError| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "exception",
            "this region's record could not answer",
        )
        .internal(e.to_string())
    };
    let Some(resource) = gateway
        .local
        .read(rtype, id, budget)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    let mut patients = Vec::new();
    if let Some(rt) = ResourceType::parse(rtype)
        && let Some(PatientLink::Local(pid)) = patient_link(&resource, rt.patient_element())
        && let Some(p) = gateway
            .local
            .read("Patient", &pid, budget)
            .await
            .map_err(unavailable)?
    {
        patients.push(p);
    }
    let Some(nhs) = patient_of(&resource, &patients) else {
        return Ok(None);
    };
    Ok(Some(Found {
        answer: RecordAnswer {
            patients,
            items: vec![Item::from_value(&resource).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "exception",
                    "this region's record answered something that is not a resource",
                )
                .internal(e.to_string())
            })?],
            ..RecordAnswer::default()
        },
        nhs,
    }))
}

/// Keeps what `gatekeeper` (admitted) releases of a found resource, with the patient's consent
/// applied; `None` when it is withheld.
pub(super) async fn decide(
    gateway: &Gateway,
    gatekeeper: Gatekeeper<'_>,
    found: Found,
    region: &str,
) -> Result<(Option<RecordAnswer>, Filtered), ApiError> {
    let consent = match &found.nhs {
        Some(nhs) => read_consent(gateway, nhs).await?,
        None => crate::consent::ConsentView::default(),
    };
    let mut gatekeeper = gatekeeper.with_consent(consent, &gateway.region.code);
    let mut report = Filtered::default();
    let kept = gatekeeper.filter(found.answer, region, &mut report);
    Ok(((!kept.items.is_empty()).then_some(kept), report))
}

/// `GET /fhir/{Type}/{region}.{id}` on the clinician face.
pub async fn read_resource(
    State(gateway): State<Arc<Gateway>>,
    Path((type_name, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = ask(&gateway, &parts, raw.as_deref())?;
    if !served_by_id(&type_name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-supported",
            format!(
                "resources of type '{}' are not served by id here (see /fhir/metadata)",
                crate::fhir::echo(&type_name, 64)
            ),
        ));
    }
    let (region_code, local_id) = parse_federated_id(&id).map_err(|_| not_here())?;
    crate::pipeline::current(&gateway).await?;
    let policies = gateway.policies.load_full();
    let gatekeeper = crate::pipeline::admit(&gateway, &ask, &policies)?;
    let region: RegionInfo;
    let found = if region_code == gateway.region.code {
        region = gateway.region.clone();
        find_local(&gateway, &type_name, local_id).await?
    } else if let Some(peer) = gateway.peers.iter().find(|p| p.info.code == region_code) {
        region = peer.info.clone();
        ask_peer(&gateway, &ask, peer, &type_name, local_id).await?
    } else {
        // A region this gateway does not federate with holds nothing it can show.
        return Err(not_here());
    };
    let Some(found) = found else {
        ask.note(|e| e.detail["read"] = serde_json::json!("not found"));
        return Err(not_here());
    };
    if let Some(nhs) = &found.nhs {
        ask.note(|e| e.patient = Some(nhs.as_str().to_owned()));
        // A token about one patient reads nothing of another's (and learns not that it exists).
        if !ask.user.may_ask_about(nhs.as_str()) {
            ask.note(|e| e.detail["read"] = serde_json::json!("another patient than the token's"));
            return Err(not_here());
        }
    }
    let nhs = found.nhs.clone();
    let (kept, report) = decide(&gateway, gatekeeper, found, &region.code).await?;
    gateway
        .metrics
        .policy_items("view", report.released, report.withheld);
    ask.note(|e| {
        e.regions = vec![crate::audit::RegionOutcome {
            region: region.code.clone(),
            outcome: "answered".into(),
            items: 1,
        }];
        e.released = report.released.min(1);
        e.withheld = report.withheld;
        e.policies = report.policies.iter().cloned().collect();
    });
    let Some(mut kept) = kept else {
        return Err(not_here());
    };
    let resource = kept.items.swap_remove(0);
    let patient_ids: Vec<String> = kept
        .patients
        .iter()
        .filter_map(|p| p.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let shown = present_read(
        resource.to_value(),
        &region,
        &gateway.region.base_url,
        nhs.as_ref().map(|n| (patient_ids.as_slice(), n.as_str())),
    );
    // Nothing leaves before the access is recorded.
    ask.write_audit_ahead(&gateway, StatusCode::OK).await?;
    Ok(fhir_response(StatusCode::OK, &shown))
}

/// Asks a peer's federation face for one of its resources, as this request's user.
async fn ask_peer(
    gateway: &Gateway,
    ask: &super::clinician::Ask,
    peer: &crate::peers::Peer,
    rtype: &str,
    id: &str,
) -> Result<Option<Found>, ApiError> {
    let tls = gateway.tls.load();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = tls
        .signer
        .sign(&ask.user, &peer.identity, &ask.request_id, now)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the request could not be forwarded",
            )
            .internal(format!("signing the user context: {e}"))
        })?;
    let budget = peer.timeout.min(std::time::Duration::from_millis(
        gateway.config.fanout.deadline_ms,
    ));
    let answer = peer
        .read(
            rtype,
            id,
            &token,
            crate::peers::Correlation {
                request_id: &ask.request_id,
                traceparent: &ask.traceparent,
            },
            gateway.config.limits.max_response_bytes,
            budget,
        )
        .await
        .map_err(|f| {
            let status = match f.kind {
                FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                FailureKind::Refused(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            ApiError::new(
                status,
                f.kind.issue_code(),
                format!(
                    "region {} ({}) {}: {}",
                    peer.info.code,
                    peer.info.name,
                    f.kind.label(),
                    f.reason
                ),
            )
        })?;
    let Some(answer) = answer else {
        return Ok(None);
    };
    // The peer must answer with exactly the resource asked for, and the patient it is about.
    let [resource] = answer.items.as_slice() else {
        return Err(lying_peer(peer));
    };
    let same = resource.rtype() == rtype && resource.id() == id && is_fhir_id(id);
    if !same {
        return Err(lying_peer(peer));
    }
    let Some(nhs) = patient_of(&resource.to_value(), &answer.patients) else {
        return Ok(None);
    };
    Ok(Some(Found {
        answer: RecordAnswer {
            patients: answer.patients,
            items: answer.items,
            ..RecordAnswer::default()
        },
        nhs,
    }))
}

fn lying_peer(peer: &crate::peers::Peer) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "invalid",
        format!(
            "region {} ({}) answered with another resource than the one asked for",
            peer.info.code, peer.info.name
        ),
    )
}
