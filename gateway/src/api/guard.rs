//! Inbound protection for both faces: a cap on requests handled at once (beyond it, 503 with
//! `Retry-After` at once rather than a queue), and rate limits per clinician and per
//! neighbouring region (governor; beyond them, 429 with `Retry-After`). Body size is limited by
//! tower-http's `RequestBodyLimitLayer` on each router, and header-read and handshake timeouts
//! by the server.
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
