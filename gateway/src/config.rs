//! Configuration: one TOML file, with environment variables layered over it (twelve-factor).
//! [`Config::parse`] takes text (pure, tested without files); [`Config::parse_layered`] adds
//! an environment given as pairs (pure too); [`Config::load`] reads a file and the process's
//! environment and resolves relative paths against the file's directory;
//! [`Config::validate`] names the key at fault.
//!
//! Every key can be set from the environment: `GATEWAY_{SECTION}__{KEY}` (two underscores
//! between the levels, any case), for example `GATEWAY_STORE__POSTGRES_POOL_SIZE=16` or
//! `GATEWAY_LIMITS__PER_USER_PER_MINUTE=50`; the peers are one variable, `GATEWAY_PEERS`, an
//! array of inline tables (`[{region = "x", name = "X", url = "https://...", identity =
//! "urn:gateway:region:x"}]`). A variable ending in `_FILE` names a file whose content is the
//! value (`GATEWAY_STORE__POSTGRES_PASSWORD_FILE=/run/secrets/pg`), the way container secrets
//! are mounted. The environment wins over the file. Variables that name no section
//! (`GATEWAY_CONFIG`, `GATEWAY_LOG_FORMAT`) are the command's own and not read here; one with
//! `__` under an unknown section is an error, like an unknown key in the file.
//!
//! ```
//! let text = r#"
//! [region]
//! code = "dorset"
//! name = "Dorset"
//! base_url = "https://localhost:8443/fhir"
//!
//! [listen]
//! clinician = "127.0.0.1:8443"
//! federation = "127.0.0.1:9443"
//!
//! [tls]
//! ca = "certs/ca.pem"
//! server_cert = "certs/dorset/server.pem"
//! server_key = "certs/dorset/server.key"
//! client_cert = "certs/dorset/client.pem"
//! client_key = "certs/dorset/client.key"
//!
//! [record]
//! directory = "data/dorset"
//!
//! [auth]
//! issuer = "https://idp.example"
//! audience = "federation-gateway"
//! public_keys_pem = "idp.pem"
//!
//! [[peers]]
//! region = "hampshire"
//! name = "Hampshire"
//! url = "https://localhost:9444/fhir"
//! identity = "urn:gateway:region:hampshire"
//! timeout_ms = 3000
//! "#;
//! let config = gateway::config::Config::parse(text).unwrap();
//! config.validate().unwrap();
//! assert_eq!(config.peers[0].region, "hampshire");
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::devca::valid_region_code;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub region: ConfigRegion,
    pub listen: ConfigListen,
    pub tls: ConfigTls,
    pub record: ConfigRecord,
    pub auth: ConfigAuth,
    #[serde(default)]
    pub fanout: ConfigFanout,
    #[serde(default)]
    pub limits: ConfigLimits,
    #[serde(default)]
    pub policy: ConfigPolicy,
    #[serde(default)]
    pub store: ConfigStore,
    #[serde(default)]
    pub audit: ConfigAudit,
    #[serde(default)]
    pub cache: ConfigCache,
    #[serde(default)]
    pub resilience: ConfigResilience,
    #[serde(default)]
    pub merge: ConfigMerge,
    #[serde(default)]
    pub telemetry: ConfigTelemetry,
    #[serde(default)]
    pub view: ConfigView,
    #[serde(default)]
    pub peers: Vec<ConfigPeer>,
}

/// The clinician's one-view page at `/view/` ([`crate::view`]): a SMART app the partner
/// systems launch, a public client of the region's identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigView {
    /// The page's client id at the identity provider (a public client: PKCE, no secret,
    /// redirect URI `{origin}/view/`). Default `one-view`.
    #[serde(default = "default_view_client")]
    pub client_id: String,
    /// The scopes asked for when a partner system launches the page with a patient.
    #[serde(default = "default_view_ehr_scope")]
    pub ehr_scope: String,
    /// The scopes asked for when a clinician signs in directly and searches.
    #[serde(default = "default_view_standalone_scope")]
    pub standalone_scope: String,
}

fn default_view_client() -> String {
    "one-view".into()
}

fn default_view_ehr_scope() -> String {
    "openid fhirUser launch patient/*.rs".into()
}

fn default_view_standalone_scope() -> String {
    "openid fhirUser user/*.rs".into()
}

impl Default for ConfigView {
    fn default() -> Self {
        ConfigView {
            client_id: default_view_client(),
            ehr_scope: default_view_ehr_scope(),
            standalone_scope: default_view_standalone_scope(),
        }
    }
}

/// Spans over OTLP ([`crate::telemetry`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigTelemetry {
    /// The OTLP/HTTP traces address (`http://collector:4318/v1/traces`); unset, no span is
    /// made or sent.
    pub otlp_endpoint: Option<String>,
    /// The service name the spans carry; default `federation-gateway-{region.code}`.
    pub service_name: Option<String>,
    /// How often spans are sent, in milliseconds. Default 5000.
    #[serde(default = "default_export_interval")]
    pub export_interval_ms: u64,
}

fn default_export_interval() -> u64 {
    5000
}

impl Default for ConfigTelemetry {
    fn default() -> Self {
        ConfigTelemetry {
            otlp_endpoint: None,
            service_name: None,
            export_interval_ms: default_export_interval(),
        }
    }
}

/// How the regions' answers are merged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMerge {
    /// When a region's date of birth, sex or family name for the NHS number disagrees with
    /// the most recently updated region's: `warn` (show its records with a warning) or
    /// `withhold` (leave its records out, with an error naming it).
    #[serde(default)]
    pub on_demographic_mismatch: crate::merge::MismatchPolicy,
}

