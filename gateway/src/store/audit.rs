//! Where the audit trail is kept: one trait, [`AuditStore`], with SQLite (here) and PostgreSQL
//! ([`super::postgres`]) implementations that pass one shared suite.
//!
//! Every field of an event has a column of its own, and a record is rebuilt from those columns
//! when read, so editing any column by hand changes the rebuilt record and breaks its hash. The
//! few columns derived for filtering (`at_unix`, `region_codes`, `outcome_code`) are checked
//! against the record when the trail is verified.
//!
//! Appends use group commit: requests hand their events to one writer, which chains and inserts
//! every event waiting at that moment in one transaction, so concurrent requests share an
//! fsync. An append returns only once its transaction is durable.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::audit::{AuditEvent, AuditRecord, EventKind, Filter, Page, RegionOutcome};

/// The most events one group commit takes.
pub const MAX_BATCH: usize = 2048;

/// A record as read back, with whether its filter columns agree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub record: AuditRecord,
    pub index_agrees: bool,
}

/// A signed checkpoint as stored: the sequence number it vouches for and its JWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub seq: u64,
    pub jws: String,
}

/// The audit trail's store.
pub trait AuditStore: Send + Sync {
    /// Chains and durably writes one event; returns the record once it is committed.
    fn append(&self, event: AuditEvent) -> BoxFuture<'_, Result<AuditRecord, StoreError>>;
    /// Records with a sequence number above `after`, in order, at most `limit`.
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Stored>, StoreError>>;
    /// One page of the records a filter selects, newest first.
    fn search<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Page, StoreError>>;
    /// The last record's sequence number and hash.
    fn head(&self) -> BoxFuture<'_, Result<Option<(u64, String)>, StoreError>>;
    fn put_checkpoint(&self, checkpoint: StoredCheckpoint)
    -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every checkpoint, oldest first.
    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>, StoreError>>;
}

/// The columns of a record, in the order both stores' SQL uses.
pub(crate) const COLUMNS: &str = "seq, prev_hash, hash, time, kind, request_id, user_id, role, organisation, purpose_of_use, patient, regions, released, withheld, policies, break_glass_reason, status, outcome, detail, at_unix, region_codes, outcome_code, subtype";

/// A record's columns as plain values, shared by both stores.
pub(crate) struct Row {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub time: String,
    pub kind: String,
    pub request_id: String,
    pub user_id: String,
    pub role: String,
    pub organisation: String,
    pub purpose_of_use: String,
    pub patient: Option<String>,
    pub regions: String,
    pub released: i64,
    pub withheld: i64,
    pub policies: String,
    pub break_glass_reason: Option<String>,
    pub status: i64,
    pub outcome: String,
    pub detail: String,
    pub at_unix: i64,
    pub region_codes: String,
    pub outcome_code: i64,
    /// The RESTful interaction ([`AuditEvent::interaction`]), for the `subtype` search.
    pub subtype: String,
}

/// `,a,b,` so that one region is found with a substring search for `,a,`.
pub(crate) fn region_codes_text(event: &AuditEvent) -> String {
    format!(",{},", event.region_codes().join(","))
}

impl Row {
    /// The columns of an event not yet chained (sequence number and hashes empty).
    pub fn from_event(e: &AuditEvent) -> Row {
        Row {
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            time: e.time.clone(),
            kind: e.kind.as_str().to_owned(),
            request_id: e.request_id.clone(),
            user_id: e.user_id.clone(),
            role: e.role.clone(),
            organisation: e.organisation.clone(),
            purpose_of_use: e.purpose_of_use.clone(),
            patient: e.patient.clone(),
            regions: serde_json::to_string(&e.regions).unwrap_or_default(),
            released: e.released as i64,
            withheld: e.withheld as i64,
            policies: serde_json::to_string(&e.policies).unwrap_or_default(),
            break_glass_reason: e.break_glass_reason.clone(),
            status: i64::from(e.status),
            outcome: e.outcome.clone(),
            detail: e.detail.to_string(),
            at_unix: e.unix_time(),
            region_codes: region_codes_text(e),
            outcome_code: i64::from(e.outcome_code()),
            subtype: e.interaction().0.to_owned(),
        }
    }

