//! Auditing every request, and reading the trail.
//!
//! Each authenticated route runs inside [`audit_clinician`] or [`audit_federation`]: the
//! middleware opens an audit event for the request, the handler fills in what it learns (the
//! patient, what each region answered, what was released and withheld, the policies that
//! decided), and once the handler has built its response the middleware writes the record.
//! Only when the record is durable does the response leave; if it cannot be written the
//! caller gets 503 and nothing else (fail closed). Refused tokens and certificates are
//! recorded by the authentication middlewares.
//!
//! `GET /admin/audit` lets governance roles (Cedar action `read-audit`) read the trail as a
//! FHIR Bundle of `AuditEvent`s, filtered and paged; that reading is itself audited.

use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use policy::DecisionPoint;
use serde_json::{Value, json};

use super::RequestId;
use super::clinician::ask;
use crate::access::Gatekeeper;
use crate::app::Gateway;
use crate::audit::refusals::Noted;
use crate::audit::{AuditEvent, EventKind};
use crate::auth::{ForwardedContext, UserContext};
use crate::error::{ApiError, Refusal, fhir_response};
use crate::fhir::{self, SearchMode};

pub use crate::audit::slot::{AuditSlot, audit_unavailable};

/// Updates the request's audit event, when it has one.
pub fn note(parts: &http::request::Parts, f: impl FnOnce(&mut AuditEvent)) {
    if let Some(slot) = AuditSlot::of(parts) {
        slot.update(f);
    }
}

fn now() -> String {
    fhir::instant(time::OffsetDateTime::now_utc())
}

fn request_id(request: &Request) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone())
}

/// A new event for `request`, under the gateway's request id.
fn event_for(kind: EventKind, request: &Request) -> AuditEvent {
    let mut event = AuditEvent::new(kind, now(), &request_id(request));
    event.detail = describe(request);
    event
}

fn fill_user(e: &mut AuditEvent, user: &UserContext) {
    e.user_id.clone_from(&user.user_id);
    e.role.clone_from(&user.role);
    e.organisation.clone_from(&user.organisation);
    e.purpose_of_use = user.purpose_of_use.clone().unwrap_or_default();
    e.break_glass_reason.clone_from(&user.break_glass);
}

/// What the request asked, as method and path with query (this is the audit store, where the
/// NHS number in a query belongs).
/// The client's correlation id (its own `X-Request-Id`) is kept beside the gateway's, and the
/// W3C trace the request belongs to.
fn describe(request: &Request) -> Value {
    let query = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let mut detail = json!({"method": request.method().as_str(), "query": query});
    if let Some(c) = request.extensions().get::<super::ClientRequestId>() {
        detail["client_request_id"] = json!(c.0);
    }
    if let Some(t) = request.extensions().get::<crate::trace::TraceContext>() {
        detail["trace_id"] = json!(t.trace_id_hex());
    }
    detail
}

/// Completes the event from the response and writes it; the response leaves only after.
async fn finish(
    gateway: &Gateway,
    slot: AuditSlot,
    response: Response,
    trace: Option<String>,
) -> Response {
    if slot.written().load(std::sync::atomic::Ordering::SeqCst) && response.status().is_success() {
        return response;
    }
    let mut event = slot.take();
    event.status = response.status().as_u16();
    if !response.status().is_success() {
        event.outcome = response.extensions().get::<Refusal>().map_or_else(
            || response.status().to_string(),
            |r| format!("{}: {}", response.status().as_u16(), r.0),
        );
    }
    let mut span = match &trace {
        Some(t) => gateway.telemetry.child("audit write", t, None),
        None => crate::telemetry::Span::none(),
    };
    match gateway.record(event).await {
        Ok(_) => response,
        Err(e) => {
            span.fail("the audit record could not be written");
            audit_unavailable(&e).into_response()
        }
    }
}

/// The request's own span, as a `traceparent` (the parent of its children's spans).
fn trace_of(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<crate::trace::TraceContext>()
        .map(crate::trace::TraceContext::header)
}

/// Audits an authenticated clinician request (runs after `authenticate`).
pub async fn audit_clinician(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let kind = match *request.method() {
        http::Method::POST | http::Method::PUT => EventKind::ConsentChange,
        _ => EventKind::ClinicianQuery,
    };
    let mut event = event_for(kind, &request);
    if let Some(user) = request.extensions().get::<UserContext>() {
        fill_user(&mut event, user);
    }
    let slot = AuditSlot::new(event);
    request.extensions_mut().insert(slot.clone());
    let trace = trace_of(&request);
    let response = next.run(request).await;
    finish(&gateway, slot, response, trace).await
}

