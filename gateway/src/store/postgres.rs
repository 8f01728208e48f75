//! The PostgreSQL store, for several replicas of one region. Tables live in a schema of their
//! own (`store.postgres_schema`), brought up to date at start ([`super::migrate`]). Reads
//! and writes take a connection from a pool (deadpool-postgres, statements prepared once per
//! connection); the audit trail's writer and the change listener keep one of their own.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::audit::{AuditStore, COLUMNS, Pending, Row, Stored, StoredCheckpoint};
use super::{ConsentStore, StoreError, StoredConsent};
use crate::audit::{AuditEvent, AuditRecord, EventKind, Filter, Page};

pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    // The server's own message (without parameters, which may hold patient data).
    StoreError::Postgres(e.as_db_error().map_or_else(
        || {
            // The source says why a TLS handshake or a connection failed.
            match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            }
        },
        |d| d.message().to_owned(),
    ))
}

/// A schema name safe to put in SQL text.
pub fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Is every host of a connection string this machine (loopback or a Unix socket)? Plain TCP
/// is accepted only there.
pub fn local_only(conninfo: &str) -> Result<bool, StoreError> {
    let config: tokio_postgres::Config = conninfo.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Config(format!("the PostgreSQL connection string: {e}"))
    })?;
    Ok(config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    }))
}

/// How to reach the server: the connection string, the schema, and TLS when a CA is given
/// (then the server's certificate must chain to it and name the host: `sslmode` is forced to
/// `require` and the certificate is verified, unlike libpq's `require`).
#[derive(Clone)]
pub struct Connector {
    conninfo: String,
    schema: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    password: Option<crate::config::Secret>,
}

impl Connector {
    pub fn new(conninfo: &str, schema: &str, ca: Option<&Path>) -> Result<Self, StoreError> {
        if !valid_schema(schema) {
            return Err(StoreError::Config(format!(
                "'{schema}' is not a valid schema name (lower-case letters, digits, '_')"
            )));
        }
        let tls = match ca {
            None => None,
            Some(path) => {
                crate::tls::install_crypto_provider();
                let certs = crate::tls::load_certs(path)
                    .map_err(|e| StoreError::Config(format!("store.postgres_ca: {e}")))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| StoreError::Config(format!("store.postgres_ca: {e}")))?;
                }
                Some(Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                ))
            }
        };
        Ok(Connector {
            conninfo: conninfo.to_owned(),
            schema: schema.to_owned(),
            tls,
            password: None,
        })
    }

    /// Connects with this password (kept out of the connection string: from the environment
    /// or a secret file), replacing any the string gives.
    pub fn with_password(mut self, password: Option<&crate::config::Secret>) -> Self {
        self.password = password.cloned();
        self
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config: tokio_postgres::Config =
            self.conninfo.parse().map_err(|e: tokio_postgres::Error| {
                StoreError::Config(format!("the PostgreSQL connection string: {e}"))
            })?;
        if self.tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        Ok(config)
    }

    /// A connection of its own; its notifications (`LISTEN`) are sent to `notes`.
    pub async fn connect(
        &self,
        notes: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<Client, StoreError> {
        let config = self.config()?;
        Ok(match &self.tls {
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(pg)?;
                tokio::spawn(drive(connection, notes));
                client
            }
            Some(tls) => {
                let connect = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = config.connect(connect).await.map_err(pg)?;
                tokio::spawn(drive(connection, notes));
                client
            }
        })
    }

    /// Connects, and brings the schema up to date ([`super::migrate`]).
    pub async fn open(&self) -> Result<Client, StoreError> {
        let mut client = self.connect(None).await?;
        let applied = super::migrate::postgres(&mut client, &self.schema).await?;
        if !applied.is_empty() {
            tracing::info!(schema = %self.schema, versions = ?applied, "store schema upgraded");
        }
        Ok(client)
    }

    /// A pool of up to `size` connections. A connection is checked with an empty query when it
    /// is taken again (deadpool's `Verified`), so one the server dropped is replaced rather than
    /// failing a request; statements are prepared once per connection (`prepare_cached`).
    pub fn pool(&self, size: usize) -> Result<Pool, StoreError> {
        use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
        let config = self.config()?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match &self.tls {
            None => Manager::from_config(config, NoTls, manager_config),
            Some(tls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone()),
                manager_config,
            ),
        };
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Config(format!("the PostgreSQL pool: {e}")))
    }
}

