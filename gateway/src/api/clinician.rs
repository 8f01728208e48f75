//! The clinician face: bearer-token authentication, then each FHIR interaction is parsed,
//! fanned out to the local record and every peer, merged, and answered as one Bundle.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;

use super::{RequestId, check_accept, lenient, query_pairs};
use crate::access::{BREAK_GLASS_HEADER, Gatekeeper, break_glass_reason};
use crate::app::Gateway;
use crate::auth::{AuthError, UserContext};
use crate::error::{ApiError, fhir_response};
use crate::fhir::outcome::{Issue, Severity};
use policy::DecisionPoint;

/// A purpose of use given with the request, honoured only when the token carries none.
pub const PURPOSE_HEADER: &str = "x-purpose-of-use";
use crate::error::fhir_bundle_response;
use crate::query;

/// The clinician face's router.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let authenticated = Router::new()
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .route("/fhir/Patient/{id}", get(read_patient))
        .route(
            "/fhir/Consent",
            get(super::consent::search).post(super::consent::create),
        )
        .route(
            "/fhir/Consent/{id}",
            get(super::consent::read).put(super::consent::update),
        )
        .route("/fhir/_page", get(super::paging::page))
        .route("/fhir/AuditEvent", get(super::audit::search_audit_events))
        .route("/fhir/AuditEvent/{id}", get(super::audit::read_audit_event))
        .route("/fhir/{type}", get(search))
        .route("/fhir/{type}/{id}", get(super::read::read_resource))
        .route("/admin/audit", get(super::audit::search_trail))
        .route("/admin/cache", axum::routing::delete(purge_cache))
        .route("/admin/api/whoami", get(super::governance::whoami))
        .route(
            "/admin/api/policies",
            get(super::governance::list).post(super::governance::create),
        )
        .route("/admin/api/policies/check", post(super::governance::check))
        .route(
            "/admin/api/policies/simulate",
            post(super::governance::simulate),
        )
        .route(
            "/admin/api/policies/{id}",
            get(super::governance::get_version),
        )
        .route(
            "/admin/api/policies/{id}/diff",
            get(super::governance::diff),
        )
        .route(
            "/admin/api/policies/{id}/activate",
            post(super::governance::activate),
        )
        .route(
            "/admin/api/break-glass",
            get(super::governance::break_glass),
        )
        .route(
            "/admin/api/break-glass/{seq}/review",
            post(super::governance::review),
        )
        .route("/admin/api/consent", get(super::governance::consent))
        // Layers run outside in: authenticate, rate-limit the user, audit, then the handler.
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            super::audit::audit_clinician,
        ))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            super::guard::limit_user,
        ))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            authenticate,
        ));
    let routes = Router::new()
        .route("/fhir/metadata", get(metadata))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(super::smart::smart_configuration),
        )
        .merge(crate::console::router())
        .merge(crate::view::router())
        .merge(authenticated);
    super::outer_layers(routes, &gateway).with_state(gateway)
}

/// Verifies the bearer token and puts the user into the request.
async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let user = match token {
        None => Err(AuthError::Missing),
        Some(t) => match gateway.verifier.verify(t) {
            // A key not held: the provider may have rotated its keys (fetched again, at most
            // once per minimum interval).
            Err(AuthError::NoKey) if gateway.key_fetcher.is_some() => {
                let fetcher = gateway.key_fetcher.as_ref().expect("checked");
                if fetcher.refresh_for(t).await {
                    gateway.verifier.verify(t)
                } else {
                    Err(AuthError::NoKey)
                }
            }
            other => other,
        },
    };
    match user {
        Ok(user) => {
            request.extensions_mut().insert(user);
            let mut response = next.run(request).await;
            // What a signed-in user is answered is about patients (or the governance of their
            // data): no browser or proxy keeps it.
            response
                .headers_mut()
                .entry(http::header::CACHE_CONTROL)
                .or_insert(http::HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            let what = super::audit::refused_request(&request);
            drop(request);
            super::audit::record_refused_request(
                &gateway,
                crate::audit::EventKind::RefusedToken,
                what,
                ApiError::from(e).into_response(),
                serde_json::json!({}),
            )
            .await
        }
    }
}

async fn metadata(State(gateway): State<Arc<Gateway>>) -> Response {
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    fhir_response(
        StatusCode::OK,
        &crate::fhir::capability_statement(
            env!("CARGO_PKG_VERSION"),
            &gateway.region.base_url,
            &gateway.region.name,
            &now,
            super::smart::oauth_endpoints(&gateway).as_ref(),
        ),
    )
}

pub(super) use crate::pipeline::Ask;

