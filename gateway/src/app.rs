//! The gateway as one value: configuration, the local record, the peers, and the keys, built
//! from a [`Config`] at start. Building it is where an unreadable file stops the start.

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use crate::audit::{AuditEvent, AuditRecord, CheckpointClaims};
use crate::auth::{ClinicianVerifier, ForwardSigner, KeyError};
use crate::config::Config;
use crate::merge::RegionInfo;
use crate::peers::{Peer, PeerError};
use crate::record::RecordSource;
use crate::record::directory::{DirectoryRecord, LoadError};
use crate::record::fhir_server::FhirServerRecord;
use crate::store::StoreError;
use crate::store::audit::{AuditStore, StoredCheckpoint};
use crate::tls::identity::{CertIdentity, parse_certificate};
use crate::tls::{KeyMaterial, TlsError, load_certs, load_key_material};
use rustls::pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS material: {0}")]
    Tls(#[from] TlsError),
    #[error("record: {0}")]
    Record(#[from] LoadError),
    #[error("record server: {0}")]
    RecordServer(#[from] crate::record::RecordError),
    #[error("identity provider keys: {0}")]
    Keys(#[from] KeyError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Peer(#[from] PeerError),
    #[error("the client certificate {path} does not carry this region's identity {identity}")]
    WrongClientIdentity { path: String, identity: String },
    #[error("certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("policy: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// Everything a request handler needs.
pub struct Gateway {
    pub config: Config,
    pub region: RegionInfo,
    /// `urn:gateway:region:{code}`
    pub identity: String,
    pub local: Arc<dyn RecordSource>,
    pub peers: Vec<Peer>,
    pub verifier: ClinicianVerifier,
    /// The consent and role policy set; an invalid one stops the start (fail closed).
    /// Swapped whole on reload; a request holds the version it started with.
    pub policies: ArcSwap<policy::PolicySet>,
    /// Consent directives recorded through this gateway.
    pub consents: Arc<dyn crate::store::ConsentStore>,
    /// The tamper-evident audit trail; a record is written before any response leaves.
    pub audit: Arc<dyn AuditStore>,
    /// The sequence number of the last signed checkpoint.
    last_checkpoint: std::sync::atomic::AtomicU64,
    pub signer: ForwardSigner,
    pub server_keys: KeyMaterial,
    pub federation_ca: Vec<CertificateDer<'static>>,
}

impl Gateway {
    /// Loads every file the configuration names and builds the gateway.
    pub async fn from_config(config: Config) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let federation_ca = load_certs(&config.tls.ca)?;
        let server_keys = load_key_material(&config.tls.server_cert, &config.tls.server_key)?;
        let client_keys = load_key_material(&config.tls.client_cert, &config.tls.client_key)?;
        let identity = config.identity();
        let client_path = config.tls.client_cert.display().to_string();
        let client_id: CertIdentity =
            parse_certificate(client_keys.chain[0].as_ref()).map_err(|e| {
                StartError::Certificate {
                    path: client_path.clone(),
                    message: e.to_string(),
                }
            })?;
        if !client_id.has_identity(&identity) {
            return Err(StartError::WrongClientIdentity {
                path: client_path,
                identity,
            });
        }
        let signer = ForwardSigner::new(&identity, &client_keys.key_pem, &client_id.public_key)?;
        let verifier = load_verifier(&config)?;
        let (consents, audit) = open_stores(&config).await?;
        let policies = ArcSwap::from_pointee(match &config.policy.directory {
            Some(dir) => policy::PolicySet::load_checked(dir)?,
            None => crate::access::embedded_policy_set()?,
        });
        tracing::info!(policies = policies.load().policy_ids().len(), source = %config.policy.directory.as_ref().map_or("embedded".into(), |d| d.display().to_string()), "policy set loaded");
        let local: Arc<dyn RecordSource> =
            match (&config.record.directory, &config.record.fhir_base) {
                (Some(dir), _) => {
                    let record = DirectoryRecord::load(dir)?;
                    let (patients, items, skipped) = record.counts();
                    tracing::info!(
                        patients,
                        items,
                        skipped,
                        "loaded the regional record from a directory"
                    );
                    Arc::new(record)
                }
                (None, Some(base)) => Arc::new(FhirServerRecord::new(
                    base,
                    Duration::from_millis(config.record.timeout_ms),
                    config.limits.max_response_bytes,
                )?),
                (None, None) => unreachable!("validate() requires one record source"),
            };
        let peers = config
            .peers
            .iter()
            .map(|p| Peer::new(p, &federation_ca, &client_keys))
            .collect::<Result<Vec<_>, _>>()?;
        let region = RegionInfo {
            code: config.region.code.clone(),
            name: config.region.name.clone(),
            base_url: config.region.base_url.clone(),
        };
        Ok(Gateway {
            config,
            region,
            identity,
            local,
            peers,
            verifier,
            policies,
            consents,
            audit,
            last_checkpoint: std::sync::atomic::AtomicU64::new(0),
            signer,
            server_keys,
            federation_ca,
        })
    }

    /// Reloads the policy set from its directory. An invalid set (parse, schema or a failing
    /// test case) is refused and the active set stays; on success the new set applies to
    /// requests that start from now on. Returns the number of policies.
    pub fn reload_policies(&self) -> Result<usize, policy::PolicyError> {
        let Some(dir) = &self.config.policy.directory else {
            return Ok(self.policies.load().policy_ids().len());
        };
        let set = policy::PolicySet::load_checked(dir)?;
        let n = set.policy_ids().len();
        self.policies.store(Arc::new(set));
        Ok(n)
    }

    /// Writes an audit record and returns it once it is durable; signs a checkpoint when the
    /// trail reaches the next multiple of `audit.checkpoint_every`.
    pub async fn record(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        let r = self.audit.append(event).await?;
        let every = self.config.audit.checkpoint_every;
        if every > 0 && r.seq % every == 0 {
            if let Err(e) = self.checkpoint().await {
                tracing::error!(error = %e, "could not sign an audit checkpoint");
            }
        }
        Ok(r)
    }

    /// Signs a checkpoint of the trail's head, unless the last one already covers it. Stored
    /// with the trail and appended to `audit.checkpoint_file`.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointClaims>, StoreError> {
        use std::sync::atomic::Ordering;
        let Some((seq, hash)) = self.audit.head().await? else {
            return Ok(None);
        };
        if seq <= self.last_checkpoint.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let claims = CheckpointClaims {
            iss: self.identity.clone(),
            seq,
            hash,
            iat: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        let jws = self
            .signer
            .sign_claims(&claims)
            .map_err(|e| StoreError::Unavailable(format!("signing a checkpoint: {e}")))?;
        self.audit
            .put_checkpoint(StoredCheckpoint {
                seq,
                jws: jws.clone(),
            })
            .await?;
        if let Some(path) = &self.config.audit.checkpoint_file {
            append_line(path, &jws)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        }
        self.last_checkpoint.fetch_max(seq, Ordering::SeqCst);
        tracing::info!(seq, "audit checkpoint signed");
        Ok(Some(claims))
    }

    /// The local record's timeout within a fan-out.
    pub fn local_timeout(&self) -> Duration {
        Duration::from_millis(self.config.record.timeout_ms)
    }
}

/// Appends one line to a file and waits until it is on disk.
fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// Opens the consent and audit stores the configuration names (SQLite by default).
pub async fn open_stores(
    config: &Config,
) -> Result<(Arc<dyn crate::store::ConsentStore>, Arc<dyn AuditStore>), StoreError> {
    use crate::store::audit::SqliteAudit;
    use crate::store::postgres::{Connector, PostgresAudit, PostgresStore};
    let store = &config.store;
    Ok(match (&store.sqlite, &store.postgres) {
        (_, Some(conninfo)) => {
            let connector = Connector::new(
                conninfo,
                &store.postgres_schema,
                store.postgres_ca.as_deref(),
            )?;
            (
                Arc::new(PostgresStore::with(connector.clone()).await?),
                Arc::new(PostgresAudit::connect(connector).await?),
            )
        }
        (Some(path), None) => (
            Arc::new(crate::store::SqliteStore::open(path)?),
            Arc::new(SqliteAudit::open(path)?),
        ),
        (None, None) => (
            Arc::new(crate::store::SqliteStore::open_in_memory()?),
            Arc::new(SqliteAudit::open_in_memory()?),
        ),
    })
}

/// Signs a checkpoint every `audit.checkpoint_interval_s` while records are added, and a last
/// one when `stop` turns true.
pub async fn checkpoint_periodically(
    gateway: Arc<Gateway>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let secs = gateway.config.audit.checkpoint_interval_s;
    let period = if secs == 0 {
        None
    } else {
        Some(Duration::from_secs(secs))
    };
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = async {
                match period {
                    Some(p) => tokio::time::sleep(p).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if let Err(e) = gateway.checkpoint().await {
            tracing::error!(error = %e, "could not sign an audit checkpoint");
        }
    }
    if let Err(e) = gateway.checkpoint().await {
        tracing::error!(error = %e, "could not sign the final audit checkpoint");
    }
}

fn load_verifier(config: &Config) -> Result<ClinicianVerifier, StartError> {
    let auth = &config.auth;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|source| StartError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok(match (&auth.public_keys_pem, &auth.jwks) {
        (Some(pem), _) => ClinicianVerifier::from_pem(
            &auth.issuer,
            &auth.audience,
            &read(pem)?,
            &pem.display().to_string(),
        )?,
        (None, Some(jwks)) => ClinicianVerifier::from_jwks(
            &auth.issuer,
            &auth.audience,
            &read(jwks)?,
            &jwks.display().to_string(),
        )?,
        (None, None) => unreachable!("validate() requires one key source"),
    })
}

/// Reloads the policy set when its directory changes or on SIGHUP, until `stop` turns true.
/// Does nothing for the embedded set.
pub async fn watch_policies(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use notify::Watcher;
    let Some(dir) = gateway.config.policy.directory.clone() else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
            return watch_signal_only(gateway, stop).await;
        }
    };
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
    }
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            Some(()) = rx.recv() => {
                // An editor writes a file in several steps: wait for them to settle.
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = next_hangup(&mut hangup) => {}
        }
        reload_and_log(&gateway, &dir);
    }
}

async fn watch_signal_only(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(dir) = gateway.config.policy.directory.clone() else {
        return;
    };
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = next_hangup(&mut hangup) => reload_and_log(&gateway, &dir),
        }
    }
}

fn reload_and_log(gateway: &Gateway, dir: &std::path::Path) {
    match gateway.reload_policies() {
        Ok(n) => tracing::info!(policies = n, directory = %dir.display(), "policy set reloaded"),
        Err(e) => {
            tracing::error!(error = %e, directory = %dir.display(), "policy reload refused; the previous policy set stays active")
        }
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(unix)]
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) {
    std::future::pending().await
}
