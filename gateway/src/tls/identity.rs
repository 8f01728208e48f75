//! Who a certificate says it is. Pure: DER in, identity out.
//!
//! A gateway's certificates name its region twice: a DNS name, and a URI
//! `urn:gateway:region:{code}`. The URI is what the federation trusts; DNS names are for
//! hostname checks.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI prefix that names a region in a certificate.
pub const REGION_URI_PREFIX: &str = "urn:gateway:region:";

/// The identity a region's certificates carry.
pub fn region_uri(region: &str) -> String {
    format!("{REGION_URI_PREFIX}{region}")
}

/// The signature key in a certificate, as far as the gateway uses it (to verify the
/// user-context tokens a peer signs with its client key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// An uncompressed P-256 point.
    EcP256(Vec<u8>),
    /// An uncompressed P-384 point.
    EcP384(Vec<u8>),
    /// A PKCS#1 RSAPublicKey.
    Rsa(Vec<u8>),
    Other,
}

/// What the gateway reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub subject: String,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub public_key: PublicKey,
    /// The issuer's name and the serial number, which together name the certificate in a CRL.
    pub issuer: String,
    pub serial: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate is not valid DER X.509: {0}")]
    Parse(String),
}

impl CertIdentity {
    /// The region named by a `urn:gateway:region:` URI, if exactly one is present.
    pub fn region(&self) -> Option<&str> {
        let mut regions = self
            .uris
            .iter()
            .filter_map(|u| u.strip_prefix(REGION_URI_PREFIX));
        match (regions.next(), regions.next()) {
            (Some(r), None) if !r.is_empty() => Some(r),
            _ => None,
        }
    }

    /// Does the certificate carry this identity (a URI SAN, or a DNS SAN)?
    pub fn has_identity(&self, identity: &str) -> bool {
        self.uris.iter().any(|u| u == identity)
            || self
                .dns_names
                .iter()
                .any(|d| d.eq_ignore_ascii_case(identity))
    }
}

/// Reads the identity from a DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<CertIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    let spki = cert.public_key();
    let key_bytes = spki.subject_public_key.data.to_vec();
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let public_key = match (alg.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => PublicKey::EcP256(key_bytes),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => PublicKey::EcP384(key_bytes),
        ("1.2.840.113549.1.1.1", _) => PublicKey::Rsa(key_bytes),
        _ => PublicKey::Other,
    };
    Ok(CertIdentity {
        subject: cert.subject().to_string(),
        uris,
        dns_names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        public_key,
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::devca::{DevCa, LeafKind};

    #[test]
    fn reads_region_and_key_from_a_dev_certificate() {
        let ca = DevCa::new("Test CA").unwrap();
        let leaf = ca
            .issue("dorset", LeafKind::Client, &["localhost".into()], 30)
            .unwrap();
        let id = parse_certificate(&leaf.cert_der).unwrap();
        assert_eq!(id.region(), Some("dorset"));
        assert!(id.has_identity("urn:gateway:region:dorset"));
        assert!(id.has_identity("dorset.gateway.local"));
        assert!(!id.has_identity("urn:gateway:region:hampshire"));
        assert!(matches!(id.public_key, PublicKey::EcP256(ref k) if k.len() == 65));
        assert!(id.not_after > id.not_before);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_certificate(b"not a certificate").is_err());
    }

    #[test]
    fn two_region_uris_name_no_region() {
        let id = CertIdentity {
            subject: String::new(),
            uris: vec![region_uri("a"), region_uri("b")],
            dns_names: vec![],
            not_before: 0,
            not_after: 0,
            public_key: PublicKey::Other,
            issuer: String::new(),
            serial: vec![],
        };
        assert_eq!(id.region(), None);
    }
}
