//! The clinician face: bearer-token authentication, then each FHIR interaction is parsed,
//! fanned out to the local record and every peer, merged, and answered as one Bundle.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;

use super::{RequestId, check_accept, lenient, query_pairs, read_consent};
use crate::access::{BREAK_GLASS_HEADER, Filtered, Gatekeeper, break_glass_reason};
use crate::app::Gateway;
use crate::auth::{AuthError, UserContext};
use crate::error::{ApiError, fhir_response};
use crate::fhir::outcome::{Issue, Severity};
use policy::DecisionPoint;

/// A purpose of use given with the request, honoured only when the token carries none.
pub const PURPOSE_HEADER: &str = "x-purpose-of-use";
use crate::audit::RegionOutcome;
use crate::cache::view::{KeptView, ViewKey};
use crate::consent::ConsentView;
use crate::error::fhir_bytes_response;
use crate::fhir::write_searchset;
use crate::merge::{Envelope, Merged, View, ViewContext, merge_view};
use crate::peers::FanOut;
use crate::query::{self, Parsed};

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
        .merge(crate::console::router())
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
        Some(t) => gateway.verifier.verify(t),
    };
    match user {
        Ok(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
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
        ),
    )
}

/// What every interaction shares: the request's user, id, headers and query.
pub(super) struct Ask {
    pub(super) user: UserContext,
    pub(super) request_id: String,
    lenient: bool,
    pub(super) pairs: Vec<(String, String)>,
    self_link: String,
    /// The request's audit event.
    audit: Option<super::audit::AuditSlot>,
}

impl Ask {
    /// Records the request's audit event now, before a change is made (see
    /// [`super::audit::AuditSlot::write_ahead`]).
    pub(super) async fn write_audit_ahead(
        &self,
        gateway: &Gateway,
        status: StatusCode,
    ) -> Result<(), ApiError> {
        match &self.audit {
            Some(slot) => slot.write_ahead(gateway, status).await,
            None => Ok(()),
        }
    }

    /// Adds to the request's audit event.
    pub(super) fn note(&self, f: impl FnOnce(&mut crate::audit::AuditEvent)) {
        if let Some(slot) = &self.audit {
            slot.update(f);
        }
    }
}

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
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), |r| r.0.clone());
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
        audit,
    })
}

/// A view made for one request, with what its audit record and a view cache need.
struct Viewed {
    view: View,
    /// The consent directives the view was decided under.
    consent: ConsentView,
    /// Each region's answer identity when every one is pinned (see [`ViewKey`]).
    identities: Option<Vec<u64>>,
    report: Filtered,
    regions: Vec<RegionOutcome>,
}

/// The fan-out of this request.
fn fan_out<'a>(gateway: &'a Gateway, ask: &'a Ask, tls: &'a crate::app::TlsState) -> FanOut<'a> {
    FanOut {
        local: (&gateway.region, &gateway.local, gateway.local_timeout()),
        peers: &gateway.peers,
        signer: &tls.signer,
        user: &ask.user,
        request_id: &ask.request_id,
        deadline: std::time::Duration::from_millis(gateway.config.fanout.deadline_ms),
        max_bytes: gateway.config.limits.max_response_bytes,
        cache: gateway.cache.as_ref(),
        metrics: Some(&gateway.metrics),
    }
}

/// This request's decisions, refusing it outright when the user may not search here.
pub(super) fn gatekeeper<'a>(
    gateway: &Gateway,
    ask: &Ask,
    policies: &'a policy::PolicySet,
) -> Result<Gatekeeper<'a>, ApiError> {
    let gatekeeper = Gatekeeper::new(
        policies,
        &ask.user,
        &gateway.region.code,
        DecisionPoint::View,
        &gateway.region.code,
    );
    gatekeeper
        .admit(&gateway.region.code)
        .map_err(|r| ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.to_string()))?;
    Ok(gatekeeper)
}

/// What the audit record says of a view: what each region answered, what was withheld and
/// released, the policies that decided.
fn note_view(
    ask: &Ask,
    regions: &[RegionOutcome],
    withheld: usize,
    policies: &[String],
    view: &View,
) {
    ask.note(|e| {
        e.regions = regions.to_vec();
        e.withheld = withheld;
        e.policies = policies.to_vec();
        e.released = view.total;
        e.detail["deduplicated"] = serde_json::json!(view.deduplicated);
        e.detail["discarded"] = serde_json::json!(view.discarded);
    });
}