/// Drives a connection, handing its notifications to `notes`.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notes: Option<mpsc::UnboundedSender<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if let Some(notes) = &notes {
                    let _ = notes.send(n.payload().to_owned());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
                return;
            }
        }
    }
}

pub use deadpool_postgres::{Object as Pooled, Pool};

/// A connection taken from the pool.
pub(crate) async fn take(pool: &Pool) -> Result<Pooled, StoreError> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
    })
}

/// Connections a replica's store keeps open by default (consent reads, governance, cursors).
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Consent directives, governance and cursors in PostgreSQL.
pub struct PostgresStore {
    schema: String,
    pool: Pool,
    connector: Connector,
}

impl PostgresStore {
    /// Connects over plain TCP (tests and loopback servers) and brings the schema up to date.
    pub async fn connect(conninfo: &str, schema: &str) -> Result<Self, StoreError> {
        Self::with(Connector::new(conninfo, schema, None)?, DEFAULT_POOL_SIZE).await
    }

    /// Connects with `connector`, brings the schema up to date, and keeps a pool of `size`.
    pub async fn with(connector: Connector, size: usize) -> Result<Self, StoreError> {
        drop(connector.open().await?);
        Ok(PostgresStore {
            schema: connector.schema().to_owned(),
            pool: connector.pool(size)?,
            connector,
        })
    }

    pub(crate) async fn client(&self) -> Result<Pooled, StoreError> {
        take(&self.pool).await
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// How to open a connection of its own (the change listener's).
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Every row of a query without parameters, mapped; `{s}` in `sql` stands for the
    /// store's schema (a checked name).
    pub(crate) async fn rows<T>(
        &self,
        sql: &str,
        map: impl Fn(&tokio_postgres::Row) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query(&sql.replace("{s}", &self.schema), &[])
            .await
            .map_err(pg)?
            .iter()
            .map(map)
            .collect())
    }

    /// Drops the schema and everything in it (tests clean up with it).
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .map_err(pg)
    }
}

fn from_row(row: &tokio_postgres::Row) -> StoredConsent {
    StoredConsent {
        id: row.get(0),
        nhs: row.get(1),
        version: row.get(2),
        resource: row.get(3),
        recorded_by: row.get(4),
        recorded_at: row.get(5),
    }
}

impl ConsentStore for PostgresStore {
    fn put(&self, c: StoredConsent) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "INSERT INTO {}.consent (id, nhs, version, resource, recorded_by, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET nhs = EXCLUDED.nhs, version = EXCLUDED.version, resource = EXCLUDED.resource,
                     recorded_by = EXCLUDED.recorded_by, recorded_at = EXCLUDED.recorded_at",
                self.schema
            );
            client
                .execute(
                    &sql,
                    &[
                        &c.id,
                        &c.nhs,
                        &c.version,
                        &c.resource,
                        &c.recorded_by,
                        &c.recorded_at,
                    ],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredConsent>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT id, nhs, version, resource, recorded_by, recorded_at FROM {}.consent WHERE id = $1",
                self.schema
            );
            Ok(client
                .query_opt(&sql, &[&id])
                .await
                .map_err(pg)?
                .as_ref()
                .map(from_row))
        })
    }

    fn for_patient<'a>(
        &'a self,
        nhs: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredConsent>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT id, nhs, version, resource, recorded_by, recorded_at FROM {}.consent WHERE nhs = $1 ORDER BY seq",
                self.schema
            );
            // On the hot path (every request reads the patient's consent): prepared once.
            let statement = client.prepare_cached(&sql).await.map_err(pg)?;
            Ok(client
                .query(&statement, &[&nhs])
                .await
                .map_err(pg)?
                .iter()
                .map(from_row)
                .collect())
        })
    }
}

/// The audit trail in PostgreSQL, for several replicas of one region writing at once. Each
/// group commit locks the audit table against other writers (readers are not blocked) while
/// it reads the head of the chain and appends, so replicas extend one chain.
pub struct PostgresAudit {
    schema: String,
    writer: mpsc::Sender<Pending>,
    reader: Pool,
}

