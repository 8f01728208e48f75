//! A peer's query on the federation face, as named phases: the own record asked (through the
//! answer cache, before any policy), [`admit`]ted and filtered under this region's consent and
//! release policy, [`audit`]ed, and [`write`]n as a searchset whose items are the record's own
//! bytes. `api/federation.rs` checks the peer's certificate and forwarded context and turns
//! the result into HTTP.

use http::StatusCode;

use crate::access::{Filtered, Gatekeeper};
use crate::app::Gateway;
use crate::audit::slot::AuditSlot;
use crate::auth::ForwardedContext;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use crate::fhir::{self, SearchMode};
use crate::query::Parsed;
use crate::record::RecordAnswer;
use policy::DecisionPoint;

/// Who asked: the forwarded user, the request, the calling region, the audit event.
pub struct Asked {
    pub context: ForwardedContext,
    pub request_id: String,
    /// The calling region (from its certificate).
    pub peer: String,
    pub audit: Option<AuditSlot>,
}

impl Asked {
    fn note(&self, f: impl FnOnce(&mut crate::audit::AuditEvent)) {
        if let Some(slot) = &self.audit {
            slot.update(f);
        }
    }
}

/// What leaves: the Bundle and its `Cache-Control`.
pub struct Released {
    pub body: fhir::BundleBytes,
    pub cache_control: String,
}

/// The local record's answer to a peer: items as `match`, the patient's Patient resources as
/// `include` (so the caller can check every item belongs to the patient it asked about).
pub async fn release(
    gateway: &Gateway,
    asked: &Asked,
    parsed: Parsed,
) -> Result<Released, ApiError> {
    asked.note(|e| e.patient = Some(parsed.query.nhs_number.as_str().to_owned()));
    super::current(gateway).await?;
    let local = local_answer(gateway, asked, &parsed).await?;
    let consent = crate::api::read_consent(gateway, &parsed.query.nhs_number).await?;
    // The version in force when the request started, whatever a reload does meanwhile.
    let policies = gateway.policies.load_full();
    let gatekeeper = admit(gateway, asked, &policies)?;
    let answered = local.items.len();
    // An answer cut by time or a failed page is not to be kept by the caller.
    let cut_for_now = local.cut_for_now();
    let mut gatekeeper = gatekeeper.with_consent(consent, &gateway.region.code);
    let mut report = Filtered::default();
    let local = gatekeeper.filter(local, &gateway.region.code, &mut report);
    gateway
        .metrics
        .policy_items("release", report.released, report.withheld);
    audit(gateway, asked, answered, &report);
    Ok(Released {
        body: write(gateway, local, &report),
        cache_control: crate::cache::federation_cache_control(
            asked.context.user.break_glass.is_some() || cut_for_now,
            gateway.config.cache.federation_max_age_s,
        ),
    })
}

/// The own record's answer, through the cache except under break-glass. A stale answer
/// would lose its warning on the way: a peer gets the failure instead.
async fn local_answer(
    gateway: &Gateway,
    asked: &Asked,
    parsed: &Parsed,
) -> Result<RecordAnswer, ApiError> {
    let cache = gateway
        .cache
        .as_ref()
        .filter(|_| asked.context.user.break_glass.is_none())
        .map(|c| {
            (
                c,
                crate::cache::CacheKey::local(&gateway.region.code, &parsed.query),
            )
        });
    let failed = || {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "exception",
            "this region's record could not answer",
        )
    };
    match crate::peers::search_local(
        &gateway.local,
        &parsed.query,
        gateway.local_timeout(),
        cache,
    )
    .await
    {
        Ok((a, _)) if a.stale_seconds.is_none() => Ok(a),
        Ok(_) => Err(failed()),
        Err(f) if f.kind == crate::merge::FailureKind::Timeout => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "this region's record did not answer in time",
        )),
        Err(f) => Err(failed().internal(f.reason)),
    }
}

