//! A clinician's query, from a typed query to the bytes of its answer, in one place: named
//! phases, each a short function, in the order they run (pingora's request phases are the
//! model). `api/` turns HTTP into an [`Ask`] and a [`crate::query::Parsed`], and the bytes or
//! error this gives back into HTTP; nothing here knows about routes or headers.
//!
//! 0. [`current`]: every change another replica recorded (consent, policy) applied here.
//! 1. [`admit`]: may this user search here at all (the view decision point, before anything
//!    is asked of anyone)?
//! 2. [`kept_view`]: a view kept from an identical request answers it, when every input is the
//!    same (whole answers only; see [`crate::cache::view`]).
//! 3. [`fan_out`]: the local record and every peer asked at once, with the patient's consent
//!    read beside them.
//! 4. [`view_policy`]: what this user may see of each region's answer (consent and Cedar).
//! 5. [`merge`]: each answer screened, then the answers merged into one view
//!    ([`crate::merge::merge_view`]).
//! 6. [`audit`]: what the audit record says of the view.
//! 7. [`write`]: the Bundle written (whole, a first page, or the count alone) while the
//!    audit record is made durable; nothing leaves before it is.
//! 8. [`keep`]: the view kept for the next identical request.
//!
//! A peer's query on the federation face runs the same way in [`federation`]: the own record
//! asked, admitted and filtered under the release policy, audited, written.

pub mod federation;
pub mod paging;

use http::StatusCode;
use serde_json::Value;

use crate::access::{Filtered, Gatekeeper};
use crate::app::Gateway;
use crate::audit::RegionOutcome;
use crate::audit::slot::AuditSlot;
use crate::auth::UserContext;
use crate::cache::view::{KeptView, ViewKey};
use crate::consent::ConsentView;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, Severity};
use crate::fhir::{BundleBytes, searchset_bytes};
use crate::merge::{Envelope, RegionResult, View, ViewContext, merge_view};
use crate::peers::FanOut;
use crate::query::Parsed;
use policy::DecisionPoint;

/// What every interaction shares: the request's user, id and query, and its audit event.
pub struct Ask {
    pub user: UserContext,
    pub request_id: String,
    /// Unknown parameters are ignored (with a warning) rather than refused.
    pub lenient: bool,
    pub pairs: Vec<(String, String)>,
    /// The request's own address (the Bundle's `self` link).
    pub self_link: String,
    /// The request's path under the FHIR base and its raw query (a paging cursor keeps them,
    /// to make its pages again).
    pub path: String,
    pub raw_query: String,
    /// The `traceparent` this request sends on (its own span as the parent).
    pub traceparent: String,
    /// The request's audit event.
    pub audit: Option<AuditSlot>,
}

impl Ask {
    /// What the request does, as SMART scopes name it: a read by id (`Type/id`), or a search
    /// (a search, `$everything`, a page of either).
    pub fn interaction(&self) -> crate::auth::scopes::Interaction {
        let segments: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            [t, id] if *t != "_page" && !id.starts_with('$') => {
                crate::auth::scopes::Interaction::Read
            }
            _ => crate::auth::scopes::Interaction::Search,
        }
    }

    /// Refuses (403) a request about another patient than the one the token is about.
    pub fn within_launch(&self, nhs: &str) -> Result<(), ApiError> {
        if self.user.may_ask_about(nhs) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token is about another patient (its SMART launch context)",
            ))
        }
    }

    /// Records the request's audit event now, before anything leaves (see
    /// [`AuditSlot::write_ahead`]).
    pub async fn write_audit_ahead(
        &self,
        gateway: &Gateway,
        status: StatusCode,
    ) -> Result<(), ApiError> {
        let mut span = gateway
            .telemetry
            .child("audit write", &self.traceparent, None);
        let written = match &self.audit {
            Some(slot) => slot.write_ahead(gateway, status).await,
            None => Ok(()),
        };
        if written.is_err() {
            span.fail("the audit record could not be written");
        }
        written
    }

    /// Adds to the request's audit event.
    pub fn note(&self, f: impl FnOnce(&mut crate::audit::AuditEvent)) {
        if let Some(slot) = &self.audit {
            slot.update(f);
        }
    }

    /// What names this request in its Bundle.
    fn envelope<'a>(&'a self, now: &'a str) -> Envelope<'a> {
        Envelope {
            bundle_id: &self.request_id,
            now,
            self_link: &self.self_link,
        }
    }
}

