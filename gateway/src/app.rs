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
use crate::record::fhir_server::{FhirServerRecord, ServerSettings};
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
    #[error(
        "audit.checkpoint_file {path} cannot be written ({source}); put it on a writable volume"
    )]
    CheckpointFile {
        path: String,
        source: std::io::Error,
    },
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
    /// Spans over OTLP, when an endpoint is configured.
    pub telemetry: crate::telemetry::Telemetry,
    /// Fetches the identity provider's keys again, when they come by discovery.
    pub key_fetcher: Option<Arc<crate::auth::discovery::KeyFetcher>>,
    /// The consent and role policy set; an invalid one stops the start (fail closed).
    /// Swapped whole on reload; a request holds the version it started with.
    pub policies: ArcSwap<policy::PolicySet>,
    /// Consent directives recorded through this gateway.
    pub consents: Arc<dyn crate::store::ConsentStore>,
    /// Policy versions, activations and break-glass reviews.
    pub governance: Arc<dyn crate::store::governance::GovernanceStore>,
    /// The Cedar schema every version is checked against.
    pub policy_schema: String,
    /// The version applied in this process.
    pub(crate) applied: std::sync::Mutex<crate::governance::Applied>,
    /// Paging cursors, shared by every replica of the region.
    pub cursors: Arc<dyn crate::store::cursors::CursorStore>,
    /// The change log every replica follows ([`crate::replicas`]), and the newest change
    /// applied here.
    pub changes: Arc<dyn crate::store::changes::ChangeStore>,
    pub(crate) changes_seen: std::sync::atomic::AtomicI64,
    /// Merged results kept for paging (`next` links), in this replica.
    pub pages: crate::pipeline::paging::PageCache,
    /// Load shedding and rate limits.
    pub guard: crate::api::guard::Guard,
    /// Operational metrics (served on the operations listener).
    pub metrics: crate::metrics::Metrics,

    /// Requests being handled, both faces.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Each face's connection counts.
    pub connections: FacesStats,
    /// Refusals counted since the last were recorded ([`crate::audit::refusals`]).
    pub refusals: crate::audit::refusals::RefusalLedger,
    /// Regions' answers (None when `cache.enabled` is false).
    pub cache: Option<crate::cache::ResponseCache>,
    /// The tamper-evident audit trail; a record is written before any response leaves.
    pub audit: Arc<dyn AuditStore>,
    /// The sequence number of the last signed checkpoint.
    last_checkpoint: std::sync::atomic::AtomicU64,
    /// Certificates, keys and what is built from them; swapped whole on reload.
    pub tls: ArcSwap<TlsState>,
}

/// Each face's connection counts (see [`crate::connection`]).
#[derive(Debug, Default)]
pub struct FacesStats {
    pub clinician: Arc<crate::connection::FaceStats>,
    pub federation: Arc<crate::connection::FaceStats>,
}

impl Gateway {
    /// What a face's connections are allowed, counted in `stats`.
    pub fn connection_limits(
        &self,
        stats: &Arc<crate::connection::FaceStats>,
    ) -> crate::connection::ConnectionLimits {
        crate::connection::ConnectionLimits {
            idle_timeout: Duration::from_millis(self.config.limits.idle_timeout_ms),
            max_connections: self.config.limits.max_connections,
            stats: stats.clone(),
        }
    }
}

/// The TLS files, read and checked.
pub struct TlsMaterial {
    pub federation_ca: Vec<CertificateDer<'static>>,
    pub crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    pub server_keys: KeyMaterial,
    pub client_keys: KeyMaterial,
    pub client_id: CertIdentity,
}

impl TlsMaterial {
    /// Reads every TLS file the configuration names; the client certificate must carry this
    /// region's identity.
    pub fn load(config: &Config) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let federation_ca = load_certs(&config.tls.ca)?;
        let crls = crate::tls::load_crls(&config.tls.crls)?;
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
        Ok(TlsMaterial {
            federation_ca,
            crls,
            server_keys,
            client_keys,
            client_id,
        })
    }
}