fn pg_row(r: &tokio_postgres::Row) -> Row {
    Row {
        seq: r.get(0),
        prev_hash: r.get(1),
        hash: r.get(2),
        time: r.get(3),
        kind: r.get(4),
        request_id: r.get(5),
        user_id: r.get(6),
        role: r.get(7),
        organisation: r.get(8),
        purpose_of_use: r.get(9),
        patient: r.get(10),
        regions: r.get(11),
        released: r.get(12),
        withheld: r.get(13),
        policies: r.get(14),
        break_glass_reason: r.get(15),
        status: r.get(16),
        outcome: r.get(17),
        detail: r.get(18),
        at_unix: r.get(19),
        region_codes: r.get(20),
        outcome_code: r.get(21),
        subtype: r.get(22),
    }
}

async fn write_pg_batch(
    client: &mut Client,
    insert: &mut Option<tokio_postgres::Statement>,
    s: &str,
    batch: &mut [Pending],
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(&format!("LOCK TABLE {s}.audit IN SHARE ROW EXCLUSIVE MODE"))
        .await
        .map_err(pg)?;
    let head = tx
        .query_opt(
            &format!("SELECT seq, hash FROM {s}.audit ORDER BY seq DESC LIMIT 1"),
            &[],
        )
        .await
        .map_err(pg)?
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1)));
    super::audit::chain_batch(head, batch);
    // Prepared once per connection.
    let insert = match insert {
        Some(st) => st.clone(),
        None => {
            let st = tx
                .prepare(&format!(
                    "INSERT INTO {s}.audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
                ))
                .await
                .map_err(pg)?;
            insert.insert(st).clone()
        }
    };
    let rows: Vec<&Row> = batch.iter().map(|p| &p.row).collect();
    type P<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let params: Vec<[P<'_>; 23]> = rows
        .iter()
        .map(|w| -> [P<'_>; 23] {
            [
                &w.seq,
                &w.prev_hash,
                &w.hash,
                &w.time,
                &w.kind,
                &w.request_id,
                &w.user_id,
                &w.role,
                &w.organisation,
                &w.purpose_of_use,
                &w.patient,
                &w.regions,
                &w.released,
                &w.withheld,
                &w.policies,
                &w.break_glass_reason,
                &w.status,
                &w.outcome,
                &w.detail,
                &w.at_unix,
                &w.region_codes,
                &w.outcome_code,
                &w.subtype,
            ]
        })
        .collect();
    // Sent together: tokio-postgres pipelines the inserts on the one connection.
    futures::future::try_join_all(params.iter().map(|p| tx.execute(&insert, p)))
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(())
}

/// The trail's one writer: a connection of its own (each group commit locks the table), opened
/// again when the server drops it.
async fn pg_writer(
    connector: Connector,
    mut client: Option<Client>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut insert = None;
    while let Some(first) = rx.recv().await {
        let mut batch = super::audit::drain(first, &mut rx);
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                insert = None;
                client = Some(connector.connect(None).await?);
            }
            let c = client.as_mut().expect("connected");
            write_pg_batch(c, &mut insert, connector.schema(), &mut batch).await
        }
        .await
        .map_err(|e| format!("audit write failed: {e}"));
        if let Err(e) = &result {
            tracing::error!(error = %e, records = batch.len(), "audit write failed; the requests waiting on it are refused");
        }
        super::audit::reply(batch, result);
    }
}

const PG_WHERE: &str = "($1::text IS NULL OR patient = $1) AND ($2::text IS NULL OR user_id = $2)
    AND ($3::text IS NULL OR strpos(region_codes, ',' || $3 || ',') > 0) AND ($4::text IS NULL OR kind = $4)
    AND ($5::bigint IS NULL OR at_unix >= $5) AND ($6::bigint IS NULL OR at_unix < $6)
    AND (NOT $7::bool OR break_glass_reason IS NOT NULL) AND ($8::bigint IS NULL OR outcome_code = $8)
    AND ($9::text IS NULL OR request_id = $9) AND ($10::text IS NULL OR subtype = $10 OR ($10 = 'search' AND subtype = 'operation'))";