/// How the answer is written, from the query's `_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Every match in one Bundle (no `_count`).
    Whole,
    /// The first page of `n` matches; the rest kept under a cursor.
    Page(usize),
    /// The total alone (`_count=0`, `_summary=count`).
    Count,
}

/// A search or `$everything`: the bytes of its searchset Bundle.
pub async fn search(
    gateway: &Gateway,
    ask: &Ask,
    mut parsed: Parsed,
) -> Result<BundleBytes, ApiError> {
    // The merge keeps everything; `_count` shapes what is written.
    let shape = match parsed.query.count.take() {
        None => Shape::Whole,
        Some(0) => Shape::Count,
        Some(n) => Shape::Page(n as usize),
    };
    let nhs = parsed.query.nhs_number.as_str().to_owned();
    ask.note(|e| e.patient = Some(nhs.clone()));
    ask.within_launch(&nhs)?;
    current(gateway).await?;
    // The version in force when the request started, whatever a reload does meanwhile.
    let policies = gateway.policies.load_full();
    let gatekeeper = admit(gateway, ask, &policies)?;
    let decided_at = gatekeeper.time();
    let tls = gateway.tls.load();
    let fan = fan_out_of(gateway, ask, &tls);
    // A kept view is read and written for whole answers only, and never under break-glass
    // (the key is `None` then).
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
    let views = gateway.cache.as_ref().filter(|_| shape == Shape::Whole);
    let mut consent = None;
    if let Some(cache) = views {
        match kept_view(gateway, &fan, &parsed, &key, cache, &policies).await {
            Kept::Found(kept) => return write_kept(gateway, ask, &kept).await,
            Kept::Missing(read) => consent = read,
        }
    }
    let made = make(gateway, ask, (fan, gatekeeper), parsed, consent).await?;
    let view = made.view;
    match shape {
        Shape::Whole => {
            let (body, entries) = write(gateway, ask, &view).await?;
            if let (Some(cache), Some(key)) =
                (views, made.identities.and_then(|a| key(&made.consent, a)))
            {
                keep(
                    cache,
                    key,
                    policies.clone(),
                    entries,
                    view,
                    made.report,
                    made.regions,
                );
            }
            Ok(body)
        }
        Shape::Page(count) => {
            let rules = paging::Rules {
                consent: made.consent,
                policy: policies.clone(),
                break_glass: ask.user.break_glass.is_some(),
            };
            write_page(gateway, ask, &nhs, view, count, rules).await
        }
        Shape::Count => write_count(gateway, ask, &view).await,
    }
}

/// `GET Patient/{nhs}`: the merged Patient, and how many regions did not answer (the caller
/// says so in a `Warning` header; a read has no room for an outcome).
pub async fn patient(
    gateway: &Gateway,
    ask: &Ask,
    parsed: Parsed,
) -> Result<(Value, usize), ApiError> {
    ask.note(|e| e.patient = Some(parsed.query.nhs_number.as_str().to_owned()));
    ask.within_launch(parsed.query.nhs_number.as_str())?;
    if !ask
        .user
        .may("Patient", crate::auth::scopes::Interaction::Read)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token's scopes do not grant reading Patient",
        ));
    }
    current(gateway).await?;
    let policies = gateway.policies.load_full();
    let gatekeeper = admit(gateway, ask, &policies)?;
    let tls = gateway.tls.load();
    let fan = fan_out_of(gateway, ask, &tls);
    let made = make(gateway, ask, (fan, gatekeeper), parsed, None).await?;
    let Some(patient) = made.view.patient else {
        return Err(ApiError::not_found(
            "no region that answered holds a patient with this NHS number",
        ));
    };
    ask.write_audit_ahead(gateway, StatusCode::OK).await?;
    Ok((patient, made.view.regions_failed))
}