/// What the listeners and the fan-out use, built from [`TlsMaterial`].
pub struct TlsState {
    pub clinician: Arc<rustls::ServerConfig>,
    pub federation: Arc<rustls::ServerConfig>,
    /// Signs forwarded user context and audit checkpoints with the client certificate's key.
    pub signer: ForwardSigner,
    /// The expiry (`notAfter`) of each certificate, by name.
    pub expiry: Vec<(String, time::OffsetDateTime)>,
    /// (issuer, serial) of every certificate the CRLs revoke: checked on each federation
    /// request too, so a connection opened before a revocation is refused from then on.
    pub revoked: std::collections::HashSet<(String, Vec<u8>)>,
}

impl TlsState {
    /// Why a peer's certificate is no longer acceptable (revoked, or expired since the
    /// connection was made), if it is not.
    pub fn refuse(&self, cert: &CertIdentity, now: i64) -> Option<&'static str> {
        if self
            .revoked
            .contains(&(cert.issuer.clone(), cert.serial.clone()))
        {
            Some("the certificate has been revoked")
        } else if now > cert.not_after {
            Some("the certificate has expired")
        } else {
            None
        }
    }
    pub fn build(material: &TlsMaterial, identity: &str) -> Result<Self, StartError> {
        let signer = ForwardSigner::new(
            identity,
            &material.client_keys.key_pem,
            &material.client_id.public_key,
        )?;
        let expiry = certificate_expiry(
            &material.federation_ca,
            &material.server_keys,
            &material.client_id,
        );
        for (name, not_after) in &expiry {
            let left = *not_after - time::OffsetDateTime::now_utc();
            if left < time::Duration::days(30) {
                tracing::warn!(certificate = %name, days_left = left.whole_days(), "a certificate expires within 30 days");
            }
        }
        let mut revoked = std::collections::HashSet::new();
        for der in &material.crls {
            let (_, crl) =
                x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| StartError::Certificate {
                    path: "tls.crls".into(),
                    message: e.to_string(),
                })?;
            let issuer = crl.issuer().to_string();
            for r in crl.iter_revoked_certificates() {
                revoked.insert((issuer.clone(), r.raw_serial().to_vec()));
            }
        }
        Ok(TlsState {
            revoked,
            clinician: Arc::new(crate::tls::clinician_server_config(&material.server_keys)?),
            federation: Arc::new(crate::tls::federation_server_config(
                &material.server_keys,
                &material.federation_ca,
                &material.crls,
            )?),
            signer,
            expiry,
        })
    }
}