pub(super) fn ask(
    gateway: &Gateway,
    request: &axum::http::request::Parts,
    raw: Option<&str>,
) -> Result<Ask, ApiError> {
    let audit = super::audit::AuditSlot::of(request);
    check_accept(&request.headers)?;
    let mut user = request
        .extensions
        .get::<UserContext>()
        .cloned()
        .ok_or(ApiError::from(AuthError::Missing))?;
    // Purpose of use: the identity provider's claim; a request header only where it made none.
    if user.purpose_of_use.is_none() {
        user.purpose_of_use = request
            .headers
            .get(PURPOSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
    }
    if user.purpose_of_use.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "security",
            "a purpose of use is required (the token's purpose_of_use claim, or an X-Purpose-Of-Use header)",
        ));
    }
    let header = request
        .headers
        .get(BREAK_GLASS_HEADER)
        .map(|v| v.to_str().unwrap_or(""));
    user.break_glass = break_glass_reason(header)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.to_string()))?;
    if let Some(slot) = &audit {
        slot.update(|e| {
            e.purpose_of_use = user.purpose_of_use.clone().unwrap_or_default();
            e.break_glass_reason.clone_from(&user.break_glass);
        });
    }
    let request_id = request
        .extensions
        .get::<RequestId>()
        .map_or_else(super::mint_request_id, |r| r.0.clone());
    let pairs = query_pairs(raw)?;
    let path = request
        .uri
        .path()
        .strip_prefix("/fhir")
        .unwrap_or(request.uri.path());
    let self_link = match raw {
        Some(q) if !q.is_empty() => format!("{}{}?{}", gateway.region.base_url, path, q),
        _ => format!("{}{}", gateway.region.base_url, path),
    };
    Ok(Ask {
        user,
        request_id,
        lenient: lenient(&request.headers),
        pairs,
        self_link,
        path: path.to_owned(),
        raw_query: raw.unwrap_or_default().to_owned(),
        traceparent: request
            .extensions
            .get::<crate::trace::TraceContext>()
            .map_or_else(String::new, |t| t.header()),
        audit,
    })
}

async fn search(
    State(gateway): State<Arc<Gateway>>,
    Path(type_name): Path<String>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = ask(&gateway, &parts, raw.as_deref())?;
    let parsed = query::parse_search(&type_name, &ask.pairs, ask.lenient)?;
    let body = crate::pipeline::search(&gateway, &ask, parsed).await?;
    Ok(fhir_bundle_response(StatusCode::OK, body))
}

async fn everything(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = ask(&gateway, &parts, raw.as_deref())?;
    let parsed = query::parse_everything(&id, &ask.pairs, ask.lenient)?;
    let body = crate::pipeline::search(&gateway, &ask, parsed).await?;
    Ok(fhir_bundle_response(StatusCode::OK, body))
}

/// `DELETE /admin/cache?patient={nhs}&region={code}`: empties the response cache of a patient,
/// a region, or one region's answers for a patient. Governance roles only (`purge-cache`).
async fn purge_cache(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    super::audit::note(&parts, |e| e.kind = crate::audit::EventKind::CachePurge);
    let ask = ask(&gateway, &parts, raw.as_deref())?;
    let policies = gateway.policies.load_full();
    let region = &gateway.region.code;
    let d = Gatekeeper::new(&policies, &ask.user, region, DecisionPoint::View, region)
        .request_decision("purge-cache", "Cache", region);
    ask.note(|e| e.policies = d.policies.clone());
    if !d.allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your role may not purge the cache",
        ));
    }
    let (mut patient, mut source) = (None, None);
    for (k, v) in &ask.pairs {
        match k.as_str() {
            "patient" => {
                patient = Some(crate::fhir::nhs::NhsNumber::parse(v).map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("patient: {e}"))
                })?)
            }
            "region" if crate::tls::devca::valid_region_code(v) => source = Some(v.clone()),
            "region" => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "region: not a region code",
                ));
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!(
                        "unknown parameter '{}' (patient, region)",
                        crate::fhir::echo(other, 40)
                    ),
                ));
            }
        }
    }
    let cache = gateway.cache.as_ref();
    match (&patient, &source, cache) {
        (None, None, _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "required",
                "name a patient, a region, or both",
            ));
        }
        (Some(p), s, Some(c)) => c.invalidate_patient(p.as_str(), s.as_deref()),
        (None, Some(s), Some(c)) => c.invalidate_region(s),
        (_, _, None) => {}
    }
    ask.note(|e| {
        e.patient = patient.as_ref().map(|p| p.as_str().to_owned());
        e.detail["purged_region"] = serde_json::json!(source);
    });
    let outcome = crate::fhir::outcome::operation_outcome(&[Issue::new(
        Severity::Information,
        "informational",
        "The cached answers were removed; the next query asks the regions again.",
    )]);
    Ok(fhir_response(StatusCode::OK, &outcome))
}

/// `GET Patient/{nhs}`: the merged Patient. Which regions failed is not visible in a read, so
/// the response carries a `Warning` header naming them; the search form carries full outcomes.
async fn read_patient(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let ask = ask(&gateway, &parts, raw.as_deref())?;
    let parsed = query::parse_read(&id, &ask.pairs, ask.lenient)?;
    let (patient, regions_failed) = crate::pipeline::patient(&gateway, &ask, parsed).await?;
    let mut response = fhir_response(StatusCode::OK, &patient);
    if regions_failed > 0 {
        let text = format!(
            "199 federation-gateway \"{regions_failed} region(s) did not answer; use Patient?identifier= for details\""
        );
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            response.headers_mut().insert(http::header::WARNING, v);
        }
    }
    Ok(response)
}