/// A view made for this request (phases 3 to 6), with what a kept view needs.
struct Made {
    view: View,
    report: Filtered,
    regions: Vec<RegionOutcome>,
    /// The consent directives the view was decided under.
    consent: ConsentView,
    /// Each region's answer identity when every one is pinned (see [`ViewKey`]).
    identities: Option<Vec<u64>>,
}

/// Phases 3 to 6: fan out, view policy, merge, audit. `consent` when phase 2 read it.
async fn make(
    gateway: &Gateway,
    ask: &Ask,
    (fan, gatekeeper): (FanOut<'_>, Gatekeeper<'_>),
    parsed: Parsed,
    consent: Option<ConsentView>,
) -> Result<Made, ApiError> {
    let span = |name| gateway.telemetry.child(name, &ask.traceparent, None);
    let mut fanning = span("fan out");
    let fanned = fan_out(gateway, fan, &parsed, consent).await?;
    fanning.set("gateway.regions", fanned.results.len() as i64);
    drop(fanning);
    let mut deciding = span("policy");
    let (results, report) = view_policy(gateway, ask, gatekeeper, &fanned.consent, fanned.results);
    deciding.set("gateway.released", report.released as i64);
    deciding.set("gateway.withheld", report.withheld as i64);
    drop(deciding);
    let merging = span("merge");
    let (mut view, regions) = merge(gateway, ask, parsed, results, &report);
    drop(merging);
    if let Some(e) = unanswered(&view) {
        return Err(e);
    }
    bound_by_scopes(&mut view, &ask.user, ask.interaction());
    audit(ask, &view, &report, &regions);
    Ok(Made {
        view,
        report,
        regions,
        consent: fanned.consent,
        identities: fanned.identities,
    })
}

/// Phase 0: every change recorded by another replica of this region (a consent change here or
/// at a peer, a policy activation) applied here before anything is decided or read from a
/// cache ([`crate::replicas`]). A change log that cannot be read is a store that cannot be
/// read: nothing is released (503).
pub async fn current(gateway: &Gateway) -> Result<(), ApiError> {
    gateway.catch_up().await.map(drop).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the region's shared state cannot be read just now",
        )
        .internal(format!("change log: {e}"))
    })
}

/// Phase 1: this request's decisions, refusing it outright when the user may not search here.
pub fn admit<'a>(
    gateway: &Gateway,
    ask: &Ask,
    policies: &'a policy::PolicySet,
) -> Result<Gatekeeper<'a>, ApiError> {
    let gatekeeper = Gatekeeper::for_interaction(
        policies,
        &ask.user,
        &gateway.region.code,
        DecisionPoint::View,
        &gateway.region.code,
        ask.interaction(),
    );
    gatekeeper
        .admit(&gateway.region.code)
        .map_err(|r| ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.to_string()))?;
    Ok(gatekeeper)
}

/// What phase 2 found: a kept view, or none (with the patient's consent when it was read).
enum Kept {
    Found(std::sync::Arc<KeptView>),
    Missing(Option<ConsentView>),
}

