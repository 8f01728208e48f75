//! TLS: loading certificates and keys, the server configurations of the two faces (the
//! federation face requires a client certificate from the federation CA), and the client
//! configuration used to call a peer, which also checks that the peer's certificate names the
//! region we meant to call.

pub mod devca;
pub mod identity;

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use identity::parse_certificate;

/// ALPN: HTTP/2 preferred, HTTP/1.1 accepted.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// Installs the process-wide crypto provider (aws-lc-rs). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A certificate chain and its key, read from PEM files.
#[derive(Debug)]
pub struct KeyMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The key as PEM, for signing the user-context tokens sent to peers.
    pub key_pem: String,
}

impl Clone for KeyMaterial {
    fn clone(&self) -> Self {
        KeyMaterial {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// Every PEM block of one kind in a file.
fn read_pem_all<T: PemObject>(path: &Path) -> Result<Vec<T>, TlsError> {
    let read_error = |e: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    T::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = read_pem_all::<CertificateDer<'static>>(path)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Reads certificate revocation lists (PEM `X509 CRL` blocks) from each file.
pub fn load_crls(
    paths: &[std::path::PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let crls = read_pem_all::<CertificateRevocationListDer<'static>>(path)?;
        if crls.is_empty() {
            return Err(TlsError::Read {
                path: path.display().to_string(),
                message: "no X509 CRL in it".into(),
            });
        }
        out.extend(crls);
    }
    Ok(out)
}

pub fn load_key_material(cert: &Path, key: &Path) -> Result<KeyMaterial, TlsError> {
    let chain = load_certs(cert)?;
    let shown = key.display().to_string();
    let key_pem = std::fs::read_to_string(key).map_err(|e| TlsError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Read {
        path: shown,
        message: e.to_string(),
    })?;
    Ok(KeyMaterial {
        chain,
        key,
        key_pem,
    })
}

pub fn root_store(cas: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(roots)
}

/// The clinician face: server authentication only.
pub fn clinician_server_config(server: &KeyMaterial) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(server.chain.clone(), server.key.clone_key())?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The federation face: a client certificate chaining to the federation CA is required; a
/// handshake without one fails before any HTTP is read.
pub fn federation_server_config(
    server: &KeyMaterial,
    federation_ca: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<ServerConfig, TlsError> {
    let mut builder = WebPkiClientVerifier::builder(Arc::new(root_store(federation_ca)?));
    if !crls.is_empty() {
        // A peer certificate a CRL lists is refused; one whose issuer has no CRL here passes.
        builder = builder
            .with_crls(crls.to_vec())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The client configuration for calling one peer: trust only the federation CA, present this
/// region's client certificate, and accept the server only if its certificate carries the
/// identity configured for that peer.
pub fn peer_client_config(
    federation_ca: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
    client: &KeyMaterial,
    expected_identity: &str,
) -> Result<ClientConfig, TlsError> {
    let mut builder =
        rustls::client::WebPkiServerVerifier::builder(Arc::new(root_store(federation_ca)?));
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls.to_vec())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let inner = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = ExpectIdentity {
        inner,
        expected: expected_identity.to_owned(),
    };
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The standard WebPKI checks (chain, validity, hostname), then the region identity.
#[derive(Debug)]
struct ExpectIdentity {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: String,
}

/// rustls shows this error with `Debug`, so both forms read as a sentence.
struct IdentityMismatch(String);

impl std::fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the peer's certificate does not carry the expected identity {}",
            self.0
        )
    }
}

impl std::error::Error for IdentityMismatch {}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let identity = parse_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if identity.has_identity(&self.expected) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch(self.expected.clone()))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