    /// Rebuilds the record. A column that cannot be read back (an unknown kind, JSON that is
    /// not JSON) gives a record whose hash will not match, rather than an error, so that
    /// verification names the record.
    pub fn into_stored(self) -> Stored {
        let kind = EventKind::parse(&self.kind);
        let regions: Option<Vec<RegionOutcome>> = serde_json::from_str(&self.regions).ok();
        let policies: Option<Vec<String>> = serde_json::from_str(&self.policies).ok();
        let detail: Option<serde_json::Value> = serde_json::from_str(&self.detail).ok();
        let readable =
            kind.is_some() && regions.is_some() && policies.is_some() && detail.is_some();
        let event = AuditEvent {
            time: self.time,
            kind: kind.unwrap_or(EventKind::ClinicianQuery),
            request_id: self.request_id,
            user_id: self.user_id,
            role: self.role,
            organisation: self.organisation,
            purpose_of_use: self.purpose_of_use,
            patient: self.patient,
            regions: regions.unwrap_or_default(),
            released: usize::try_from(self.released).unwrap_or(usize::MAX),
            withheld: usize::try_from(self.withheld).unwrap_or(usize::MAX),
            policies: policies.unwrap_or_default(),
            break_glass_reason: self.break_glass_reason,
            status: u16::try_from(self.status).unwrap_or(u16::MAX),
            outcome: self.outcome,
            detail: detail.unwrap_or_default(),
        };
        let index_agrees = readable
            && self.at_unix == event.unix_time()
            && self.region_codes == region_codes_text(&event)
            && self.outcome_code == i64::from(event.outcome_code())
            && self.subtype == event.interaction().0;
        Stored {
            record: AuditRecord {
                seq: u64::try_from(self.seq).unwrap_or(0),
                prev_hash: self.prev_hash,
                hash: self.hash,
                event,
            },
            index_agrees,
        }
    }
}

/// An event made ready to chain by the request that wrote it: its canonical JSON and its
/// columns, so the writer only numbers, hashes and inserts.
pub(crate) struct Pending {
    pub event: AuditEvent,
    pub canonical: String,
    pub row: Row,
    pub reply: oneshot::Sender<Result<AuditRecord, StoreError>>,
}

impl Pending {
    fn new(event: AuditEvent, reply: oneshot::Sender<Result<AuditRecord, StoreError>>) -> Self {
        Pending {
            canonical: crate::audit::canonical_event(&event),
            row: Row::from_event(&event),
            event,
            reply,
        }
    }
}

/// Chains a batch after `head` (the last record's sequence number and hash): fills in each
/// row's sequence number and hashes.
pub(crate) fn chain_batch(head: Option<(u64, String)>, batch: &mut [Pending]) {
    let (mut seq, mut prev) = head.unwrap_or((0, crate::audit::GENESIS.to_owned()));
    for p in batch {
        seq += 1;
        let hash = crate::audit::hash_with(seq, &prev, &p.canonical);
        p.row.seq = seq as i64;
        p.row.prev_hash = std::mem::replace(&mut prev, hash.clone());
        p.row.hash = hash;
    }
}

/// Takes what is waiting after `first`, up to [`MAX_BATCH`].
pub(crate) fn drain(first: Pending, rx: &mut mpsc::Receiver<Pending>) -> Vec<Pending> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    batch
}

/// Answers every request of a batch.
pub(crate) fn reply(batch: Vec<Pending>, result: Result<(), String>) {
    match result {
        Ok(()) => {
            for p in batch {
                let record = AuditRecord {
                    seq: p.row.seq as u64,
                    prev_hash: p.row.prev_hash,
                    hash: p.row.hash,
                    event: p.event,
                };
                let _ = p.reply.send(Ok(record));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(StoreError::Unavailable(e.clone())));
            }
        }
    }
}

/// The audit trail in SQLite (WAL, `synchronous=FULL`): one writer thread doing group commit,
/// and a reader connection of its own so that reading the trail never waits for an fsync.
pub struct SqliteAudit {
    writer: mpsc::Sender<Pending>,
    reader: super::SqliteConn,
}

