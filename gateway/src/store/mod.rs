//! The gateway's own store. Here: patients' consent directives recorded through the gateway;
//! beside it the audit trail, governance (policy versions, reviews) and paging cursors. One
//! trait each, two implementations with one shared test suite: SQLite (embedded, WAL; the
//! default) and PostgreSQL (for several replicas of one region sharing them). Both schemas
//! are versioned ([`migrate`]).

pub mod audit;
pub mod changes;
pub mod cursors;
pub mod governance;
pub mod migrate;
pub mod postgres;

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: a stored directive is not JSON: {0}")]
    Corrupt(String),
    #[error("store: the worker failed: {0}")]
    Worker(String),
    #[error("store: PostgreSQL: {0}")]
    Postgres(String),
    #[error("store: {0}")]
    Config(String),
    #[error("store: {0}")]
    Unavailable(String),
}

/// A directive as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConsent {
    pub id: String,
    /// The patient's NHS number.
    pub nhs: String,
    pub version: i64,
    pub resource: Value,
    /// The user who recorded this version.
    pub recorded_by: String,
    pub recorded_at: String,
}

/// Consent directives recorded through the gateway.
pub trait ConsentStore: Send + Sync {
    /// Inserts or replaces a directive (the caller sets the version).
    fn put(&self, consent: StoredConsent) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredConsent>, StoreError>>;
    /// Every directive of a patient, oldest first.
    fn for_patient<'a>(
        &'a self,
        nhs: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredConsent>, StoreError>>;
}

/// A SQLite connection used from async code. rusqlite is synchronous, so a call runs on the
/// blocking pool; one call at a time holds the connection, and the others wait for their turn
/// without a thread. (Waiting on the connection's lock inside the pool parked one pool thread
/// per concurrent caller: under load the pool, and the memory of its threads, grew with it.)
#[derive(Clone)]
pub(crate) struct SqliteConn {
    conn: Arc<Mutex<Connection>>,
    turn: Arc<tokio::sync::Semaphore>,
}

