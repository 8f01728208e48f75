//! The development certificate authority (`gateway certs init`, the demo and the tests):
//! one federation CA, and for each region a server and a client certificate whose SANs name
//! the region by DNS name (`{region}.gateway.local`) and by URI (`urn:gateway:region:{region}`).
//! Production regions get their certificates from the federation's real CA; these are for
//! development only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use super::identity::region_uri;

#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("'{0}' is not a valid region code (lower-case letters, digits and '-')")]
    BadRegion(String),
    #[error("revocation list: {0}")]
    Crl(String),
}

/// Server certificates are for the gateway's listeners; client certificates for calling peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    Server,
    Client,
}

/// An issued certificate and its private key, in memory.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

/// A CA that can issue certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// True for codes usable in DNS names and URIs.
pub fn valid_region_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 63
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !code.starts_with('-')
}

impl DevCa {
    pub fn new(name: &str) -> Result<Self, DevCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(
            DnType::OrganizationName,
            "Regional federation (development)",
        );
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate revocation list (PEM) listing the given certificates (PEM), valid for a
    /// week. An empty list is a CRL that revokes nothing.
    pub fn crl(&self, revoked_pems: &[&str], number: u64) -> Result<String, DevCaError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for pem in revoked_pems {
            let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| DevCaError::Crl(e.to_string()))?;
            let cert = super::identity::parse_certificate(der.as_ref())
                .map_err(|e| DevCaError::Crl(e.to_string()))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&cert.serial),
                revocation_time: now - Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(7),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issues a certificate for a region, valid for `days` from an hour ago.
    pub fn issue(
        &self,
        region: &str,
        kind: LeafKind,
        extra_hosts: &[String],
        days: i64,
    ) -> Result<Leaf, DevCaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            region,
            kind,
            extra_hosts,
            now - Duration::hours(1),
            now + Duration::days(days),
        )
    }

    /// Issues a certificate with explicit validity (tests use it for expired certificates).
    pub fn issue_between(
        &self,
        region: &str,
        kind: LeafKind,
        extra_hosts: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Leaf, DevCaError> {
        if !valid_region_code(region) {
            return Err(DevCaError::BadRegion(region.to_owned()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        let role = match kind {
            LeafKind::Server => "server",
            LeafKind::Client => "client",
        };
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{region} gateway {role}"));
        params.distinguished_name.push(
            DnType::OrganizationName,
            "Regional federation (development)",
        );
        let mut sans = vec![
            SanType::DnsName(format!("{region}.gateway.local").try_into()?),
            SanType::URI(region_uri(region).try_into()?),
        ];
        if kind == LeafKind::Server {
            for host in extra_hosts {
                sans.push(match host.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.clone().try_into()?),
                });
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match kind {
            LeafKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
            LeafKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files `certs init` writes for one region.
pub fn region_paths(dir: &Path, region: &str) -> [PathBuf; 4] {
    let d = dir.join(region);
    [
        d.join("server.pem"),
        d.join("server.key"),
        d.join("client.pem"),
        d.join("client.key"),
    ]
}

/// Writes a CA and each region's certificates under `dir`:
/// `ca.pem`, `ca.key`, and `{region}/server.pem|server.key|client.pem|client.key`.
/// Keys are written with mode 0600.
pub fn init_dir(
    dir: &Path,
    regions: &[String],
    hosts: &[String],
    days: i64,
) -> Result<Vec<PathBuf>, DevCaError> {
    for r in regions {
        if !valid_region_code(r) {
            return Err(DevCaError::BadRegion(r.clone()));
        }
    }
    let ca = DevCa::new("Federation development CA")?;
    let mut written = vec![
        write(&dir.join("ca.pem"), &ca.cert_pem, false)?,
        write(&dir.join("ca.key"), &ca.key_pem, true)?,
    ];
    for region in regions {
        let [server_pem, server_key, client_pem, client_key] = region_paths(dir, region);
        let server = ca.issue(region, LeafKind::Server, hosts, days)?;
        let client = ca.issue(region, LeafKind::Client, &[], days)?;
        written.push(write(&server_pem, &server.cert_pem, false)?);
        written.push(write(&server_key, &server.key_pem, true)?);
        written.push(write(&client_pem, &client.cert_pem, false)?);
        written.push(write(&client_key, &client.key_pem, true)?);
    }
    Ok(written)
}

/// Writes a file, creating its directory; secrets get mode 0600 from creation (never readable
/// by others, not even briefly).
pub fn write(path: &Path, content: &str, secret: bool) -> Result<PathBuf, DevCaError> {
    use std::io::Write;
    let io = |source| DevCaError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(content.as_bytes()).map_err(io)?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_dir(
            dir.path(),
            &["dorset".into(), "wiltshire".into()],
            &["localhost".into(), "127.0.0.1".into()],
            30,
        )
        .unwrap();
        assert_eq!(files.len(), 2 + 2 * 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("dorset/client.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pem = std::fs::read_to_string(dir.path().join("wiltshire/server.pem")).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn refuses_bad_region_codes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init_dir(dir.path(), &["Dorset".into()], &[], 30),
            Err(DevCaError::BadRegion(_))
        ));
        assert!(matches!(
            init_dir(dir.path(), &["a/b".into()], &[], 30),
            Err(DevCaError::BadRegion(_))
        ));
    }
}
