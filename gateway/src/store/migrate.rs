//! Schema migrations for both stores: an ordered list of versions, each applied once, in a
//! transaction, and recorded in the store's `schema_migrations` table with a checksum of its
//! text. A store made before migrations existed (tables created with `IF NOT EXISTS`) takes
//! version 1 as it is, since version 1 is that very schema.
//!
//! Written here rather than taken from a crate: refinery 0.10 accepts rusqlite up to 0.41 and
//! rusqlite_migration 2.6 pins 0.40, while this workspace is on rusqlite 0.43 (two versions
//! cannot link the bundled SQLite together). The runner is small; the decision of what to
//! apply is [`plan`], a pure function.

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use super::StoreError;
use super::postgres::pg;

/// One version of the schema.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    /// `{s}` stands for the store's schema (a checked name).
    pub postgres: &'static str,
}

/// Every version, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "consent, audit trail, policy versions and break-glass reviews",
        sqlite: include_str!("migrations/sqlite/V1__baseline.sql"),
        postgres: include_str!("migrations/postgres/V1__baseline.sql"),
    },
    Migration {
        version: 2,
        name: "paging cursors shared by every replica",
        sqlite: include_str!("migrations/sqlite/V2__page_cursor.sql"),
        postgres: include_str!("migrations/postgres/V2__page_cursor.sql"),
    },
    Migration {
        version: 3,
        name: "the change log every replica follows",
        sqlite: include_str!("migrations/sqlite/V3__change_log.sql"),
        postgres: include_str!("migrations/postgres/V3__change_log.sql"),
    },
    Migration {
        version: 4,
        name: "each audit record's RESTful interaction, for the subtype search",
        sqlite: include_str!("migrations/sqlite/V4__audit_subtype.sql"),
        postgres: include_str!("migrations/postgres/V4__audit_subtype.sql"),
    },
];

/// The checksum recorded for a migration's text.
pub fn checksum(sql: &str) -> String {
    crate::audit::hex(&Sha256::digest(sql.as_bytes()))
}

/// What to apply to a store that has `applied` (version and checksum), given `known`: the
/// versions it lacks, in order. A store that has a version this binary does not know (made by
/// a newer gateway), or whose recorded text differs from the binary's (a migration edited
/// after release), is refused: nothing is guessed about a schema.
pub fn plan<'a>(
    applied: &[(i64, String)],
    known: &'a [Migration],
    text: impl Fn(&Migration) -> &str,
) -> Result<Vec<&'a Migration>, StoreError> {
    for (version, sum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None => {
                return Err(StoreError::Config(format!(
                    "the store's schema is at version {version}, which this gateway does not know \
                     (its newest is {}): run a gateway at least as new as the one that upgraded it",
                    known.last().map_or(0, |m| m.version)
                )));
            }
            Some(m) if checksum(text(m)) != *sum => {
                return Err(StoreError::Config(format!(
                    "schema version {version} ({}) was applied from a different text than this \
                     gateway's",
                    m.name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}

fn now() -> String {
    crate::fhir::instant(time::OffsetDateTime::now_utc())
}

/// Brings a SQLite store up to date, in one immediate transaction (so two connections opening
/// the same file apply each version once). Returns the versions applied.
pub fn sqlite(conn: &Connection) -> Result<Vec<i64>, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 checksum   TEXT NOT NULL,
                 applied_at TEXT NOT NULL
             )",
        )?;
        let applied: Vec<(i64, String)> = conn
            .prepare("SELECT version, checksum FROM schema_migrations ORDER BY version")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut done = Vec::new();
        for m in plan(&applied, MIGRATIONS, |m| m.sqlite)? {
            conn.execute_batch(m.sqlite)?;
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                params![m.version, m.name, checksum(m.sqlite), now()],
            )?;
            done.push(m.version);
        }
        Ok(done)
    })();
    match &result {
        Ok(_) => conn.execute_batch("COMMIT")?,
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    result
}

/// Brings a PostgreSQL store (schema `s`, a checked name) up to date, in one transaction under
/// an advisory lock, so that replicas starting together apply each version once. Returns the
/// versions applied.
pub async fn postgres(
    client: &mut tokio_postgres::Client,
    s: &str,
) -> Result<Vec<i64>, StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('gateway schema {s}'));
         CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             checksum   TEXT NOT NULL,
             applied_at TEXT NOT NULL
         );"
    ))
    .await
    .map_err(pg)?;
    let applied: Vec<(i64, String)> = tx
        .query(
            &format!("SELECT version, checksum FROM {s}.schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut done = Vec::new();
    for m in plan(&applied, MIGRATIONS, |m| m.postgres)? {
        tx.batch_execute(&m.postgres.replace("{s}", s))
            .await
            .map_err(pg)?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)"
            ),
            &[&m.version, &m.name, &checksum(m.postgres), &now()],
        )
        .await
        .map_err(pg)?;
        done.push(m.version);
    }
    tx.commit().await.map_err(pg)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_in_order_and_each_has_both_texts() {
        for pair in MIGRATIONS.windows(2) {
            assert_eq!(pair[1].version, pair[0].version + 1);
        }
        for m in MIGRATIONS {
            assert!(!m.sqlite.trim().is_empty() && m.postgres.contains("{s}."));
        }
    }

    #[test]
    fn a_store_takes_the_versions_it_lacks_and_refuses_what_it_cannot_know() {
        let sum = |v: usize| checksum(MIGRATIONS[v].sqlite);
        let pending = |applied: &[(i64, String)]| {
            plan(applied, MIGRATIONS, |m| m.sqlite)
                .map(|p| p.iter().map(|m| m.version).collect::<Vec<_>>())
        };
        assert_eq!(pending(&[]).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(pending(&[(1, sum(0))]).unwrap(), vec![2, 3, 4]);
        assert!(
            pending(&[(1, sum(0)), (2, sum(1)), (3, sum(2)), (4, sum(3))])
                .unwrap()
                .is_empty()
        );
        let newer = pending(&[(1, sum(0)), (9, "x".into())]).unwrap_err();
        assert!(newer.to_string().contains("version 9"), "{newer}");
        let edited = pending(&[(1, "not the text".into())]).unwrap_err();
        assert!(edited.to_string().contains("different text"), "{edited}");
    }

    /// Today's schema before migrations: what `SqliteStore::open` made until version 2.
    const UNVERSIONED: &str = include_str!("migrations/sqlite/V1__baseline.sql");

    #[tokio::test]
    async fn a_sqlite_store_made_before_migrations_is_upgraded_with_its_data_intact() {
        use crate::store::ConsentStore;
        use crate::store::cursors::CursorStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(UNVERSIONED).unwrap();
            conn.execute(
                "INSERT INTO consent (id, nhs, version, resource, recorded_by, recorded_at)
                 VALUES ('c1', '9000000009', 3, '{\"resourceType\":\"Consent\",\"id\":\"c1\"}', 'po', '2026-01-01T00:00:00Z')",
                [],
            )
            .unwrap();
            assert!(
                conn.prepare("SELECT 1 FROM schema_migrations").is_err(),
                "no versions recorded yet"
            );
        }
        let store = crate::store::SqliteStore::open(&path).unwrap();
        let c = store.get("c1").await.unwrap().unwrap();
        assert_eq!((c.version, c.nhs.as_str()), (3, "9000000009"));
        // Version 2's table is there.
        assert!(store.cursor("x", 0).await.unwrap().is_none());
        let conn = Connection::open(&path).unwrap();
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, vec![1, 2, 3, 4]);
        // Opening again applies nothing.
        assert!(sqlite(&conn).unwrap().is_empty());
    }
}
