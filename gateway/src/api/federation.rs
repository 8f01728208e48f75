//! The federation face: only reachable over mutual TLS (the handshake already demanded a
//! certificate from the federation CA). The certificate's identity must be a configured peer
//! (else 403), and the forwarded user context must be signed by that certificate's key for this
//! region (else 401). Answers come from the local record only and never fan out again, so
//! queries cannot loop between regions.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::Value;

use super::{RequestId, check_accept, lenient, query_pairs};
use crate::access::Gatekeeper;
use crate::app::Gateway;
use crate::auth::{AuthError, ForwardedCheck, ForwardedContext, verify_forwarded};
use crate::error::ApiError;
use crate::fhir;
use crate::query::{self, Parsed};
use crate::server::PeerCertificate;
use crate::store::changes::Change;
use policy::DecisionPoint;

/// Which peer is asking, as established from its certificate.
#[derive(Debug, Clone)]
pub struct PeerRegion(pub String);

pub fn router(gateway: Arc<Gateway>) -> Router {
    let routes = Router::new()
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .route("/fhir/{type}", get(search))
        .route("/fhir/{type}/{id}", get(read))
        // Layers run outside in: authenticate the peer, rate-limit it, audit, then the handler.
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            super::audit::audit_federation,
        ))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            super::guard::limit_peer,
        ))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            authenticate_peer,
        ))
        // Certificate only: a peer says a patient's consent changed there.
        .route("/fhir/$consent-changed", post(consent_changed));
    super::outer_layers(routes, &gateway).with_state(gateway)
}

/// `POST /fhir/$consent-changed` from a peer (mTLS): drop the cached answers of that peer for
/// the patient named in the Parameters body.
async fn consent_changed(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<PeerCertificate>()
        .and_then(|cert| {
            gateway
                .peers
                .iter()
                .find(|p| cert.identity.has_identity(&p.identity))
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "security",
                "the client certificate does not identify a region this gateway federates with",
            )
        })?;
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "send a Parameters resource with a 'patient' NHS number identifier",
        )
    };
    let body = axum::body::to_bytes(body, 4096).await.map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&body).map_err(|_| bad())?;
    let nhs = value["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "patient")
        .filter(|p| p["valueIdentifier"]["system"] == crate::fhir::nhs::NHS_NUMBER_SYSTEM)
        .and_then(|p| p["valueIdentifier"]["value"].as_str())
        .and_then(|v| crate::fhir::nhs::NhsNumber::parse(v).ok())
        .ok_or_else(bad)?;
    // Dropped here at once, and by every other replica of this region before its next answer.
    gateway
        .announce(Change::Consent {
            nhs: nhs.as_str().to_owned(),
            region: Some(peer.info.code.clone()),
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the change could not be passed to every replica of this region; send it again",
            )
            .internal(format!("change log: {e}"))
        })?;
    tracing::info!(peer = %peer.info.code, "a peer's consent change: its cached answers for the patient dropped");
    Ok(StatusCode::NO_CONTENT)
}

/// After a consent change here: drops the patient's cached answers and kept pages here and on
/// every replica of this region ([`crate::replicas`]), and asks every peer
/// to drop this region's answers for the patient (each within two seconds; a peer that cannot
/// be told keeps them at most `cache.federation_max_age_s`, the age this region allows).
pub async fn announce_consent_change(gateway: &Gateway, nhs: &crate::fhir::nhs::NhsNumber) {
    let change = Change::Consent {
        nhs: nhs.as_str().to_owned(),
        region: None,
    };
    if let Err(e) = gateway.announce(change).await {
        // Applied here; the other replicas read consent for every request, and their cached
        // answers age out within `cache.ttl_s`.
        tracing::error!(error = %e, "could not record a consent change in the change log");
    }
    let notices = gateway.peers.iter().map(|p| async move {
        (
            p,
            p.notify_consent_change(nhs, std::time::Duration::from_secs(2))
                .await,
        )
    });
    for (peer, result) in futures::future::join_all(notices).await {
        if let Err(e) = result {
            tracing::warn!(peer = %peer.info.code, error = %e, "could not tell a peer about a consent change");
        }
    }
}

async fn authenticate_peer(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    use crate::audit::EventKind;
    use serde_json::json;
    let what = super::audit::refused_request(&request);
    let Some(cert) = request.extensions().get::<PeerCertificate>().cloned() else {
        drop(request);
        let response = ApiError::new(
            StatusCode::FORBIDDEN,
            "security",
            "a client certificate is required",
        )
        .into_response();
        return super::audit::record_refused_request(
            &gateway,
            EventKind::RefusedCertificate,
            what,
            response,
            json!({}),
        )
        .await;
    };
    let Some(peer) = gateway
        .peers
        .iter()
        .find(|p| cert.identity.has_identity(&p.identity))
    else {
        drop(request);
        let response = ApiError::new(
            StatusCode::FORBIDDEN,
            "security",
            "the client certificate does not identify a region this gateway federates with",
        )
        .internal(format!(
            "unknown peer certificate: subject '{}', URIs {:?}",
            cert.identity.subject, cert.identity.uris
        ))
        .into_response();
        return super::audit::record_refused_request(
            &gateway,
            EventKind::RefusedCertificate,
            what,
            response,
            json!({"certificate_subject": cert.identity.subject, "certificate_uris": cert.identity.uris}),
        )
        .await;
    };
    // Checked on every request: the connection may predate a revocation or an expiry.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(reason) = gateway.tls.load().refuse(&cert.identity, now) {
        drop(request);
        let response = ApiError::new(StatusCode::FORBIDDEN, "security", reason)
            .internal(format!("peer {}: {reason}", peer.info.code))
            .into_response();
        return super::audit::record_refused_request(
            &gateway,
            EventKind::RefusedCertificate,
            what,
            response,
            json!({"calling_region": peer.info.code, "certificate_subject": cert.identity.subject}),
        )
        .await;
    }
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let context = match token {
        None => Err(AuthError::Missing),
        Some(t) => verify_forwarded(
            t,
            &cert.identity,
            ForwardedCheck {
                peer_identity: &peer.identity,
                own_identity: &gateway.identity,
                now,
                max_lifetime_s: gateway.config.fanout.forwarded_context_lifetime_s,
            },
        ),
    };
    match context {
        Ok(context) => {
            tracing::info!(peer = %peer.info.code, calling_request_id = %context.request_id, "federation request authenticated");
            request
                .extensions_mut()
                .insert(PeerRegion(peer.info.code.clone()));
            request.extensions_mut().insert(context);
            next.run(request).await
        }
        Err(e) => {
            drop(request);
            let response = ApiError::from(e)
                .internal(format!(
                    "peer {}: forwarded user context refused",
                    peer.info.code
                ))
                .into_response();
            super::audit::record_refused_request(
                &gateway,
                EventKind::RefusedToken,
                what,
                response,
                json!({"calling_region": peer.info.code}),
            )
            .await
        }
    }
}

