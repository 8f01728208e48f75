//! Who is asking. Two kinds of bearer token:
//!
//! * the clinician's token from the identity provider (checked against configured public keys:
//!   signature, `iss`, `aud`, `exp`, `nbf`; only asymmetric algorithms, so `alg: none` and
//!   HMAC-keyed-with-the-public-key forgeries fail);
//! * the user-context token a gateway forwards to a peer, signed with the key of the client
//!   certificate it presents, so the answering region verifies it with the public key from the
//!   TLS handshake and knows the region in the token is the region on the certificate.
//!
//! Pure apart from reading key files: no sockets. The identity provider's keys, when they
//! come from its OpenID discovery document, are fetched by [`discovery`]; the scopes a token
//! grants are read by [`scopes`].

pub mod discovery;
pub mod scopes;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};

use crate::tls::identity::{CertIdentity, PublicKey};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;
/// Lifetime of a forwarded user-context token, in seconds.
pub const FORWARD_TTL_SECONDS: i64 = 60;

/// The end user, as the identity provider vouched for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserContext {
    /// The user's id at the identity provider (`sub`).
    pub user_id: String,
    /// NHS national RBAC role code, e.g. R8000 (clinical practitioner).
    pub role: String,
    /// ODS code of the user's organisation.
    pub organisation: String,
    /// HL7 v3 ActReason, e.g. TREAT.
    pub purpose_of_use: Option<String>,
    /// The reason given for emergency (break-glass) access, when the clinician broke the glass.
    #[serde(default)]
    pub break_glass: Option<String>,
    /// The SMART scopes that bound what the user may see: the token's `scope`, or the
    /// configured default for a token without one. `None`: no bound beyond the role (a
    /// context forwarded by a peer, whose own gateway applied them; or no default set).
    #[serde(default)]
    pub scope: Option<String>,
    /// The patient the token is about (its SMART launch context), by NHS number: the user may
    /// ask about no other patient.
    #[serde(default)]
    pub patient: Option<String>,
}

impl UserContext {
    /// The resource types the user's scopes grant for `interaction` (`*` for every type), as
    /// the policies receive them.
    pub fn granted_types(
        &self,
        interaction: scopes::Interaction,
    ) -> std::collections::BTreeSet<String> {
        match &self.scope {
            None => std::collections::BTreeSet::from(["*".to_owned()]),
            Some(s) => scopes::Scopes::parse(s, self.patient.is_some()).granted_types(interaction),
        }
    }

    /// Whether the user's scopes grant `interaction` on `resource_type`.
    pub fn may(&self, resource_type: &str, interaction: scopes::Interaction) -> bool {
        match &self.scope {
            None => true,
            Some(s) => {
                scopes::Scopes::parse(s, self.patient.is_some()).allows(resource_type, interaction)
            }
        }
    }

    /// Whether the user may ask about the patient with this NHS number: any, unless the token
    /// is about one patient.
    pub fn may_ask_about(&self, nhs: &str) -> bool {
        self.patient.as_deref().is_none_or(|p| p == nhs)
    }
}

/// The names of the claims the gateway reads from a clinician's token, so that a region's own
/// identity provider can be used as it issues them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// The NHS national RBAC role code.
    pub role: String,
    /// The ODS code of the user's organisation.
    pub organisation: String,
    /// The HL7 v3 purpose of use.
    pub purpose_of_use: String,
    /// The SMART launch patient (its NHS number).
    pub patient: String,
    /// The SMART scopes (a space-separated string, or an array of strings).
    pub scope: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            role: "role".into(),
            organisation: "org".into(),
            purpose_of_use: "purpose_of_use".into(),
            patient: "patient".into(),
            scope: "scope".into(),
        }
    }
}

/// How the claims of a verified token become a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    pub names: ClaimNames,
    /// The scopes of a token that carries none; `None`: the role alone decides.
    pub default_scopes: Option<String>,
}

