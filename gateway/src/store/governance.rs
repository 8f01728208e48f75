//! What governance staff keep in the store: policy versions (the text of every version ever
//! proposed, who made it and why), activations (which version applied from when, who chose
//! it and why; the newest is the active one), and reviews of break-glass accesses.
//!
//! Versions and activations are only ever added: a rollback is a new activation of an
//! earlier version, so the history stays whole. With PostgreSQL every replica of a region
//! reads the same activations and applies the newest one (see [`crate::replicas`]).

use futures::future::BoxFuture;
use policy::version::SourceFile;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::postgres::{PostgresStore, pg};
use super::{SqliteStore, StoreError};

/// Where a version's text came from.
pub const ORIGIN_FILES: &str = "files";
pub const ORIGIN_CONSOLE: &str = "console";

/// A stored policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyVersion {
    pub id: i64,
    /// The version it was edited from.
    pub based_on: Option<i64>,
    pub files: Vec<SourceFile>,
    /// SHA-256 of the files (see [`files_digest`]).
    pub digest: String,
    pub author: String,
    pub created_at: String,
    pub comment: String,
    /// [`ORIGIN_FILES`] (read from the policy directory) or [`ORIGIN_CONSOLE`].
    pub origin: String,
}

/// A version to add.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub based_on: Option<i64>,
    pub files: Vec<SourceFile>,
    pub author: String,
    pub created_at: String,
    pub comment: String,
    pub origin: String,
}

/// One activation: from `activated_at`, `version` applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Activation {
    pub seq: i64,
    pub version: i64,
    pub activated_by: String,
    pub activated_at: String,
    pub reason: String,
}

/// A break-glass access reviewed by governance staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    /// The access's audit record.
    pub audit_seq: u64,
    pub reviewer: String,
    pub reviewed_at: String,
    pub note: String,
}

/// SHA-256 over a version's files (name and text, in the order given).
pub fn files_digest(files: &[SourceFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    crate::audit::hex(&h.finalize())
}

pub trait GovernanceStore: Send + Sync {
    /// Adds a version and returns its id.
    fn add_version(&self, v: NewVersion) -> BoxFuture<'_, Result<i64, StoreError>>;
    fn version(&self, id: i64) -> BoxFuture<'_, Result<Option<PolicyVersion>, StoreError>>;
    /// Every version, newest first.
    fn versions(&self) -> BoxFuture<'_, Result<Vec<PolicyVersion>, StoreError>>;
    /// Makes `version` the active one. Refused (`Unavailable`) when there is no such version.
    fn activate<'a>(
        &'a self,
        version: i64,
        by: &'a str,
        at: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Activation, StoreError>>;
    /// Every activation, newest (the active one) first.
    fn activations(&self) -> BoxFuture<'_, Result<Vec<Activation>, StoreError>>;
    /// Records a review; `false` when the access had been reviewed already (the first stays).
    fn review(&self, r: Review) -> BoxFuture<'_, Result<bool, StoreError>>;
    fn reviews(&self) -> BoxFuture<'_, Result<Vec<Review>, StoreError>>;
}

fn files_json(files: &[SourceFile]) -> String {
    serde_json::to_string(files).unwrap_or_else(|_| "[]".into())
}

fn parse_files(text: &str) -> Result<Vec<SourceFile>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

const VERSION_COLUMNS: &str = "id, based_on, files, digest, author, created_at, comment, origin";
const ACTIVATION_COLUMNS: &str = "seq, version, activated_by, activated_at, reason";
const REVIEW_COLUMNS: &str = "audit_seq, reviewer, reviewed_at, note";

type VersionRow = (
    i64,
    Option<i64>,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn version_of(r: VersionRow) -> Result<PolicyVersion, StoreError> {
    Ok(PolicyVersion {
        id: r.0,
        based_on: r.1,
        files: parse_files(&r.2)?,
        digest: r.3,
        author: r.4,
        created_at: r.5,
        comment: r.6,
        origin: r.7,
    })
}

fn sqlite_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn sqlite_activation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Activation> {
    Ok(Activation {
        seq: r.get(0)?,
        version: r.get(1)?,
        activated_by: r.get(2)?,
        activated_at: r.get(3)?,
        reason: r.get(4)?,
    })
}

fn sqlite_review(r: &rusqlite::Row<'_>) -> rusqlite::Result<Review> {
    Ok(Review {
        audit_seq: r.get::<_, i64>(0)? as u64,
        reviewer: r.get(1)?,
        reviewed_at: r.get(2)?,
        note: r.get(3)?,
    })
}

impl GovernanceStore for SqliteStore {
    fn add_version(&self, v: NewVersion) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(self.with(move |c| {
            c.execute(
                "INSERT INTO policy_version (based_on, files, digest, author, created_at, comment, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    v.based_on,
                    files_json(&v.files),
                    files_digest(&v.files),
                    v.author,
                    v.created_at,
                    v.comment,
                    v.origin
                ],
            )?;
            Ok(c.last_insert_rowid())
        }))
    }

    fn version(&self, id: i64) -> BoxFuture<'_, Result<Option<PolicyVersion>, StoreError>> {
        Box::pin(self.with(move |c| {
            c.query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM policy_version WHERE id = ?1"),
                [id],
                sqlite_version,
            )
            .optional()?
            .map(version_of)
            .transpose()
        }))
    }

    fn versions(&self) -> BoxFuture<'_, Result<Vec<PolicyVersion>, StoreError>> {
        Box::pin(async move {
            self.rows(
                format!("SELECT {VERSION_COLUMNS} FROM policy_version ORDER BY id DESC"),
                sqlite_version,
            )
            .await?
            .into_iter()
            .map(version_of)
            .collect()
        })
    }

    fn activate<'a>(
        &'a self,
        version: i64,
        by: &'a str,
        at: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Activation, StoreError>> {
        let (by, at, reason) = (by.to_owned(), at.to_owned(), reason.to_owned());
        Box::pin(self.with(move |c| {
            let exists: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM policy_version WHERE id = ?1)",
                [version],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(StoreError::Unavailable(format!(
                    "there is no policy version {version}"
                )));
            }
            c.execute(
                "INSERT INTO policy_activation (version, activated_by, activated_at, reason) VALUES (?1, ?2, ?3, ?4)",
                params![version, by, at, reason],
            )?;
            Ok(Activation {
                seq: c.last_insert_rowid(),
                version,
                activated_by: by,
                activated_at: at,
                reason,
            })
        }))
    }

    fn activations(&self) -> BoxFuture<'_, Result<Vec<Activation>, StoreError>> {
        Box::pin(self.rows(
            format!("SELECT {ACTIVATION_COLUMNS} FROM policy_activation ORDER BY seq DESC"),
            sqlite_activation,
        ))
    }

    fn review(&self, r: Review) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.with(move |c| {
            let n = c.execute(
                "INSERT INTO break_glass_review (audit_seq, reviewer, reviewed_at, note) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (audit_seq) DO NOTHING",
                params![r.audit_seq as i64, r.reviewer, r.reviewed_at, r.note],
            )?;
            Ok(n == 1)
        }))
    }

    fn reviews(&self) -> BoxFuture<'_, Result<Vec<Review>, StoreError>> {
        Box::pin(self.rows(
            format!("SELECT {REVIEW_COLUMNS} FROM break_glass_review ORDER BY audit_seq DESC"),
            sqlite_review,
        ))
    }
}