/// This region's own policy decides whether this user may search it at all.
fn admit<'a>(
    gateway: &Gateway,
    asked: &Asked,
    policies: &'a policy::PolicySet,
) -> Result<Gatekeeper<'a>, ApiError> {
    let peer = asked.peer.as_str();
    let gatekeeper = Gatekeeper::new(
        policies,
        &asked.context.user,
        peer,
        DecisionPoint::Release,
        peer,
    );
    gatekeeper
        .admit(&gateway.region.code)
        .map_err(|r| ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.to_string()))?;
    Ok(gatekeeper)
}

/// What the audit record says of the release.
fn audit(gateway: &Gateway, asked: &Asked, answered: usize, report: &Filtered) {
    asked.note(|e| {
        e.regions = vec![crate::audit::RegionOutcome {
            region: gateway.region.code.clone(),
            outcome: "answered".into(),
            items: answered,
        }];
        e.released = report.released;
        e.withheld = report.withheld;
        e.policies = report.policies.iter().cloned().collect();
    });
    tracing::info!(request_id = %asked.request_id, calling_request_id = %asked.context.request_id, peer = %asked.peer,
        released = report.released, withheld = report.withheld,
        break_glass = asked.context.user.break_glass.is_some(), "federation answer");
}

/// The released answer as a searchset: where it stopped short, and that something was
/// withheld (never what), said in its outcome.
fn write(gateway: &Gateway, local: RecordAnswer, report: &Filtered) -> fhir::BundleBytes {
    let base = &gateway.region.base_url;
    let total = local.items.len();
    let mut issues: Vec<Issue> = local.cuts.iter().map(|c| c.to_issue(None)).collect();
    let entries = answer_entries(base, &local);
    if report.withheld > 0 {
        issues.push(Issue::new(
            Severity::Warning,
            "suppressed",
            "some items were withheld under this region's consent and release policy",
        ));
    }
    let mut rest = Vec::new();
    if !issues.is_empty() {
        rest.push(fhir::entry(
            &format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            operation_outcome(&issues),
            SearchMode::Outcome,
        ));
    }
    let now = fhir::instant(time::OffsetDateTime::now_utc());
    let id = uuid::Uuid::new_v4().to_string();
    fhir::searchset_bytes(
        &id,
        &now,
        &[("self", base.to_owned())],
        total,
        &entries,
        &rest,
    )
}

/// A released answer's entries under this region's base, written once: the items as
/// `match` (their bytes as the record gave them); the patient's Patient resources and what the
/// items reference (`$everything`) as `include`.
pub fn answer_entries(base: &str, answer: &RecordAnswer) -> fhir::SerializedEntries {
    use crate::fhir::spliced::Writer;
    let entry = |rtype: &str, id: &str, mode: SearchMode, out: Writer<'_>, json: &str| {
        let mut out = out;
        crate::fhir::item::write_entry(
            &format!("{base}/{rtype}/{id}"),
            mode,
            |w| w.copy(json),
            &mut out,
        );
        out.finish()
    };
    // An item's text is taken as a run of the record's answer, not copied.
    let item = |item: &crate::fhir::item::Item, mode| {
        entry(
            item.rtype(),
            item.id(),
            mode,
            Writer::new(Some(item.source())),
            item.json(),
        )
    };
    let mut texts = Vec::with_capacity(answer.items.len() + answer.included.len());
    texts.extend(answer.items.iter().map(|i| item(i, SearchMode::Match)));
    for p in &answer.patients {
        let json = serde_json::to_string(p).unwrap_or_default();
        let (t, id) = (
            p["resourceType"].as_str().unwrap_or(""),
            p["id"].as_str().unwrap_or(""),
        );
        texts.push(entry(t, id, SearchMode::Include, Writer::new(None), &json));
    }
    texts.extend(answer.included.iter().map(|i| item(i, SearchMode::Include)));
    fhir::SerializedEntries::from_shared(texts)
}