impl ClaimRules {
    /// The user a token's verified claims describe. Pure.
    pub fn user(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<UserContext, AuthError> {
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let n = &self.names;
        let scope = match claims.get(&n.scope) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(a)) => Some(
                a.iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => claims
                .get("scp")
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(serde_json::Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .or_else(|| self.default_scopes.clone()),
        };
        let patient = text(&n.patient).map(|p| p.strip_prefix("Patient/").unwrap_or(&p).to_owned());
        Ok(UserContext {
            user_id: text("sub").ok_or(AuthError::MissingClaim("sub".into()))?,
            role: text(&n.role).ok_or_else(|| AuthError::MissingClaim(n.role.clone()))?,
            organisation: text(&n.organisation)
                .ok_or_else(|| AuthError::MissingClaim(n.organisation.clone()))?,
            purpose_of_use: text(&n.purpose_of_use),
            break_glass: None,
            scope,
            patient,
        })
    }
}

/// Why a token was refused. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send 'Authorization: Bearer <token>'")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error(
        "the token's algorithm is not accepted (only asymmetric signatures: RS*, PS*, ES*, EdDSA)"
    )]
    Algorithm,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token says it was issued in the future")]
    IssuedInFuture,
    #[error("the token's lifetime (exp - iat) is longer than this gateway accepts")]
    TooLong,
    #[error("the token was issued by an issuer this gateway does not trust")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token lacks the claim '{0}'")]
    MissingClaim(String),
    #[error("no configured key can verify this token")]
    NoKey,
    #[error(
        "the forwarded user context names region '{claimed}', but the certificate is region '{certified}'"
    )]
    RegionMismatch { claimed: String, certified: String },
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        ExpiredSignature => AuthError::Expired,
        ImmatureSignature => AuthError::NotYetValid,
        InvalidIssuer => AuthError::WrongIssuer,
        InvalidAudience => AuthError::WrongAudience,
        InvalidSignature | InvalidEcdsaKey | InvalidRsaKey(_) => AuthError::BadSignature,
        MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        InvalidAlgorithm | InvalidAlgorithmName => AuthError::Algorithm,
        _ => AuthError::Malformed,
    }
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A verification key with its optional key id.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}: no usable public key (PEM 'PUBLIC KEY' blocks of EC, RSA or Ed25519 keys)")]
    NoKeys(String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Keys from PEM text holding one or more `PUBLIC KEY` (or `RSA PUBLIC KEY`) blocks.
pub fn keys_from_pem(pem_text: &str, source: &str) -> Result<Vec<VerifyKey>, KeyError> {
    let mut keys = Vec::new();
    for block in pem_blocks(pem_text) {
        let key = DecodingKey::from_ec_pem(block.as_bytes())
            .or_else(|_| DecodingKey::from_rsa_pem(block.as_bytes()))
            .or_else(|_| DecodingKey::from_ed_pem(block.as_bytes()))
            .map_err(|e| KeyError::Invalid {
                path: source.to_owned(),
                message: e.to_string(),
            })?;
        keys.push(VerifyKey { kid: None, key });
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys(source.to_owned()));
    }
    Ok(keys)
}

/// Keys from a JWKS document (`{"keys": [...]}`); keys with a `kid` are chosen by the token's
/// `kid`. Symmetric keys are refused; keys meant for encryption only (`use: enc`) are left out.
pub fn keys_from_jwks(jwks_text: &str, source: &str) -> Result<Vec<VerifyKey>, KeyError> {
    let invalid = |message: String| KeyError::Invalid {
        path: source.to_owned(),
        message,
    };
    let set: JwkSet = serde_json::from_str(jwks_text).map_err(|e| invalid(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(e.to_string()))?;
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return Err(invalid("symmetric keys are not accepted".into()));
        }
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys(source.to_owned()));
    }
    Ok(keys)
}

/// Verifies clinician tokens from one identity provider.
#[derive(Clone)]
pub struct ClinicianVerifier {
    issuer: String,
    audience: String,
    /// The provider's keys; replaced whole when they are fetched again ([`discovery`]).
    keys: std::sync::Arc<arc_swap::ArcSwap<Vec<VerifyKey>>>,
    rules: ClaimRules,
    /// Tokens already verified (by SHA-256), with their `exp`: a clinician's application
    /// sends the same token with every request, and checking its signature again each time
    /// cost a tenth of the gateway's time. A hit is served only before `exp`.
    verified: moka::sync::Cache<[u8; 32], (UserContext, i64)>,
}

/// How many verified tokens are remembered, and for how long at most.
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(300);