/// Phase 2: the view kept from an identical request, when every region's answer is still the
/// one it was made from and the consent and policies are the same.
async fn kept_view(
    gateway: &Gateway,
    fan: &FanOut<'_>,
    parsed: &Parsed,
    key: &impl Fn(&ConsentView, Vec<u64>) -> Option<ViewKey>,
    cache: &crate::cache::ResponseCache,
    policies: &std::sync::Arc<policy::PolicySet>,
) -> Kept {
    let (answers, read) = futures::join!(
        fan.fresh_identities(&parsed.query),
        crate::api::read_consent(gateway, &parsed.query.nhs_number)
    );
    if let (Some(answers), Ok(c)) = (answers, &read) {
        let cached = answers
            .iter()
            .filter(|&&a| a != crate::peers::IMMUTABLE_LOCAL)
            .count();
        if let Some(kept) = key(c, answers).and_then(|k| cache.views.get(&k, policies)) {
            cache.count_view_served(cached);
            return Kept::Found(kept);
        }
    }
    Kept::Missing(read.ok())
}

/// The fan-out of this request.
fn fan_out_of<'a>(gateway: &'a Gateway, ask: &'a Ask, tls: &'a crate::app::TlsState) -> FanOut<'a> {
    FanOut {
        local: (&gateway.region, &gateway.local, gateway.local_timeout()),
        peers: &gateway.peers,
        signer: &tls.signer,
        user: &ask.user,
        request_id: &ask.request_id,
        traceparent: &ask.traceparent,
        deadline: std::time::Duration::from_millis(gateway.config.fanout.deadline_ms),
        max_bytes: gateway.config.limits.max_response_bytes,
        cache: gateway.cache.as_ref(),
        metrics: Some(&gateway.metrics),
        telemetry: &gateway.telemetry,
    }
}

/// What phase 3 gathered.
struct Fanned {
    results: Vec<RegionResult>,
    consent: ConsentView,
    /// Each region's answer identity when every one is pinned (see [`ViewKey`]).
    identities: Option<Vec<u64>>,
}

/// Phase 3: every region asked at once (through the answer cache), the patient's consent read
/// beside them unless phase 2 read it. Consent must be readable before anything is released;
/// when no region answered there is nothing to release and the 502/504 that follows says
/// more than a 503 would.
async fn fan_out(
    gateway: &Gateway,
    fan: FanOut<'_>,
    parsed: &Parsed,
    consent: Option<ConsentView>,
) -> Result<Fanned, ApiError> {
    let (fanned, consent) = match consent {
        Some(c) => (fan.run(&parsed.query).await, Ok(c)),
        None => {
            futures::join!(
                fan.run(&parsed.query),
                crate::api::read_consent(gateway, &parsed.query.nhs_number)
            )
        }
    };
    let results = fanned.results;
    let consent = match consent {
        Ok(c) => c,
        Err(_) if results.iter().all(|r| r.outcome.is_err()) => ConsentView::default(),
        Err(e) => return Err(e),
    };
    Ok(Fanned {
        results,
        consent,
        identities: fanned.identities.into_iter().collect(),
    })
}

/// Phase 4: what this region's user may see of every region's answer, decided on each item's
/// view (its type, labels and categories) under the patient's consent.
fn view_policy(
    gateway: &Gateway,
    ask: &Ask,
    gatekeeper: Gatekeeper<'_>,
    consent: &ConsentView,
    results: Vec<RegionResult>,
) -> (Vec<RegionResult>, Filtered) {
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
    gateway
        .metrics
        .policy_items("view", report.released, report.withheld);
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
    (results, report)
}

/// Phase 5, last step: the patient's Patient resource leaves the view when the token's scopes
/// do not grant it (it was kept until now as the anchor the regions' items are matched to);
/// everything else the scopes do not grant was withheld by the policies.
fn bound_by_scopes(
    view: &mut View,
    user: &crate::auth::UserContext,
    interaction: crate::auth::scopes::Interaction,
) {
    if user.may("Patient", interaction) {
        return;
    }
    let is_patient = |w: &crate::merge::Written| w.full_url.rsplit('/').nth(1) == Some("Patient");
    let before = view.matches.len();
    view.matches.retain(|w| !is_patient(w));
    view.total = view.total.saturating_sub(before - view.matches.len());
    view.includes.retain(|w| !is_patient(w));
    view.patient = None;
}