fn sqlite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: r.get(0)?,
        prev_hash: r.get(1)?,
        hash: r.get(2)?,
        time: r.get(3)?,
        kind: r.get(4)?,
        request_id: r.get(5)?,
        user_id: r.get(6)?,
        role: r.get(7)?,
        organisation: r.get(8)?,
        purpose_of_use: r.get(9)?,
        patient: r.get(10)?,
        regions: r.get(11)?,
        released: r.get(12)?,
        withheld: r.get(13)?,
        policies: r.get(14)?,
        break_glass_reason: r.get(15)?,
        status: r.get(16)?,
        outcome: r.get(17)?,
        detail: r.get(18)?,
        at_unix: r.get(19)?,
        region_codes: r.get(20)?,
        outcome_code: r.get(21)?,
        subtype: r.get(22)?,
    })
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Another process holding the database (a backup, `sqlite3` by hand) is waited for this
    // long; after that the append fails, and the request with it (fail closed).
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    Ok(conn)
}

fn sqlite_head(conn: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    conn.prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .optional()
}

fn write_batch(conn: &mut Connection, batch: &mut [Pending]) -> rusqlite::Result<()> {
    // IMMEDIATE: take the write lock before reading the head, so nothing slips in between.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    chain_batch(sqlite_head(&tx)?, batch);
    {
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
        ))?;
        for p in batch.iter() {
            let w = &p.row;
            insert.execute(params![
                w.seq,
                w.prev_hash,
                w.hash,
                w.time,
                w.kind,
                w.request_id,
                w.user_id,
                w.role,
                w.organisation,
                w.purpose_of_use,
                w.patient,
                w.regions,
                w.released,
                w.withheld,
                w.policies,
                w.break_glass_reason,
                w.status,
                w.outcome,
                w.detail,
                w.at_unix,
                w.region_codes,
                w.outcome_code,
                w.subtype
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn writer_loop(conn: Arc<Mutex<Connection>>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = drain(first, &mut rx);
        let result = match conn.lock() {
            Ok(mut guard) => {
                write_batch(&mut guard, &mut batch).map_err(|e| format!("audit write failed: {e}"))
            }
            Err(_) => Err("audit write failed: the connection is poisoned".to_owned()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, records = batch.len(), "audit write failed; the requests waiting on it are refused");
        }
        reply(batch, result);
    }
}

/// The subtype of an event from its stored kind and detail (the two it is derived from), for
/// records written before the column existed.
pub(crate) fn derived_subtype(kind: &str, detail: &str) -> &'static str {
    let mut event = AuditEvent::new(
        EventKind::parse(kind).unwrap_or(EventKind::ClinicianQuery),
        String::new(),
        "",
    );
    event.detail = serde_json::from_str(detail).unwrap_or_default();
    event.interaction().0
}

/// Fills in the subtype of records written before schema version 4, in one transaction.
fn fill_subtypes(conn: &Connection) -> Result<(), StoreError> {
    let missing: Vec<(i64, String, String)> = conn
        .prepare("SELECT seq, kind, detail FROM audit WHERE subtype = ''")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    if missing.is_empty() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let mut update = conn.prepare("UPDATE audit SET subtype = ?1 WHERE seq = ?2")?;
        for (seq, kind, detail) in &missing {
            update.execute(params![derived_subtype(kind, detail), seq])?;
        }
        Ok::<_, rusqlite::Error>(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    tracing::info!(records = missing.len(), "audit records given their subtype");
    Ok(())
}

/// The WHERE clause of a filter (without paging), with its parameters numbered from 1.
/// Used by SQLite; PostgreSQL has its own placeholders.
const SQLITE_WHERE: &str = "(?1 IS NULL OR patient = ?1) AND (?2 IS NULL OR user_id = ?2)
    AND (?3 IS NULL OR instr(region_codes, ',' || ?3 || ',') > 0) AND (?4 IS NULL OR kind = ?4)
    AND (?5 IS NULL OR at_unix >= ?5) AND (?6 IS NULL OR at_unix < ?6)
    AND (?7 = 0 OR break_glass_reason IS NOT NULL) AND (?8 IS NULL OR outcome_code = ?8)
    AND (?9 IS NULL OR request_id = ?9) AND (?10 IS NULL OR subtype = ?10 OR (?10 = 'search' AND subtype = 'operation'))";

impl SqliteAudit {
    /// Opens (creating) the trail in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let writer = open_connection(path)?;
        super::migrate::sqlite(&writer)?;
        fill_subtypes(&writer)?;
        let reader = open_connection(path)?;
        Ok(Self::start(
            Arc::new(Mutex::new(writer)),
            Arc::new(Mutex::new(reader)),
        ))
    }

    /// A trail in memory (tests, and a gateway configured without a store). An in-memory
    /// database cannot be shared between two connections, so reader and writer share one.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        super::migrate::sqlite(&conn)?;
        let shared = Arc::new(Mutex::new(conn));
        Ok(Self::start(shared.clone(), shared))
    }

    fn start(writer: Arc<Mutex<Connection>>, reader: Arc<Mutex<Connection>>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .expect("spawn the audit writer thread");
        SqliteAudit {
            writer: tx,
            reader: super::SqliteConn::new(reader),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.reader.with(f).await
    }
}

/// Sends an event to a writer and waits for its commit.
pub(crate) async fn submit(
    writer: &mpsc::Sender<Pending>,
    event: AuditEvent,
) -> Result<AuditRecord, StoreError> {
    let (reply, answer) = oneshot::channel();
    writer
        .send(Pending::new(event, reply))
        .await
        .map_err(|_| StoreError::Unavailable("the audit writer has stopped".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Unavailable("the audit writer has stopped".into()))?
}

impl AuditStore for SqliteAudit {
    fn append(&self, event: AuditEvent) -> BoxFuture<'_, Result<AuditRecord, StoreError>> {
        Box::pin(submit(&self.writer, event))
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Stored>, StoreError>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], sqlite_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows.into_iter().map(Row::into_stored).collect())
        }))
    }

    fn search<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Page, StoreError>> {
        let f = filter.clone();
        Box::pin(self.read(move |conn| {
            let kind = f.kind.map(EventKind::as_str);
            let outcome = f.outcome.map(i64::from);
            let before = f.before_seq.map_or(i64::MAX, |b| b as i64);
            let limit = (f.count + 1) as i64;
            // ?1-?10 filter (SQLITE_WHERE), ?11-?12 page.
            let values: [&dyn rusqlite::ToSql; 12] = [
                &f.patient,
                &f.user,
                &f.region,
                &kind,
                &f.from,
                &f.until,
                &f.break_glass_only,
                &outcome,
                &f.request_id,
                &f.subtype,
                &before,
                &limit,
            ];
            let total: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM audit WHERE {SQLITE_WHERE}"),
                &values[..10],
                |r| r.get(0),
            )?;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit WHERE {SQLITE_WHERE} AND seq < ?11 ORDER BY seq DESC LIMIT ?12"
            ))?;
            let rows = stmt
                .query_map(&values[..], sqlite_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(page(rows, f.count, total))
        }))
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<(u64, String)>, StoreError>> {
        Box::pin(self.read(|conn| Ok(sqlite_head(conn)?)))
    }

    fn put_checkpoint(&self, c: StoredCheckpoint) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.read(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO audit_checkpoint (seq, jws) VALUES (?1, ?2)",
                params![c.seq as i64, c.jws],
            )?;
            Ok(())
        }))
    }

    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>, StoreError>> {
        Box::pin(self.read(|conn| {
            let mut stmt = conn.prepare("SELECT seq, jws FROM audit_checkpoint ORDER BY seq")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredCheckpoint {
                        seq: r.get::<_, i64>(0)? as u64,
                        jws: r.get(1)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        }))
    }
}