/// How the gateway protects itself and its neighbours when a peer misbehaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigResilience {
    /// Consecutive failures after which a peer's circuit opens.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit fails requests at once before one probe is let through.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// The most requests in flight to one peer at a time.
    #[serde(default = "default_peer_concurrency")]
    pub peer_concurrency: usize,
    /// Retry once, after a short jittered pause, when the connection to a peer fails and
    /// time remains within the deadline.
    #[serde(default = "yes")]
    pub retry_connect: bool,
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    30_000
}
fn default_peer_concurrency() -> usize {
    64
}

impl Default for ConfigResilience {
    fn default() -> Self {
        ConfigResilience {
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open_ms(),
            peer_concurrency: default_peer_concurrency(),
            retry_connect: true,
        }
    }
}

/// The response cache (regions' answers; see `cache`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigCache {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The most the cache holds, in bytes of answers.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: u64,
    /// How long an answer is fresh (a peer's `max-age` may shorten it).
    #[serde(default = "default_cache_ttl")]
    pub ttl_s: u64,
    /// An answer nobody asked for in this long is dropped.
    #[serde(default = "default_cache_tti")]
    pub time_to_idle_s: u64,
    /// When a region fails, its stale answer is served (with a warning) if no older than
    /// its freshness plus this.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error_s: u64,
    /// `Cache-Control: max-age` this region's federation face puts on its answers.
    #[serde(default = "default_cache_ttl")]
    pub federation_max_age_s: u64,
}

fn yes() -> bool {
    true
}
fn default_cache_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_cache_ttl() -> u64 {
    60
}
fn default_cache_tti() -> u64 {
    600
}
fn default_stale_if_error() -> u64 {
    300
}

impl Default for ConfigCache {
    fn default() -> Self {
        ConfigCache {
            enabled: true,
            max_bytes: default_cache_bytes(),
            ttl_s: default_cache_ttl(),
            time_to_idle_s: default_cache_tti(),
            stale_if_error_s: default_stale_if_error(),
            federation_max_age_s: default_cache_ttl(),
        }
    }
}

impl ConfigCache {
    pub fn settings(&self) -> crate::cache::CacheSettings {
        crate::cache::CacheSettings {
            max_bytes: self.max_bytes,
            ttl: std::time::Duration::from_secs(self.ttl_s),
            time_to_idle: std::time::Duration::from_secs(self.time_to_idle_s.max(1)),
            stale_if_error: std::time::Duration::from_secs(self.stale_if_error_s),
        }
    }
}

/// The audit trail (kept in the store) and its signed checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigAudit {
    /// Sign a checkpoint every this many records (0: only on the interval).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ... and at least this often while records are being added (seconds; 0: never).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_s: u64,
    /// Signed checkpoints are also appended to this file (JSON lines), to be copied off the
    /// machine: a trail cut short in the database is then still caught. Default
    /// `{region.code}.checkpoints.jsonl` beside the configuration file.
    pub checkpoint_file: Option<PathBuf>,
    /// Refused tokens, certificates and rate-limited requests: the first from a source is
    /// recorded at once, the rest of this interval in one record with their count, in
    /// milliseconds. Default 10000.
    #[serde(default = "default_refusal_interval")]
    pub refusal_interval_ms: u64,
}

fn default_refusal_interval() -> u64 {
    10_000
}

fn default_checkpoint_every() -> u64 {
    1000
}

fn default_checkpoint_interval() -> u64 {
    300
}

impl Default for ConfigAudit {
    fn default() -> Self {
        ConfigAudit {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_s: default_checkpoint_interval(),
            checkpoint_file: None,
            refusal_interval_ms: default_refusal_interval(),
        }
    }
}