fn pg_version(r: &tokio_postgres::Row) -> Result<PolicyVersion, StoreError> {
    version_of((
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
    ))
}

fn pg_activation(r: &tokio_postgres::Row) -> Activation {
    Activation {
        seq: r.get(0),
        version: r.get(1),
        activated_by: r.get(2),
        activated_at: r.get(3),
        reason: r.get(4),
    }
}

impl GovernanceStore for PostgresStore {
    fn add_version(&self, v: NewVersion) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "INSERT INTO {}.policy_version (based_on, files, digest, author, created_at, comment, origin)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                self.schema()
            );
            let row = client
                .query_one(
                    &sql,
                    &[
                        &v.based_on,
                        &files_json(&v.files),
                        &files_digest(&v.files),
                        &v.author,
                        &v.created_at,
                        &v.comment,
                        &v.origin,
                    ],
                )
                .await
                .map_err(pg)?;
            Ok(row.get(0))
        })
    }

    fn version(&self, id: i64) -> BoxFuture<'_, Result<Option<PolicyVersion>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM {}.policy_version WHERE id = $1",
                self.schema()
            );
            client
                .query_opt(&sql, &[&id])
                .await
                .map_err(pg)?
                .as_ref()
                .map(pg_version)
                .transpose()
        })
    }

    fn versions(&self) -> BoxFuture<'_, Result<Vec<PolicyVersion>, StoreError>> {
        Box::pin(async move {
            self.rows(
                &format!("SELECT {VERSION_COLUMNS} FROM {{s}}.policy_version ORDER BY id DESC"),
                pg_version,
            )
            .await?
            .into_iter()
            .collect()
        })
    }

    fn activate<'a>(
        &'a self,
        version: i64,
        by: &'a str,
        at: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Activation, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "INSERT INTO {s}.policy_activation (version, activated_by, activated_at, reason)
                 SELECT id, $2, $3, $4 FROM {s}.policy_version WHERE id = $1 RETURNING seq",
                s = self.schema()
            );
            let row = client
                .query_opt(&sql, &[&version, &by, &at, &reason])
                .await
                .map_err(pg)?
                .ok_or_else(|| {
                    StoreError::Unavailable(format!("there is no policy version {version}"))
                })?;
            Ok(Activation {
                seq: row.get(0),
                version,
                activated_by: by.to_owned(),
                activated_at: at.to_owned(),
                reason: reason.to_owned(),
            })
        })
    }

    fn activations(&self) -> BoxFuture<'_, Result<Vec<Activation>, StoreError>> {
        Box::pin(async move {
            self.rows(
                &format!(
                    "SELECT {ACTIVATION_COLUMNS} FROM {{s}}.policy_activation ORDER BY seq DESC"
                ),
                pg_activation,
            )
            .await
        })
    }

    fn review(&self, r: Review) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "INSERT INTO {}.break_glass_review (audit_seq, reviewer, reviewed_at, note) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (audit_seq) DO NOTHING",
                self.schema()
            );
            let n = client
                .execute(
                    &sql,
                    &[&(r.audit_seq as i64), &r.reviewer, &r.reviewed_at, &r.note],
                )
                .await
                .map_err(pg)?;
            Ok(n == 1)
        })
    }

    fn reviews(&self) -> BoxFuture<'_, Result<Vec<Review>, StoreError>> {
        Box::pin(async move {
            self.rows(
                &format!(
                    "SELECT {REVIEW_COLUMNS} FROM {{s}}.break_glass_review ORDER BY audit_seq DESC"
                ),
                |r| Review {
                    audit_seq: r.get::<_, i64>(0) as u64,
                    reviewer: r.get(1),
                    reviewed_at: r.get(2),
                    note: r.get(3),
                },
            )
            .await
        })
    }
}

