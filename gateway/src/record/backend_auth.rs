//! SMART Backend Services for the gateway's own calls to its region's FHIR server, when that
//! server requires a token: the `client_credentials` grant, the gateway authenticating with a
//! `private_key_jwt` client assertion (RFC 7523) signed by its own key, and the token kept until
//! shortly before it expires.
//!
//! The assertion (what [`assertion_claims`] builds) names the gateway as `iss` and `sub`, the
//! token endpoint as `aud`, a fresh `jti`, and lives five minutes, as the SMART Backend Services
//! profile asks. The token's life is what the answer's `expires_in` says, less a margin
//! ([`renew_at`]); a token the server refuses (401) is dropped and fetched again once.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// How the gateway gets a token for its FHIR server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAuthConfig {
    /// The authorisation server's token endpoint.
    pub token_endpoint: String,
    /// The gateway's client id there.
    pub client_id: String,
    /// The PEM file of the private key the gateway signs its assertions with (EC P-256 or
    /// P-384, or RSA); its public key is registered with the authorisation server.
    pub private_key: std::path::PathBuf,
    /// The key's id at the authorisation server (the assertion's `kid`).
    pub key_id: Option<String>,
    /// The scopes asked for. Default `system/*.rs`.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// The `resource` (RFC 8707) the token is for, when the server names itself so.
    pub resource: Option<String>,
    /// CA certificate(s) (PEM) the token endpoint's certificate may chain to, besides the
    /// system's.
    pub ca: Option<std::path::PathBuf>,
}

fn default_scope() -> String {
    "system/*.rs".into()
}

/// The claims of a client assertion.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// The claims of the assertion for `client_id` at `token_endpoint`, made at `now`. Pure.
pub fn assertion_claims(
    client_id: &str,
    token_endpoint: &str,
    jti: &str,
    now: i64,
) -> AssertionClaims {
    AssertionClaims {
        iss: client_id.to_owned(),
        sub: client_id.to_owned(),
        aud: token_endpoint.to_owned(),
        jti: jti.to_owned(),
        iat: now,
        exp: now + 300,
    }
}

