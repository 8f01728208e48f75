//! Neighbouring regions: an mTLS client per peer, and the fan-out that asks the local record
//! and every peer at once, each within its own timeout inside the query's deadline, and keeps
//! whatever came back in time.

pub mod breaker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use breaker::{Admit, Breaker};

use futures::future::join_all;

use crate::auth::{ForwardSigner, UserContext};
use crate::cache::{CacheKey, ResponseCache, Source};
use crate::client::{FetchError, bundle_to_answer, get_fhir_body};
use crate::config::ConfigPeer;
use crate::merge::{FailureKind, RegionFailure, RegionInfo, RegionResult};
use crate::query::PatientQuery;
use crate::record::{RecordError, RecordSource};
use crate::tls::{TlsError, peer_client_config};

/// A neighbouring region's gateway.
pub struct Peer {
    pub info: RegionInfo,
    /// The identity its certificates carry.
    pub identity: String,
    pub timeout: Duration,
    /// Swapped whole when certificates are reloaded.
    client: arc_swap::ArcSwap<reqwest::Client>,
    pub breaker: Breaker,
    /// Requests in flight to this peer.
    limit: tokio::sync::Semaphore,
    retry_connect: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {region}: {source}")]
    Tls { region: String, source: TlsError },
    #[error("peer {region}: HTTP client: {message}")]
    Client { region: String, message: String },
}

impl Peer {
    pub fn new(
        config: &ConfigPeer,
        material: &crate::app::TlsMaterial,
        resilience: &crate::config::ConfigResilience,
    ) -> Result<Self, PeerError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = Self::build_client(&config.region, &config.identity, timeout, material)?;
        Ok(Peer {
            info: RegionInfo {
                code: config.region.clone(),
                name: config.name.clone(),
                base_url: config.url.clone(),
            },
            identity: config.identity.clone(),
            timeout,
            client: arc_swap::ArcSwap::from_pointee(client),
            breaker: Breaker::new(
                resilience.breaker_failures,
                Duration::from_millis(resilience.breaker_open_ms),
            ),
            limit: tokio::sync::Semaphore::new(resilience.peer_concurrency.max(1)),
            retry_connect: resilience.retry_connect,
        })
    }

    /// A client for this peer with `material` (to swap in with [`Peer::set_client`]).
    pub fn client_for(
        &self,
        material: &crate::app::TlsMaterial,
    ) -> Result<reqwest::Client, PeerError> {
        Self::build_client(&self.info.code, &self.identity, self.timeout, material)
    }

    pub fn set_client(&self, client: reqwest::Client) {
        self.client.store(Arc::new(client));
    }

    fn build_client(
        region: &str,
        identity: &str,
        timeout: Duration,
        material: &crate::app::TlsMaterial,
    ) -> Result<reqwest::Client, PeerError> {
        let tls = peer_client_config(
            &material.federation_ca,
            &material.crls,
            &material.client_keys,
            identity,
        )
        .map_err(|source| PeerError::Tls {
            region: region.to_owned(),
            source,
        })?;
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("federation-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PeerError::Client {
                region: region.to_owned(),
                message: crate::client::describe(e),
            })
    }

    /// Asks the peer, guarded: its circuit breaker, its concurrency limit, and one retry of a
    /// failed connection when time remains. `budget` bounds all of it.
    pub async fn ask(
        &self,
        query: &PatientQuery,
        token: &str,
        ids: Correlation<'_>,
        max_bytes: usize,
        budget: Duration,
    ) -> Result<crate::cache::Fetched, RegionFailure> {
        let started = Instant::now();
        let probe = match self.breaker.admit(started) {
            Admit::No { retry_in } => {
                return Err(RegionFailure {
                    kind: FailureKind::Unreachable,
                    reason: format!(
                        "not asked: it failed repeatedly and is paused for {} more second(s)",
                        retry_in.as_secs().max(1)
                    ),
                });
            }
            Admit::Probe => true,
            Admit::Yes => false,
        };
        let permit = match tokio::time::timeout(budget, self.limit.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(RegionFailure {
                    kind: FailureKind::Timeout,
                    reason: "too many requests already in flight to this region".into(),
                });
            }
        };
        let left = |s: Instant| budget.saturating_sub(s.elapsed());
        let mut result = self
            .query(query, token, ids, max_bytes, left(started))
            .await;
        if self.retry_connect
            && !probe
            && matches!(&result, Err(f) if f.kind == FailureKind::Unreachable)
        {
            let pause = Duration::from_millis(fastrand::u64(50..=150));
            if left(started) > pause + Duration::from_millis(200) {
                tokio::time::sleep(pause).await;
                tracing::info!(peer = %self.info.code, "retrying a failed connection");
                result = self
                    .query(query, token, ids, max_bytes, left(started))
                    .await;
            }
        }
        drop(permit);
        let healthy = match &result {
            Ok(_) => true,
            // A refusal is the peer working as intended.
            Err(f) => matches!(f.kind, FailureKind::Refused(_)),
        };
        if let Some(state) = self.breaker.record(healthy, Instant::now()) {
            tracing::warn!(peer = %self.info.code, circuit = state.as_str(), "peer circuit changed state");
        }
        result
    }

    /// Asks the peer's federation face the same question, as `user`.
    pub async fn query(
        &self,
        query: &PatientQuery,
        token: &str,
        ids: Correlation<'_>,
        max_bytes: usize,
        budget: Duration,
    ) -> Result<crate::cache::Fetched, RegionFailure> {
        let (path, params) = query.to_request();
        let request = self
            .client
            .load()
            .get(format!("{}/{}", self.info.base_url, path))
            .query(&params)
            .bearer_auth(token)
            .header("x-request-id", ids.request_id)
            .header(crate::trace::TRACEPARENT, ids.traceparent);
        let (body, directive) = get_fhir_body(request, max_bytes, budget)
            .await
            .map_err(failure_from_fetch)?;
        let bytes = body.len();
        // The body is shared by its items as it was read, not copied.
        let answer = bundle_to_answer(&std::sync::Arc::new(body)).map_err(failure_from_fetch)?;
        Ok(crate::cache::Fetched {
            answer,
            bytes,
            directive,
        })
    }
}