impl Gateway {
    /// Loads every file the configuration names and builds the gateway.
    pub async fn from_config(config: Config) -> Result<Self, StartError> {
        // Every checkpoint is appended there: a file that cannot be written is found now, not
        // at the first checkpoint (when it could only be logged).
        if let Some(path) = &config.audit.checkpoint_file {
            writable(path).map_err(|source| StartError::CheckpointFile {
                path: path.display().to_string(),
                source,
            })?;
        }
        let material = TlsMaterial::load(&config)?;
        let identity = config.identity();
        let tls = ArcSwap::from_pointee(TlsState::build(&material, &identity)?);
        let verifier = load_verifier(&config)?;
        let metrics = crate::metrics::Metrics::new();
        let key_fetcher = key_fetcher(&config, &verifier, &metrics).await?;
        let telemetry = match &config.telemetry.otlp_endpoint {
            None => crate::telemetry::Telemetry::off(),
            Some(endpoint) => crate::telemetry::Telemetry::otlp(
                endpoint,
                &config
                    .telemetry
                    .service_name
                    .clone()
                    .unwrap_or_else(|| format!("federation-gateway-{}", config.region.code)),
                Duration::from_millis(config.telemetry.export_interval_ms),
            )
            .map_err(|e| StartError::Certificate {
                path: "telemetry.otlp_endpoint".into(),
                message: e.to_string(),
            })?,
        };
        let Stores {
            consents,
            audit,
            cursors,
            changes,
            governance,
        } = open_stores(&config).await?;
        // Changes made before this replica started made nothing of its stale.
        let changes_seen = std::sync::atomic::AtomicI64::new(changes.change_head().await?);
        let guard = crate::api::guard::Guard::new(&config.limits);
        let cache = config
            .cache
            .enabled
            .then(|| crate::cache::ResponseCache::new(config.cache.settings()));
        let (policy_schema, files) =
            crate::governance::configured_files(config.policy.directory.as_deref())?;
        let source = config
            .policy
            .directory
            .as_ref()
            .map_or("the embedded policies".into(), |d| d.display().to_string());
        crate::governance::sync_files(&*governance, &policy_schema, &files, &source).await?;
        let (set, applied) = crate::governance::load_active(&*governance, &policy_schema).await?;
        tracing::info!(policies = set.policy_ids().len(), version = applied.version, %source, "policy set loaded");
        let policies = ArcSwap::from_pointee(set);
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
                (None, Some(base)) => {
                    let timeout = Duration::from_millis(config.record.timeout_ms);
                    let mut record = FhirServerRecord::new(ServerSettings {
                        base: base.clone(),
                        timeout,
                        page_size: config.record.page_size,
                        bounds: config.record.bounds(),
                    })?;
                    if let Some(auth) = &config.record.auth {
                        let token =
                            crate::record::backend_auth::BackendToken::new(auth.clone(), timeout)
                                .map_err(|e| StartError::Certificate {
                                path: "record.auth".into(),
                                message: e.to_string(),
                            })?;
                        record = record.with_backend_auth(token);
                    }
                    Arc::new(record)
                }
                (None, None) => unreachable!("validate() requires one record source"),
            };
        let peers = config
            .peers
            .iter()
            .map(|p| Peer::new(p, &material, &config.resilience))
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
            telemetry,
            key_fetcher,
            policies,
            consents,
            governance,
            policy_schema,
            applied: std::sync::Mutex::new(applied),
            audit,
            cache,
            metrics,
            guard,
            cursors,
            changes,
            changes_seen,
            pages: crate::pipeline::paging::new_cache(),
            in_flight: Arc::default(),
            connections: FacesStats::default(),
            refusals: Default::default(),
            last_checkpoint: std::sync::atomic::AtomicU64::new(0),
            tls,
        })
    }

    /// Writes an audit record and returns it once it is durable; signs a checkpoint when the
    /// trail reaches the next multiple of `audit.checkpoint_every`.
    pub async fn record(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        let started = std::time::Instant::now();
        let written = self.audit.append(event).await;
        let outcome = if written.is_ok() { "written" } else { "failed" };
        self.metrics
            .histogram(
                "gateway_audit_write_duration_seconds",
                &[("outcome", outcome)],
            )
            .record(started.elapsed().as_secs_f64());
        let r = written?;
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
            .tls
            .load()
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

    /// Reloads certificates, keys, the CA and CRLs from their files. Everything is read and
    /// built first; a bad file is refused and the current material stays. New connections use
    /// the new material; open ones finish with the old.
    pub fn reload_tls(&self) -> Result<(), StartError> {
        let material = TlsMaterial::load(&self.config)?;
        let state = TlsState::build(&material, &self.identity)?;
        let clients = self
            .peers
            .iter()
            .map(|p| p.client_for(&material))
            .collect::<Result<Vec<_>, _>>()?;
        self.tls.store(Arc::new(state));
        for (peer, client) in self.peers.iter().zip(clients) {
            peer.set_client(client);
        }
        Ok(())
    }

    /// The local record's timeout within a fan-out.
    pub fn local_timeout(&self) -> Duration {
        Duration::from_millis(self.config.record.timeout_ms)
    }
}

/// The `notAfter` of the federation CA, the server certificate and the client certificate.
fn certificate_expiry(
    ca: &[CertificateDer<'static>],
    server: &KeyMaterial,
    client: &CertIdentity,
) -> Vec<(String, time::OffsetDateTime)> {
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).ok();
    let mut out = Vec::new();
    for (i, c) in ca.iter().enumerate() {
        if let Some(t) = parse_certificate(c.as_ref())
            .ok()
            .and_then(|c| at(c.not_after))
        {
            out.push((format!("federation-ca-{i}"), t));
        }
    }
    if let Some(t) = server
        .chain
        .first()
        .and_then(|c| parse_certificate(c.as_ref()).ok())
        .and_then(|c| at(c.not_after))
    {
        out.push(("server".into(), t));
    }
    if let Some(t) = at(client.not_after) {
        out.push(("client".into(), t));
    }
    out
}