/// Audits a federation request from a peer (runs after `authenticate_peer`).
pub async fn audit_federation(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut event = event_for(EventKind::FederationQuery, &request);
    if let Some(context) = request.extensions().get::<ForwardedContext>() {
        fill_user(&mut event, &context.user);
        // Named by the id the calling gateway minted, as its signed context carries it (not
        // by a header anyone could set), so both regions' records join on one id.
        event.request_id.clone_from(&context.request_id);
        event.detail["calling_request_id"] = json!(context.request_id);
    }
    if let Some(peer) = request.extensions().get::<super::federation::PeerRegion>() {
        event.detail["calling_region"] = json!(peer.0);
    }
    let slot = AuditSlot::new(event);
    request.extensions_mut().insert(slot.clone());
    let trace = trace_of(&request);
    let response = next.run(request).await;
    finish(&gateway, slot, response, trace).await
}

/// Records a refused token, certificate or rate-limited request from `source` (an address):
/// the first of its interval at once, the rest counted into one record when the interval ends
/// ([`crate::audit::refusals`]). The refusal is answered whether or not the record could be
/// written (it releases nothing); a failed write is logged.
pub async fn record_refusal(
    gateway: &Gateway,
    kind: EventKind,
    source: &str,
    request_id: &str,
    status: StatusCode,
    outcome: String,
    detail: Value,
) {
    gateway
        .metrics
        .counter("gateway_refusals_total", &[("kind", kind.as_str())])
        .increment(1);
    let at = now();
    if gateway
        .refusals
        .note(kind, source, (status.as_u16(), &outcome), &at)
        == Noted::Counted
    {
        return;
    }
    let mut event = AuditEvent::new(kind, at, request_id);
    event.status = status.as_u16();
    event.outcome = outcome;
    event.detail = detail;
    event.detail["source"] = json!(source);
    if let Err(e) = gateway.record(event).await {
        tracing::error!(error = %e, kind = kind.as_str(), "could not record a refusal in the audit trail");
    }
}

/// Writes a record for each kind, source and outcome with refusals counted in the interval now
/// ending.
pub async fn record_refusal_summaries(gateway: &Gateway) {
    for s in gateway.refusals.close_interval() {
        let mut event = AuditEvent::new(s.kind, now(), &crate::api::mint_request_id());
        event.status = s.tally.status;
        event.outcome = format!(
            "{} more like the one recorded at {}: {}",
            s.tally.count, s.tally.first_at, s.outcome
        );
        event.detail = json!({
            "aggregated": true,
            "count": s.tally.count,
            "source": s.source,
            "from": s.tally.first_at,
            "until": s.tally.last_at,
        });
        if let Err(e) = gateway.record(event).await {
            tracing::error!(error = %e, kind = s.kind.as_str(), count = s.tally.count, "could not record counted refusals in the audit trail");
        }
    }
}

/// Writes the counted refusals every `audit.refusal_interval_ms`, and once more at `stop`.
pub async fn record_refusals_periodically(
    gateway: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_millis(gateway.config.audit.refusal_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => record_refusal_summaries(&gateway).await,
        }
    }
    record_refusal_summaries(&gateway).await;
}

/// The source address a request came from, as refusals are counted by.
pub fn source_of(request: &Request) -> String {
    request
        .extensions()
        .get::<crate::server::ClientAddr>()
        .map_or_else(|| "unknown".to_owned(), |a| a.0.ip().to_string())
}

/// What a refused request was (its id, source, method and path), taken before the request is
/// answered: a request's body cannot be held across an await.
pub struct RefusedRequest {
    request_id: String,
    source: String,
    detail: Value,
}

pub fn refused_request(request: &Request) -> RefusedRequest {
    RefusedRequest {
        request_id: request_id(request),
        source: source_of(request),
        detail: describe(request),
    }
}

/// Records a refused request from what [`refused_request`] took and the refusal answered.
pub async fn record_refused_request(
    gateway: &Gateway,
    kind: EventKind,
    what: RefusedRequest,
    response: Response,
    extra: Value,
) -> Response {
    let RefusedRequest {
        request_id,
        source,
        mut detail,
    } = what;
    if let (Some(d), Some(x)) = (detail.as_object_mut(), extra.as_object()) {
        d.extend(x.clone());
    }
    let status = response.status();
    let outcome = response.extensions().get::<Refusal>().map_or_else(
        || status.to_string(),
        |r| format!("{}: {}", status.as_u16(), r.0),
    );
    record_refusal(gateway, kind, &source, &request_id, status, outcome, detail).await;
    response
}

/// Which search of the trail a request made: the console's `GET /admin/audit`, with the
/// gateway's own parameters, or `GET /fhir/AuditEvent`, with FHIR R4's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailFace {
    Admin,
    Fhir,
}

/// `GET /admin/audit`: the trail as a Bundle of AuditEvents, newest first.
pub async fn search_trail(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    search(&gateway, TrailFace::Admin, raw.as_deref(), request).await
}

/// `GET /fhir/AuditEvent`: the same records searched with FHIR R4's AuditEvent parameters
/// (`patient`, `date`, `agent`, `entity`, `type`, `subtype`, `outcome`, `_count`), as BALP
/// AuditEvents, for the roles allowed `read-audit`.
pub async fn search_audit_events(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    search(&gateway, TrailFace::Fhir, raw.as_deref(), request).await
}

