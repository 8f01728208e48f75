//! The PostgreSQL store, for several replicas of one region. Tables live in a schema of their
//! own (`store.postgres_schema`), created on first connection. The connection is re-opened
//! when the server drops it.

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{ConsentStore, StoreError, StoredConsent};

pub struct PostgresStore {
    conninfo: String,
    schema: String,
    client: Mutex<Option<Client>>,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // The server's own message (without parameters, which may hold patient data).
    StoreError::Postgres(
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
    )
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

impl PostgresStore {
    /// Connects and creates the schema and tables if they do not exist.
    pub async fn connect(conninfo: &str, schema: &str) -> Result<Self, StoreError> {
        if !valid_schema(schema) {
            return Err(StoreError::Config(format!(
                "'{schema}' is not a valid schema name (lower-case letters, digits, '_')"
            )));
        }
        let store = PostgresStore {
            conninfo: conninfo.to_owned(),
            schema: schema.to_owned(),
            client: Mutex::new(None),
        };
        drop(store.client().await?);
        Ok(store)
    }

    async fn open(&self) -> Result<Client, StoreError> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo, NoTls)
            .await
            .map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        let s = &self.schema;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.consent (
                     seq         BIGSERIAL,
                     id          TEXT PRIMARY KEY,
                     nhs         TEXT NOT NULL,
                     version     BIGINT NOT NULL,
                     resource    JSONB NOT NULL,
                     recorded_by TEXT NOT NULL,
                     recorded_at TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS consent_by_patient ON {s}.consent (nhs);"
            ))
            .await
            .map_err(pg)?;
        Ok(client)
    }

    /// The live client, reconnecting if the last one was closed.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.open().await?);
        }
        Ok(guard)
    }

    /// Drops the schema and everything in it (tests clean up with it).
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected");
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
            let guard = self.client().await?;
            let client = guard.as_ref().expect("connected");
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
            let guard = self.client().await?;
            let client = guard.as_ref().expect("connected");
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
            let guard = self.client().await?;
            let client = guard.as_ref().expect("connected");
            let sql = format!(
                "SELECT id, nhs, version, resource, recorded_by, recorded_at FROM {}.consent WHERE nhs = $1 ORDER BY seq",
                self.schema
            );
            Ok(client
                .query(&sql, &[&nhs])
                .await
                .map_err(pg)?
                .iter()
                .map(from_row)
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

    #[tokio::test]
    async fn postgres_passes_the_shared_suite() {
        let schema = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        let store = PostgresStore::connect(&test_conninfo(), &schema)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must be reachable for this test (set GATEWAY_TEST_POSTGRES): {e}"
                )
            });
        super::super::shared_suite(&store).await;
        store.drop_schema().await.unwrap();
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("gateway_1"));
        assert!(!valid_schema("Gateway"));
        assert!(!valid_schema("x; DROP TABLE consent"));
        assert!(!valid_schema("1abc"));
    }
}
