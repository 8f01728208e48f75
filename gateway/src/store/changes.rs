//! The region's change log: consent changes (here or at a peer) and policy activations, so
//! that every replica drops what they make stale. A change is a row; with PostgreSQL its
//! insertion also sends a `NOTIFY` (only the row's number: no patient data travels in it) that
//! wakes every replica's listener at once. Polling the log's head (every request, and a timer)
//! is what guarantees it: a replica applies every change it has not seen before it answers.

use futures::future::BoxFuture;
use rusqlite::params;
use tokio::sync::mpsc;

use super::postgres::{PostgresStore, pg};
use super::{SqliteStore, StoreError};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A patient's consent: recorded here (`region` is `None`: every answer about the patient
    /// is stale), or at the peer `region` (that peer's answers are).
    Consent { nhs: String, region: Option<String> },
    /// A policy version was activated.
    Policy,
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Consent { .. } => "consent",
            Change::Policy => "policy",
        }
    }

    fn parts(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Change::Consent { nhs, region } => (Some(nhs), region.as_deref()),
            Change::Policy => (None, None),
        }
    }

    fn from_row(kind: &str, nhs: Option<String>, region: Option<String>) -> Option<Change> {
        match (kind, nhs) {
            ("consent", Some(nhs)) => Some(Change::Consent { nhs, region }),
            ("policy", _) => Some(Change::Policy),
            _ => None,
        }
    }
}

/// How long a change is kept: far longer than any replica goes without reading the log.
pub const KEEP_SECONDS: i64 = 3600;

/// The change log.
pub trait ChangeStore: Send + Sync {
    /// Records a change (and announces it to every replica listening). Returns its number.
    fn record_change(&self, change: Change, now: i64) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// The changes after `seq`, oldest first (at most 1,000).
    fn changes_after(&self, seq: i64) -> BoxFuture<'_, Result<Vec<(i64, Change)>, StoreError>>;
    /// The newest change's number (0 when there is none).
    fn change_head(&self) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// Wake-ups when another replica records a change; `None` when the store cannot announce
    /// (SQLite: one replica).
    fn subscribe(&self) -> BoxFuture<'_, Result<Option<Subscription>, StoreError>>;
}

/// Wake-ups from the store, while the connection that listens for them lives.
pub struct Subscription {
    notes: mpsc::UnboundedReceiver<String>,
    /// The listening connection's client: dropping it would end the connection.
    _client: Box<dyn std::any::Any + Send>,
}

impl Subscription {
    /// The next wake-up; `None` once the listening connection has ended.
    pub async fn next(&mut self) -> Option<String> {
        self.notes.recv().await
    }
}

impl ChangeStore for SqliteStore {
    fn record_change(&self, change: Change, now: i64) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.with(move |conn| {
            let (nhs, region) = change.parts();
            conn.prepare_cached("DELETE FROM change_log WHERE at_unix < ?1")?
                .execute(params![now - KEEP_SECONDS])?;
            conn.prepare_cached(
                "INSERT INTO change_log (at_unix, kind, nhs, region) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![now, change.kind(), nhs, region])?;
            Ok(conn.last_insert_rowid())
        }))
    }

    fn changes_after(&self, seq: i64) -> BoxFuture<'_, Result<Vec<(i64, Change)>, StoreError>> {
        Box::pin(self.with(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT seq, kind, nhs, region FROM change_log WHERE seq > ?1 ORDER BY seq LIMIT 1000",
            )?;
            let rows = st
                .query_map(params![seq], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, k, n, r)| Change::from_row(&k, n, r).map(|c| (s, c)))
                .collect())
        }))
    }

    fn change_head(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        // Read before every request: the last row of the primary key.
        Box::pin(self.read_point(|conn| {
            Ok(conn
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM change_log")?
                .query_row([], |r| r.get(0))?)
        }))
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Option<Subscription>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
}

