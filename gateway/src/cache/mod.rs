//! The response cache: regions' answers kept in a moka cache bounded by bytes, so a clinician's
//! screen that asks for the same patient many times a minute does not ask every region every
//! time.
//!
//! **Never a leak.** A peer's answer already reflects that peer's release policy for the user
//! who asked. So the key of a peer's answer holds every user attribute a release policy may
//! use: role, organisation, purpose of use. A cached answer is only served to a request the
//! peer would have answered the same way. The local record is cached before policy (its key
//! has no user) and filtered after. Break-glass requests neither read nor write the cache (the
//! caller's job). A consent change removes the patient's entries.
//!
//! **Freshness.** An answer is fresh for the configured TTL, or less when the peer's
//! `Cache-Control: max-age` says so. `no-store` (or `no-cache`) keeps it out. Errors are never
//! cached. A stale answer is kept for the stale-if-error window: when the region fails, it is
//! served with its age.
//!
//! **Single flight.** Concurrent identical misses share one upstream request: moka runs one
//! compute at a time per key, and the requests that waited find the fresh answer.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};

use crate::auth::UserContext;
use crate::merge::RegionFailure;
use crate::query::PatientQuery;
use crate::record::RecordAnswer;

/// What a response's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheDirective {
    /// `no-store` or `no-cache`: do not keep it.
    pub no_store: bool,
    /// `max-age`: fresh for at most this long.
    pub max_age: Option<Duration>,
}

/// Reads the `Cache-Control` header values of a response.
pub fn parse_cache_control<'a>(values: impl IntoIterator<Item = &'a str>) -> CacheDirective {
    let mut d = CacheDirective::default();
    for part in values.into_iter().flat_map(|v| v.split(',')) {
        let part = part.trim().to_ascii_lowercase();
        match part.split_once('=') {
            None if part == "no-store" || part == "no-cache" => d.no_store = true,
            Some(("max-age", n)) => {
                // A malformed max-age is read as 0 (RFC 9111 4.2.1): do not serve it fresh.
                let secs = n.trim_matches('"').parse::<u64>().unwrap_or(0);
                d.max_age = Some(d.max_age.map_or(Duration::from_secs(secs), |m| {
                    m.min(Duration::from_secs(secs))
                }));
            }
            _ => {}
        }
    }
    d
}

/// The `Cache-Control` this region's federation face puts on an answer: how long the asking
/// gateway may keep it for this user, and never under break-glass or when the age is 0.
pub fn federation_cache_control(break_glass: bool, max_age_s: u64) -> String {
    if break_glass || max_age_s == 0 {
        "no-store".to_owned()
    } else {
        format!("private, max-age={max_age_s}")
    }
}

/// Whose answer to what: the region, the patient, the request as sent, and the user
/// attributes a release policy may use (empty for the local record, cached before policy).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub source: String,
    pub nhs: String,
    pub request: String,
    pub role: String,
    pub organisation: String,
    pub purpose: String,
}

fn request_text(query: &PatientQuery) -> String {
    let (path, params) = query.to_request();
    let mut params = params;
    params.sort();
    let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", q.join("&"))
}

impl CacheKey {
    /// A peer's answer to `user`.
    pub fn peer(region: &str, query: &PatientQuery, user: &UserContext) -> Self {
        CacheKey {
            source: region.to_owned(),
            nhs: query.nhs_number.as_str().to_owned(),
            request: request_text(query),
            role: user.role.clone(),
            organisation: user.organisation.clone(),
            purpose: user.purpose_of_use.clone().unwrap_or_default(),
        }
    }

    /// The local record's answer, before any policy.
    pub fn local(region: &str, query: &PatientQuery) -> Self {
        CacheKey {
            source: region.to_owned(),
            nhs: query.nhs_number.as_str().to_owned(),
            request: request_text(query),
            role: String::new(),
            organisation: String::new(),
            purpose: String::new(),
        }
    }
}

/// A cached answer.
#[derive(Debug)]
pub struct Cached {
    pub answer: RecordAnswer,
    /// Which stored answer this is: never the same for two answers in a process (see
    /// [`next_generation`]), so a view built from it can name it.
    pub generation: u64,
    pub fetched_at: Instant,
    pub fresh_for: Duration,
    /// What it weighs against the byte limit.
    pub bytes: u32,
}

impl Cached {
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched_at) < self.fresh_for
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }
}

/// A number no other stored answer in this process has; counts from 1 (0 names the local
/// record's answers when they are a pure function of the query).
pub fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An answer as the cache served it.
#[derive(Debug)]
pub struct Served {
    pub answer: RecordAnswer,
    pub source: Source,
    /// The stored answer's generation, when the answer is a cache entry's (not a stale one,
    /// nor one the region asked not to store).
    pub generation: Option<u64>,
}

/// What a fetch from a region gives the cache: the answer, its size, its directive.
pub struct Fetched {
    pub answer: RecordAnswer,
    pub bytes: usize,
    pub directive: CacheDirective,
}

/// How an answer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fresh from the cache.
    Hit,
    /// Asked of the region just now.
    Fetched,
    /// The region failed; an older answer was served. The age in whole seconds.
    Stale(u64),
}

/// The cache's settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub ttl: Duration,
    pub time_to_idle: Duration,
    pub stale_if_error: Duration,
}

/// Counters for the metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    /// Requests answered from a kept view (see [`view`]).
    pub views_served: AtomicU64,
}

pub mod view;

pub struct ResponseCache {
    inner: moka::future::Cache<CacheKey, Arc<Cached>>,
    settings: CacheSettings,
    pub counters: CacheCounters,
    /// Views made from the answers kept here (see [`view`]).
    pub views: view::ViewCache,
}

