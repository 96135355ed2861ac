//! TLS material of the control plane: the server configuration (TLS 1.3 only,
//! client certificates verified against `ca_file`, CRLs honoured), the client
//! configuration the event pusher and `ctl` use (the agent's certificate as
//! identity, `ca_file` as the only root), client identities (SANs), notAfter.
//!
//! Owns: loading and validating a certificate/key pair as a unit. Never: keeps
//! serving a pair it has not fully validated — [`load`] either returns
//! complete material or an error naming the file and the cause.

use crate::config::ControlPlaneConfig;
use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// The one crypto provider (ring: no C/CMake build, FIPS not required here).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded, validated set of TLS material.
#[derive(Clone)]
pub struct Material {
    /// For the API listener.
    pub server: Arc<rustls::ServerConfig>,
    /// For outgoing connections (event pusher): agent identity, CA as root.
    pub client: rustls::ClientConfig,
    /// notAfter of the agent's certificate (unix seconds).
    pub cert_not_after: i64,
    /// notAfter of the CA (the earliest, when `ca_file` holds several).
    pub ca_not_after: i64,
    /// Serial of the agent's certificate, hex (for logs and audit).
    pub cert_serial: String,
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("parsing {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{what} {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key at `path` (PKCS#8, PKCS#1 or SEC1 PEM). The error never
/// quotes the file's content.
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        anyhow::anyhow!(
            "reading private key {}: {e} (expected a PEM private key)",
            path.display()
        )
    })
}

/// The client side alone (for `ctl`, which may run with an operator's own pair).
pub fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<rustls::ClientConfig> {
    let cas = read_certs(ca_file, "CA certificate")?;
    let certs = read_certs(cert_file, "certificate")?;
    let key = read_key(key_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in cas {
        roots
            .add(c)
            .with_context(|| format!("adding CA from {}", ca_file.display()))?;
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .with_context(|| {
            format!(
                "using {} with {} as client identity",
                cert_file.display(),
                key_file.display()
            )
        })
}

/// Load and validate everything `[control_plane]` names.
pub fn load(cp: &ControlPlaneConfig) -> anyhow::Result<Material> {
    let certs = read_certs(&cp.cert_file, "certificate")?;
    let key = read_key(&cp.key_file)?;
    let cas = read_certs(&cp.ca_file, "CA certificate")?;
    let prov = provider();

    let signing = prov
        .key_provider
        .load_private_key(key.clone_key())
        .with_context(|| format!("loading private key {}", cp.key_file.display()))?;
    let certified = CertifiedKey::new(certs.clone(), signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => anyhow::bail!(
            "private key {} does not belong to certificate {} ({e}): install the matching pair",
            cp.key_file.display(),
            cp.cert_file.display()
        ),
    }
    let (cert_not_after, cert_serial) = not_after_and_serial(&certs[0])
        .with_context(|| format!("parsing certificate {}", cp.cert_file.display()))?;
    let now = chrono::Utc::now().timestamp();
    if cert_not_after <= now {
        anyhow::bail!(
            "certificate {} expired at {}: install a renewed certificate",
            cp.cert_file.display(),
            chrono::DateTime::from_timestamp(cert_not_after, 0).unwrap_or_default()
        );
    }
    let mut ca_not_after = i64::MAX;
    let mut roots = rustls::RootCertStore::empty();
    for c in &cas {
        let (na, _) = not_after_and_serial(c)
            .with_context(|| format!("parsing CA certificate {}", cp.ca_file.display()))?;
        ca_not_after = ca_not_after.min(na);
        roots
            .add(c.clone())
            .with_context(|| format!("adding CA from {}", cp.ca_file.display()))?;
    }
    let roots = Arc::new(roots);
    let crls = match &cp.crl_file {
        None => vec![],
        Some(p) => CertificateRevocationListDer::pem_file_iter(p)
            .map_err(|e| anyhow::anyhow!("reading CRL {}: {e}", p.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("parsing CRL {}: {e}", p.display()))?,
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), prov.clone())
        .with_crls(crls)
        .build()
        .with_context(|| format!("building the client verifier from {}", cp.ca_file.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(prov.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        // One certificate whatever the SNI: clients reach the agent by IP too.
        .with_cert_resolver(Arc::new(Single(Arc::new(certified))));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];

    let client = rustls::ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .with_context(|| format!("using {} as client identity", cp.cert_file.display()))?;
    Ok(Material {
        server: Arc::new(server),
        client,
        cert_not_after,
        ca_not_after,
        cert_serial,
    })
}

#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn not_after_and_serial(der: &CertificateDer<'_>) -> anyhow::Result<(i64, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
    Ok((
        cert.validity().not_after.timestamp(),
        cert.tbs_certificate.raw_serial_as_string(),
    ))
}

/// Who a (verified) client certificate names: its DNS and URI SANs, and a
/// label for logs (first SAN, else the subject).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// DNS and URI subjectAltNames.
    pub names: Vec<String>,
    /// For the audit `actor`.
    pub label: String,
}

impl Identity {
    /// The identity in a DER certificate.
    pub fn of(der: &[u8]) -> Identity {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Identity {
                names: vec![],
                label: "unparsable-certificate".into(),
            };
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                match gn {
                    GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    GeneralName::URI(u) => names.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let label = names
            .first()
            .cloned()
            .unwrap_or_else(|| format!("subject:{}", cert.subject()));
        Identity { names, label }
    }

    /// The allowed name this identity carries, if any (exact, case-insensitive
    /// for DNS names as DNS is).
    pub fn allowed<'a>(&self, allowed: &'a [String]) -> Option<&'a str> {
        allowed
            .iter()
            .find(|a| self.names.iter().any(|n| n.eq_ignore_ascii_case(a)))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_allowed_only_by_an_exact_san() {
        let id = Identity {
            names: vec!["cp.example".into(), "spiffe://cloudnx/ops".into()],
            label: "cp.example".into(),
        };
        let table: &[(&[&str], Option<&str>)] = &[
            (&["cp.example"], Some("cp.example")),
            (&["CP.Example"], Some("CP.Example")),
            (&["spiffe://cloudnx/ops"], Some("spiffe://cloudnx/ops")),
            (&["example"], None),
            (&["cp.example.evil"], None),
            (&[], None),
        ];
        for (allowed, want) in table {
            let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(id.allowed(&allowed), *want, "{allowed:?}");
        }
        assert_eq!(Identity::default().allowed(&["".into()]), None);
    }
}
