//! The HTTP faces: [`clinician`] (bearer tokens, fan-out, one merged Bundle) and
//! [`federation`] (mutual TLS, local record only). Shared here: request ids, the access log
//! (method, route template, status, time; never a query string, which holds NHS numbers),
//! FHIR fallbacks, and reading `Prefer: handling=lenient`.

pub mod audit;
pub mod clinician;
pub mod consent;
pub mod federation;
pub mod governance;
pub mod guard;
pub mod paging;
pub mod read;
pub mod smart;

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::error::ApiError;

/// What both faces put around their routes, outermost last: FHIR fallbacks, the body limit,
/// load shedding, the rate limit per source address, the size limits, then the request id and
/// access log.
pub fn outer_layers(
    router: axum::Router<std::sync::Arc<crate::app::Gateway>>,
    gateway: &std::sync::Arc<crate::app::Gateway>,
) -> axum::Router<std::sync::Arc<crate::app::Gateway>> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            gateway.config.limits.max_request_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            guard::shed_load,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            guard::limit_address,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            guard::limit_size,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            request_context,
        ))
}

/// The request id the gateway minted for this request, as a request extension. It names the
/// request in the audit trail, the log and the peers' audit trails (in the forwarded context);
/// a client never chooses it, so no two users' records can share one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The client's own `X-Request-Id`, when it sent a short, plain one: its correlation id, kept
/// in the audit record beside the gateway's (`detail.client_request_id`) and echoed back.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub String);

/// A new request id: a UUID of version 7, whose leading bits are the time it was minted, so
/// that ids minted later sort after earlier ones. Every audit record is indexed by its request
/// id: random ids (version 4) made each record's insert touch a page of that index chosen at
/// random, a page of the trail's write-ahead log for every record of a commit; ids in time
/// order append to the index's last page. A request id names records; it grants nothing (a
/// paging cursor, which does, keeps a random id of its own).
pub fn mint_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The response header echoing the client's own request id.
pub const CLIENT_REQUEST_ID_HEADER: &str = "x-client-request-id";

/// A caller's request id is kept (as its correlation id) when it is short and plain.
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    .then(|| s.to_owned())
}

/// Gives every request an id of the gateway's own (echoed in the response, with the client's
/// correlation id when it sent one) and writes one access-log line.
pub async fn request_context(
    axum::extract::State(gateway): axum::extract::State<std::sync::Arc<crate::app::Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = mint_request_id();
    let client_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(acceptable_request_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    // This request's span: in the trace it came with, or a new one.
    let incoming = request
        .headers()
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    let trace = crate::trace::TraceContext::for_request(incoming, crate::trace::random_ids());
    let parent = incoming
        .and_then(crate::trace::TraceContext::parse)
        .map(|p| p.span_id);
    request.extensions_mut().insert(trace);
    if let Some(c) = &client_id {
        request.extensions_mut().insert(ClientRequestId(c.clone()));
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_owned(), |p| p.as_str().to_owned());
    let mut span = gateway
        .telemetry
        .request(format!("{method} {route}"), &trace, parent);
    if gateway.telemetry.enabled() {
        span.set("http.request.method", method.to_string());
        span.set("http.route", route.clone());
        span.set("gateway.request_id", id.clone());
        span.set("gateway.region", gateway.region.code.clone());
    }
    let mut response = next.run(request).await;
    // An error answered below the handlers (a body over the limit, a rejected extractor) is
    // given as a FHIR OperationOutcome too.
    if response.status().is_client_error() || response.status().is_server_error() {
        let fhir = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(crate::fhir::FHIR_JSON));
        if !fhir {
            let status = response.status();
            let (code, text) = match status {
                StatusCode::PAYLOAD_TOO_LARGE => ("too-long", "the request body is too large"),
                _ => ("exception", "the request could not be handled"),
            };
            let headers = response.headers().clone();
            response = ApiError::new(status, code, text).into_response();
            if let Some(v) = headers.get(http::header::RETRY_AFTER) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, v.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if let Some(v) = client_id.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(CLIENT_REQUEST_ID_HEADER, v);
    }
    tracing::info!(request_id = %id, trace_id = %trace.trace_id_hex(), %method, %route, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    span.set(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    if response.status().is_server_error() {
        span.fail(response.status().as_str());
    }
    response
}

/// `Prefer: handling=lenient` asks for unknown parameters to be ignored (FHIR R4 3.1.1.5.5).
pub fn lenient(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

/// Only FHIR JSON is produced: a client that accepts neither JSON nor anything gets 406.
pub fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(accept) = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let ok = accept
        .split(',')
        .map(|m| {
            m.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .any(|m| {
            matches!(
                m.as_str(),
                "application/fhir+json" | "application/json" | "application/*" | "*/*" | ""
            ) || m == "application/json+fhir"
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "this server produces only application/fhir+json",
        ))
    }
}

pub async fn not_found() -> Response {
    ApiError::not_found("no such endpoint; see /fhir/metadata").into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "this endpoint supports GET only",
    )
    .into_response()
}

/// Reads the raw query string into pairs, percent-decoded. A malformed one is a 400.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or("");
    if raw.len() > 8 * 1024 {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "too-long",
            "the query string is longer than 8 KiB",
        ));
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the query string is not well formed",
        )
    })
}