/// A page from `count + 1` rows read newest first: the extra row says there is a next page.
pub(crate) fn page(rows: Vec<Row>, count: usize, total: i64) -> Page {
    let more = rows.len() > count;
    let records: Vec<AuditRecord> = rows
        .into_iter()
        .take(count)
        .map(|r| r.into_stored().record)
        .collect();
    let next_before = if more {
        records.last().map(|r| r.seq)
    } else {
        None
    };
    Page {
        records,
        total: u64::try_from(total).unwrap_or(0),
        next_before,
    }
}

/// Verifies a stored trail from the start, a page at a time. `Ok(n)`: n records, intact.
pub async fn verify_store(
    store: &dyn AuditStore,
) -> Result<Result<(u64, String), crate::audit::Tamper>, StoreError> {
    let mut verifier = crate::audit::Verifier::default();
    let mut after = 0;
    loop {
        let page = store.read_after(after, 10_000).await?;
        if page.is_empty() {
            return Ok(Ok((verifier.checked(), verifier.head().to_owned())));
        }
        for s in &page {
            if let Err(t) = verifier.push(&s.record) {
                return Ok(Err(t));
            }
            if !s.index_agrees {
                return Ok(Err(crate::audit::Tamper::Modified { seq: s.record.seq }));
            }
            after = s.record.seq;
        }
    }
}