/// Asks every region through `fan` (and the answer cache), filters each answer under the view
/// policy of `gatekeeper` (already admitted), and merges what this user may see. `consent`
/// when already read for this request.
async fn make_view(
    gateway: &Gateway,
    ask: &Ask,
    parsed: Parsed,
    (gatekeeper, fan): (Gatekeeper<'_>, FanOut<'_>),
    consent: Option<ConsentView>,
) -> Result<Viewed, ApiError> {
    let (fanned, consent) = match consent {
        Some(c) => (fan.run(&parsed.query).await, Ok(c)),
        None => {
            futures::join!(
                fan.run(&parsed.query),
                read_consent(gateway, &parsed.query.nhs_number)
            )
        }
    };
    let results = fanned.results;
    // Consent must be readable before anything is released; when no region answered there is
    // nothing to release and the 502/504 below says more than a 503 would.
    let consent = match consent {
        Ok(c) => c,
        Err(_) if results.iter().all(|r| r.outcome.is_err()) => {
            crate::consent::ConsentView::default()
        }
        Err(e) => return Err(e),
    };
    // The view decision point: what this region's user may see of every region's answer.
    let mut gatekeeper = gatekeeper.with_consent(consent.clone(), &gateway.region.code);
    let mut report = Filtered::default();
    let results: Vec<_> = results
        .into_iter()
        .map(|mut r| {
            r.outcome = r
                .outcome
                .map(|a| gatekeeper.filter(a, &r.region.code, &mut report));
            r
        })
        .collect();
    let mut issues = parsed.ignored;
    if report.withheld > 0 {
        issues.push(Issue::new(
            Severity::Warning,
            "suppressed",
            "Some items were withheld under consent and access policy.",
        ));
    }
    if ask.user.break_glass.is_some() {
        // The reason itself goes to the audit trail, never to the operational log.
        issues.push(Issue::new(
            Severity::Warning,
            "informational",
            "Emergency (break-glass) access: this access is recorded and will be reviewed.",
        ));
    }
    gateway
        .metrics
        .policy_items("view", report.released, report.withheld);
    let regions: Vec<RegionOutcome> = results
        .iter()
        .map(|r| RegionOutcome {
            region: r.region.code.clone(),
            outcome: match &r.outcome {
                Ok(_) => "answered".into(),
                Err(f) => f.kind.label().to_owned(),
            },
            items: r.outcome.as_ref().map_or(0, |a| a.items.len()),
        })
        .collect();
    tracing::info!(request_id = %ask.request_id, released = report.released, withheld = report.withheld, decisions = gatekeeper.decisions_made(),
        break_glass = ask.user.break_glass.is_some(), policies = ?report.policies, "policy applied");
    for r in &results {
        match &r.outcome {
            Ok(a) => {
                tracing::info!(request_id = %ask.request_id, region = %r.region.code, items = a.items.len(), elapsed_ms = r.elapsed_ms, "region answered")
            }
            Err(f) => {
                tracing::warn!(request_id = %ask.request_id, region = %r.region.code, kind = f.kind.label(), reason = %f.reason, elapsed_ms = r.elapsed_ms, "region failed")
            }
        }
    }
    let view = merge_view(
        &parsed.query,
        results,
        ViewContext {
            gateway_base: &gateway.region.base_url,
            issues,
            on_mismatch: gateway.config.merge.on_demographic_mismatch,
        },
    );
    let policies: Vec<String> = report.policies.iter().cloned().collect();
    note_view(ask, &regions, report.withheld, &policies, &view);
    Ok(Viewed {
        view,
        consent,
        identities: fanned.identities.into_iter().collect(),
        report,
        regions,
    })
}

/// What names this request in its Bundle.
fn envelope<'a>(ask: &'a Ask, now: &'a str) -> Envelope<'a> {
    Envelope {
        bundle_id: &ask.request_id,
        now,
        self_link: &ask.self_link,
    }
}

async fn fan_out_and_merge(
    gateway: &Gateway,
    ask: &Ask,
    parsed: Parsed,
) -> Result<Merged, ApiError> {
    ask.note(|e| e.patient = Some(parsed.query.nhs_number.as_str().to_owned()));
    // The version in force when the request started, whatever a reload does meanwhile.
    let policies = gateway.policies.load_full();
    let tls = gateway.tls.load();
    let asking = (
        gatekeeper(gateway, ask, &policies)?,
        fan_out(gateway, ask, &tls),
    );
    let viewed = make_view(gateway, ask, parsed, asking, None).await?;
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    Ok(viewed.view.into_merged(&envelope(ask, &now)))
}