/// Appends one line to a file and waits until it is on disk.
/// Opens `path` for appending (creating it, empty, if it is not there) and closes it.
fn writable(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
}

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
/// The gateway's stores, opened from the configuration.
pub struct Stores {
    pub consents: Arc<dyn crate::store::ConsentStore>,
    pub audit: Arc<dyn AuditStore>,
    pub cursors: Arc<dyn crate::store::cursors::CursorStore>,
    pub changes: Arc<dyn crate::store::changes::ChangeStore>,
    pub governance: Arc<dyn crate::store::governance::GovernanceStore>,
}

pub async fn open_stores(config: &Config) -> Result<Stores, StoreError> {
    use crate::store::audit::SqliteAudit;
    use crate::store::postgres::{Connector, PostgresAudit, PostgresStore};
    let store = &config.store;
    let (consents, audit) = match (&store.sqlite, &store.postgres) {
        (_, Some(conninfo)) => {
            let connector = Connector::new(
                conninfo,
                &store.postgres_schema,
                store.postgres_ca.as_deref(),
            )?
            .with_password(store.postgres_password.as_ref());
            let consents =
                Arc::new(PostgresStore::with(connector.clone(), store.postgres_pool_size).await?);
            let audit: Arc<dyn AuditStore> = Arc::new(PostgresAudit::connect(connector).await?);
            return Ok(Stores {
                consents: consents.clone(),
                audit,
                cursors: consents.clone(),
                changes: consents.clone(),
                governance: consents,
            });
        }
        (Some(path), None) => (
            crate::store::SqliteStore::open(path)?,
            SqliteAudit::open(path)?,
        ),
        (None, None) => (
            crate::store::SqliteStore::open_in_memory()?,
            SqliteAudit::open_in_memory()?,
        ),
    };
    let consents = Arc::new(consents);
    Ok(Stores {
        consents: consents.clone(),
        audit: Arc::new(audit),
        cursors: consents.clone(),
        changes: consents.clone(),
        governance: consents,
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
    let keys = match (&auth.public_keys_pem, &auth.jwks) {
        (Some(pem), _) => crate::auth::keys_from_pem(&read(pem)?, &pem.display().to_string())?,
        (None, Some(jwks)) => {
            crate::auth::keys_from_jwks(&read(jwks)?, &jwks.display().to_string())?
        }
        // Discovery: fetched when the gateway starts ([`KeyFetcher`]).
        (None, None) => Vec::new(),
    };
    Ok(ClinicianVerifier::new(
        &auth.issuer,
        &auth.audience,
        keys,
        auth.claim_rules(),
    ))
}

/// The fetcher of the identity provider's keys, when they come by discovery; its first fetch
/// is made here (a provider down at start is retried by [`KeyFetcher::keep_fresh`]).
async fn key_fetcher(
    config: &Config,
    verifier: &ClinicianVerifier,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<Arc<crate::auth::discovery::KeyFetcher>>, StartError> {
    let auth = &config.auth;
    if !auth.discovery {
        return Ok(None);
    }
    let mut client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true);
    if let Some(ca) = &auth.ca {
        for cert in load_certs(ca).map_err(|e| StartError::Certificate {
            path: ca.display().to_string(),
            message: e.to_string(),
        })? {
            let cert = reqwest::Certificate::from_der(cert.as_ref()).map_err(|e| {
                StartError::Certificate {
                    path: ca.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            client = client.add_root_certificate(cert);
        }
    }
    let client = client.build().map_err(|e| StartError::Certificate {
        path: "auth.ca".into(),
        message: e.to_string(),
    })?;
    let fetcher = crate::auth::discovery::KeyFetcher::new(
        client,
        &auth.issuer,
        verifier.clone(),
        Duration::from_millis(auth.jwks_min_refresh_interval_ms),
        Some(metrics),
    );
    if let Err(e) = fetcher.fetch().await {
        tracing::error!(error = %e, "the identity provider's keys could not be fetched at start; every token is refused until they are");
    }
    Ok(Some(fetcher))
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
        reload_and_log(&gateway, &dir, "file change or SIGHUP").await;
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
            _ = next_hangup(&mut hangup) => reload_and_log(&gateway, &dir, "SIGHUP").await,
        }
    }
}

/// Reloads the policy set and records the activation, or its refusal, in the audit trail.
async fn reload_and_log(gateway: &Gateway, dir: &std::path::Path, trigger: &str) {
    let result = gateway.reload_policy_files().await;
    let mut event = AuditEvent::new(
        crate::audit::EventKind::PolicyActivation,
        crate::fhir::instant(time::OffsetDateTime::now_utc()),
        &crate::api::mint_request_id(),
    );
    event.user_id = "system".into();
    event.detail = serde_json::json!({
        "trigger": trigger,
        "directory": dir.display().to_string(),
        // The same digest as the version's in the store and the console.
        "digest": crate::governance::configured_files(Some(dir))
            .map(|(_, files)| crate::store::governance::files_digest(&files))
            .unwrap_or_else(|e| format!("unreadable: {e}")),
    });
    match &result {
        Ok(n) => {
            tracing::info!(policies = n, directory = %dir.display(), "policy set reloaded");
            event.detail["policies"] = serde_json::json!(n);
        }
        Err(e) => {
            tracing::error!(error = %e, directory = %dir.display(), "policy reload refused; the previous policy set stays active");
            event.outcome = format!("refused: {e}");
        }
    }
    if let Err(e) = gateway.record(event).await {
        tracing::error!(error = %e, "could not record the policy activation in the audit trail");
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

/// Reloads certificates, keys, the CA and CRLs when one of their files changes, or on SIGHUP,
/// until `stop` turns true. A bad file is refused (logged) and the current material stays.
pub async fn watch_tls(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use notify::Watcher;
    let t = &gateway.config.tls;
    let mut files: Vec<std::path::PathBuf> = vec![
        t.ca.clone(),
        t.server_cert.clone(),
        t.server_key.clone(),
        t.client_cert.clone(),
        t.client_key.clone(),
    ];
    files.extend(t.crls.iter().cloned());
    let files: Vec<std::path::PathBuf> = files
        .iter()
        .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = files.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !e.kind.is_access()
            && e.paths.iter().any(|p| {
                let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                watched.contains(&p)
            })
        {
            let _ = tx.send(());
        }
    });
    // Editors and `mv` replace files, so the directories are watched, not the files.
    let mut dirs: Vec<std::path::PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(std::path::Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    let _watcher = match watcher {
        Ok(mut w) => {
            for d in &dirs {
                if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(error = %e, directory = %d.display(), "cannot watch a certificate directory; reload with SIGHUP");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the certificate files; reload with SIGHUP");
            None
        }
    };
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            Some(()) = rx.recv() => {
                // Certificate and key are often written one after the other: let both land.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = next_hangup(&mut hangup) => {}
        }
        match gateway.reload_tls() {
            Ok(()) => {
                gateway
                    .metrics
                    .counter("gateway_tls_reloads_total", &[("outcome", "applied")])
                    .increment(1);
                tracing::info!("certificates reloaded")
            }
            Err(e) => {
                gateway
                    .metrics
                    .counter("gateway_tls_reloads_total", &[("outcome", "refused")])
                    .increment(1);
                tracing::error!(error = %e, "certificate reload refused; the current certificates stay")
            }
        }
    }
}

/// What `gateway audit verify` found.
#[derive(Debug, Clone, Default)]
pub struct TrailReport {
    /// Records checked (up to the first problem).
    pub records: u64,
    /// The hash of the last record checked.
    pub head: String,
    /// Signed checkpoints whose signature and content were checked.
    pub checkpoints: usize,
    pub latest_checkpoint: Option<u64>,
    /// Each problem, the chain's first.
    pub problems: Vec<String>,
}

/// The configured store's trail, for reading; a SQLite file that is not there is an error
/// (opening would make an empty one).
async fn open_trail(config: &Config) -> Result<Arc<dyn AuditStore>, StartError> {
    if let (Some(path), None) = (&config.store.sqlite, &config.store.postgres) {
        if !path.exists() {
            return Err(StartError::Read {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no audit trail here"),
            });
        }
    }
    crate::tls::install_crypto_provider();
    Ok(open_stores(config).await?.audit)
}

/// Writes the whole trail as JSON lines, oldest first, one `{"seq", "prev_hash", "hash",
/// "event"}` object a record: what an auditor needs to check the chain with any RFC 8785
/// library (`scripts/verify_audit_chain.py` does, in Python). Returns the number written.
/// The export holds patient data, as the trail does: it belongs where the trail belongs.
pub async fn export_trail(
    config: &Config,
    out: &mut dyn std::io::Write,
) -> Result<u64, StartError> {
    let audit = open_trail(config).await?;
    let (mut after, mut written) = (0, 0);
    let write_error = |source| StartError::Read {
        path: "the export".into(),
        source,
    };
    loop {
        let page = audit.read_after(after, 10_000).await?;
        if page.is_empty() {
            return Ok(written);
        }
        for s in &page {
            serde_json::to_writer(&mut *out, &s.record).map_err(|e| write_error(e.into()))?;
            out.write_all(b"\n").map_err(write_error)?;
            after = s.record.seq;
            written += 1;
        }
    }
}

/// Verifies the configured store's audit trail: the hash chain from the first record, then
/// every signed checkpoint (in the store, and in `checkpoint_files`) against the region's
/// client certificate and against the trail.
pub async fn verify_trail(
    config: &Config,
    checkpoint_files: &[std::path::PathBuf],
) -> Result<TrailReport, StartError> {
    use crate::store::audit::{hash_at, verify_store};
    let audit = open_trail(config).await?;
    let mut report = TrailReport::default();
    match verify_store(audit.as_ref()).await? {
        Ok((n, head)) => {
            report.records = n;
            report.head = head;
        }
        Err(t) => report.problems.push(t.to_string()),
    }
    let keys = load_key_material(&config.tls.client_cert, &config.tls.client_key)?;
    let cert = parse_certificate(keys.chain[0].as_ref()).map_err(|e| StartError::Certificate {
        path: config.tls.client_cert.display().to_string(),
        message: e.to_string(),
    })?;
    let identity = config.identity();
    let trail_len = audit.head().await?.map_or(0, |(seq, _)| seq);
    let mut seen = std::collections::BTreeSet::new();
    let mut sources: Vec<(String, String)> = audit
        .checkpoints()
        .await?
        .into_iter()
        .map(|c| ("the store".to_owned(), c.jws))
        .collect();
    for file in checkpoint_files {
        let text = std::fs::read_to_string(file).map_err(|source| StartError::Read {
            path: file.display().to_string(),
            source,
        })?;
        sources.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| (file.display().to_string(), l.trim().to_owned())),
        );
    }
    for (source, jws) in sources {
        if !seen.insert(jws.clone()) {
            continue;
        }
        let claims: CheckpointClaims = match crate::auth::verify_signed(&jws, &cert) {
            Ok(c) => c,
            Err(e) => {
                report.problems.push(format!(
                    "a checkpoint in {source} is not signed by this region: {e}"
                ));
                continue;
            }
        };
        if claims.iss != identity {
            report.problems.push(format!(
                "a checkpoint in {source} was issued by {}, not {identity}",
                claims.iss
            ));
            continue;
        }
        let hash = hash_at(audit.as_ref(), claims.seq).await?;
        if let Err(p) = crate::audit::check_checkpoint(&claims, trail_len, |_| hash.clone()) {
            report
                .problems
                .push(format!("{p} (checkpoint in {source})"));
            continue;
        }
        report.checkpoints += 1;
        report.latest_checkpoint = report.latest_checkpoint.max(Some(claims.seq));
    }
    Ok(report)
}