impl SqliteConn {
    pub(crate) fn new(conn: Arc<Mutex<Connection>>) -> Self {
        SqliteConn {
            conn,
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let turn = self
            .turn
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the call is done, even if the caller stops waiting for it.
            let _turn = turn;
            let guard = conn.lock().map_err(|e| StoreError::Worker(e.to_string()))?;
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// A point read by a prepared statement (a few pages, in the page cache): run on the
    /// caller's thread once it is the connection's turn, without the blocking pool. A profile
    /// of a kept view's repeat showed handing such a read to a pool thread (a spawn, a wake-up
    /// and a switch each way) cost more than the read itself. Anything that writes, scans or
    /// may wait on the disk goes through [`SqliteConn::with`].
    pub(crate) async fn read_point<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Every user of the connection holds the turn while it holds the lock, so once it is
        // this call's turn the lock is free.
        let _turn = self
            .turn
            .acquire()
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        let guard = self
            .conn
            .lock()
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        f(&guard)
    }
}

/// SQLite, in WAL mode, through one [`SqliteConn`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: SqliteConn,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate::sqlite(&conn)?;
        Ok(SqliteStore {
            conn: SqliteConn::new(Arc::new(Mutex::new(conn))),
        })
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        migrate::sqlite(&conn)?;
        Ok(SqliteStore {
            conn: SqliteConn::new(Arc::new(Mutex::new(conn))),
        })
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.conn.with(f).await
    }

    /// See [`SqliteConn::read_point`].
    pub(crate) async fn read_point<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.read_point(f).await
    }

    /// Every row of a query without parameters, mapped.
    pub(crate) async fn rows<T: Send + 'static>(
        &self,
        sql: String,
        map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.with(move |c| {
            let mut st = c.prepare(&sql)?;
            Ok(st.query_map([], map)?.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// A patient's directives, in the order they were recorded (`rowid`, sorted by the caller).
const CONSENT_OF_PATIENT: &str = "SELECT rowid, id, nhs, version, resource, recorded_by, recorded_at FROM consent WHERE nhs = ?1";

type ConsentRow = (String, String, i64, String, String, String);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConsentRow> {
    row_from(r, 0)
}

/// A directive's columns from column `at` on.
fn row_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ConsentRow> {
    Ok((
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        r.get(at + 4)?,
        r.get(at + 5)?,
    ))
}

fn to_stored(
    (id, nhs, version, resource, recorded_by, recorded_at): ConsentRow,
) -> Result<StoredConsent, StoreError> {
    let resource =
        serde_json::from_str(&resource).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(StoredConsent {
        id,
        nhs,
        version,
        resource,
        recorded_by,
        recorded_at,
    })
}

impl ConsentStore for SqliteStore {
    fn put(&self, c: StoredConsent) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.with(move |conn| {
            conn.execute(
                "INSERT INTO consent (id, nhs, version, resource, recorded_by, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET nhs = excluded.nhs, version = excluded.version, resource = excluded.resource,
                     recorded_by = excluded.recorded_by, recorded_at = excluded.recorded_at",
                params![c.id, c.nhs, c.version, c.resource.to_string(), c.recorded_by, c.recorded_at],
            )?;
            Ok(())
        }))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredConsent>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.with(move |conn| {
            let found = conn
                .query_row("SELECT id, nhs, version, resource, recorded_by, recorded_at FROM consent WHERE id = ?1", params![id], row)
                .optional()?;
            found.map(to_stored).transpose()
        }))
    }

    fn for_patient<'a>(
        &'a self,
        nhs: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredConsent>, StoreError>> {
        Box::pin(self.read_point(move |conn| {
            // On the hot path (every request reads the patient's consent): prepared once, and
            // by the index on `nhs`. Ordered here, not by `ORDER BY rowid`: SQLite (3.54)
            // prepares a statement ordering what an equality on a bound value selects again
            // at every step, which a profile put at a tenth of a kept view's repeat.
            let mut stmt = conn.prepare_cached(CONSENT_OF_PATIENT)?;
            let mut rows = stmt
                .query_map(params![nhs], |r| Ok((r.get::<_, i64>(0)?, row_from(r, 1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.sort_unstable_by_key(|(rowid, _)| *rowid);
            rows.into_iter().map(|(_, r)| to_stored(r)).collect()
        }))
    }
}

/// The suite every store must pass. Public so that each implementation's tests run it.
#[cfg(test)]
pub(crate) async fn shared_suite(store: &dyn ConsentStore) {
    use serde_json::json;
    let stamp = uuid::Uuid::new_v4().to_string();
    let (a, b, c) = (
        format!("a-{stamp}"),
        format!("b-{stamp}"),
        format!("c-{stamp}"),
    );
    let put = |id: &str, nhs: &str, version: i64, status: &str| StoredConsent {
        id: id.into(),
        nhs: nhs.into(),
        version,
        resource: json!({"resourceType": "Consent", "id": id, "status": status, "text": "ünïcödé ' quotes \" and \\ slashes"}),
        recorded_by: "user-1".into(),
        recorded_at: "2026-01-01T00:00:00Z".into(),
    };
    // Patients unique to this run, so parallel runs against one database do not meet.
    let p1 = format!("p1-{stamp}");
    let p2 = format!("p2-{stamp}");
    store.put(put(&a, &p1, 1, "active")).await.unwrap();
    store.put(put(&b, &p1, 1, "active")).await.unwrap();
    store.put(put(&c, &p2, 1, "active")).await.unwrap();
    store.put(put(&a, &p1, 2, "inactive")).await.unwrap();
    let got = store.get(&a).await.unwrap().unwrap();
    assert_eq!(
        (got.version, got.resource["status"].as_str()),
        (2, Some("inactive"))
    );
    assert_eq!(got.resource["text"], "ünïcödé ' quotes \" and \\ slashes");
    assert_eq!(got.recorded_by, "user-1");
    assert!(store.get("no-such-id").await.unwrap().is_none());
    let ids: Vec<String> = store
        .for_patient(&p1)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        ids,
        vec![a.clone(), b.clone()],
        "oldest first, replaced in place"
    );
    assert_eq!(store.for_patient(&p2).await.unwrap().len(), 1);
    assert!(store.for_patient("nobody").await.unwrap().is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_wait_for_the_connection_without_holding_a_thread_each() {
        let store = SqliteStore::open_in_memory().unwrap();
        let threads = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let calls = (0..32).map(|_| {
            let (store, threads) = (store.clone(), threads.clone());
            tokio::spawn(async move {
                store
                    .with(move |c| {
                        threads
                            .lock()
                            .unwrap()
                            .insert(format!("{:?}", std::thread::current().id()));
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)
                    })
                    .await
            })
        });
        for call in futures::future::join_all(calls).await {
            assert_eq!(call.unwrap().unwrap(), 1);
        }
        // One call at a time, on the threads the pool already has: not one thread per caller.
        let used = threads.lock().unwrap().len();
        assert!(
            used <= 4,
            "{used} threads of the blocking pool for 32 callers"
        );
    }

    fn consent(id: &str, nhs: &str, version: i64, status: &str) -> StoredConsent {
        StoredConsent {
            id: id.into(),
            nhs: nhs.into(),
            version,
            resource: json!({"resourceType": "Consent", "id": id, "status": status}),
            recorded_by: "u".into(),
            recorded_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn sqlite_passes_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        shared_suite(&SqliteStore::open(&dir.path().join("s.sqlite")).unwrap()).await;
    }

    #[tokio::test]
    async fn put_get_replace_and_list_by_patient_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put(consent("a", "9000000009", 1, "active"))
                .await
                .unwrap();
            s.put(consent("b", "9000000009", 1, "active"))
                .await
                .unwrap();
            s.put(consent("c", "9434765919", 1, "active"))
                .await
                .unwrap();
            s.put(consent("a", "9000000009", 2, "inactive"))
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let a = s.get("a").await.unwrap().unwrap();
        assert_eq!(
            (a.version, a.resource["status"].as_str()),
            (2, Some("inactive"))
        );
        assert!(s.get("zz").await.unwrap().is_none());
        assert_eq!(ids_of(&s, "9000000009").await, ["a", "b"]);
    }

    /// The ids of a patient's directives, in the order the store gives them.
    async fn ids_of(s: &SqliteStore, nhs: &str) -> Vec<String> {
        s.for_patient(nhs)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    /// Every request reads its patient's directives: the statement is prepared once, and
    /// they come back in the order they were recorded, whatever their ids.
    #[tokio::test]
    async fn a_patients_directives_are_read_in_recorded_order_by_a_statement_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        for id in ["m", "c", "x", "a"] {
            s.put(consent(id, "9000000009", 1, "active")).await.unwrap();
        }
        s.put(consent("b", "9434765919", 1, "active"))
            .await
            .unwrap();
        for _ in 0..5 {
            assert_eq!(ids_of(&s, "9000000009").await, ["m", "c", "x", "a"]);
        }
        let reprepared = s
            .read_point(|c| {
                Ok(c.prepare_cached(CONSENT_OF_PATIENT)?
                    .get_status(rusqlite::StatementStatus::RePrepare))
            })
            .await
            .unwrap();
        assert_eq!(reprepared, 0, "the consent read was prepared again");
    }
}