fn verified_cache() -> moka::sync::Cache<[u8; 32], (UserContext, i64)> {
    moka::sync::Cache::builder()
        .max_capacity(VERIFIED_TOKENS)
        .time_to_live(VERIFIED_FOR)
        .build()
}

impl ClinicianVerifier {
    /// A verifier of tokens from `issuer` for `audience`, checked against `keys` (which may be
    /// empty until the provider's are fetched: every token is refused meanwhile).
    pub fn new(issuer: &str, audience: &str, keys: Vec<VerifyKey>, rules: ClaimRules) -> Self {
        ClinicianVerifier {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(keys)),
            rules,
            verified: verified_cache(),
        }
    }

    /// Keys from PEM text (see [`keys_from_pem`]), the default claim names.
    pub fn from_pem(
        issuer: &str,
        audience: &str,
        pem_text: &str,
        source: &str,
    ) -> Result<Self, KeyError> {
        Ok(Self::new(
            issuer,
            audience,
            keys_from_pem(pem_text, source)?,
            ClaimRules::default(),
        ))
    }

    /// Keys from a JWKS document (see [`keys_from_jwks`]), the default claim names.
    pub fn from_jwks(
        issuer: &str,
        audience: &str,
        jwks_text: &str,
        source: &str,
    ) -> Result<Self, KeyError> {
        Ok(Self::new(
            issuer,
            audience,
            keys_from_jwks(jwks_text, source)?,
            ClaimRules::default(),
        ))
    }

    /// The same keys and issuer, reading claims by `rules`.
    pub fn with_rules(mut self, rules: ClaimRules) -> Self {
        self.rules = rules;
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Replaces the keys (the provider published a new set). Tokens already verified stay
    /// verified until they expire or leave the cache.
    pub fn replace_keys(&self, keys: Vec<VerifyKey>) {
        self.keys.store(std::sync::Arc::new(keys));
    }

    /// How many keys are held now.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether a key with this id is held.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys
            .load()
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Checks a token and returns the user it vouches for.
    pub fn verify(&self, token: &str) -> Result<UserContext, AuthError> {
        let digest: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(token)).into();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some((user, exp)) = self.verified.get(&digest) {
            if now <= exp + LEEWAY_SECONDS as i64 {
                return Ok(user);
            }
            self.verified.invalidate(&digest);
        }
        let (user, exp) = self.verify_signature(token)?;
        self.verified.insert(digest, (user.clone(), exp));
        Ok(user)
    }

    fn verify_signature(&self, token: &str) -> Result<(UserContext, i64), AuthError> {
        let header = decode_header(token).map_err(|_| header_error(token))?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let keys = self.keys.load();
        let candidates = keys
            .iter()
            .filter(|k| k.key.family() == header.alg.family())
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            });
        let mut last = AuthError::NoKey;
        for k in candidates {
            match decode::<serde_json::Map<String, serde_json::Value>>(token, &k.key, &validation) {
                Ok(data) => {
                    let exp = data
                        .claims
                        .get("exp")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0);
                    return Ok((self.rules.user(&data.claims)?, exp));
                }
                Err(e) => {
                    last = map_jwt_error(&e);
                    // A signature from another key: try the next key. Anything else is final.
                    if last != AuthError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// The key id a token names in its header, if it can be read.
pub fn token_kid(token: &str) -> Option<String> {
    decode_header(token).ok().and_then(|h| h.kid)
}

/// A header jsonwebtoken cannot read: if it names an algorithm at all (`none`, say), the
/// algorithm is what is wrong; otherwise the token is malformed.
fn header_error(token: &str) -> AuthError {
    use base64::Engine;
    let first = token.split('.').next().unwrap_or("");
    let alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    if alg.is_some() {
        AuthError::Algorithm
    } else {
        AuthError::Malformed
    }
}

/// Splits PEM text into its blocks.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(format!("{line}\n"));
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

/// The claims a gateway forwards to a peer.
#[derive(Debug, Serialize, Deserialize)]
struct ForwardedClaims {
    iss: String,
    aud: String,
    sub: String,
    role: String,
    org: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose_of_use: Option<String>,
    /// The clinician's break-glass reason, so the answering region can decide and audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    break_glass: Option<String>,
    iat: i64,
    exp: i64,
    /// The request id, so both regions' audit records can be joined.
    jti: String,
}

/// Signs user-context tokens with this region's client-certificate key.
#[derive(Clone)]
pub struct ForwardSigner {
    issuer: String,
    algorithm: Algorithm,
    key: SigningKey,
}

/// The client key, ready to sign. jsonwebtoken 11 rebuilds and re-checks an ECDSA key pair
/// from its PKCS#8 bytes for every token it encodes (deriving the public key each time), which
/// doubled the cost of the tokens a fan-out signs, one per peer; so an EC key is held as an
/// aws-lc key pair and its tokens written here in the JWS compact form jsonwebtoken writes
/// (and verifies, on the peer).
#[derive(Clone)]
enum SigningKey {
    Ec(std::sync::Arc<aws_lc_rs::signature::EcdsaKeyPair>),
    Other(EncodingKey),
}

/// An EC private key in PKCS#8 PEM, held for signing with `algorithm`.
fn ec_key_pair(
    key_pem: &str,
    algorithm: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
) -> Option<aws_lc_rs::signature::EcdsaKeyPair> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
    aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(algorithm, der.secret_pkcs8_der()).ok()
}

impl ForwardSigner {
    /// `issuer` is this region's identity (`urn:gateway:region:{code}`); `key_pem` the PKCS#8
    /// private key of its client certificate; `public_key` that certificate's key.
    pub fn new(issuer: &str, key_pem: &str, public_key: &PublicKey) -> Result<Self, KeyError> {
        let invalid = |m: String| KeyError::Invalid {
            path: "client key".into(),
            message: m,
        };
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let ec = |algorithm, signing| match ec_key_pair(key_pem, signing) {
            Some(pair) => (algorithm, Ok(SigningKey::Ec(std::sync::Arc::new(pair)))),
            // Not PKCS#8: jsonwebtoken says what is wrong with it.
            None => (
                algorithm,
                EncodingKey::from_ec_pem(key_pem.as_bytes()).map(SigningKey::Other),
            ),
        };
        let (algorithm, key) = match public_key {
            PublicKey::EcP256(_) => ec(Algorithm::ES256, &ECDSA_P256_SHA256_FIXED_SIGNING),
            PublicKey::EcP384(_) => ec(Algorithm::ES384, &ECDSA_P384_SHA384_FIXED_SIGNING),
            PublicKey::Rsa(_) => (
                Algorithm::PS256,
                EncodingKey::from_rsa_pem(key_pem.as_bytes()).map(SigningKey::Other),
            ),
            PublicKey::Other => {
                return Err(invalid(
                    "the client certificate's key type cannot sign tokens".into(),
                ));
            }
        };
        Ok(ForwardSigner {
            issuer: issuer.to_owned(),
            algorithm,
            key: key.map_err(|e| invalid(e.to_string()))?,
        })
    }

    pub fn sign(
        &self,
        user: &UserContext,
        audience: &str,
        request_id: &str,
        now: i64,
    ) -> Result<String, AuthError> {
        let claims = ForwardedClaims {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            sub: user.user_id.clone(),
            role: user.role.clone(),
            org: user.organisation.clone(),
            purpose_of_use: user.purpose_of_use.clone(),
            break_glass: user.break_glass.clone(),
            iat: now,
            exp: now + FORWARD_TTL_SECONDS,
            jti: request_id.to_owned(),
        };
        self.sign_claims(&claims)
    }
}

impl ForwardSigner {
    /// Signs any claims (a JWS) with this region's key: the audit trail's checkpoints.
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        let header = Header::new(self.algorithm);
        match &self.key {
            SigningKey::Other(key) => {
                encode(&header, claims, key).map_err(|_| AuthError::Malformed)
            }
            SigningKey::Ec(pair) => {
                use base64::Engine;
                let b64 =
                    |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                let header = serde_json::to_vec(&header).map_err(|_| AuthError::Malformed)?;
                let claims = serde_json::to_vec(claims).map_err(|_| AuthError::Malformed)?;
                let mut token = format!("{}.{}", b64(&header), b64(&claims));
                let signature = pair
                    .sign(&aws_lc_rs::rand::SystemRandom::new(), token.as_bytes())
                    .map_err(|_| AuthError::Malformed)?;
                token.push('.');
                token.push_str(&b64(signature.as_ref()));
                Ok(token)
            }
        }
    }
}