impl Peer {
    /// Asks the peer's federation face for one of its resources by its own id, as `user`
    /// (`GET {base}/{Type}/{id}`): a searchset with the resource as the match and, for a
    /// clinical type, its Patient as an include. `None` when the peer has none it may show.
    pub async fn read(
        &self,
        rtype: &str,
        id: &str,
        token: &str,
        ids: Correlation<'_>,
        max_bytes: usize,
        budget: Duration,
    ) -> Result<Option<crate::record::RecordAnswer>, RegionFailure> {
        let request = self
            .client
            .load()
            .get(format!("{}/{rtype}/{id}", self.info.base_url))
            .bearer_auth(token)
            .header("x-request-id", ids.request_id)
            .header(crate::trace::TRACEPARENT, ids.traceparent);
        match get_fhir_body(request, max_bytes, budget).await {
            Ok((body, _)) => bundle_to_answer(&std::sync::Arc::new(body))
                .map(Some)
                .map_err(failure_from_fetch),
            Err(FetchError::Status(404)) => Ok(None),
            Err(e) => Err(failure_from_fetch(e)),
        }
    }

    /// Tells the peer that a patient's consent directives changed here, so that it drops the
    /// answers of this region it holds for the patient (`POST {base}/$consent-changed`).
    pub async fn notify_consent_change(
        &self,
        nhs: &crate::fhir::nhs::NhsNumber,
        budget: Duration,
    ) -> Result<(), String> {
        let body = serde_json::json!({
            "resourceType": "Parameters",
            "parameter": [{"name": "patient", "valueIdentifier": {
                "system": crate::fhir::nhs::NHS_NUMBER_SYSTEM, "value": nhs.as_str()}}]
        });
        let request = self
            .client
            .load()
            .post(format!("{}/$consent-changed", self.info.base_url))
            .header(http::header::CONTENT_TYPE, crate::fhir::FHIR_JSON)
            .body(body.to_string())
            .timeout(budget)
            .send();
        match request.await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered HTTP {}", r.status().as_u16())),
            Err(e) => Err(crate::client::describe(e)),
        }
    }
}