/// Fills in the subtype of records written before schema version 4 (one statement per
/// record, pipelined, in one transaction).
async fn fill_subtypes(client: &Client, s: &str) -> Result<(), StoreError> {
    let missing = client
        .query(
            &format!("SELECT seq, kind, detail FROM {s}.audit WHERE subtype = ''"),
            &[],
        )
        .await
        .map_err(pg)?;
    if missing.is_empty() {
        return Ok(());
    }
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let update = client
        .prepare(&format!("UPDATE {s}.audit SET subtype = $1 WHERE seq = $2"))
        .await
        .map_err(pg)?;
    let filled = futures::future::try_join_all(missing.iter().map(|r| {
        let subtype = super::audit::derived_subtype(r.get(1), r.get(2));
        let seq: i64 = r.get(0);
        let update = &update;
        async move { client.execute(update, &[&subtype, &seq]).await }
    }))
    .await;
    match filled {
        Ok(_) => client.batch_execute("COMMIT").await.map_err(pg)?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(pg(e));
        }
    }
    tracing::info!(records = missing.len(), "audit records given their subtype");
    Ok(())
}

impl PostgresAudit {
    /// Connects (a writer connection, and a small pool for reading) and brings the schema up
    /// to date.
    pub async fn connect(connector: Connector) -> Result<Self, StoreError> {
        let writer_client = connector.open().await?;
        fill_subtypes(&writer_client, connector.schema()).await?;
        let reader = connector.pool(2)?;
        let (tx, rx) = mpsc::channel(super::audit::MAX_BATCH * 4);
        let schema = connector.schema().to_owned();
        tokio::spawn(pg_writer(connector, Some(writer_client), rx));
        Ok(PostgresAudit {
            schema,
            writer: tx,
            reader,
        })
    }
}