/// Verifies a JWS signed by the key of `certificate` (no expiry or audience: a checkpoint is
/// a statement about the past) and returns its claims.
pub fn verify_signed<T: serde::de::DeserializeOwned>(
    token: &str,
    certificate: &CertIdentity,
) -> Result<T, AuthError> {
    let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
    let (key, allowed): (DecodingKey, &[Algorithm]) = match &certificate.public_key {
        PublicKey::EcP256(point) => (DecodingKey::from_ec_der(point), &[Algorithm::ES256]),
        PublicKey::EcP384(point) => (DecodingKey::from_ec_der(point), &[Algorithm::ES384]),
        PublicKey::Rsa(der) => (DecodingKey::from_rsa_der(der), &[Algorithm::PS256]),
        PublicKey::Other => return Err(AuthError::NoKey),
    };
    if !allowed.contains(&header.alg) {
        return Err(AuthError::Algorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    decode::<T>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| map_jwt_error(&e))
}

/// A verified forwarded context: the user, and the calling region's request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedContext {
    pub user: UserContext,
    pub request_id: String,
}

/// What a forwarded token is checked against, besides its signature: who sent it, who it is
/// for, the time now and the longest lifetime (`exp - iat`) accepted.
#[derive(Debug, Clone, Copy)]
pub struct ForwardedCheck<'a> {
    /// The identity configured for the peer the certificate was mapped to.
    pub peer_identity: &'a str,
    /// This region's identity (the token's audience).
    pub own_identity: &'a str,
    pub now: i64,
    pub max_lifetime_s: i64,
}

