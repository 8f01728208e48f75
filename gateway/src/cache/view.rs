//! The view cache: what a user was shown for a query, kept so that the same request with the
//! same inputs is answered without filtering and merging again (a clinician's screen that
//! refreshes a patient's record asks exactly that).
//!
//! **Never a leak, never stale.** A view is a pure function of its inputs: the regions'
//! answers, the user's attributes and purpose, the request as asked, the policy set, the
//! patient's consent directives, and the time when a policy reads it. Its key holds every one:
//! each answer by the generation of its cache entry (never reused), the policy set by identity
//! (the view holds the set, so its address cannot be reused while the view lives), the consent
//! directives by value (read from the store for every request, so a change on any replica is
//! seen at once), and the second only when the set reads `context.time`. A request whose inputs
//! are not all pinned so (a region failed or was stale, an answer the region asked not to
//! store, break-glass, paging) neither reads nor writes a view.

use std::sync::Arc;

use crate::auth::UserContext;
use crate::consent::ConsentView;
use crate::fhir::SerializedEntries;
use crate::merge::View;

/// Every input of a view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewKey {
    pub user_id: String,
    pub role: String,
    pub organisation: String,
    pub purpose: String,
    /// The SMART scopes and launch patient the view was decided under.
    pub scope: Option<String>,
    pub launch_patient: Option<String>,
    /// The patient (for purging).
    pub nhs: String,
    /// The request as asked: path and raw query (what the query and its issues are parsed from),
    /// and whether unknown parameters are ignored.
    pub request: String,
    pub lenient: bool,
    /// The policy set's address; see [`KeptView::policy`].
    pub policy: usize,
    pub consent: ConsentView,
    /// Each region's answer, as the fan-out orders them: its cache generation.
    pub answers: Vec<u64>,
    /// The time in seconds, when the policy set reads it.
    pub second: Option<i64>,
}

impl ViewKey {
    /// The key of a view for `user` under `policies`; none under break-glass, whose views are
    /// never kept (each such access is its own, recorded and reviewed).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        user: &UserContext,
        nhs: &str,
        request: &str,
        lenient: bool,
        policies: &Arc<policy::PolicySet>,
        consent: &ConsentView,
        answers: Vec<u64>,
        now: i64,
    ) -> Option<Self> {
        if user.break_glass.is_some() {
            return None;
        }
        Some(ViewKey {
            user_id: user.user_id.clone(),
            role: user.role.clone(),
            organisation: user.organisation.clone(),
            purpose: user.purpose_of_use.clone().unwrap_or_default(),
            scope: user.scope.clone(),
            launch_patient: user.patient.clone(),
            nhs: nhs.to_owned(),
            request: request.to_owned(),
            lenient,
            policy: Arc::as_ptr(policies) as usize,
            consent: consent.clone(),
            answers,
            second: policies.reads_time().then_some(now),
        })
    }
}

/// A view as kept: its entries serialised once, the rest of it, and what the audit record and
/// the metrics of a request shown it need.
#[derive(Debug)]
pub struct KeptView {
    /// The set the view was decided under; held so that its address, in the key, stays its own.
    pub policy: Arc<policy::PolicySet>,
    /// The `match` entries, serialised.
    pub entries: SerializedEntries,
    /// The view without its matches (issues, counts, contributions, the Patient).
    pub view: View,
    pub released: usize,
    pub withheld: usize,
    pub policies: Vec<String>,
    pub regions: Vec<crate::audit::RegionOutcome>,
}

impl KeptView {
    fn weight(&self) -> u32 {
        // The entries dominate; the rest is counted roughly.
        let rest = 1024 + self.view.contributions.len() * 256;
        u32::try_from(self.entries.bytes() + rest).unwrap_or(u32::MAX)
    }
}

/// Views, bounded by bytes and by the answer cache's freshness (a view is only found while
/// every answer it was made from is fresh, since their generations are in its key).
pub struct ViewCache {
    inner: moka::sync::Cache<ViewKey, Arc<KeptView>>,
}

impl ViewCache {
    pub fn new(settings: &super::CacheSettings) -> Self {
        ViewCache {
            inner: moka::sync::Cache::builder()
                .max_capacity(settings.max_bytes)
                .weigher(|_k: &ViewKey, v: &Arc<KeptView>| v.weight())
                .time_to_live(settings.ttl)
                .time_to_idle(settings.time_to_idle)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The view kept under `key`, if it was decided under this very policy set.
    pub fn get(&self, key: &ViewKey, policies: &Arc<policy::PolicySet>) -> Option<Arc<KeptView>> {
        self.inner
            .get(key)
            .filter(|v| Arc::ptr_eq(&v.policy, policies))
    }

    pub fn insert(&self, key: ViewKey, view: KeptView) {
        debug_assert_eq!(key.policy, Arc::as_ptr(&view.policy) as usize);
        self.inner.insert(key, Arc::new(view));
    }

    /// Removes the views of a patient.
    pub fn invalidate_patient(&self, nhs: &str) {
        let nhs = nhs.to_owned();
        if self
            .inner
            .invalidate_entries_if(move |k, _| k.nhs == nhs)
            .is_err()
        {
            self.inner.invalidate_all();
        }
    }

    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}
