//! Policy versions over their life: read from the configured files, stored, activated, rolled
//! back, and followed across replicas. The checks are pure (`policy::version`); this module
//! joins them to the store and to the gateway's active set.
//!
//! - At start, the configured files (the policy directory, or the embedded defaults) are
//!   compared with the newest version read from files; if they differ they become a new
//!   version and are activated. Otherwise the newest activation stands, so a version activated
//!   in the console survives a restart.
//! - A change of the files on disk does the same while running (`app::watch_policies`).
//! - Every replica reads the newest activation every `policy.poll_interval_ms` and applies it
//!   (PostgreSQL shares them; with SQLite only this process writes them).
//! - A request holds the set it started with: the set is swapped whole.

use std::sync::Arc;

use policy::version::{self, SourceFile};
use policy::{PolicyError, PolicySet};

use crate::app::{Gateway, StartError};
use crate::store::StoreError;
use crate::store::governance::{
    Activation, GovernanceStore, NewVersion, ORIGIN_FILES, PolicyVersion, files_digest,
};

/// The version applied in this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    /// The activation it came from (a rollback is a new activation of an old version).
    pub activation: i64,
}

/// The schema and the policy files the configuration names.
pub fn configured_files(
    directory: Option<&std::path::Path>,
) -> Result<(String, Vec<SourceFile>), PolicyError> {
    match directory {
        Some(dir) => {
            let schema_path = dir.join("schema.cedarschema");
            let schema = std::fs::read_to_string(&schema_path).map_err(|e| PolicyError::Read {
                path: schema_path.display().to_string(),
                message: e.to_string(),
            })?;
            Ok((schema, version::read_dir(dir)?))
        }
        None => {
            let mut files: Vec<SourceFile> = crate::access::embedded_policy_files()
                .into_iter()
                .map(|(name, text)| SourceFile { name, text })
                .collect();
            files.push(SourceFile {
                name: format!("{}default.json", version::TESTS_PREFIX),
                text: crate::access::EMBEDDED_CASES.to_owned(),
            });
            Ok((crate::access::EMBEDDED_SCHEMA.to_owned(), files))
        }
    }
}

fn now() -> String {
    crate::fhir::instant(time::OffsetDateTime::now_utc())
}

/// Stores the configured files as a new version and activates it, unless they are the newest
/// version read from files already. Files that do not pass their checks are refused.
pub async fn sync_files(
    store: &dyn GovernanceStore,
    schema: &str,
    files: &[SourceFile],
    source: &str,
) -> Result<Option<Activation>, StartError> {
    let digest = files_digest(files);
    let versions = store.versions().await?;
    let newest_from_files = versions.iter().find(|v| v.origin == ORIGIN_FILES);
    if newest_from_files.is_some_and(|v| v.digest == digest) {
        if store.activations().await?.is_empty() {
            // Stored but never activated (a start cut short): activate it now.
            let id = newest_from_files.map(|v| v.id).unwrap_or_default();
            return Ok(Some(
                store
                    .activate(id, "system", &now(), "the policy files")
                    .await?,
            ));
        }
        return Ok(None);
    }
    version::build(schema, files)?;
    let id = store
        .add_version(NewVersion {
            based_on: newest_from_files.map(|v| v.id),
            files: files.to_vec(),
            author: "system".into(),
            created_at: now(),
            comment: format!("read from {source}"),
            origin: ORIGIN_FILES.into(),
        })
        .await?;
    Ok(Some(
        store
            .activate(id, "system", &now(), "the policy files changed")
            .await?,
    ))
}

/// The newest activation and its version's set.
pub async fn load_active(
    store: &dyn GovernanceStore,
    schema: &str,
) -> Result<(PolicySet, Applied), StartError> {
    let activation = store
        .activations()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Unavailable("no policy version has been activated".into()))?;
    let v = store.version(activation.version).await?.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "activation {} names policy version {}, which is not stored",
            activation.seq, activation.version
        ))
    })?;
    let set = version::build(schema, &v.files)?;
    Ok((
        set,
        Applied {
            version: v.id,
            activation: activation.seq,
        },
    ))
}

