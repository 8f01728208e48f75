//! The identity provider's keys from its OpenID Connect discovery document: I/O.
//!
//! At start the gateway reads `{issuer}/.well-known/openid-configuration` over TLS (the
//! document must name the configured issuer), then the `jwks_uri` it gives. The keys are held
//! by the [`ClinicianVerifier`] and fetched again:
//!
//! * when a token names a `kid` the gateway does not hold (the provider rotated its keys), at
//!   most once per `auth.jwks_min_refresh_interval_ms`, one fetch at a time, so that tokens
//!   with forged key ids cannot make the gateway hammer the provider;
//! * every `auth.jwks_refresh_interval_s`, so that a key the provider withdrew stops being
//!   accepted;
//! * every minimum interval while no key is held (the provider was down at start).
//!
//! A failed fetch keeps the keys held (the provider may be briefly down); it is logged and
//! counted, never fatal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{ClinicianVerifier, keys_from_jwks, token_kid};

/// The most bytes read of a discovery document or a key set.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// What the gateway reads of a provider's discovery document (OpenID Connect Discovery 1.0).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider answered HTTP {0}")]
    Status(u16),
    #[error("the identity provider's {0} is not what it should be: {1}")]
    Invalid(&'static str, String),
    #[error("the discovery document names issuer '{found}', not the configured '{configured}'")]
    WrongIssuer { found: String, configured: String },
}