/// A fetch error as the clinician will read it.
pub fn failure_from_fetch(e: FetchError) -> RegionFailure {
    let kind = match &e {
        FetchError::Timeout(_) => FailureKind::Timeout,
        FetchError::Connect(_) => FailureKind::Unreachable,
        FetchError::Status(s @ (401 | 403)) => FailureKind::Refused(*s),
        FetchError::Status(s) => FailureKind::Failed(*s),
        FetchError::TooLarge(_)
        | FetchError::NotFhir(_)
        | FetchError::Json(_)
        | FetchError::NotABundle => FailureKind::Invalid,
    };
    RegionFailure {
        kind,
        reason: e.to_string(),
    }
}

fn failure_from_record(e: RecordError) -> RegionFailure {
    let kind = match &e {
        RecordError::Timeout => FailureKind::Timeout,
        RecordError::Unreachable(_) => FailureKind::Unreachable,
        RecordError::Status(s) => FailureKind::Failed(*s),
        RecordError::Invalid(_) => FailureKind::Invalid,
    };
    RegionFailure {
        kind,
        reason: e.to_string(),
    }
}

/// The identity of the local record's answers when the record is immutable (see
/// [`crate::cache::next_generation`], which never gives it).
pub const IMMUTABLE_LOCAL: u64 = 0;

/// A served answer, marked with its age when it was served stale, and its identity.
fn served(s: crate::cache::Served) -> (crate::record::RecordAnswer, Option<u64>) {
    let mut answer = s.answer;
    if let Source::Stale(age) = s.source {
        answer.stale_seconds = Some(age);
    }
    (answer, s.generation)
}

/// Asks the local record within `budget`, through the cache when one is given (the local
/// record is cached before any policy: the key carries no user). Also gives the answer's
/// identity: its cache generation, or [`IMMUTABLE_LOCAL`], or none.
pub async fn search_local(
    local: &Arc<dyn RecordSource>,
    query: &PatientQuery,
    budget: Duration,
    cache: Option<(&ResponseCache, CacheKey)>,
) -> Result<(crate::record::RecordAnswer, Option<u64>), RegionFailure> {
    let fetch = || async {
        match tokio::time::timeout(budget, local.search(query, budget)).await {
            Ok(Ok(answer)) => {
                let bytes = answer.bytes();
                // An answer cut by time or a failed page is not kept: asked again, it may be whole.
                let directive = crate::cache::CacheDirective {
                    no_store: answer.cut_for_now(),
                    max_age: None,
                };
                Ok(crate::cache::Fetched {
                    answer,
                    bytes,
                    directive,
                })
            }
            Ok(Err(e)) => Err(failure_from_record(e)),
            Err(_) => Err(RegionFailure {
                kind: FailureKind::Timeout,
                reason: format!("no answer within {} ms", budget.as_millis()),
            }),
        }
    };
    match cache {
        Some((c, key)) if local.cacheable() => c.serve(key, fetch).await.map(served),
        _ => fetch()
            .await
            .map(|f| (f.answer, local.immutable().then_some(IMMUTABLE_LOCAL))),
    }
}

/// A fan-out's results (local first, then peers as configured) and, for each, the identity
/// of the answer when it is a fresh cache entry or the immutable local record's.
pub struct Fanned {
    pub results: Vec<RegionResult>,
    pub identities: Vec<Option<u64>>,
}

/// Everything a fan-out needs.
/// What names a request to a peer: the calling request's id (also signed into the user
/// context) and its place in the trace.
#[derive(Debug, Clone, Copy)]
pub struct Correlation<'a> {
    pub request_id: &'a str,
    pub traceparent: &'a str,
}

pub struct FanOut<'a> {
    pub local: (&'a RegionInfo, &'a Arc<dyn RecordSource>, Duration),
    pub peers: &'a [Peer],
    pub signer: &'a ForwardSigner,
    pub user: &'a UserContext,
    pub request_id: &'a str,
    /// The `traceparent` sent to every peer: this request's span as their parent.
    pub traceparent: &'a str,
    pub deadline: Duration,
    pub max_bytes: usize,
    /// The response cache; never used for break-glass requests.
    pub cache: Option<&'a ResponseCache>,
    pub metrics: Option<&'a crate::metrics::Metrics>,
    /// A span for each region asked, when spans are exported.
    pub telemetry: &'a crate::telemetry::Telemetry,
}