async fn search(
    State(gateway): State<Arc<Gateway>>,
    Path(type_name): Path<String>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    check_accept(&parts.headers)?;
    let pairs = query_pairs(raw.as_deref())?;
    let parsed = query::parse_search(&type_name, &pairs, lenient(&parts.headers))?;
    answer(&gateway, parsed, &parts).await
}

/// `GET /fhir/{Type}/{id}` from a peer: one resource of this region's record by its own id, as
/// a searchset with the resource as the match and its Patient as an include (so the caller can
/// apply the patient's consent), under this region's release policy. What may not be released
/// and what does not exist answer alike: 404.
async fn read(
    State(gateway): State<Arc<Gateway>>,
    Path((type_name, id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    check_accept(&parts.headers)?;
    let context = parts
        .extensions
        .get::<ForwardedContext>()
        .cloned()
        .ok_or(ApiError::from(AuthError::Missing))?;
    let peer = parts
        .extensions
        .get::<PeerRegion>()
        .map_or("", |p| p.0.as_str())
        .to_owned();
    if !crate::fhir::reference::served_by_id(&type_name)
        || !crate::fhir::reference::is_local_id(&id)
    {
        return Err(super::read::not_here());
    }
    let Some(found) = super::read::find_local(&gateway, &type_name, &id).await? else {
        super::audit::note(&parts, |e| {
            e.detail["read"] = serde_json::json!("not found")
        });
        return Err(super::read::not_here());
    };
    if let Some(nhs) = &found.nhs {
        super::audit::note(&parts, |e| e.patient = Some(nhs.as_str().to_owned()));
    }
    let policies = gateway.policies.load_full();
    let gatekeeper = Gatekeeper::new(
        &policies,
        &context.user,
        &peer,
        DecisionPoint::Release,
        &peer,
    );
    gatekeeper
        .admit(&gateway.region.code)
        .map_err(|r| ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.to_string()))?;
    let (kept, report) =
        super::read::decide(&gateway, gatekeeper, found, &gateway.region.code).await?;
    gateway
        .metrics
        .policy_items("release", report.released, report.withheld);
    super::audit::note(&parts, |e| {
        e.released = report.released.min(1);
        e.withheld = report.withheld;
        e.policies = report.policies.iter().cloned().collect();
    });
    let Some(kept) = kept else {
        return Err(super::read::not_here());
    };
    let base = &gateway.region.base_url;
    let entries = crate::pipeline::federation::answer_entries(base, &kept);
    let now = fhir::instant(time::OffsetDateTime::now_utc());
    let id = uuid::Uuid::new_v4().to_string();
    let body = fhir::write_searchset(&id, &now, base, 1, &entries, &[] as &[serde_json::Value]);
    let mut response = crate::error::fhir_bytes_response(StatusCode::OK, body);
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn everything(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    check_accept(&parts.headers)?;
    let pairs = query_pairs(raw.as_deref())?;
    let parsed = query::parse_everything(&id, &pairs, lenient(&parts.headers))?;
    answer(&gateway, parsed, &parts).await
}

/// The local record's answer to a peer (see [`crate::pipeline::federation`]).
async fn answer(
    gateway: &Gateway,
    parsed: Parsed,
    request: &http::request::Parts,
) -> Result<Response, ApiError> {
    let context = request
        .extensions
        .get::<ForwardedContext>()
        .cloned()
        .ok_or(ApiError::from(AuthError::Missing))?;
    let asked = crate::pipeline::federation::Asked {
        context,
        request_id: request
            .extensions
            .get::<RequestId>()
            .map_or_else(String::new, |r| r.0.clone()),
        peer: request
            .extensions
            .get::<PeerRegion>()
            .map_or_else(String::new, |p| p.0.clone()),
        audit: crate::audit::slot::AuditSlot::of(request),
    };
    let released = crate::pipeline::federation::release(gateway, &asked, parsed).await?;
    let mut response = crate::error::fhir_bundle_response(StatusCode::OK, released.body);
    if let Ok(v) = http::HeaderValue::from_str(&released.cache_control) {
        response
            .headers_mut()
            .insert(http::header::CACHE_CONTROL, v);
    }
    Ok(response)
}