/// The suite every governance store must pass.
#[cfg(test)]
pub(crate) async fn governance_suite(store: &dyn GovernanceStore) {
    let file = |t: &str| SourceFile {
        name: "10-a.cedar".into(),
        text: t.into(),
    };
    assert!(store.versions().await.unwrap().is_empty());
    assert!(store.activations().await.unwrap().is_empty());
    let v1 = store
        .add_version(NewVersion {
            based_on: None,
            files: vec![file("one")],
            author: "system".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            comment: "from files".into(),
            origin: ORIGIN_FILES.into(),
        })
        .await
        .unwrap();
    let v2 = store
        .add_version(NewVersion {
            based_on: Some(v1),
            files: vec![file("two"), file("two b")],
            author: "po1".into(),
            created_at: "2026-01-02T00:00:00Z".into(),
            comment: "tighten".into(),
            origin: ORIGIN_CONSOLE.into(),
        })
        .await
        .unwrap();
    assert!(v2 > v1);
    let got = store.version(v2).await.unwrap().unwrap();
    assert_eq!(got.based_on, Some(v1));
    assert_eq!(got.files.len(), 2);
    assert_eq!(got.files[1].text, "two b");
    assert_eq!(got.digest, files_digest(&got.files));
    assert_ne!(got.digest, store.version(v1).await.unwrap().unwrap().digest);
    assert_eq!(got.origin, ORIGIN_CONSOLE);
    assert!(store.version(v2 + 100).await.unwrap().is_none());
    let ids: Vec<i64> = store
        .versions()
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, [v2, v1], "newest first");

    let a1 = store.activate(v1, "system", "t1", "start").await.unwrap();
    let a2 = store.activate(v2, "po1", "t2", "tighten").await.unwrap();
    let back = store.activate(v1, "po1", "t3", "roll back").await.unwrap();
    assert!(a1.seq < a2.seq && a2.seq < back.seq);
    let all = store.activations().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], back, "the newest is the active one");
    assert_eq!(all[0].version, v1);
    assert!(matches!(
        store.activate(v2 + 100, "po1", "t4", "x").await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(store.activations().await.unwrap().len(), 3);

    let review = |seq: u64, who: &str| Review {
        audit_seq: seq,
        reviewer: who.into(),
        reviewed_at: "t5".into(),
        note: "justified".into(),
    };
    assert!(store.review(review(7, "cg1")).await.unwrap());
    assert!(
        !store.review(review(7, "cg2")).await.unwrap(),
        "reviewed once"
    );
    assert!(store.review(review(9, "cg2")).await.unwrap());
    let reviews = store.reviews().await.unwrap();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[1], review(7, "cg1"), "the first review stays");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_passes_the_governance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(&dir.path().join("g.sqlite")).unwrap();
        super::governance_suite(&store).await;
    }
}