/// Verifies a forwarded token against the public key of the client certificate that carried it.
/// Besides the signature, issuer, audience and `exp`: `iat` may not be in the future beyond the
/// leeway, and `exp - iat` may not exceed the configured lifetime, so that a holder of a peer's
/// key cannot mint a context that stays good for long.
pub fn verify_forwarded(
    token: &str,
    certificate: &CertIdentity,
    check: ForwardedCheck<'_>,
) -> Result<ForwardedContext, AuthError> {
    let ForwardedCheck {
        peer_identity,
        own_identity,
        now,
        max_lifetime_s,
    } = check;
    let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
    let (key, allowed): (DecodingKey, &[Algorithm]) = match &certificate.public_key {
        PublicKey::EcP256(point) => (DecodingKey::from_ec_der(point), &[Algorithm::ES256]),
        PublicKey::EcP384(point) => (DecodingKey::from_ec_der(point), &[Algorithm::ES384]),
        PublicKey::Rsa(der) => (
            DecodingKey::from_rsa_der(der),
            &[Algorithm::PS256, Algorithm::RS256],
        ),
        PublicKey::Other => return Err(AuthError::NoKey),
    };
    if !allowed.contains(&header.alg) {
        return Err(AuthError::Algorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_audience(&[own_identity]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data =
        decode::<ForwardedClaims>(token, &key, &validation).map_err(|e| map_jwt_error(&e))?;
    let c = data.claims;
    if c.iss != peer_identity {
        return Err(AuthError::RegionMismatch {
            claimed: c.iss,
            certified: peer_identity.to_owned(),
        });
    }
    if c.iat > now + LEEWAY_SECONDS as i64 {
        return Err(AuthError::IssuedInFuture);
    }
    if c.exp - c.iat > max_lifetime_s {
        return Err(AuthError::TooLong);
    }
    Ok(ForwardedContext {
        user: UserContext {
            user_id: c.sub,
            role: c.role,
            organisation: c.org,
            purpose_of_use: c.purpose_of_use,
            break_glass: c.break_glass,
            scope: None,
            patient: None,
        },
        request_id: c.jti,
    })
}

/// Mints a clinician token with a development IdP key (`gateway demo`, `gateway token`, tests).
#[derive(Debug, Serialize)]
pub struct DevTokenClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: String,
    pub org: String,
    pub purpose_of_use: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

pub fn mint_dev_token(
    claims: &DevTokenClaims,
    idp_key_pem: &str,
    kid: Option<&str>,
) -> Result<String, KeyError> {
    let key = EncodingKey::from_ec_pem(idp_key_pem.as_bytes()).map_err(|e| KeyError::Invalid {
        path: "IdP key".into(),
        message: e.to_string(),
    })?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).map_err(|e| KeyError::Invalid {
        path: "IdP key".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