/// The address of an issuer's discovery document.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Checks a discovery document against the configured issuer. Pure.
pub fn read_metadata(body: &[u8], issuer: &str) -> Result<ProviderMetadata, DiscoveryError> {
    let m: ProviderMetadata = serde_json::from_slice(body)
        .map_err(|e| DiscoveryError::Invalid("discovery document", e.to_string()))?;
    if m.issuer != issuer {
        return Err(DiscoveryError::WrongIssuer {
            found: m.issuer,
            configured: issuer.to_owned(),
        });
    }
    if !m.jwks_uri.starts_with("https://") {
        return Err(DiscoveryError::Invalid(
            "jwks_uri",
            "not an https address".into(),
        ));
    }
    Ok(m)
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, DiscoveryError> {
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| DiscoveryError::Unreachable(crate::client::describe(e)))?;
    if !response.status().is_success() {
        return Err(DiscoveryError::Status(response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DiscoveryError::Unreachable(crate::client::describe(e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(DiscoveryError::Invalid(
                "answer",
                format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads the issuer's discovery document.
pub async fn discover(
    client: &reqwest::Client,
    issuer: &str,
) -> Result<ProviderMetadata, DiscoveryError> {
    read_metadata(&get(client, &discovery_url(issuer)).await?, issuer)
}

/// Fetches the provider's keys for one verifier.
pub struct KeyFetcher {
    client: reqwest::Client,
    issuer: String,
    verifier: ClinicianVerifier,
    /// The discovery document, once read.
    metadata: arc_swap::ArcSwapOption<ProviderMetadata>,
    min_interval: Duration,
    /// When keys were last asked for (whatever came of it).
    last_attempt: std::sync::Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// `gateway_idp_key_fetches_total` by outcome: fetched, failed, skipped (too soon).
    counters: Option<[metrics::Counter; 3]>,
}

impl KeyFetcher {
    pub fn new(
        client: reqwest::Client,
        issuer: &str,
        verifier: ClinicianVerifier,
        min_interval: Duration,
        metrics: Option<&crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let counters = metrics.map(|m| {
            ["fetched", "failed", "skipped"]
                .map(|o| m.counter("gateway_idp_key_fetches_total", &[("outcome", o)]))
        });
        Arc::new(KeyFetcher {
            client,
            issuer: issuer.to_owned(),
            verifier,
            metadata: arc_swap::ArcSwapOption::empty(),
            min_interval,
            last_attempt: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            counters,
        })
    }

    /// The discovery document, when it has been read.
    pub fn metadata(&self) -> Option<Arc<ProviderMetadata>> {
        self.metadata.load_full()
    }

    fn count(&self, outcome: &'static str) {
        let at = match outcome {
            "fetched" => 0,
            "failed" => 1,
            _ => 2,
        };
        if let Some(c) = &self.counters {
            c[at].increment(1);
        }
    }

    /// Reads the discovery document (each time: the provider may have moved its keys) and the
    /// key set, and gives the verifier the keys. Returns how many keys it now holds; on failure
    /// the keys held are kept.
    pub async fn fetch(&self) -> Result<usize, DiscoveryError> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, DiscoveryError> {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        let result = async {
            let metadata = discover(&self.client, &self.issuer).await?;
            let body = get(&self.client, &metadata.jwks_uri).await?;
            let text = String::from_utf8(body)
                .map_err(|_| DiscoveryError::Invalid("key set", "not UTF-8".into()))?;
            let keys = keys_from_jwks(&text, "the provider's key set")
                .map_err(|e| DiscoveryError::Invalid("key set", e.to_string()))?;
            self.metadata.store(Some(Arc::new(metadata)));
            let n = keys.len();
            self.verifier.replace_keys(keys);
            Ok(n)
        }
        .await;
        match &result {
            Ok(n) => {
                self.count("fetched");
                tracing::info!(keys = n, "identity provider's keys fetched");
            }
            Err(e) => {
                self.count("failed");
                tracing::warn!(error = %e, keys_kept = self.verifier.key_count(), "identity provider's keys could not be fetched; the keys held are kept");
            }
        }
        result
    }

    /// A token named a key the verifier does not hold: fetches the keys again unless that was
    /// done less than the minimum interval ago. Returns whether the token's key is now held.
    pub async fn refresh_for(&self, token: &str) -> bool {
        let kid = token_kid(token);
        let _one = self.fetching.lock().await;
        // Another request may have fetched it while this one waited.
        if kid.as_deref().is_some_and(|k| self.verifier.has_kid(k)) {
            return true;
        }
        let recent = self
            .last_attempt
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|at| at.elapsed() < self.min_interval);
        if recent {
            self.count("skipped");
            return false;
        }
        if self.fetch_locked().await.is_err() {
            return false;
        }
        match kid {
            Some(k) => self.verifier.has_kid(&k),
            None => true,
        }
    }

    /// Fetches the keys every `every`, and every minimum interval while none is held, until
    /// `stop`.
    pub async fn keep_fresh(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let wait = if self.verifier.key_count() == 0 || self.metadata().is_none() {
                self.min_interval.max(Duration::from_millis(200))
            } else {
                every
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let _ = self.fetch().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discovery_document_must_name_the_configured_issuer_and_an_https_key_set() {
        let doc = |issuer: &str, jwks: &str| {
            serde_json::json!({
                "issuer": issuer,
                "jwks_uri": jwks,
                "token_endpoint": format!("{issuer}/token"),
                "authorization_endpoint": format!("{issuer}/auth"),
                "response_types_supported": ["code"],
            })
            .to_string()
        };
        let m = read_metadata(
            doc("https://idp.example", "https://idp.example/jwks").as_bytes(),
            "https://idp.example",
        )
        .unwrap();
        assert_eq!(m.jwks_uri, "https://idp.example/jwks");
        assert_eq!(
            m.token_endpoint.as_deref(),
            Some("https://idp.example/token")
        );
        assert!(matches!(
            read_metadata(
                doc("https://evil.example", "https://evil.example/jwks").as_bytes(),
                "https://idp.example"
            ),
            Err(DiscoveryError::WrongIssuer { .. })
        ));
        assert!(matches!(
            read_metadata(
                doc("https://idp.example", "http://idp.example/jwks").as_bytes(),
                "https://idp.example"
            ),
            Err(DiscoveryError::Invalid("jwks_uri", _))
        ));
        assert!(read_metadata(b"<html>", "https://idp.example").is_err());
        assert_eq!(
            discovery_url("https://idp.example/realms/x/"),
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
    }
}