impl AuditStore for PostgresAudit {
    fn append(&self, event: AuditEvent) -> BoxFuture<'_, Result<AuditRecord, StoreError>> {
        Box::pin(super::audit::submit(&self.writer, event))
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Stored>, StoreError>> {
        Box::pin(async move {
            let client = take(&self.reader).await?;
            let sql = format!(
                "SELECT {COLUMNS} FROM {}.audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                self.schema
            );
            let rows = client
                .query(&sql, &[&(after as i64), &(limit as i64)])
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| pg_row(r).into_stored()).collect())
        })
    }

    fn search<'a>(&'a self, f: &'a Filter) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async move {
            let client = take(&self.reader).await?;
            let kind = f.kind.map(EventKind::as_str);
            let outcome = f.outcome.map(i64::from);
            let before = f.before_seq.map_or(i64::MAX, |b| b as i64);
            let limit = (f.count + 1) as i64;
            // $1-$10 filter (PG_WHERE), $11-$12 page.
            let values: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
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
            let s = &self.schema;
            let total: i64 = client
                .query_one(
                    &format!("SELECT COUNT(*) FROM {s}.audit WHERE {PG_WHERE}"),
                    &values[..10],
                )
                .await
                .map_err(pg)?
                .get(0);
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM {s}.audit WHERE {PG_WHERE} AND seq < $11 ORDER BY seq DESC LIMIT $12"
                    ),
                    &values,
                )
                .await
                .map_err(pg)?;
            Ok(super::audit::page(
                rows.iter().map(pg_row).collect(),
                f.count,
                total,
            ))
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<(u64, String)>, StoreError>> {
        Box::pin(async move {
            let client = take(&self.reader).await?;
            Ok(client
                .query_opt(
                    &format!(
                        "SELECT seq, hash FROM {}.audit ORDER BY seq DESC LIMIT 1",
                        self.schema
                    ),
                    &[],
                )
                .await
                .map_err(pg)?
                .map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
        })
    }

    fn put_checkpoint(&self, c: StoredCheckpoint) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = take(&self.reader).await?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {}.audit_checkpoint (seq, jws) VALUES ($1, $2) ON CONFLICT (seq) DO UPDATE SET jws = EXCLUDED.jws",
                        self.schema
                    ),
                    &[&(c.seq as i64), &c.jws],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>, StoreError>> {
        Box::pin(async move {
            let client = take(&self.reader).await?;
            Ok(client
                .query(
                    &format!(
                        "SELECT seq, jws FROM {}.audit_checkpoint ORDER BY seq",
                        self.schema
                    ),
                    &[],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| StoredCheckpoint {
                    seq: r.get::<_, i64>(0) as u64,
                    jws: r.get(1),
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server the store tests use. CI and `scripts/test` make sure one answers; a missing
    /// server fails the test rather than skipping it.
    pub fn test_conninfo() -> String {
        std::env::var("GATEWAY_TEST_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
    }

    /// A store in a schema of its own on the test server.
    async fn fresh_store() -> PostgresStore {
        let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        PostgresStore::connect(&test_conninfo(), &schema)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must be reachable for this test (set GATEWAY_TEST_POSTGRES): {e}"
                )
            })
    }

    #[tokio::test]
    async fn postgres_passes_the_shared_suite() {
        let store = fresh_store().await;
        super::super::shared_suite(&store).await;
        store.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn postgres_passes_the_governance_suite() {
        let store = fresh_store().await;
        crate::store::governance::governance_suite(&store).await;
        store.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn postgres_passes_the_cursor_suite() {
        let store = fresh_store().await;
        crate::store::cursors::shared_suite(&store).await;
        store.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn a_store_made_before_migrations_is_upgraded_with_its_data_intact() {
        use crate::store::cursors::CursorStore;
        let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&test_conninfo(), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // What the gateway made before migrations were recorded: version 1's tables, alone.
        let v1 = crate::store::migrate::MIGRATIONS[0]
            .postgres
            .replace("{s}", &schema);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}; {v1}"))
            .await
            .unwrap();
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.consent (id, nhs, version, resource, recorded_by, recorded_at)
                     VALUES ('c1', '9000000009', 3, '{{\"resourceType\":\"Consent\"}}'::jsonb, 'po', 't')"
                ),
                &[],
            )
            .await
            .unwrap();
        // Two replicas start together on it.
        let conninfo = test_conninfo();
        let (a, b) = futures::join!(
            PostgresStore::connect(&conninfo, &schema),
            PostgresStore::connect(&conninfo, &schema)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let c = a.get("c1").await.unwrap().unwrap();
        assert_eq!((c.version, c.nhs.as_str()), (3, "9000000009"));
        assert!(
            b.cursor("x", 0).await.unwrap().is_none(),
            "version 2 is there"
        );
        let versions: Vec<i64> = client
            .query(
                &format!("SELECT version FROM {schema}.schema_migrations ORDER BY version"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let all: Vec<i64> = crate::store::migrate::MIGRATIONS
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, all, "each version once");
        // A version this gateway does not know: refused, not guessed at.
        client
            .execute(
                &format!("INSERT INTO {schema}.schema_migrations VALUES (99, 'future', 'x', 't')"),
                &[],
            )
            .await
            .unwrap();
        let err = PostgresStore::connect(&test_conninfo(), &schema)
            .await
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        a.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_callers_each_hold_a_connection_of_their_own() {
        let store = fresh_store().await;
        // Every caller holds its connection while the others take theirs: with one connection
        // behind a lock (before the pool) the second would wait for the first forever.
        let held: Vec<Pooled> =
            futures::future::try_join_all((0..DEFAULT_POOL_SIZE).map(|_| store.client()))
                .await
                .unwrap();
        let mut pids = std::collections::BTreeSet::new();
        for c in &held {
            let pid: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            pids.insert(pid);
        }
        assert_eq!(pids.len(), DEFAULT_POOL_SIZE, "a server session each");
        drop(held);
        // A connection the server ended is replaced when next taken.
        let c = store.client().await.unwrap();
        c.execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
            .await
            .ok();
        drop(c);
        let fresh = futures::future::try_join_all((0..DEFAULT_POOL_SIZE).map(|_| async {
            let c = store.client().await?;
            c.query_one("SELECT 1", &[]).await.map_err(pg)
        }))
        .await;
        assert!(fresh.is_ok(), "{:?}", fresh.err());
        store.drop_schema().await.unwrap();
    }

    async fn audit_store(schema: &str) -> PostgresAudit {
        let connector = Connector::new(&test_conninfo(), schema, None).unwrap();
        PostgresAudit::connect(connector).await.unwrap_or_else(|e| {
            panic!("PostgreSQL must be reachable for this test (set GATEWAY_TEST_POSTGRES): {e}")
        })
    }

    async fn drop_schema(schema: &str) {
        PostgresStore::connect(&test_conninfo(), schema)
            .await
            .unwrap()
            .drop_schema()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn postgres_passes_the_audit_suite() {
        let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        let store = audit_store(&schema).await;
        let s = schema.clone();
        let exec = move |sql: String| -> BoxFuture<'static, ()> {
            let sql = sql.replace("{audit}", &format!("{s}.audit"));
            Box::pin(async move {
                let (client, conn) = tokio_postgres::connect(&test_conninfo(), NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute(&sql).await.unwrap();
            })
        };
        crate::store::audit::audit_suite(&store, &exec).await;
        drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn replicas_writing_at_once_extend_one_chain() {
        let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        let (a, b) = (audit_store(&schema).await, audit_store(&schema).await);
        let from_a = (0..150).map(|i| a.append(crate::store::audit::sample_event(i)));
        let from_b = (150..300).map(|i| b.append(crate::store::audit::sample_event(i)));
        let (ra, rb) = futures::join!(
            futures::future::join_all(from_a),
            futures::future::join_all(from_b)
        );
        assert!(ra.iter().chain(rb.iter()).all(Result::is_ok));
        let verified = crate::store::audit::verify_store(&a).await.unwrap();
        assert_eq!(verified.map(|(n, _)| n), Ok(300));
        drop_schema(&schema).await;
    }

    /// The test server's certificate file and a host name it is valid for, read from the
    /// server itself (`ssl_cert_file`; Debian's default is a self-signed "snakeoil"
    /// certificate for the machine's name). A server without TLS fails the test.
    async fn server_certificate() -> (std::path::PathBuf, String) {
        let (client, conn) = tokio_postgres::connect(&test_conninfo(), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        assert_eq!(
            ssl, "on",
            "the PostgreSQL test server must offer TLS (ssl = on)"
        );
        let file: String = client
            .query_one("SHOW ssl_cert_file", &[])
            .await
            .unwrap()
            .get(0);
        let path = std::path::PathBuf::from(&file);
        let certs = crate::tls::load_certs(&path)
            .unwrap_or_else(|e| panic!("the server's certificate {file} must be readable: {e}"));
        let cert = crate::tls::identity::parse_certificate(certs[0].as_ref()).unwrap();
        let host = cert.dns_names.first().cloned().unwrap_or_else(|| {
            // No DNS name: the common name ("CN=host").
            cert.subject
                .split(',')
                .find_map(|p| p.trim().strip_prefix("CN="))
                .unwrap()
                .to_owned()
        });
        (path, host)
    }

    /// The test connection string, pointed at `host`.
    fn conninfo_for(host: &str) -> String {
        let mut parts: Vec<String> = test_conninfo()
            .split_whitespace()
            .filter(|p| !p.starts_with("host=") && !p.starts_with("sslmode="))
            .map(str::to_owned)
            .collect();
        parts.push(format!("host={host}"));
        parts.join(" ")
    }

    #[tokio::test]
    async fn the_connection_uses_tls_and_checks_the_server_certificate_when_a_ca_is_given() {
        let (ca, host) = server_certificate().await;
        let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        let connector = Connector::new(&conninfo_for(&host), &schema, Some(&ca)).unwrap();
        let client = connector.open().await.unwrap();
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(encrypted, "the session is encrypted");
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();

        // A CA that did not sign the server's certificate: no connection.
        let dir = tempfile::tempdir().unwrap();
        let other = crate::tls::devca::DevCa::new("Not the database's CA").unwrap();
        let other_pem = dir.path().join("other-ca.pem");
        std::fs::write(&other_pem, &other.cert_pem).unwrap();
        let connector = Connector::new(&conninfo_for(&host), &schema, Some(&other_pem)).unwrap();
        let err = connector.open().await.map(drop).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }

    #[test]
    fn only_loopback_servers_are_local() {
        assert!(local_only("host=127.0.0.1 user=x").unwrap());
        assert!(local_only("host=localhost user=x").unwrap());
        assert!(local_only("host=/var/run/postgresql user=x").unwrap());
        assert!(!local_only("host=db.example.nhs.uk user=x").unwrap());
        assert!(!local_only("host=127.0.0.1,10.0.0.5 user=x").unwrap());
        assert!(local_only("host='unterminated").is_err());
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("gateway_1"));
        assert!(!valid_schema("Gateway"));
        assert!(!valid_schema("x; DROP TABLE consent"));
        assert!(!valid_schema("1abc"));
    }
}