/// When a token that lives `expires_in` seconds, received at `received`, is renewed: a tenth
/// of its life before it ends, at least 5 seconds and at most 60. Pure.
pub fn renew_at(received: Instant, expires_in: u64) -> Instant {
    let life = Duration::from_secs(expires_in);
    let margin = (life / 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
    received + life.saturating_sub(margin)
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendAuthError {
    #[error("the private key cannot sign: {0}")]
    Key(String),
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint refused the gateway (HTTP {status}): {error}")]
    Refused { status: u16, error: String },
    #[error("the token endpoint's answer is not a bearer token: {0}")]
    Invalid(String),
}

/// A token held, and when to renew it.
struct Held {
    token: String,
    renew_at: Instant,
}

/// Gets and keeps the gateway's token for its FHIR server.
pub struct BackendToken {
    config: BackendAuthConfig,
    client: reqwest::Client,
    key: EncodingKey,
    algorithm: Algorithm,
    held: tokio::sync::Mutex<Option<Held>>,
    /// The token now held, for building requests without waiting.
    current: arc_swap::ArcSwapOption<String>,
}

impl BackendToken {
    pub fn new(config: BackendAuthConfig, timeout: Duration) -> Result<Self, BackendAuthError> {
        let pem = std::fs::read_to_string(&config.private_key)
            .map_err(|e| BackendAuthError::Key(format!("{}: {e}", config.private_key.display())))?;
        let (key, algorithm) = signing_key(&pem)?;
        let mut client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca {
            let certs =
                crate::tls::load_certs(ca).map_err(|e| BackendAuthError::Key(e.to_string()))?;
            for c in certs {
                let cert = reqwest::Certificate::from_der(c.as_ref())
                    .map_err(|e| BackendAuthError::Key(e.to_string()))?;
                client = client.add_root_certificate(cert);
            }
        }
        let client = client
            .build()
            .map_err(|e| BackendAuthError::Unreachable(crate::client::describe(e)))?;
        Ok(BackendToken {
            config,
            client,
            key,
            algorithm,
            held: tokio::sync::Mutex::new(None),
            current: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// The token held now, if any (requests carry it; [`BackendToken::ensure`] keeps it fresh).
    pub fn current(&self) -> Option<std::sync::Arc<String>> {
        self.current.load_full()
    }

    /// Makes sure a token is held that will not need renewing yet; fetches one if not.
    pub async fn ensure(&self) -> Result<(), BackendAuthError> {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|h| Instant::now() < h.renew_at) {
            return Ok(());
        }
        let (token, expires_in) = self.fetch().await?;
        self.current.store(Some(std::sync::Arc::new(token.clone())));
        *held = Some(Held {
            token,
            renew_at: renew_at(Instant::now(), expires_in),
        });
        Ok(())
    }

    /// The server refused `token` (401): forgets it, if it is still the one held.
    pub async fn refused(&self, token: &str) {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|h| h.token == token) {
            *held = None;
            self.current.store(None);
        }
    }

    async fn fetch(&self) -> Result<(String, u64), BackendAuthError> {
        let c = &self.config;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = assertion_claims(
            &c.client_id,
            &c.token_endpoint,
            &uuid::Uuid::new_v4().to_string(),
            now,
        );
        let mut header = Header::new(self.algorithm);
        header.kid.clone_from(&c.key_id);
        header.typ = Some("JWT".into());
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| BackendAuthError::Key(e.to_string()))?;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("scope", c.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        if let Some(r) = &c.resource {
            form.push(("resource", r.as_str()));
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| BackendAuthError::Invalid(e.to_string()))?;
        let response = self
            .client
            .post(&c.token_endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| BackendAuthError::Unreachable(crate::client::describe(e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| BackendAuthError::Unreachable(crate::client::describe(e)))?;
        if !status.is_success() {
            // The OAuth error code and its description; never the assertion.
            let said: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let error = [said["error"].as_str(), said["error_description"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            return Err(BackendAuthError::Refused {
                status: status.as_u16(),
                error,
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| BackendAuthError::Invalid(e.to_string()))?;
        if answer
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(BackendAuthError::Invalid(format!(
                "token_type {:?}",
                answer.token_type
            )));
        }
        tracing::info!(
            expires_in = answer.expires_in,
            "token for the record server obtained"
        );
        Ok((answer.access_token, answer.expires_in.unwrap_or(300)))
    }
}

/// The signing key and its algorithm from a PKCS#8 (or SEC1/PKCS#1) PEM private key.
fn signing_key(pem: &str) -> Result<(EncodingKey, Algorithm), BackendAuthError> {
    if let Ok(k) = EncodingKey::from_ec_pem(pem.as_bytes()) {
        // The curve decides the algorithm: P-256 signs ES256, P-384 ES384.
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        use rustls_pki_types::pem::PemObject;
        let p256 = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .ok()
            .is_some_and(|der| {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
                    .is_ok()
            });
        let algorithm = if p256 {
            Algorithm::ES256
        } else {
            Algorithm::ES384
        };
        return Ok((k, algorithm));
    }
    if let Ok(k) = EncodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((k, Algorithm::RS384));
    }
    Err(BackendAuthError::Key(
        "not an EC or RSA private key in PEM".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_names_the_gateway_and_the_endpoint_and_lives_five_minutes() {
        let c = assertion_claims("dorset-gateway", "https://idp/token", "j-1", 1_000);
        assert_eq!(
            c,
            AssertionClaims {
                iss: "dorset-gateway".into(),
                sub: "dorset-gateway".into(),
                aud: "https://idp/token".into(),
                jti: "j-1".into(),
                iat: 1_000,
                exp: 1_300,
            }
        );
    }

    #[test]
    fn a_token_is_renewed_shortly_before_it_expires() {
        let t = Instant::now();
        assert_eq!(renew_at(t, 600), t + Duration::from_secs(540));
        assert_eq!(renew_at(t, 3600), t + Duration::from_secs(3540));
        assert_eq!(renew_at(t, 20), t + Duration::from_secs(15));
        assert_eq!(renew_at(t, 2), t);
    }
}