/// Reads the patient's consent directives from this region's record. Fails closed: a record
/// that cannot say what the patient decided releases nothing (503).
pub async fn read_consent(
    gateway: &crate::app::Gateway,
    nhs: &crate::fhir::nhs::NhsNumber,
) -> Result<crate::consent::ConsentView, crate::error::ApiError> {
    let both = async {
        let stored = gateway
            .consents
            .for_patient(nhs.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut consents = gateway
            .local
            .consents(nhs)
            .await
            .map_err(|e| e.to_string())?;
        consents.extend(stored.into_iter().map(|c| c.resource));
        Ok::<_, String>(consents)
    };
    match tokio::time::timeout(gateway.local_timeout(), both).await {
        Ok(Ok(consents)) => Ok(crate::consent::read(
            &consents,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )),
        Ok(Err(e)) => Err(consent_unavailable(e)),
        Err(_) => Err(consent_unavailable("timed out".into())),
    }
}

/// The region's own record failed to answer (its reason goes to the log only).
pub fn record_unreadable(e: impl std::fmt::Display) -> crate::error::ApiError {
    crate::error::ApiError::new(
        http::StatusCode::BAD_GATEWAY,
        "exception",
        "the regional record could not be read",
    )
    .internal(e.to_string())
}

fn consent_unavailable(internal: String) -> crate::error::ApiError {
    crate::error::ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the patient's consent directives could not be read, so no records are released; try again shortly",
    )
    .internal(format!("consent directives unavailable: {internal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_sort_in_the_order_they_were_minted_and_never_repeat() {
        let ids: Vec<String> = (0..2000).map(|_| mint_request_id()).collect();
        // In time order, so that the audit trail's index on them grows at its end.
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in minting order");
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7, "{id}");
        }
        // Ids minted in the same millisecond still differ in their random part.
        let random = |id: &str| id.replace('-', "")[16..].to_owned();
        let distinct: std::collections::BTreeSet<String> =
            ids.iter().map(|id| random(id)).collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn lenient_is_read_from_prefer() {
        let mut h = HeaderMap::new();
        assert!(!lenient(&h));
        h.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=lenient"),
        );
        assert!(lenient(&h));
        h.insert("prefer", HeaderValue::from_static("handling=strict"));
        assert!(!lenient(&h));
    }

    #[test]
    fn accept_header() {
        let mut h = HeaderMap::new();
        assert!(check_accept(&h).is_ok());
        h.insert(
            "accept",
            HeaderValue::from_static("application/fhir+json; fhirVersion=4.0"),
        );
        assert!(check_accept(&h).is_ok());
        h.insert("accept", HeaderValue::from_static("application/fhir+xml"));
        assert_eq!(
            check_accept(&h).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
    }

    #[test]
    fn request_ids_are_checked() {
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("abc-123")),
            Some("abc-123".into())
        );
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("a b")),
            None
        );
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_str(&"x".repeat(65)).unwrap()),
            None
        );
    }
}