/// Why an activation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("there is no policy version {0}")]
    NoSuchVersion(i64),
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Gateway {
    /// The version applied in this process.
    pub fn applied_policy(&self) -> Applied {
        self.applied
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn apply(&self, set: PolicySet, applied: Applied) {
        self.policies.store(Arc::new(set));
        match self.applied.lock() {
            Ok(mut a) => *a = applied,
            Err(p) => *p.into_inner() = applied,
        }
    }

    /// Tells every replica that the active version changed (they also poll for it).
    async fn announce_policy(&self) {
        if let Err(e) = self.announce(crate::store::changes::Change::Policy).await {
            tracing::warn!(error = %e, "could not announce a policy activation; other replicas apply it at their next poll");
        }
    }

    /// Activates a stored version (a rollback when it is an earlier one): it must pass its
    /// checks; it applies here at once, and on every other replica before its next answer.
    pub async fn activate_version(
        &self,
        id: i64,
        by: &str,
        reason: &str,
    ) -> Result<(Activation, usize), ActivateError> {
        let v: PolicyVersion = self
            .governance
            .version(id)
            .await?
            .ok_or(ActivateError::NoSuchVersion(id))?;
        let set = version::build(&self.policy_schema, &v.files)?;
        let n = set.policy_ids().len();
        let activation = self.governance.activate(id, by, &now(), reason).await?;
        self.apply(
            set,
            Applied {
                version: id,
                activation: activation.seq,
            },
        );
        tracing::info!(version = id, policies = n, "policy version activated");
        self.announce_policy().await;
        Ok((activation, n))
    }

    /// Reads the configured files again and activates them if they changed. Returns the
    /// number of policies active.
    pub async fn reload_policy_files(&self) -> Result<usize, StartError> {
        let (schema, files) = configured_files(self.config.policy.directory.as_deref())?;
        let source = self
            .config
            .policy
            .directory
            .as_ref()
            .map_or("the embedded policies".into(), |d| d.display().to_string());
        if sync_files(&*self.governance, &schema, &files, &source)
            .await?
            .is_some()
        {
            let (set, applied) = load_active(&*self.governance, &self.policy_schema).await?;
            self.apply(set, applied);
            self.announce_policy().await;
        }
        Ok(self.policies.load().policy_ids().len())
    }

    /// Applies the store's newest activation if it is not the one applied here (another
    /// replica activated a version). Returns the version newly applied.
    pub async fn follow_store(&self) -> Result<Option<Applied>, StartError> {
        let newest = self.governance.activations().await?.into_iter().next();
        let Some(newest) = newest else {
            return Ok(None);
        };
        if newest.seq == self.applied_policy().activation {
            return Ok(None);
        }
        let (set, applied) = load_active(&*self.governance, &self.policy_schema).await?;
        self.apply(set, applied.clone());
        Ok(Some(applied))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::governance::ORIGIN_CONSOLE;

    fn with_extra(rule: &str) -> Vec<SourceFile> {
        let (_, mut files) = configured_files(None).unwrap();
        files.push(SourceFile {
            name: "90-extra.cedar".into(),
            text: rule.into(),
        });
        files
    }

    #[tokio::test]
    async fn files_become_versions_and_a_console_activation_survives_a_restart() {
        let store = crate::store::SqliteStore::open_in_memory().unwrap();
        let (schema, files) = configured_files(None).unwrap();
        // First start: the files are version 1, active.
        let first = sync_files(&store, &schema, &files, "embedded")
            .await
            .unwrap();
        let v1 = first.expect("activated").version;
        assert_eq!(load_active(&store, &schema).await.unwrap().1.version, v1);
        // Governance staff activate a console version.
        let v2 = store
            .add_version(NewVersion {
                based_on: Some(v1),
                files: with_extra("@id(\"extra\")\nforbid (principal, action, resource) when { context.purpose_of_use == \"NEVER\" };\n"),
                author: "po1".into(),
                created_at: now(),
                comment: "console".into(),
                origin: ORIGIN_CONSOLE.into(),
            })
            .await
            .unwrap();
        store.activate(v2, "po1", &now(), "tighten").await.unwrap();
        // A restart with the same files keeps it.
        assert!(
            sync_files(&store, &schema, &files, "embedded")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(load_active(&store, &schema).await.unwrap().1.version, v2);
        // Changed files are a new version, and win.
        let changed = with_extra(
            "@id(\"other\")\nforbid (principal, action, resource) when { context.purpose_of_use == \"NONE\" };\n",
        );
        let v3 = sync_files(&store, &schema, &changed, "embedded")
            .await
            .unwrap()
            .expect("activated")
            .version;
        assert!(v3 > v2);
        assert_eq!(load_active(&store, &schema).await.unwrap().1.version, v3);
        // Files that do not pass their checks are refused; the active version stays.
        let broken = with_extra("@id(\"broken\")\nforbid (principal, action resource);\n");
        assert!(
            sync_files(&store, &schema, &broken, "embedded")
                .await
                .is_err()
        );
        assert_eq!(load_active(&store, &schema).await.unwrap().1.version, v3);
    }
}