/// This region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRegion {
    /// Lower-case code, as in the certificates (`urn:gateway:region:{code}`).
    pub code: String,
    pub name: String,
    /// The clinician face's public FHIR base (used in `fullUrl`s and links).
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigListen {
    /// The clinician face (HTTPS, bearer tokens).
    pub clinician: SocketAddr,
    /// The federation face (mutual TLS).
    pub federation: SocketAddr,
    /// The operations listener: `/metrics` (Prometheus), `/healthz`, `/readyz`. Plain HTTP,
    /// so bind it to a loopback or cluster-internal address.
    pub operations: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigTls {
    /// The federation CA (PEM): peers' certificates must chain to it.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The certificate this region presents to peers; its key signs forwarded user context.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Certificate revocation lists (PEM): a peer certificate listed is refused. Reloaded with
    /// the certificates.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// Exactly one of `directory` (embedded default) or `fhir_base` (the region's FHIR R4 server).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRecord {
    pub directory: Option<PathBuf>,
    pub fhir_base: Option<String>,
    /// Timeout for the region's own FHIR server, in milliseconds.
    #[serde(default = "default_record_timeout")]
    pub timeout_ms: u64,
    /// The page size (`_count`) asked of the FHIR server; it may give fewer a page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// The most items one request takes from this region's record (the FHIR server's, and
    /// what this region releases to a peer). Beyond it the answer is cut, and says so.
    #[serde(default = "default_record_items")]
    pub max_items: usize,
    /// The most bytes one request reads from this region's FHIR server, all pages together.
    #[serde(default = "default_record_bytes")]
    pub max_bytes: usize,
    /// When the FHIR server requires a token: SMART Backend Services (client credentials with
    /// a private-key JWT assertion).
    pub auth: Option<crate::record::backend_auth::BackendAuthConfig>,
}

fn default_record_timeout() -> u64 {
    5000
}
fn default_page_size() -> u32 {
    500
}
fn default_record_items() -> usize {
    50_000
}
fn default_record_bytes() -> usize {
    64 * 1024 * 1024
}

impl ConfigRecord {
    pub fn bounds(&self) -> crate::record::pages::Bounds {
        crate::record::pages::Bounds {
            max_items: self.max_items,
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigAuth {
    pub issuer: String,
    pub audience: String,
    /// PEM file with one or more public keys of the identity provider.
    pub public_keys_pem: Option<PathBuf>,
    /// JWKS file of the identity provider.
    pub jwks: Option<PathBuf>,
    /// Find the provider's keys by OpenID Connect discovery (`{issuer}/.well-known/
    /// openid-configuration`, then its `jwks_uri`), over TLS; instead of a key file.
    #[serde(default)]
    pub discovery: bool,
    /// CA certificate(s) (PEM) the provider's TLS certificate may chain to, besides the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// The least time between two fetches of the provider's keys for a token naming a key
    /// not held (a forged `kid` cannot make the gateway hammer the provider). Default 30000.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_interval_ms: u64,
    /// How often the provider's keys are fetched again anyway, in seconds. Default 3600.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_interval_s: u64,
    /// The SMART scopes of a token that carries none (`user/*.cruds`: whatever the role
    /// allows). Unset: the role alone decides; empty: such a token sees nothing.
    pub default_scopes: Option<String>,
    /// The names of the claims the gateway reads (role, organisation, purpose of use, patient,
    /// scope), as the region's identity provider issues them.
    #[serde(default)]
    pub claims: crate::auth::ClaimNames,
    /// Where clinicians' applications get tokens, for the SMART configuration when the keys
    /// come from files (discovery gives them otherwise).
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

fn default_jwks_min_refresh() -> u64 {
    30_000
}

fn default_jwks_refresh() -> u64 {
    3600
}

impl ConfigAuth {
    /// How the claims of a token become a user.
    pub fn claim_rules(&self) -> crate::auth::ClaimRules {
        crate::auth::ClaimRules {
            names: self.claims.clone(),
            default_scopes: self.default_scopes.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFanout {
    /// The whole query's deadline, in milliseconds; every region's timeout fits inside it.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// The longest lifetime (`exp - iat`) of a user context accepted from a peer, in seconds.
    /// Gateways sign theirs for 60 seconds (the default), so a lower value refuses them all.
    #[serde(default = "default_context_lifetime")]
    pub forwarded_context_lifetime_s: i64,
}

fn default_deadline() -> u64 {
    5000
}

fn default_context_lifetime() -> i64 {
    crate::auth::FORWARD_TTL_SECONDS
}

impl Default for ConfigFanout {
    fn default() -> Self {
        ConfigFanout {
            deadline_ms: default_deadline(),
            forwarded_context_lifetime_s: default_context_lifetime(),
        }
    }
}

/// The gateway's own store (consent directives recorded through it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStore {
    /// SQLite file; default `{region.code}.sqlite` beside the configuration file, unless
    /// `postgres` is set.
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL connection string (`host=... user=... dbname=...`), for several replicas.
    pub postgres: Option<String>,
    /// The schema the gateway's tables live in.
    #[serde(default = "default_pg_schema")]
    pub postgres_schema: String,
    /// CA certificate(s) (PEM) the PostgreSQL server's certificate must chain to. When set,
    /// the connection uses TLS and the certificate is verified; a server on another host
    /// requires it.
    pub postgres_ca: Option<PathBuf>,
    /// Connections each replica keeps to PostgreSQL for reads and writes (besides the audit
    /// trail's writer and the change listener, which keep one each). Default 8.
    #[serde(default = "default_pg_pool")]
    pub postgres_pool_size: usize,
    /// The PostgreSQL password, kept out of the connection string (and so out of the file):
    /// best from the environment, `GATEWAY_STORE__POSTGRES_PASSWORD` or
    /// `GATEWAY_STORE__POSTGRES_PASSWORD_FILE`.
    pub postgres_password: Option<Secret>,
    /// A file holding the PostgreSQL password (a mounted secret); read at start.
    pub postgres_password_file: Option<PathBuf>,
}

/// A secret from the configuration: never shown by `Debug`, so a logged configuration or
/// error does not carry it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

fn default_pg_schema() -> String {
    "gateway".into()
}

fn default_pg_pool() -> usize {
    crate::store::postgres::DEFAULT_POOL_SIZE
}

impl Default for ConfigStore {
    fn default() -> Self {
        ConfigStore {
            sqlite: None,
            postgres: None,
            postgres_schema: default_pg_schema(),
            postgres_ca: None,
            postgres_pool_size: default_pg_pool(),
            postgres_password: None,
            postgres_password_file: None,
        }
    }
}

/// The consent and role policy set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPolicy {
    /// A directory holding `schema.cedarschema` and `default/*.cedar`. Without it the policy set
    /// embedded in the binary (the repository's `policies/`) is used.
    pub directory: Option<PathBuf>,
    /// How often the store is read for an activation made elsewhere (another replica's
    /// console), in milliseconds. Default 2000.
    #[serde(default = "default_policy_poll")]
    pub poll_interval_ms: u64,
}

impl Default for ConfigPolicy {
    fn default() -> Self {
        ConfigPolicy {
            directory: None,
            poll_interval_ms: default_policy_poll(),
        }
    }
}

fn default_policy_poll() -> u64 {
    2000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLimits {
    /// The largest answer accepted from a peer or the record server, in bytes.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// The largest request body accepted (either face), in bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
    /// Requests handled at once, both faces; beyond it the answer is 503 with Retry-After.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Requests a minute from one clinician (by user id); beyond it, 429 with Retry-After.
    #[serde(default = "default_per_user")]
    pub per_user_per_minute: u32,
    /// Requests a second from one neighbouring region; beyond it, 429 with Retry-After.
    #[serde(default = "default_per_peer")]
    pub per_peer_per_second: u32,
    /// Requests a second from one source address, before any authentication (bursts of
    /// twice as many); beyond it, 429 with Retry-After. Behind a TCP balancer every client
    /// shares the balancer's address: set it for the balancer's whole traffic.
    #[serde(default = "default_per_address")]
    pub per_address_per_second: u32,
    /// A connection (either face, HTTP/1.1 or HTTP/2) with no request in flight and nothing
    /// sent either way for this long is closed, in milliseconds. Default 60000.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Connections each face holds at once; beyond it new ones are closed at once (and
    /// counted in `gateway_connections_refused_total`). Default 2048.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The longest request target (path and query) accepted, in bytes; beyond it, 414.
    #[serde(default = "default_max_uri")]
    pub max_uri_bytes: usize,
    /// The most header bytes (names and values) accepted; beyond it, 431.
    #[serde(default = "default_max_headers")]
    pub max_header_bytes: usize,
}

fn default_per_address() -> u32 {
    1000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    2048
}
fn default_max_uri() -> usize {
    8 * 1024
}
fn default_max_headers() -> usize {
    32 * 1024
}

fn default_max_request() -> usize {
    1024 * 1024
}
fn default_max_concurrent() -> usize {
    512
}
fn default_per_user() -> u32 {
    600
}
fn default_per_peer() -> u32 {
    1000
}

/// Room for a peer's answer at its record's default bounds (64 MiB) and the envelope.
fn default_max_response() -> usize {
    80 * 1024 * 1024
}

impl Default for ConfigLimits {
    fn default() -> Self {
        ConfigLimits {
            max_response_bytes: default_max_response(),
            max_request_bytes: default_max_request(),
            max_concurrent_requests: default_max_concurrent(),
            per_user_per_minute: default_per_user(),
            per_peer_per_second: default_per_peer(),
            per_address_per_second: default_per_address(),
            idle_timeout_ms: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_uri_bytes: default_max_uri(),
            max_header_bytes: default_max_headers(),
        }
    }
}

/// A neighbouring region.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPeer {
    pub region: String,
    pub name: String,
    /// The peer's federation FHIR base, e.g. `https://hampshire.gateway.example:9443/fhir`.
    pub url: String,
    /// The identity its certificates must carry, e.g. `urn:gateway:region:hampshire`.
    pub identity: String,
    #[serde(default = "default_peer_timeout")]
    pub timeout_ms: u64,
}

fn default_peer_timeout() -> u64 {
    3000
}

impl ConfigPeer {
    /// This peer as a `[[peers]]` table of a configuration file, quoted as TOML quotes (the
    /// demo, the tests and the benchmark write their peers with it).
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            peers: [&'a ConfigPeer; 1],
        }
        toml::to_string(&File { peers: [self] }).expect("a peer is strings and a number")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration is not valid: {0}")]
    Parse(String),
    #[error("configuration key '{key}': {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "GATEWAY_";

/// The configuration's sections (its top-level keys), as the environment names them.
const SECTIONS: [&str; 15] = [
    "region",
    "listen",
    "tls",
    "record",
    "auth",
    "fanout",
    "limits",
    "policy",
    "store",
    "audit",
    "cache",
    "resilience",
    "merge",
    "telemetry",
    "peers",
];

/// Keys whose own names end in `_file` (a path): their variables set the path, and are not
/// read as the `_FILE` form of another key. Every such key of [`Config`] is listed here.
const KEYS_NAMED_FILE: [&str; 2] = ["audit__checkpoint_file", "store__postgres_password_file"];

/// The environment's keys as a figment provider: `GATEWAY_STORE__SQLITE` is `store.sqlite`.
/// Values stay text, except arrays and inline tables; [`figment::Figment::extract_lossy`]
/// reads `"16"` as a number where the key is one.
struct EnvLayer {
    data: figment::value::Dict,
}

impl EnvLayer {
    fn new(
        env: &[(String, String)],
        read_file: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        use figment::Provider;
        use figment::value::Value;
        let mut layer = figment::Figment::new();
        for (name, value) in env {
            let Some(rest) = name
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .map(|_| &name[ENV_PREFIX.len()..])
            else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let (key, value) = match rest.strip_suffix("_file") {
                Some(key)
                    if (key.contains("__") || SECTIONS.contains(&key))
                        && !KEYS_NAMED_FILE.contains(&rest.as_str()) =>
                {
                    let text = read_file(value).map_err(|source| ConfigError::Read {
                        path: format!("{value} (named by {name})"),
                        source,
                    })?;
                    (
                        key.to_owned(),
                        text.trim_end_matches(['\n', '\r']).to_owned(),
                    )
                }
                _ => (rest.clone(), value.clone()),
            };
            let section = key.split("__").next().unwrap_or("");
            if !SECTIONS.contains(&section) {
                if key.contains("__") {
                    return Err(invalid(
                        name.as_str(),
                        format!(
                            "'{section}' is not a section of the configuration ({})",
                            SECTIONS.join(", ")
                        ),
                    ));
                }
                continue;
            }
            let parsed = if value.starts_with('[') || value.starts_with('{') {
                value
                    .parse::<Value>()
                    .map_err(|e| invalid(name.as_str(), e.to_string()))?
            } else {
                Value::from(value)
            };
            let path = key.replace("__", ".");
            layer = layer.merge(figment::providers::Serialized::default(&path, parsed));
        }
        let data = layer
            .data()
            .map_err(|e| ConfigError::Parse(e.to_string()))?
            .remove(&figment::Profile::Default)
            .unwrap_or_default();
        Ok(EnvLayer { data })
    }
}

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.data.clone()))
    }
}

/// Figment's errors, each naming its key and where it came from: the variable, when the
/// environment set the key, else the file.
fn figment_error(e: figment::Error, env: &figment::value::Dict) -> ConfigError {
    let text: Vec<String> = e
        .into_iter()
        .map(|e| {
            let mut at = Some(env);
            let mut value = None;
            for k in &e.path {
                value = at.and_then(|d| d.get(k));
                at = value.and_then(|v| v.as_dict());
            }
            let from = if value.is_some() {
                format!("{ENV_PREFIX}{}", e.path.join("__").to_ascii_uppercase())
            } else {
                "the configuration file".to_owned()
            };
            format!("{}: {} (from {from})", e.path.join("."), e.kind)
        })
        .collect();
    ConfigError::Parse(text.join("; "))
}

/// The TOML file's keys as a figment provider.
struct FileLayer {
    table: toml::Table,
}

impl figment::Provider for FileLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("the configuration file")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        figment::providers::Serialized::defaults(&self.table).data()
    }
}

impl Config {
    /// Parses TOML text. Unknown keys are errors (a misspelt key must not be ignored silently).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses TOML text with the environment `env` (name, value pairs) layered over it (see
    /// the module's documentation); `read_file` reads what a `..._FILE` variable names.
    pub fn parse_layered(
        text: &str,
        env: &[(String, String)],
        read_file: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let env = EnvLayer::new(env, read_file)?;
        if env.data.is_empty() {
            // Nothing from the environment: TOML's own errors, with line and column.
            return Self::parse(text);
        }
        let set = env.data.clone();
        figment::Figment::from(FileLayer { table })
            .merge(env)
            .extract_lossy()
            .map_err(|e| figment_error(e, &set))
    }

    /// Reads, parses and validates a file with the process's environment over it; relative
    /// paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let mut config = Self::parse_layered(&text, &env, &|p| std::fs::read_to_string(p))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.read_secrets()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the secrets kept in files of their own (`store.postgres_password_file`).
    pub fn read_secrets(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.store.postgres_password_file {
            if self.store.postgres_password.is_some() {
                return Err(invalid(
                    "store.postgres_password_file",
                    "give the password or a file holding it, not both",
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            self.store.postgres_password = Some(Secret::new(text.trim_end_matches(['\n', '\r'])));
        }
        Ok(())
    }

    /// Makes every relative path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut self.tls.ca,
            &mut self.tls.server_cert,
            &mut self.tls.server_key,
            &mut self.tls.client_cert,
            &mut self.tls.client_key,
        ] {
            fix(p);
        }
        if let Some(p) = self.record.directory.as_mut() {
            fix(p);
        }
        for p in self.tls.crls.iter_mut() {
            fix(p);
        }
        if let Some(p) = self.auth.public_keys_pem.as_mut() {
            fix(p);
        }
        if let Some(p) = self.auth.jwks.as_mut() {
            fix(p);
        }
        if let Some(p) = self.auth.ca.as_mut() {
            fix(p);
        }
        if let Some(a) = self.record.auth.as_mut() {
            fix(&mut a.private_key);
            if let Some(p) = a.ca.as_mut() {
                fix(p);
            }
        }
        if let Some(p) = self.policy.directory.as_mut() {
            fix(p);
        }
        if self.store.postgres.is_none() {
            let default_store = PathBuf::from(format!("{}.sqlite", self.region.code));
            let store = self.store.sqlite.get_or_insert(default_store);
            fix(store);
        }
        if let Some(p) = self.store.postgres_ca.as_mut() {
            fix(p);
        }
        if let Some(p) = self.store.postgres_password_file.as_mut() {
            fix(p);
        }
        let default_checkpoints = PathBuf::from(format!("{}.checkpoints.jsonl", self.region.code));
        fix(self
            .audit
            .checkpoint_file
            .get_or_insert(default_checkpoints));
    }

    /// Checks what the types cannot: codes, URLs, exclusive choices, timeouts within the deadline,
    /// unique peers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_region_code(&self.region.code) {
            return Err(invalid(
                "region.code",
                "use lower-case letters, digits and '-'",
            ));
        }
        check_https("region.base_url", &self.region.base_url)?;
        if self.listen.clinician == self.listen.federation {
            return Err(invalid(
                "listen.federation",
                "must differ from listen.clinician: the federation face has its own mutual-TLS listener",
            ));
        }
        if let Some(a) = &self.record.auth {
            if self.record.fhir_base.is_none() {
                return Err(invalid(
                    "record.auth",
                    "a token is for a FHIR server: set record.fhir_base",
                ));
            }
            if !a.token_endpoint.starts_with("https://") {
                return Err(invalid("record.auth.token_endpoint", "an https address"));
            }
            if a.client_id.is_empty() {
                return Err(invalid("record.auth.client_id", "must not be empty"));
            }
        }
        match (&self.record.directory, &self.record.fhir_base) {
            (Some(_), None) => {}
            (None, Some(url)) => check_http("record.fhir_base", url)?,
            _ => {
                return Err(invalid(
                    "record",
                    "set exactly one of 'directory' or 'fhir_base'",
                ));
            }
        }
        let sources = [
            self.auth.public_keys_pem.is_some(),
            self.auth.jwks.is_some(),
            self.auth.discovery,
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                "auth",
                "set exactly one of 'public_keys_pem', 'jwks' or 'discovery = true'",
            ));
        }
        if self.auth.issuer.is_empty() {
            return Err(invalid("auth.issuer", "must not be empty"));
        }
        if self.auth.audience.is_empty() {
            return Err(invalid("auth.audience", "must not be empty"));
        }
        if let Some(e) = &self.telemetry.otlp_endpoint {
            check_http("telemetry.otlp_endpoint", e)?;
        }
        if self.auth.discovery && !self.auth.issuer.starts_with("https://") {
            return Err(invalid(
                "auth.issuer",
                "discovery reads the issuer's document over TLS: an https address",
            ));
        }
        if self.auth.jwks_min_refresh_interval_ms == 0 {
            return Err(invalid(
                "auth.jwks_min_refresh_interval_ms",
                "must be above 0 (it is what keeps forged key ids from hammering the provider)",
            ));
        }
        if let Some(scopes) = &self.auth.default_scopes {
            for s in scopes.split_ascii_whitespace() {
                if crate::auth::scopes::Scopes::parse(s, true) == Default::default() {
                    return Err(invalid(
                        "auth.default_scopes",
                        format!(
                            "'{s}' is not a SMART scope this gateway reads (user/Type.rs, user/*.read, ...)"
                        ),
                    ));
                }
            }
        }
        if self.fanout.deadline_ms == 0 || self.fanout.deadline_ms > 120_000 {
            return Err(invalid(
                "fanout.deadline_ms",
                "must be between 1 and 120000",
            ));
        }
        if !(100..=3_600_000).contains(&self.audit.refusal_interval_ms) {
            return Err(invalid(
                "audit.refusal_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if self.limits.idle_timeout_ms < 100 {
            return Err(invalid("limits.idle_timeout_ms", "must be at least 100"));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.limits.max_uri_bytes < 256
            || self.limits.max_header_bytes < 1024
            || self.limits.max_uri_bytes.max(self.limits.max_header_bytes)
                > crate::server::MAX_HEAD_BYTES
        {
            return Err(invalid(
                "limits.max_uri_bytes",
                "max_uri_bytes (at least 256) and max_header_bytes (at least 1024) must fit the 1.06 MiB head buffer",
            ));
        }
        if !(1..=3600).contains(&self.fanout.forwarded_context_lifetime_s) {
            return Err(invalid(
                "fanout.forwarded_context_lifetime_s",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=256).contains(&self.store.postgres_pool_size) {
            return Err(invalid(
                "store.postgres_pool_size",
                "must be between 1 and 256",
            ));
        }
        if self.store.sqlite.is_some() && self.store.postgres.is_some() {
            return Err(invalid(
                "store",
                "set at most one of 'sqlite' or 'postgres'",
            ));
        }
        if let (Some(conninfo), None) = (&self.store.postgres, &self.store.postgres_ca) {
            match crate::store::postgres::local_only(conninfo) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(invalid(
                        "store.postgres",
                        "a PostgreSQL server on another host must be reached over TLS: set store.postgres_ca",
                    ));
                }
                Err(e) => return Err(invalid("store.postgres", e.to_string())),
            }
        }
        if !crate::store::postgres::valid_schema(&self.store.postgres_schema) {
            return Err(invalid(
                "store.postgres_schema",
                "use lower-case letters, digits and '_'",
            ));
        }
        if self.cache.ttl_s > 86_400 || self.cache.stale_if_error_s > 86_400 {
            return Err(invalid(
                "cache",
                "ttl_s and stale_if_error_s must be at most 86400 (one day)",
            ));
        }
        if self.limits.max_concurrent_requests == 0
            || self.limits.per_user_per_minute == 0
            || self.limits.per_peer_per_second == 0
        {
            return Err(invalid(
                "limits",
                "max_concurrent_requests, per_user_per_minute and per_peer_per_second must be at least 1",
            ));
        }
        if self.record.page_size == 0 || self.record.page_size > 10_000 {
            return Err(invalid("record.page_size", "must be between 1 and 10000"));
        }
        if self.record.max_items == 0 || self.record.max_bytes < 1024 {
            return Err(invalid(
                "record",
                "max_items must be at least 1 and max_bytes at least 1024",
            ));
        }
        if let Some(base) = &self.record.fhir_base
            && let Err(e) = crate::record::pages::ServerBase::parse(base)
        {
            return Err(invalid("record.fhir_base", e));
        }
        if self.limits.max_response_bytes < 1024 {
            return Err(invalid(
                "limits.max_response_bytes",
                "must be at least 1024",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |k: &str| format!("peers[{i}].{k}");
            if !valid_region_code(&peer.region) {
                return Err(invalid(
                    key("region"),
                    "use lower-case letters, digits and '-'",
                ));
            }
            if peer.region == self.region.code {
                return Err(invalid(key("region"), "a region cannot be its own peer"));
            }
            if !seen.insert(peer.region.clone()) {
                return Err(invalid(
                    key("region"),
                    format!("'{}' is listed twice", peer.region),
                ));
            }
            check_https(&key("url"), &peer.url)?;
            if peer.identity.is_empty() {
                return Err(invalid(
                    key("identity"),
                    "must name the identity in the peer's certificate",
                ));
            }
            if peer.timeout_ms == 0 || peer.timeout_ms > self.fanout.deadline_ms {
                return Err(invalid(
                    key("timeout_ms"),
                    format!(
                        "must be between 1 and fanout.deadline_ms ({})",
                        self.fanout.deadline_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// This region's identity, as its certificates carry it.
    pub fn identity(&self) -> String {
        crate::tls::identity::region_uri(&self.region.code)
    }
}

fn check_http(key: &str, url: &str) -> Result<(), ConfigError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > 8
        && !url.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be an http(s) URL without a trailing '/'",
        ))
    }
}

fn check_https(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("https://") && url.len() > 8 && !url.ends_with('/') {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be an https:// URL without a trailing '/'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[region]
code = "dorset"
name = "Dorset"
base_url = "https://localhost:8443/fhir"
[listen]
clinician = "127.0.0.1:8443"
federation = "127.0.0.1:9443"
[tls]
ca = "ca.pem"
server_cert = "s.pem"
server_key = "s.key"
client_cert = "c.pem"
client_key = "c.key"
[record]
directory = "data"
[auth]
issuer = "https://idp"
audience = "gw"
public_keys_pem = "idp.pem"
[fanout]
deadline_ms = 4000
[[peers]]
region = "hampshire"
name = "Hampshire"
url = "https://localhost:9444/fhir"
identity = "urn:gateway:region:hampshire"
timeout_ms = 3000
"#;

    fn with(from: &str, to: &str) -> Result<(), ConfigError> {
        Config::parse(&GOOD.replace(from, to))?.validate()
    }

    fn key_of(r: Result<(), ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn the_example_is_valid() {
        with("", "").unwrap();
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn no_files(path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_owned(),
        ))
    }

    #[test]
    fn every_key_can_come_from_the_environment_over_the_file() {
        let c = Config::parse_layered(
            GOOD,
            &env(&[
                ("GATEWAY_FANOUT__DEADLINE_MS", "7000"),
                ("GATEWAY_STORE__POSTGRES", "host=localhost user=gw dbname=gw"),
                ("GATEWAY_STORE__POSTGRES_POOL_SIZE", "16"),
                ("gateway_region__name", "Dorset (west)"),
                ("GATEWAY_LIMITS__PER_USER_PER_MINUTE", "50"),
                ("GATEWAY_CACHE__ENABLED", "false"),
                (
                    "GATEWAY_PEERS",
                    r#"[{region = "wiltshire", name = "Wiltshire", url = "https://w:9443/fhir", identity = "urn:gateway:region:wiltshire", timeout_ms = 2000}]"#,
                ),
                // The command's own variables, and other programs', are not configuration.
                ("GATEWAY_CONFIG", "/etc/gateway/dorset.toml"),
                ("GATEWAY_LOG_FORMAT", "json"),
                ("GATEWAY_TEST_HFS", "/opt/hfs"),
                ("PATH", "/usr/bin"),
            ]),
            &no_files,
        )
        .unwrap();
        assert_eq!(c.fanout.deadline_ms, 7000);
        assert_eq!(
            c.store.postgres.as_deref(),
            Some("host=localhost user=gw dbname=gw")
        );
        assert_eq!(c.store.postgres_pool_size, 16);
        assert_eq!(c.region.name, "Dorset (west)");
        assert_eq!(
            c.region.code, "dorset",
            "what the environment does not set stays"
        );
        assert_eq!(c.limits.per_user_per_minute, 50);
        assert!(!c.cache.enabled);
        assert_eq!(
            c.peers.len(),
            1,
            "the environment's peers replace the file's"
        );
        assert_eq!(
            (c.peers[0].region.as_str(), c.peers[0].timeout_ms),
            ("wiltshire", 2000)
        );
        c.validate().unwrap();
        // A key whose name ends in _file is set, not read.
        let c = Config::parse_layered(
            GOOD,
            &env(&[(
                "GATEWAY_AUDIT__CHECKPOINT_FILE",
                "/var/lib/gateway/cp.jsonl",
            )]),
            &no_files,
        )
        .unwrap();
        assert_eq!(
            c.audit.checkpoint_file.as_deref(),
            Some(Path::new("/var/lib/gateway/cp.jsonl"))
        );
        // With no GATEWAY_ variables the file is read as it is.
        let plain = Config::parse_layered(GOOD, &env(&[("HOME", "/root")]), &no_files).unwrap();
        assert_eq!(plain.fanout.deadline_ms, 4000);
    }

    #[test]
    fn a_secret_comes_from_a_file_and_never_shows() {
        // Any key's value from a file its _FILE variable names (a mounted secret).
        let read = |path: &str| -> std::io::Result<String> {
            assert_eq!(path, "/run/secrets/pg-conninfo");
            Ok("host=db user=gw\n".into())
        };
        let c = Config::parse_layered(
            GOOD,
            &env(&[("GATEWAY_STORE__POSTGRES_FILE", "/run/secrets/pg-conninfo")]),
            &read,
        )
        .unwrap();
        assert_eq!(
            c.store.postgres.as_deref(),
            Some("host=db user=gw"),
            "the file's newline is not the value's"
        );
        // A file that cannot be read is an error naming the variable.
        let e = Config::parse_layered(
            GOOD,
            &env(&[("GATEWAY_STORE__POSTGRES_FILE", "/nope")]),
            &no_files,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("GATEWAY_STORE__POSTGRES_FILE"),
            "{e}"
        );
        // The password: from the environment, or a file the environment or the file names;
        // Debug never shows it.
        let c = Config::parse_layered(
            GOOD,
            &env(&[("GATEWAY_STORE__POSTGRES_PASSWORD", "s3cret-pa55")]),
            &no_files,
        )
        .unwrap();
        assert_eq!(
            c.store.postgres_password.as_ref().unwrap().expose(),
            "s3cret-pa55"
        );
        assert!(!format!("{c:?}").contains("s3cret"), "Debug never shows it");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg-password"), "from-a-file\n").unwrap();
        for (text, vars) in [
            (
                GOOD.to_owned(),
                vec![("GATEWAY_STORE__POSTGRES_PASSWORD_FILE", "pg-password")],
            ),
            (
                GOOD.replace(
                    "[fanout]",
                    "[store]\npostgres_password_file = \"pg-password\"\n[fanout]",
                ),
                vec![],
            ),
        ] {
            let mut c = Config::parse_layered(&text, &env(&vars), &no_files).unwrap();
            c.resolve_paths(dir.path());
            c.read_secrets().unwrap();
            assert_eq!(c.store.postgres_password.unwrap().expose(), "from-a-file");
        }
    }

    #[test]
    fn every_key_named_file_is_listed() {
        let source = include_str!("config.rs");
        let fields = source
            .matches(concat!("_file", ": Option<PathBuf>"))
            .count();
        assert_eq!(
            fields,
            KEYS_NAMED_FILE.len(),
            "add the new key to KEYS_NAMED_FILE"
        );
    }

    #[test]
    fn a_misspelt_variable_is_an_error_like_a_misspelt_key() {
        for (name, value, named) in [
            ("GATEWAY_STROE__SQLITE", "x.sqlite", "GATEWAY_STROE__SQLITE"),
            ("GATEWAY_STORE__SQLTE", "x.sqlite", "sqlte"),
            (
                "GATEWAY_FANOUT__DEADLINE_MS",
                "soon",
                "GATEWAY_FANOUT__DEADLINE_MS",
            ),
            ("GATEWAY_PEERS", "[{region = ", "GATEWAY_PEERS"),
        ] {
            let e = Config::parse_layered(GOOD, &env(&[(name, value)]), &no_files).unwrap_err();
            assert!(e.to_string().contains(named), "{name}={value}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            key_of(with("timeout_ms = 3000", "timeout_ms = 9000")),
            "peers[0].timeout_ms"
        );
        assert_eq!(
            key_of(with("code = \"dorset\"", "code = \"Dorset\"")),
            "region.code"
        );
        assert_eq!(
            key_of(with("region = \"hampshire\"", "region = \"dorset\"")),
            "peers[0].region"
        );
        assert_eq!(
            key_of(with(
                "url = \"https://localhost:9444/fhir\"",
                "url = \"http://localhost:9444/fhir\""
            )),
            "peers[0].url"
        );
        assert_eq!(
            key_of(with(
                "directory = \"data\"",
                "directory = \"data\"\nfhir_base = \"https://x\""
            )),
            "record"
        );
        assert_eq!(key_of(with("public_keys_pem = \"idp.pem\"", "")), "auth");
        assert_eq!(
            key_of(with(
                "federation = \"127.0.0.1:9443\"",
                "federation = \"127.0.0.1:8443\""
            )),
            "listen.federation"
        );
    }

    #[test]
    fn unknown_and_malformed_keys_are_errors_that_name_them() {
        let err = Config::parse(&GOOD.replace("deadline_ms", "deadline_msec"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("deadline_msec"), "{err}");
        let err = Config::parse(&GOOD.replace("\"127.0.0.1:8443\"", "\"localhost-8443\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clinician"), "{err}");
    }

    #[test]
    fn a_peer_written_as_toml_reads_back_the_same() {
        let peer = ConfigPeer {
            region: "hampshire".into(),
            name: "Hampshire \"and\" IoW".into(),
            url: "https://localhost:9443/fhir".into(),
            identity: "urn:gateway:region:hampshire".into(),
            timeout_ms: 1234,
        };
        let config = Config::parse(&format!("{GOOD}\n{}", peer.to_toml())).unwrap();
        let read = config.peers.last().expect("the peer written");
        assert_eq!(
            (
                &read.region,
                &read.name,
                &read.url,
                &read.identity,
                read.timeout_ms
            ),
            (&peer.region, &peer.name, &peer.url, &peer.identity, 1234)
        );
    }

    #[test]
    fn duplicate_peers_are_refused() {
        let twice = format!(
            "{GOOD}\n[[peers]]\nregion = \"hampshire\"\nname = \"H\"\nurl = \"https://h/fhir\"\nidentity = \"x\"\n"
        );
        assert_eq!(
            key_of(Config::parse(&twice).unwrap().validate()),
            "peers[1].region"
        );
    }

    #[test]
    fn a_remote_database_must_be_reached_over_tls() {
        let remote = format!("{GOOD}\n[store]\npostgres = \"host=db.example.nhs.uk user=gw\"\n");
        assert_eq!(
            key_of(Config::parse(&remote).unwrap().validate()),
            "store.postgres"
        );
        let with_ca = format!("{remote}postgres_ca = \"db-ca.pem\"\n");
        Config::parse(&with_ca).unwrap().validate().unwrap();
        let local = format!("{GOOD}\n[store]\npostgres = \"host=127.0.0.1 user=gw\"\n");
        Config::parse(&local).unwrap().validate().unwrap();
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let mut c = Config::parse(GOOD).unwrap();
        c.resolve_paths(Path::new("/etc/gw"));
        assert_eq!(c.tls.ca, PathBuf::from("/etc/gw/ca.pem"));
        assert_eq!(c.record.directory.unwrap(), PathBuf::from("/etc/gw/data"));
    }
}
