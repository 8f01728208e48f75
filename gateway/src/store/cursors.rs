//! Paging cursors, kept in the region's store so that every replica serves every `next` link
//! (see [`crate::pipeline::paging`]). A cursor holds what any replica needs to make its pages
//! again under the rules in force when a page is asked for: who asked, what, and the order of
//! the matches when the query ran.

use futures::future::BoxFuture;
use rusqlite::{OptionalExtension, params};

use super::postgres::{PostgresStore, pg};
use super::{SqliteStore, StoreError};

/// A stored cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCursor {
    /// 32 hexadecimal digits, random.
    pub id: String,
    /// Who may read it: user id, role, organisation, purpose of use.
    pub user_id: String,
    pub role: String,
    pub organisation: String,
    pub purpose: String,
    /// The patient's NHS number.
    pub nhs: String,
    /// The request as asked: its path under the FHIR base and its raw query.
    pub path: String,
    pub query: String,
    pub lenient: bool,
    /// Matches a page.
    pub count: i64,
    /// The Bundle id of the first page (later pages are `{bundle_id}-{offset}`).
    pub bundle_id: String,
    /// The matches' addresses under the FHIR base, in the order the query gave them.
    pub members: Vec<String>,
    /// Unix seconds after which the cursor is gone.
    pub expires_at: i64,
}

/// Cursors any replica can read.
pub trait CursorStore: Send + Sync {
    /// Stores a cursor, and drops those that expired before `now`.
    fn put_cursor(&self, cursor: StoredCursor, now: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The cursor `id`, unless it expired before `now`.
    fn cursor<'a>(
        &'a self,
        id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Option<StoredCursor>, StoreError>>;
}

const COLUMNS: &str = "id, user_id, role, organisation, purpose, nhs, path, query, lenient, count, bundle_id, members, expires_at";

/// Members are kept one a line (an address holds no line break).
fn join_members(members: &[String]) -> String {
    members.join("\n")
}

fn split_members(text: &str) -> Vec<String> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').map(str::to_owned).collect()
    }
}

impl CursorStore for SqliteStore {
    fn put_cursor(&self, c: StoredCursor, now: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.prepare_cached("DELETE FROM page_cursor WHERE expires_at < ?1")?
                .execute(params![now])?;
            tx.prepare_cached(&format!(
                "INSERT INTO page_cursor ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))?
            .execute(params![
                c.id,
                c.user_id,
                c.role,
                c.organisation,
                c.purpose,
                c.nhs,
                c.path,
                c.query,
                c.lenient,
                c.count,
                c.bundle_id,
                join_members(&c.members),
                c.expires_at
            ])?;
            tx.commit()?;
            Ok(())
        }))
    }

    fn cursor<'a>(
        &'a self,
        id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Option<StoredCursor>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.with(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM page_cursor WHERE id = ?1 AND expires_at >= ?2"
                ))?
                .query_row(params![id, now], |r| {
                    Ok(StoredCursor {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        role: r.get(2)?,
                        organisation: r.get(3)?,
                        purpose: r.get(4)?,
                        nhs: r.get(5)?,
                        path: r.get(6)?,
                        query: r.get(7)?,
                        lenient: r.get(8)?,
                        count: r.get(9)?,
                        bundle_id: r.get(10)?,
                        members: split_members(&r.get::<_, String>(11)?),
                        expires_at: r.get(12)?,
                    })
                })
                .optional()?)
        }))
    }
}

impl CursorStore for PostgresStore {
    fn put_cursor(&self, c: StoredCursor, now: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let s = self.schema();
            let tx = client.transaction().await.map_err(pg)?;
            let purge = tx
                .prepare_cached(&format!(
                    "DELETE FROM {s}.page_cursor WHERE expires_at < $1"
                ))
                .await
                .map_err(pg)?;
            tx.execute(&purge, &[&now]).await.map_err(pg)?;
            let insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO {s}.page_cursor ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ))
                .await
                .map_err(pg)?;
            tx.execute(
                &insert,
                &[
                    &c.id,
                    &c.user_id,
                    &c.role,
                    &c.organisation,
                    &c.purpose,
                    &c.nhs,
                    &c.path,
                    &c.query,
                    &c.lenient,
                    &c.count,
                    &c.bundle_id,
                    &join_members(&c.members),
                    &c.expires_at,
                ],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
    }

    fn cursor<'a>(
        &'a self,
        id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Option<StoredCursor>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let st = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM {}.page_cursor WHERE id = $1 AND expires_at >= $2",
                    self.schema()
                ))
                .await
                .map_err(pg)?;
            Ok(client
                .query_opt(&st, &[&id, &now])
                .await
                .map_err(pg)?
                .map(|r| StoredCursor {
                    id: r.get(0),
                    user_id: r.get(1),
                    role: r.get(2),
                    organisation: r.get(3),
                    purpose: r.get(4),
                    nhs: r.get(5),
                    path: r.get(6),
                    query: r.get(7),
                    lenient: r.get(8),
                    count: r.get(9),
                    bundle_id: r.get(10),
                    members: split_members(r.get(11)),
                    expires_at: r.get(12),
                }))
        })
    }
}

/// The suite every cursor store must pass.
#[cfg(test)]
pub(crate) async fn shared_suite(store: &dyn CursorStore) {
    let stamp = uuid::Uuid::new_v4().simple().to_string();
    let cursor = |id: &str, expires_at: i64, members: Vec<String>| StoredCursor {
        id: id.to_owned(),
        user_id: "u-1".into(),
        role: "R8000".into(),
        organisation: "RBD".into(),
        purpose: "TREAT".into(),
        nhs: "9000000009".into(),
        path: "/Patient/9000000009/$everything".into(),
        query: "_count=5&_type=Observation".into(),
        lenient: true,
        count: 5,
        bundle_id: "req-1".into(),
        members,
        expires_at,
    };
    let (a, b, c) = (
        format!("a{stamp}"),
        format!("b{stamp}"),
        format!("c{stamp}"),
    );
    let members: Vec<String> = (0..3000)
        .map(|i| format!("Observation/dorset.obs-{i}"))
        .collect();
    store
        .put_cursor(cursor(&a, 1_000, members.clone()), 500)
        .await
        .unwrap();
    store
        .put_cursor(cursor(&b, 600, vec![]), 500)
        .await
        .unwrap();
    let got = store.cursor(&a, 900).await.unwrap().unwrap();
    assert_eq!(got, cursor(&a, 1_000, members), "every member, in order");
    assert_eq!(
        store.cursor(&b, 600).await.unwrap().unwrap().members,
        Vec::<String>::new()
    );
    assert!(store.cursor(&a, 1_001).await.unwrap().is_none(), "expired");
    assert!(store.cursor("nope", 0).await.unwrap().is_none());
    // Storing another one drops the expired.
    store
        .put_cursor(cursor(&c, 2_000, vec![]), 700)
        .await
        .unwrap();
    assert!(store.cursor(&b, 0).await.unwrap().is_none(), "purged");
    assert!(store.cursor(&a, 0).await.unwrap().is_some());
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_passes_the_cursor_suite() {
        let dir = tempfile::tempdir().unwrap();
        super::shared_suite(&super::SqliteStore::open(&dir.path().join("c.sqlite")).unwrap()).await;
    }
}