/// When no region answered there is nothing to show: 504 if all timed out, else 502.
fn none_answered(
    answered: usize,
    failed: usize,
    all_timeouts: bool,
    issues: &[Issue],
) -> Option<ApiError> {
    (answered == 0).then(|| {
        let status = if all_timeouts {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        ApiError::from_outcome(
            status,
            issues.to_vec(),
            format!("no region answered ({failed} failed)"),
        )
    })
}

fn view_unanswered(v: &View) -> Option<ApiError> {
    none_answered(
        v.regions_answered,
        v.regions_failed,
        v.all_failures_timeouts,
        &v.issues,
    )
}

fn merged_unanswered(m: &Merged) -> Option<ApiError> {
    none_answered(
        m.regions_answered,
        m.regions_failed,
        m.all_failures_timeouts,
        &m.issues,
    )
}

/// A search or `$everything` answered whole: from a view kept from an identical request when
/// every input is the same (see [`crate::cache::view`]), else made now (and kept when it can
/// be). The Bundle is written around entries serialised once.
async fn respond_view(gateway: &Gateway, ask: &Ask, parsed: Parsed) -> Result<Response, ApiError> {
    let nhs = parsed.query.nhs_number.as_str().to_owned();
    ask.note(|e| e.patient = Some(nhs.clone()));
    // The version in force when the request started, whatever a reload does meanwhile.
    let policies = gateway.policies.load_full();
    // One gatekeeper and one fan-out for the request, whether or not a kept view answers it.
    let gatekeeper = gatekeeper(gateway, ask, &policies)?;
    let decided_at = gatekeeper.time();
    let tls = gateway.tls.load();
    let fan = fan_out(gateway, ask, &tls);
    // None under break-glass: such a request neither reads nor writes a view.
    let key = |consent: &ConsentView, answers: Vec<u64>| {
        ViewKey::new(
            &ask.user,
            &nhs,
            &ask.self_link,
            ask.lenient,
            &policies,
            consent,
            answers,
            decided_at,
        )
    };
    let views = gateway.cache.as_ref();
    let mut consent = None;
    if let Some(cache) = views {
        let (answers, read) = futures::join!(
            fan.fresh_identities(&parsed.query),
            read_consent(gateway, &parsed.query.nhs_number)
        );
        if let (Some(answers), Ok(c)) = (answers, &read) {
            let cached = answers
                .iter()
                .filter(|&&a| a != crate::peers::IMMUTABLE_LOCAL)
                .count();
            if let Some(kept) = key(c, answers).and_then(|k| cache.views.get(&k, &policies)) {
                cache.count_view_served(cached);
                return answer_kept(gateway, ask, &kept).await;
            }
        }
        consent = read.ok();
    }
    let viewed = make_view(gateway, ask, parsed, (gatekeeper, fan), consent).await?;
    if let Some(e) = view_unanswered(&viewed.view) {
        return Err(e);
    }
    let Viewed {
        mut view,
        consent,
        identities,
        report,
        regions,
    } = viewed;
    tracing::info!(request_id = %ask.request_id, total = view.total, regions_answered = view.regions_answered, regions_failed = view.regions_failed,
        deduplicated = view.deduplicated, discarded = view.discarded, "merged");
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let envelope = envelope(ask, &now);
    let (response, entries) = audited_bundle(gateway, ask, || {
        let entries = view.written();
        let tail = view.request_entries(&envelope, |c| c.elapsed_ms);
        let body = write_searchset(
            envelope.bundle_id,
            envelope.now,
            envelope.self_link,
            view.total,
            &entries,
            &tail,
        );
        (body, entries)
    })
    .await?;
    if let (Some(cache), Some(key)) = (views, identities.and_then(|a| key(&consent, a))) {
        // The kept entries are the written ones.
        view.matches = Vec::new();
        view.includes = Vec::new();
        cache.views.insert(
            key,
            KeptView {
                policy: policies.clone(),
                entries,
                view,
                released: report.released,
                withheld: report.withheld,
                policies: report.policies.into_iter().collect(),
                regions,
            },
        );
    }
    Ok(response)
}

/// A Bundle answering the request: its audit record is made durable while `write` writes the
/// body (both before anything leaves), so the record's fsync does not add to the wait. `write`
/// gives the body and anything else it made.
async fn audited_bundle<T>(
    gateway: &Gateway,
    ask: &Ask,
    write: impl FnOnce() -> (Vec<u8>, T),
) -> Result<(Response, T), ApiError> {
    // The record is handed to the trail's writer at the first poll; then the body is written.
    let (written, (body, made)) =
        futures::join!(ask.write_audit_ahead(gateway, StatusCode::OK), async {
            write()
        });
    written?;
    Ok((fhir_bytes_response(StatusCode::OK, body), made))
}

/// The answer from a kept view: the same entries, in a Bundle that names this request.
async fn answer_kept(gateway: &Gateway, ask: &Ask, kept: &KeptView) -> Result<Response, ApiError> {
    note_view(
        ask,
        &kept.regions,
        kept.withheld,
        &kept.policies,
        &kept.view,
    );
    ask.note(|e| e.detail["view_kept"] = serde_json::json!(true));
    gateway
        .metrics
        .policy_items("view", kept.released, kept.withheld);
    tracing::info!(request_id = %ask.request_id, total = kept.view.total, "served a view kept from an identical request");
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let envelope = envelope(ask, &now);
    let (response, ()) = audited_bundle(gateway, ask, || {
        // Nothing was asked of any region for this request.
        let tail = kept.view.request_entries(&envelope, |_| 0);
        let body = write_searchset(
            envelope.bundle_id,
            envelope.now,
            envelope.self_link,
            kept.view.total,
            &kept.entries,
            &tail,
        );
        (body, ())
    })
    .await?;
    Ok(response)
}

async fn respond_bundle(
    gateway: &Gateway,
    ask: Ask,
    mut parsed: Parsed,
) -> Result<Response, ApiError> {
    // The merge keeps everything; `_count` pages it (the rest is kept under a cursor).
    let Some(count) = parsed.query.count.take() else {
        return respond_view(gateway, &ask, parsed).await;
    };
    let nhs = parsed.query.nhs_number.as_str().to_owned();
    let merged = fan_out_and_merge(gateway, &ask, parsed).await?;
    if let Some(e) = merged_unanswered(&merged) {
        return Err(e);
    }
    tracing::info!(request_id = %ask.request_id, total = merged.total, regions_answered = merged.regions_answered, regions_failed = merged.regions_failed,
        deduplicated = merged.deduplicated, discarded = merged.discarded, "merged");
    if count == 0 {
        // `_count=0` or `_summary=count`: the total alone, with the outcome that qualifies it
        // (a failed or cut region makes the count a count of what could be seen).
        let mut bundle = merged.bundle;
        if let Some(entries) = bundle
            .get_mut("entry")
            .and_then(serde_json::Value::as_array_mut)
        {
            entries.retain(|e| e["search"]["mode"] == "outcome");
            if entries.is_empty() {
                bundle.as_object_mut().map(|b| b.remove("entry"));
            }
        }
        ask.note(|e| {
            e.released = 0;
            e.detail["count_only"] = serde_json::json!(true);
        });
        return Ok(fhir_response(StatusCode::OK, &bundle));
    }
    let page =
        super::paging::first_page(gateway, &ask.user, &nhs, merged.bundle, count as usize).await;
    let shown = page["entry"].as_array().map_or(0, |e| {
        e.iter().filter(|x| x["search"]["mode"] == "match").count()
    });
    ask.note(|e| e.released = shown);
    Ok(fhir_response(StatusCode::OK, &page))
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
    respond_bundle(&gateway, ask, parsed).await
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
    respond_bundle(&gateway, ask, parsed).await
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
    let merged = fan_out_and_merge(&gateway, &ask, parsed).await?;
    if let Some(e) = merged_unanswered(&merged) {
        return Err(e);
    }
    let Some(patient) = merged.patient.as_ref() else {
        return Err(ApiError::not_found(
            "no region that answered holds a patient with this NHS number",
        ));
    };
    let mut response = fhir_response(StatusCode::OK, patient);
    if merged.regions_failed > 0 {
        let text = format!(
            "199 federation-gateway \"{} region(s) did not answer; use Patient?identifier= for details\"",
            merged.regions_failed
        );
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            response.headers_mut().insert(http::header::WARNING, v);
        }
    }
    Ok(response)
}