/// Phase 5: the answers screened and merged into one view, with the warnings the request
/// itself earned (ignored parameters, withheld items, break-glass); and what each region
/// answered.
fn merge(
    gateway: &Gateway,
    ask: &Ask,
    parsed: Parsed,
    results: Vec<RegionResult>,
    report: &Filtered,
) -> (View, Vec<RegionOutcome>) {
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
    let regions: Vec<RegionOutcome> = results.iter().map(region_outcome).collect();
    let view = merge_view(
        &parsed.query,
        results,
        ViewContext {
            gateway_base: &gateway.region.base_url,
            issues,
            on_mismatch: gateway.config.merge.on_demographic_mismatch,
        },
    );
    tracing::info!(request_id = %ask.request_id, total = view.total, regions_answered = view.regions_answered, regions_failed = view.regions_failed,
        deduplicated = view.deduplicated, discarded = view.discarded, "merged");
    (view, regions)
}

fn region_outcome(r: &RegionResult) -> RegionOutcome {
    RegionOutcome {
        region: r.region.code.clone(),
        outcome: match &r.outcome {
            Ok(_) => "answered".into(),
            Err(f) => f.kind.label().to_owned(),
        },
        items: r.outcome.as_ref().map_or(0, |a| a.items.len()),
    }
}