/// Finds one record's hash (for checking a checkpoint).
pub async fn hash_at(store: &dyn AuditStore, seq: u64) -> Result<Option<String>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    Ok(store
        .read_after(seq - 1, 1)
        .await?
        .into_iter()
        .find(|s| s.record.seq == seq)
        .map(|s| s.record.hash))
}

/// The suite every audit store must pass. `exec` runs one SQL statement against the store's
/// database, with `{audit}` standing for the audit table, to tamper with it as an intruder
/// with database access would.
#[cfg(test)]
pub(crate) async fn audit_suite(
    store: &dyn AuditStore,
    exec: &(dyn Fn(String) -> BoxFuture<'static, ()> + Sync),
) {
    use crate::audit::Tamper;

    assert_eq!(store.head().await.unwrap(), None);
    assert_eq!(
        verify_store(store).await.unwrap(),
        Ok((0, crate::audit::GENESIS.into()))
    );

    // Many requests at once: every one gets its own place in one chain.
    let appends = (0..240).map(|i| store.append(sample_event(i)));
    let records = futures::future::join_all(appends).await;
    let mut seqs: Vec<u64> = records.iter().map(|r| r.as_ref().unwrap().seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=240).collect::<Vec<_>>());
    let (n, head_hash) = verify_store(store).await.unwrap().unwrap();
    assert_eq!(n, 240);
    assert_eq!(store.head().await.unwrap(), Some((240, head_hash)));

    // What was written is what is read back, every field.
    let stored = store.read_after(0, 1000).await.unwrap();
    assert_eq!(stored.len(), 240);
    assert!(stored.iter().all(|s| s.index_agrees));
    for r in records.into_iter().map(Result::unwrap) {
        assert_eq!(stored[r.seq as usize - 1].record, r);
    }
    let all: Vec<AuditRecord> = stored.into_iter().map(|s| s.record).collect();

    // Filters agree with the reference (`Filter::matches`), and paging walks every match once.
    let filters = [
        Filter::default(),
        Filter {
            patient: Some("9000000009".into()),
            ..Filter::default()
        },
        Filter {
            user: Some("user-3".into()),
            ..Filter::default()
        },
        Filter {
            region: Some("wessex".into()),
            ..Filter::default()
        },
        Filter {
            region: Some("essex".into()),
            ..Filter::default()
        },
        Filter {
            kind: Some(EventKind::FederationQuery),
            ..Filter::default()
        },
        Filter {
            from: Some(1_767_225_700),
            until: Some(1_767_225_900),
            ..Filter::default()
        },
        Filter {
            break_glass_only: true,
            ..Filter::default()
        },
        Filter {
            outcome: Some(4),
            ..Filter::default()
        },
        Filter {
            outcome: Some(8),
            patient: Some("9434765919".into()),
            ..Filter::default()
        },
        Filter {
            request_id: Some("req-17".into()),
            ..Filter::default()
        },
        Filter {
            subtype: Some("read".into()),
            ..Filter::default()
        },
        Filter {
            subtype: Some("search".into()),
            user: Some("user-1".into()),
            ..Filter::default()
        },
        Filter {
            subtype: Some("operation".into()),
            ..Filter::default()
        },
    ];
    for base in filters {
        let expected: Vec<u64> = all
            .iter()
            .rev()
            .filter(|r| base.matches(r))
            .map(|r| r.seq)
            .collect();
        let mut got = Vec::new();
        let mut f = Filter {
            count: 7,
            ..base.clone()
        };
        loop {
            let page = store.search(&f).await.unwrap();
            assert_eq!(page.total as usize, expected.len(), "{base:?}");
            assert!(page.records.len() <= 7);
            got.extend(page.records.iter().map(|r| r.seq));
            match page.next_before {
                Some(b) => f.before_seq = Some(b),
                None => break,
            }
        }
        assert_eq!(got, expected, "{base:?}");
    }
    // Odd filter values are data, not SQL.
    let odd = Filter {
        user: Some("' OR 1=1 --".into()),
        region: Some("%".into()),
        count: 5,
        ..Filter::default()
    };
    assert_eq!(store.search(&odd).await.unwrap().total, 0);

    // Checkpoints.
    store
        .put_checkpoint(StoredCheckpoint {
            seq: 100,
            jws: "a.b.c".into(),
        })
        .await
        .unwrap();
    store
        .put_checkpoint(StoredCheckpoint {
            seq: 200,
            jws: "d.e.f".into(),
        })
        .await
        .unwrap();
    let cps = store.checkpoints().await.unwrap();
    assert_eq!(
        cps.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![100, 200]
    );
    assert_eq!(
        hash_at(store, 100).await.unwrap(),
        Some(all[99].hash.clone())
    );
    assert_eq!(hash_at(store, 999).await.unwrap(), None);

    // Tampering by hand is named, each time at the first place the trail goes wrong.
    exec("UPDATE {audit} SET released = released + 1 WHERE seq = 200".into()).await;
    assert_eq!(
        verify_store(store).await.unwrap(),
        Err(Tamper::Modified { seq: 200 })
    );
    exec("UPDATE {audit} SET patient = '9' || patient WHERE seq = 150".into()).await;
    assert_eq!(
        verify_store(store).await.unwrap(),
        Err(Tamper::Modified { seq: 150 })
    );
    exec("DELETE FROM {audit} WHERE seq = 120".into()).await;
    assert_eq!(
        verify_store(store).await.unwrap(),
        Err(Tamper::Deleted {
            after: 119,
            missing_from: 120
        })
    );
    // A filter column changed to hide a record from searches.
    exec("UPDATE {audit} SET at_unix = 0 WHERE seq = 90".into()).await;
    assert_eq!(
        verify_store(store).await.unwrap(),
        Err(Tamper::Modified { seq: 90 })
    );
    exec("UPDATE {audit} SET subtype = 'create' WHERE seq = 75".into()).await;
    assert_eq!(
        verify_store(store).await.unwrap(),
        Err(Tamper::Modified { seq: 75 })
    );
    exec("UPDATE {audit} SET detail = 'not json' WHERE seq = 60".into()).await;
    assert_eq!(
        verify_store(store).await.unwrap(),
        Err(Tamper::Modified { seq: 60 })
    );
}