impl FanOut<'_> {
    /// Asks the local record and every peer at once; returns one result per region, in the
    /// order local first then peers as configured.
    pub async fn run(&self, query: &PatientQuery) -> Fanned {
        let started = Instant::now();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (local_info, local, local_timeout) = self.local;
        let local_budget = local_timeout.min(self.deadline);
        let cache = self.cache.filter(|_| self.user.break_glass.is_none());
        let local_fut = async move {
            let t = Instant::now();
            let mut span = self.telemetry.child("local record", self.traceparent, None);
            span.set("gateway.region", local_info.code.clone());
            // The record server is sent this request's span as the parent of its own.
            let outcome = crate::trace::OUTGOING
                .scope(
                    self.traceparent.to_owned(),
                    search_local(
                        local,
                        query,
                        local_budget,
                        cache.map(|c| (c, CacheKey::local(&local_info.code, query))),
                    ),
                )
                .await;
            let (outcome, identity) = split(outcome);
            let result = RegionResult {
                region: local_info.clone(),
                outcome,
                elapsed_ms: t.elapsed().as_millis() as u64,
            };
            (result, identity)
        };
        let peer_futs = self.peers.iter().map(|peer| async move {
            let t = Instant::now();
            // The call is a span of its own, which the peer is told as its parent.
            let call = crate::trace::TraceContext::parse(self.traceparent)
                .map(|p| p.child(crate::trace::random_span_id()));
            let traceparent = call.map_or_else(|| self.traceparent.to_owned(), |c| c.header());
            let mut span = self
                .telemetry
                .child("peer call", self.traceparent, call.as_ref());
            span.set("gateway.region", peer.info.code.clone());
            let traceparent = traceparent.as_str();
            let budget = peer
                .timeout
                .min(self.deadline.saturating_sub(started.elapsed()));
            let fetch = || async {
                match self
                    .signer
                    .sign(self.user, &peer.identity, self.request_id, now)
                {
                    Ok(token) => {
                        let ids = Correlation {
                            request_id: self.request_id,
                            traceparent,
                        };
                        peer.ask(query, &token, ids, self.max_bytes, budget).await
                    }
                    Err(e) => Err(RegionFailure {
                        kind: FailureKind::Invalid,
                        reason: format!("could not sign the user context: {e}"),
                    }),
                }
            };
            let outcome = match cache {
                Some(c) => c
                    .serve(CacheKey::peer(&peer.info.code, query, self.user), fetch)
                    .await
                    .map(served),
                None => fetch().await.map(|f| (f.answer, None)),
            };
            let (outcome, identity) = split(outcome);
            let result = RegionResult {
                region: peer.info.clone(),
                outcome,
                elapsed_ms: t.elapsed().as_millis() as u64,
            };
            (result, identity)
        });
        let (local_result, peer_results) = futures::join!(local_fut, join_all(peer_futs));
        let (results, identities): (Vec<_>, Vec<_>) =
            std::iter::once(local_result).chain(peer_results).unzip();
        if let Some(m) = self.metrics {
            for r in &results {
                let failure = r.outcome.as_ref().err().map(|f| f.kind.label());
                m.peer_answer(&r.region.code, Duration::from_millis(r.elapsed_ms), failure);
            }
        }
        Fanned {
            results,
            identities,
        }
    }

    /// The identities a fan-out would give now if every region's answer is a fresh cache
    /// entry (or the immutable local record's), without asking or copying anything; `None`
    /// as soon as one is not. The cache must be in use.
    pub async fn fresh_identities(&self, query: &PatientQuery) -> Option<Vec<u64>> {
        let cache = self.cache.filter(|_| self.user.break_glass.is_none())?;
        let (local_info, local, _) = self.local;
        let mut identities = Vec::with_capacity(1 + self.peers.len());
        identities.push(if local.cacheable() {
            cache
                .fresh_generation(&CacheKey::local(&local_info.code, query))
                .await?
        } else if local.immutable() {
            IMMUTABLE_LOCAL
        } else {
            return None;
        });
        for peer in self.peers {
            identities.push(
                cache
                    .fresh_generation(&CacheKey::peer(&peer.info.code, query, self.user))
                    .await?,
            );
        }
        Some(identities)
    }
}

/// An outcome and its answer's identity, apart.
fn split(
    outcome: Result<(crate::record::RecordAnswer, Option<u64>), RegionFailure>,
) -> (
    Result<crate::record::RecordAnswer, RegionFailure>,
    Option<u64>,
) {
    match outcome {
        Ok((answer, identity)) => (Ok(answer), identity),
        Err(f) => (Err(f), None),
    }
}