impl ChangeStore for PostgresStore {
    fn record_change(&self, change: Change, now: i64) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let s = self.schema();
            let purge = client
                .prepare_cached(&format!("DELETE FROM {s}.change_log WHERE at_unix < $1"))
                .await
                .map_err(pg)?;
            client
                .execute(&purge, &[&(now - KEEP_SECONDS)])
                .await
                .map_err(pg)?;
            // One statement: the notification goes out when the row is committed.
            let insert = client
                .prepare_cached(&format!(
                    "WITH c AS (INSERT INTO {s}.change_log (at_unix, kind, nhs, region) VALUES ($1, $2, $3, $4) RETURNING seq)
                     SELECT seq, pg_notify('{s}_changes', seq::text) FROM c"
                ))
                .await
                .map_err(pg)?;
            let (nhs, region) = change.parts();
            let row = client
                .query_one(&insert, &[&now, &change.kind(), &nhs, &region])
                .await
                .map_err(pg)?;
            Ok(row.get(0))
        })
    }

    fn changes_after(&self, seq: i64) -> BoxFuture<'_, Result<Vec<(i64, Change)>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let st = client
                .prepare_cached(&format!(
                    "SELECT seq, kind, nhs, region FROM {}.change_log WHERE seq > $1 ORDER BY seq LIMIT 1000",
                    self.schema()
                ))
                .await
                .map_err(pg)?;
            Ok(client
                .query(&st, &[&seq])
                .await
                .map_err(pg)?
                .iter()
                .filter_map(|r| {
                    Change::from_row(r.get::<_, &str>(1), r.get(2), r.get(3)).map(|c| (r.get(0), c))
                })
                .collect())
        })
    }

    fn change_head(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let st = client
                .prepare_cached(&format!(
                    "SELECT COALESCE(MAX(seq), 0)::bigint FROM {}.change_log",
                    self.schema()
                ))
                .await
                .map_err(pg)?;
            Ok(client.query_one(&st, &[]).await.map_err(pg)?.get(0))
        })
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Option<Subscription>, StoreError>> {
        Box::pin(async move {
            let (tx, notes) = mpsc::unbounded_channel();
            let client = self.connector().connect(Some(tx)).await?;
            client
                .batch_execute(&format!("LISTEN {}_changes", self.schema()))
                .await
                .map_err(pg)?;
            Ok(Some(Subscription {
                notes,
                _client: Box::new(client),
            }))
        })
    }
}

/// The suite every change log must pass.
#[cfg(test)]
pub(crate) async fn shared_suite(store: &dyn ChangeStore) {
    let head = store.change_head().await.unwrap();
    let a = store
        .record_change(
            Change::Consent {
                nhs: "9000000009".into(),
                region: None,
            },
            10_000,
        )
        .await
        .unwrap();
    let b = store.record_change(Change::Policy, 10_001).await.unwrap();
    let c = store
        .record_change(
            Change::Consent {
                nhs: "9434765919".into(),
                region: Some("hampshire".into()),
            },
            10_002,
        )
        .await
        .unwrap();
    assert!(head < a && a < b && b < c);
    assert_eq!(store.change_head().await.unwrap(), c);
    let after: Vec<(i64, Change)> = store.changes_after(a).await.unwrap();
    assert_eq!(
        after,
        vec![
            (b, Change::Policy),
            (
                c,
                Change::Consent {
                    nhs: "9434765919".into(),
                    region: Some("hampshire".into())
                }
            )
        ]
    );
    // Kept for an hour, then dropped as new ones come.
    store
        .record_change(Change::Policy, 10_000 + KEEP_SECONDS + 1)
        .await
        .unwrap();
    let kept = store.changes_after(0).await.unwrap();
    assert!(kept.iter().all(|(s, _)| *s > a), "{kept:?}");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_passes_the_change_suite() {
        super::shared_suite(&super::SqliteStore::open_in_memory().unwrap()).await;
    }
}