/// `GET /fhir/AuditEvent/{seq}`: one record.
pub async fn read_audit_event(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    note(&parts, |e| e.kind = EventKind::AuditRead);
    let user = ask(&gateway, &parts, None)?.user;
    allowed_to_read_trail(&gateway, &parts, &user)?;
    if !user.may("AuditEvent", crate::auth::scopes::Interaction::Read) {
        return Err(scope_refused());
    }
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("AuditEvent/{id} is not in this region's trail"),
        )
    };
    let seq: u64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(not_found)?;
    let found = gateway
        .audit
        .read_after(seq - 1, 1)
        .await
        .map_err(trail_unavailable)?
        .into_iter()
        .find(|s| s.record.seq == seq)
        .ok_or_else(not_found)?;
    note(&parts, |e| {
        e.patient.clone_from(&found.record.event.patient)
    });
    if user.patient.is_some() && found.record.event.patient != user.patient {
        return Err(not_found());
    }
    note(&parts, |e| e.released = 1);
    let event =
        crate::audit::fhir::to_audit_event(&found.record, &gateway.identity, &gateway.region.name);
    Ok(fhir_response(StatusCode::OK, &event))
}

fn scope_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the token's scopes do not grant reading AuditEvent",
    )
}

fn trail_unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the audit trail cannot be read just now",
    )
    .internal(e.to_string())
}

/// Refuses (403) a user whose role may not read the trail (Cedar action `read-audit`).
fn allowed_to_read_trail(
    gateway: &Gateway,
    parts: &http::request::Parts,
    user: &UserContext,
) -> Result<(), ApiError> {
    let policies = gateway.policies.load_full();
    let region = &gateway.region.code;
    let d = Gatekeeper::new(&policies, user, region, DecisionPoint::View, region).request_decision(
        "read-audit",
        "AuditEvent",
        region,
    );
    note(parts, |e| e.policies = d.policies.clone());
    if d.allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your role may not read the audit trail",
        ))
    }
}

async fn search(
    gateway: &Gateway,
    face: TrailFace,
    raw: Option<&str>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    note(&parts, |e| e.kind = EventKind::AuditRead);
    let ask = ask(gateway, &parts, raw)?;
    allowed_to_read_trail(gateway, &parts, &ask.user)?;
    if face == TrailFace::Fhir
        && !ask
            .user
            .may("AuditEvent", crate::auth::scopes::Interaction::Search)
    {
        return Err(scope_refused());
    }
    let refused = |e: crate::audit::fhir::FilterError| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.to_string())
            .internal(format!("audit filter refused: parameter {}", e.parameter))
    };
    let (filter, matches_nothing) = match face {
        TrailFace::Admin => (
            crate::audit::fhir::parse_filter(&ask.pairs).map_err(refused)?,
            false,
        ),
        TrailFace::Fhir => {
            let s = crate::audit::fhir::parse_search(&ask.pairs).map_err(refused)?;
            (s.filter, s.matches_nothing)
        }
    };
    note(&parts, |e| e.patient.clone_from(&filter.patient));
    if ask.user.patient.is_some() && filter.patient != ask.user.patient {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token is about one patient: search the trail with patient= that patient",
        ));
    }
    let page = if matches_nothing {
        crate::audit::Page::default()
    } else {
        gateway
            .audit
            .search(&filter)
            .await
            .map_err(trail_unavailable)?
    };
    note(&parts, |e| e.released = page.records.len());
    let base = &gateway.region.base_url;
    let site = &gateway.region.name;
    let entries: Vec<Value> = page
        .records
        .iter()
        .map(|r| {
            fhir::entry(
                &format!("{base}/AuditEvent/{}", r.seq),
                crate::audit::fhir::to_audit_event(r, &gateway.identity, site),
                SearchMode::Match,
            )
        })
        .collect();
    let admin = base.strip_suffix("/fhir").unwrap_or(base);
    let path = match face {
        TrailFace::Admin => format!("{admin}/admin/audit"),
        TrailFace::Fhir => format!("{base}/AuditEvent"),
    };
    let query: Vec<(String, String)> = ask
        .pairs
        .iter()
        .filter(|(k, _)| k != "before")
        .cloned()
        .collect();
    let encode =
        |pairs: &[(String, String)]| serde_urlencoded::to_string(pairs).unwrap_or_default();
    let mut bundle = fhir::searchset(&ask.request_id, &now(), base, page.total as usize, entries);
    let mut links =
        vec![json!({"relation": "self", "url": format!("{path}?{}", encode(&ask.pairs))})];
    if let Some(next) = page.next_before {
        let mut q = query.clone();
        q.push(("before".into(), next.to_string()));
        links.push(json!({"relation": "next", "url": format!("{path}?{}", encode(&q))}));
    }
    bundle["link"] = Value::Array(links);
    Ok(fhir_response(StatusCode::OK, &bundle))
}