/// Varied events: two patients, five users, three regions, some break-glass, some failures,
/// spread over time.
#[cfg(test)]
pub(crate) fn sample_event(i: usize) -> AuditEvent {
    use serde_json::json;
    let t = time::OffsetDateTime::from_unix_timestamp(1_767_225_600 + (i as i64) * 2).unwrap();
    let kind = if i % 3 == 0 {
        EventKind::FederationQuery
    } else {
        EventKind::ClinicianQuery
    };
    let mut e = AuditEvent::new(kind, crate::fhir::instant(t), &format!("req-{i}"));
    e.user_id = format!("user-{}", i % 5);
    e.role = "R8000".into();
    e.organisation = "RBD".into();
    e.purpose_of_use = "TREAT".into();
    e.patient = Some(
        if i % 2 == 0 {
            "9000000009"
        } else {
            "9434765919"
        }
        .into(),
    );
    e.regions = ["dorset", "wessex", "essex"]
        .iter()
        .take(1 + i % 3)
        .map(|r| RegionOutcome {
            region: (*r).into(),
            outcome: "answered".into(),
            items: i,
        })
        .collect();
    e.released = i;
    e.withheld = i % 4;
    e.policies = vec!["direct-care-clinicians".into(), "sensitive-hiv".into()];
    e.break_glass_reason =
        (i % 11 == 0).then(|| "Unconscious in A&E, 'allergies' \"unknown\"".into());
    (e.status, e.outcome) = match i % 7 {
        0 => (403, "refused: purpose of use".into()),
        1 => (503, "the audit store is unavailable".into()),
        _ => (200, "success".into()),
    };
    if kind == EventKind::FederationQuery {
        e.detail = json!({"calling_region": "wessex"});
    } else {
        let query = match i % 5 {
            0 => "/fhir/Patient/9000000009/$everything",
            1 => "/fhir/Patient/9000000009",
            _ => "/fhir/AllergyIntolerance?patient=9000000009",
        };
        e.detail = json!({"query": query, "method": "GET", "ünï": ["cödé", 1.5, null]});
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_passes_the_audit_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let store = SqliteAudit::open(&path).unwrap();
        let exec = move |sql: String| -> BoxFuture<'static, ()> {
            let path = path.clone();
            Box::pin(async move {
                let conn = Connection::open(&path).unwrap();
                conn.execute_batch(&sql.replace("{audit}", "audit"))
                    .unwrap();
            })
        };
        audit_suite(&store, &exec).await;
    }

    #[tokio::test]
    async fn an_in_memory_trail_chains_and_reads_back() {
        let store = SqliteAudit::open_in_memory().unwrap();
        for i in 0..5 {
            store.append(sample_event(i)).await.unwrap();
        }
        assert_eq!(verify_store(&store).await.unwrap().unwrap().0, 5);
    }

    #[tokio::test]
    async fn a_trail_survives_reopening_and_continues_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        {
            let store = SqliteAudit::open(&path).unwrap();
            for i in 0..3 {
                store.append(sample_event(i)).await.unwrap();
            }
        }
        let store = SqliteAudit::open(&path).unwrap();
        let r = store.append(sample_event(3)).await.unwrap();
        assert_eq!(r.seq, 4);
        assert_eq!(verify_store(&store).await.unwrap().unwrap().0, 4);
    }

    #[tokio::test]
    async fn records_written_before_the_subtype_column_get_theirs_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        {
            let store = SqliteAudit::open(&path).unwrap();
            for i in 0..10 {
                store.append(sample_event(i)).await.unwrap();
            }
        }
        // As a gateway before schema version 4 left them.
        Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE audit SET subtype = ''")
            .unwrap();
        let store = SqliteAudit::open(&path).unwrap();
        assert_eq!(verify_store(&store).await.unwrap().unwrap().0, 10);
        let reads = Filter {
            subtype: Some("read".into()),
            count: 50,
            ..Filter::default()
        };
        let found: Vec<u64> = store
            .search(&reads)
            .await
            .unwrap()
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
        // Of sample_event(1) and (6), the reads by their query, (6) is a federation query.
        assert_eq!(found, vec![2]);
    }

    #[tokio::test]
    async fn an_append_fails_when_the_database_is_locked_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let store = SqliteAudit::open(&path).unwrap();
        store.append(sample_event(0)).await.unwrap();
        let intruder = Connection::open(&path).unwrap();
        intruder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let err = store.append(sample_event(1)).await.unwrap_err();
        assert!(err.to_string().contains("audit write failed"), "{err}");
        intruder.execute_batch("ROLLBACK").unwrap();
        // Nothing half-written: the next append continues the chain.
        assert_eq!(store.append(sample_event(2)).await.unwrap().seq, 2);
        assert_eq!(verify_store(&store).await.unwrap().unwrap().0, 2);
    }
}
