//! Several replicas of one region, kept in step through the region's change log
//! ([`crate::store::changes`]): a consent change (here or at a peer) and a policy activation
//! are recorded there, and every replica applies each change before it answers its next
//! request, so no replica serves an answer, a kept view or a page the change made stale.
//! With PostgreSQL a `NOTIFY` wakes every replica's listener at once; the log's head is also
//! read at the start of every request (the guarantee) and on a timer (the fallback).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::app::Gateway;
use crate::store::StoreError;
use crate::store::changes::Change;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Gateway {
    /// Records `change` for every replica, and applies it here.
    pub async fn announce(&self, change: Change) -> Result<(), StoreError> {
        self.apply_change(&change).await;
        self.changes.record_change(change, now()).await?;
        self.catch_up().await.map(drop)
    }

    /// Applies every change recorded since the last one this replica applied. Returns how
    /// many it applied.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let head = self.changes.change_head().await?;
        let mut seen = self.changes_seen.load(Ordering::SeqCst);
        let mut applied = 0;
        while head > seen {
            let changes = self.changes.changes_after(seen).await?;
            let Some(&(last, _)) = changes.last() else {
                break;
            };
            for (_, change) in &changes {
                self.apply_change(change).await;
                applied += 1;
            }
            seen = last;
            self.changes_seen.fetch_max(last, Ordering::SeqCst);
        }
        // Numbers a rolled-back insertion took are never filled in.
        self.changes_seen.fetch_max(head, Ordering::SeqCst);
        Ok(applied)
    }

    async fn apply_change(&self, change: &Change) {
        match change {
            Change::Consent { nhs, region } => {
                if let Some(cache) = &self.cache {
                    cache.invalidate_patient(nhs, region.as_deref());
                }
                crate::pipeline::paging::invalidate_patient(&self.pages, nhs);
            }
            Change::Policy => match self.follow_store().await {
                Ok(Some(a)) => tracing::info!(
                    version = a.version,
                    activation = a.activation,
                    "applied a policy version activated elsewhere"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "could not apply the store's newest policy activation; the current set stays"
                ),
            },
        }
    }
}

/// Follows the change log until `stop`: at once when the store announces a change (PostgreSQL
/// `LISTEN`, reconnected when it drops), and every `policy.poll_interval_ms` whatever happens.
pub async fn follow_changes(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = std::time::Duration::from_millis(gateway.config.policy.poll_interval_ms.max(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listening: Option<crate::store::changes::Subscription> = None;
    // SQLite announces nothing; PostgreSQL's listener is opened again when it drops.
    let mut can_listen = true;
    let mut retry_at = tokio::time::Instant::now();
    loop {
        if listening.is_none() && can_listen && tokio::time::Instant::now() >= retry_at {
            match gateway.changes.subscribe().await {
                Ok(Some(s)) => listening = Some(s),
                Ok(None) => can_listen = false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for changes; polling meanwhile");
                    retry_at = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                }
            }
        }
        let woke = async {
            match listening.as_mut() {
                Some(s) => s.next().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
            alive = woke => if !alive {
                tracing::warn!("the change listener's connection ended; listening again");
                listening = None;
            },
        }
        if let Err(e) = gateway.catch_up().await {
            tracing::warn!(error = %e, "could not read the change log");
        }
        // Activations made before the log existed, or by an older replica.
        if let Err(e) = gateway.follow_store().await {
            tracing::error!(error = %e, "could not apply the store's newest policy activation; the current set stays");
        }
    }
}