/// When no region answered there is nothing to show: 504 if all timed out, else 502.
fn unanswered(v: &View) -> Option<ApiError> {
    (v.regions_answered == 0).then(|| {
        let status = if v.all_failures_timeouts {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        ApiError::from_outcome(
            status,
            v.issues.clone(),
            format!("no region answered ({} failed)", v.regions_failed),
        )
    })
}

/// Phase 6: what the audit record says of a view: what each region answered, what was
/// withheld and released, the policies that decided.
fn audit(ask: &Ask, view: &View, report: &Filtered, regions: &[RegionOutcome]) {
    ask.note(|e| {
        e.regions = regions.to_vec();
        e.withheld = report.withheld;
        e.policies = report.policies.iter().cloned().collect();
        e.released = view.total;
        e.detail["deduplicated"] = serde_json::json!(view.deduplicated);
        e.detail["discarded"] = serde_json::json!(view.discarded);
    });
}

/// Phase 7 for a whole answer: the Bundle written around entries written once (kept for the
/// next identical request), while the audit record is made durable.
async fn write(
    gateway: &Gateway,
    ask: &Ask,
    view: &View,
) -> Result<(BundleBytes, crate::fhir::SerializedEntries), ApiError> {
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let envelope = ask.envelope(&now);
    audited(gateway, ask, || {
        let entries = view.written();
        let tail = view.request_entries(&envelope, |c| c.elapsed_ms);
        let body = searchset_bytes(
            envelope.bundle_id,
            envelope.now,
            &envelope.links(),
            view.total,
            &entries,
            &tail,
        );
        (body, entries)
    })
    .await
}

/// Phase 7 for a paged answer: the first page; the rest kept under a cursor that any replica
/// can serve (stored before the first page leaves).
async fn write_page(
    gateway: &Gateway,
    ask: &Ask,
    nhs: &str,
    view: View,
    count: usize,
    rules: paging::Rules,
) -> Result<BundleBytes, ApiError> {
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    let tail = view.request_entries(&ask.envelope(&now), |c| c.elapsed_ms);
    let asked = paging::Asked {
        user: &ask.user,
        nhs,
        path: &ask.path,
        query: &ask.raw_query,
        lenient: ask.lenient,
        count,
        bundle_id: &ask.request_id,
    };
    let paged = paging::Paged::first(&gateway.region.base_url, asked, view, tail, rules, now_s);
    let paged = paging::keep(gateway, paged, now_s).await?;
    ask.note(|e| e.released = paged.shown(0));
    let (body, ()) = audited(gateway, ask, || {
        (
            paging::first_page(gateway, &paged, &ask.self_link, &now),
            (),
        )
    })
    .await?;
    Ok(body)
}

/// Phase 7 for `_count=0`: the total alone, with the outcome that qualifies it (a failed or
/// cut region makes the count a count of what could be seen).
async fn write_count(gateway: &Gateway, ask: &Ask, view: &View) -> Result<BundleBytes, ApiError> {
    ask.note(|e| {
        e.released = 0;
        e.detail["count_only"] = serde_json::json!(true);
    });
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let envelope = ask.envelope(&now);
    let outcome: Vec<_> = view
        .request_entries(&envelope, |c| c.elapsed_ms)
        .into_iter()
        .filter(|e| e.mode == crate::fhir::SearchMode::Outcome)
        .collect();
    let (body, ()) = audited(gateway, ask, || {
        let body = searchset_bytes(
            envelope.bundle_id,
            envelope.now,
            &envelope.links(),
            view.total,
            &crate::fhir::SerializedEntries::default(),
            &outcome,
        );
        (body, ())
    })
    .await?;
    Ok(body)
}

/// Phase 7 for a kept view: the same entries, in a Bundle that names this request.
async fn write_kept(
    gateway: &Gateway,
    ask: &Ask,
    kept: &KeptView,
) -> Result<BundleBytes, ApiError> {
    ask.note(|e| {
        e.regions = kept.regions.clone();
        e.withheld = kept.withheld;
        e.policies = kept.policies.clone();
        e.released = kept.view.total;
        e.detail["deduplicated"] = serde_json::json!(kept.view.deduplicated);
        e.detail["discarded"] = serde_json::json!(kept.view.discarded);
        e.detail["view_kept"] = serde_json::json!(true);
    });
    gateway
        .metrics
        .policy_items("view", kept.released, kept.withheld);
    // The audit record (`view_kept`) and `gateway_cache_views_served_total` say it; the
    // access log has the request. One line fewer on the path a repeat takes.
    tracing::debug!(request_id = %ask.request_id, total = kept.view.total, "served a view kept from an identical request");
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let envelope = ask.envelope(&now);
    let (body, ()) = audited(gateway, ask, || {
        // Nothing was asked of any region for this request.
        let tail = kept.view.request_entries(&envelope, |_| 0);
        let body = searchset_bytes(
            envelope.bundle_id,
            envelope.now,
            &envelope.links(),
            kept.view.total,
            &kept.entries,
            &tail,
        );
        (body, ())
    })
    .await?;
    Ok(body)
}

/// The audit record is made durable while `write` writes the body (both before anything
/// leaves), so the record's fsync does not add to the wait. `write` gives the body and
/// anything else it made.
async fn audited<T>(
    gateway: &Gateway,
    ask: &Ask,
    write: impl FnOnce() -> (BundleBytes, T),
) -> Result<(BundleBytes, T), ApiError> {
    // The record is handed to the trail's writer at the first poll; then the body is written.
    let (written, made) = futures::join!(ask.write_audit_ahead(gateway, StatusCode::OK), async {
        write()
    });
    written?;
    Ok(made)
}

/// Phase 8: the view kept for the next identical request (its entries already written).
fn keep(
    cache: &crate::cache::ResponseCache,
    key: ViewKey,
    policy: std::sync::Arc<policy::PolicySet>,
    entries: crate::fhir::SerializedEntries,
    mut view: View,
    report: Filtered,
    regions: Vec<RegionOutcome>,
) {
    // The kept entries are the written ones.
    view.matches = Vec::new();
    view.includes = Vec::new();
    cache.views.insert(
        key,
        KeptView {
            policy,
            entries,
            view,
            released: report.released,
            withheld: report.withheld,
            policies: report.policies.into_iter().collect(),
            regions,
        },
    );
}
