//! Inbound protection for both faces: oversized requests answered 414, 431 or 413 before
//! they are read; a rate limit per source address before authentication; a cap on requests
//! handled at once (beyond it, 503 with `Retry-After` at once rather than a queue); and rate
//! limits per clinician and per neighbouring region (governor; beyond them, 429 with
//! `Retry-After`). A body sent without a length is limited by tower-http's
//! `RequestBodyLimitLayer` as it is read; header-read, handshake and idle timeouts and the cap
//! on connections are the server's ([`crate::connection`]).
//!
//! The load shedder is a small middleware over a semaphore rather than tower's
//! `ConcurrencyLimit` + `LoadShed`: those answer with an error type axum cannot turn into the
//! FHIR OperationOutcome and `Retry-After` the callers expect.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, StatusCode};

use crate::app::Gateway;
use crate::auth::{ForwardedContext, UserContext};
use crate::error::ApiError;

pub struct Guard {
    slots: Arc<tokio::sync::Semaphore>,
    per_user: DefaultKeyedRateLimiter<String>,
    per_peer: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl Guard {
    pub fn new(limits: &crate::config::ConfigLimits) -> Self {
        let nz = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Guard {
            slots: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_requests.max(1),
            )),
            per_user: RateLimiter::keyed(Quota::per_minute(nz(limits.per_user_per_minute))),
            per_peer: RateLimiter::keyed(Quota::per_second(nz(limits.per_peer_per_second))),
            per_address: RateLimiter::keyed(
                Quota::per_second(nz(limits.per_address_per_second))
                    .allow_burst(nz(limits.per_address_per_second.saturating_mul(2))),
            ),
        }
    }
}

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    response
}

/// Sheds load: a request beyond `limits.max_concurrent_requests` gets 503 at once.
pub async fn shed_load(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = gateway.guard.slots.clone().try_acquire_owned() else {
        gateway
            .metrics
            .counter("gateway_requests_shed_total", &[])
            .increment(1);
        let response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "throttled",
            "the gateway is at capacity; try again in a moment",
        )
        .into_response();
        return with_retry_after(response, 1);
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

fn too_many(who: &str, wait: std::time::Duration) -> Response {
    let response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("too many requests from this {who}; slow down"),
    )
    .into_response();
    with_retry_after(response, wait.as_secs_f64().ceil() as u64)
}

/// Rate-limits a source address before anything else is done with its request (a flood of
/// junk tokens or certificate-less calls costs a lookup, not a verification or an audit
/// write); the refusals are counted into the audit trail ([`crate::audit::refusals`]).
pub async fn limit_address(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(addr) = request
        .extensions()
        .get::<crate::server::ClientAddr>()
        .copied()
    else {
        return next.run(request).await;
    };
    let Err(not_until) = gateway.guard.per_address.check_key(&addr.0.ip()) else {
        return next.run(request).await;
    };
    gateway
        .metrics
        .counter(
            "gateway_requests_rate_limited_total",
            &[("face", "address")],
        )
        .increment(1);
    let what = super::audit::refused_request(&request);
    drop(request);
    let response = too_many(
        "address",
        not_until.wait_time_from(DefaultClock::default().now()),
    );
    super::audit::record_refused_request(
        &gateway,
        crate::audit::EventKind::RefusedRateLimit,
        what,
        response,
        serde_json::json!({}),
    )
    .await
}

/// What is wrong with a request's size, if anything: a target over `max_uri` bytes (414),
/// headers over `max_headers` bytes (431), or a declared body over `max_body` (413).
pub fn oversize(
    target_len: usize,
    headers: &http::HeaderMap,
    limits: &crate::config::ConfigLimits,
) -> Option<(StatusCode, String)> {
    if target_len > limits.max_uri_bytes {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {target_len} bytes; at most {} are accepted",
                limits.max_uri_bytes
            ),
        ));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request's headers are {header_bytes} bytes; at most {} are accepted",
                limits.max_header_bytes
            ),
        ));
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_bytes as u64) {
        return Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the {} bytes accepted",
                limits.max_request_bytes
            ),
        ));
    }
    None
}

/// Answers an oversized request (see [`oversize`]) with its status and an OperationOutcome,
/// before anything reads it; its connection closes after the answer.
pub async fn limit_size(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    match oversize(target, request.headers(), &gateway.config.limits) {
        None => next.run(request).await,
        Some((status, text)) => {
            gateway
                .metrics
                .counter(
                    "gateway_requests_oversized_total",
                    &[("status", status.as_str())],
                )
                .increment(1);
            let mut response = ApiError::new(status, "too-long", text).into_response();
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Rate-limits a clinician by user id (runs after authentication).
pub async fn limit_user(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(user) = request.extensions().get::<UserContext>()
        && let Err(not_until) = gateway.guard.per_user.check_key(&user.user_id)
    {
        gateway
            .metrics
            .counter(
                "gateway_requests_rate_limited_total",
                &[("face", "clinician")],
            )
            .increment(1);
        return too_many(
            "user",
            not_until.wait_time_from(DefaultClock::default().now()),
        );
    }
    next.run(request).await
}

/// Rate-limits a neighbouring region (runs after the peer is authenticated).
pub async fn limit_peer(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<super::federation::PeerRegion>()
        .map(|p| p.0.clone());
    if request.extensions().get::<ForwardedContext>().is_some()
        && let Some(peer) = peer
        && let Err(not_until) = gateway.guard.per_peer.check_key(&peer)
    {
        gateway
            .metrics
            .counter(
                "gateway_requests_rate_limited_total",
                &[("face", "federation")],
            )
            .increment(1);
        return too_many(
            "region",
            not_until.wait_time_from(DefaultClock::default().now()),
        );
    }
    next.run(request).await
}