impl ResponseCache {
    pub fn new(settings: CacheSettings) -> Self {
        let inner = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Cached>| v.bytes)
            // Kept past its freshness for the stale-if-error window.
            .time_to_live(settings.ttl + settings.stale_if_error)
            .time_to_idle(settings.time_to_idle)
            .support_invalidation_closures()
            .build();
        ResponseCache {
            inner,
            settings,
            counters: CacheCounters::default(),
            views: view::ViewCache::new(&settings),
        }
    }

    /// [`ResponseCache::serve`] without the generation: the tests' shorthand.
    #[cfg(test)]
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: CacheKey,
        fetch: F,
    ) -> Result<(RecordAnswer, Source), RegionFailure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, RegionFailure>>,
    {
        self.serve(key, fetch).await.map(|s| (s.answer, s.source))
    }

    /// The generation of the fresh answer stored for `key`, if there is one; nothing is
    /// copied or counted (see [`ResponseCache::count_view_served`]).
    pub async fn fresh_generation(&self, key: &CacheKey) -> Option<u64> {
        self.inner
            .get(key)
            .await
            .filter(|c| c.is_fresh(Instant::now()))
            .map(|c| c.generation)
    }

    /// Counts a request answered from a kept view, and the `regions` fresh answers it was
    /// made from as hits (they were not copied through [`ResponseCache::serve`]).
    pub fn count_view_served(&self, regions: usize) {
        self.counters.views_served.fetch_add(1, Ordering::Relaxed);
        self.counters
            .hits
            .fetch_add(regions as u64, Ordering::Relaxed);
    }

    /// The answer for `key`: fresh from the cache, or fetched (one fetch for concurrent
    /// identical misses), or, when the fetch fails, a stale answer still within the
    /// stale-if-error window. Errors are never cached. With the stored answer's generation.
    pub async fn serve<F, Fut>(&self, key: CacheKey, fetch: F) -> Result<Served, RegionFailure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, RegionFailure>>,
    {
        let served = |c: &Cached, source| Served {
            answer: c.answer.clone(),
            source,
            generation: (!matches!(source, Source::Stale(_))).then_some(c.generation),
        };
        if let Some(c) = self.inner.get(&key).await
            && c.is_fresh(Instant::now())
        {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(served(&c, Source::Hit));
        }
        let settings = self.settings;
        let mut not_stored: Option<RecordAnswer> = None;
        let mut stale: Option<u64> = None;
        let mut fetched = false;
        let result = self
            .inner
            .entry(key)
            .and_try_compute_with(|current| {
                let not_stored = &mut not_stored;
                let stale = &mut stale;
                let fetched = &mut fetched;
                async move {
                    let now = Instant::now();
                    if current.as_ref().is_some_and(|e| e.value().is_fresh(now)) {
                        // Another request fetched it while this one waited: single flight.
                        return Ok(Op::Nop);
                    }
                    *fetched = true;
                    match fetch().await {
                        Ok(f) if f.directive.no_store => {
                            *not_stored = Some(f.answer);
                            Ok(Op::Nop)
                        }
                        Ok(f) => {
                            let fresh_for = f
                                .directive
                                .max_age
                                .map_or(settings.ttl, |m| m.min(settings.ttl));
                            Ok(Op::Put(Arc::new(Cached {
                                answer: f.answer,
                                generation: next_generation(),
                                fetched_at: Instant::now(),
                                fresh_for,
                                bytes: u32::try_from(f.bytes.max(1)).unwrap_or(u32::MAX),
                            })))
                        }
                        Err(failure) => match current {
                            Some(e)
                                if e.value().age(now)
                                    <= e.value().fresh_for + settings.stale_if_error =>
                            {
                                *stale = Some(e.value().age(now).as_secs());
                                Ok(Op::Nop)
                            }
                            _ => Err(failure),
                        },
                    }
                }
            })
            .await;
        if fetched {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
        }
        let result = result?;
        if let Some(answer) = not_stored {
            return Ok(Served {
                answer,
                source: Source::Fetched,
                generation: None,
            });
        }
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => {
                Ok(served(e.value(), Source::Fetched))
            }
            CompResult::Unchanged(e) => match stale {
                Some(age) => {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    Ok(served(e.value(), Source::Stale(age)))
                }
                None => Ok(served(e.value(), Source::Hit)),
            },
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(RegionFailure {
                kind: crate::merge::FailureKind::Invalid,
                reason: "the cache lost the answer".into(),
            }),
        }
    }

    /// Removes every entry about a patient (a consent change), from `source` only if given.
    pub fn invalidate_patient(&self, nhs: &str, source: Option<&str>) {
        self.views.invalidate_patient(nhs);
        let nhs = nhs.to_owned();
        let source = source.map(str::to_owned);
        if let Err(e) = self.inner.invalidate_entries_if(move |k, _| {
            k.nhs == nhs && source.as_ref().is_none_or(|s| &k.source == s)
        }) {
            // Only fails if invalidation closures are not enabled, which `new` does.
            tracing::error!(error = %e, "cache invalidation failed; clearing the whole cache");
            self.inner.invalidate_all();
        }
    }

    /// Removes every entry of one region.
    pub fn invalidate_region(&self, source: &str) {
        self.views.invalidate_all();
        let source = source.to_owned();
        if self
            .inner
            .invalidate_entries_if(move |k, _| k.source == source)
            .is_err()
        {
            self.inner.invalidate_all();
        }
    }

    /// Bytes held (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}

#[cfg(test)]
mod tests;
