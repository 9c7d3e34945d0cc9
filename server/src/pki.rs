//! The server's own CA. Created once, on the first start against a store, and kept in the
//! store (`secrets/pki/ca`) so that every replica of one site serves under the same CA and
//! agents pin one digest. Each start issues a fresh server certificate from it (serverAuth
//! only, the addresses the server answers on as SANs); nothing else is ever signed, so the
//! pin means "a siderite server of this site" (see `siderite::tls`).
use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use siderite::tls::CaPin;

use crate::store::{Precondition, Store, StoreError, Txn, TxnOutcome};

pub const CA_KEY: &str = "secrets/pki/ca";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the stored CA ({CA_KEY}) is damaged: {0}")]
    Damaged(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
    common_name: String,
}

/// The CA: its certificate, its digest and what it takes to issue server certificates.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub pin: CaPin,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("pin", &self.pin).finish()
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "siderite");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Damaged(e.to_string()))
}

impl Pki {
    /// The site's CA from the store, created (once, whichever replica wins) when absent.
    pub async fn load_or_create(store: &dyn Store) -> Result<Self, PkiError> {
        for _ in 0..4 {
            if let Some(v) = store.get(CA_KEY).await? {
                let stored: StoredCa = serde_json::from_slice(&v.value)
                    .map_err(|e| PkiError::Damaged(e.to_string()))?;
                return Self::from_stored(stored);
            }
            let key = KeyPair::generate()?;
            let common_name = format!("siderite CA {}", uuid::Uuid::new_v4().simple());
            let mut params = ca_params(&common_name);
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(365 * 20);
            let cert = params.self_signed(&key)?;
            let stored = StoredCa {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                common_name,
            };
            let txn = Txn::new().require(Precondition::Absent(CA_KEY.into())).put(
                CA_KEY,
                serde_json::to_vec(&stored).expect("the CA serializes"),
            );
            if let TxnOutcome::Committed(_) = store.txn(txn).await? {
                tracing::info!("created the site CA");
                return Self::from_stored(stored);
            }
            // Another replica created it first: use theirs.
        }
        Err(PkiError::Damaged(
            "the CA kept changing while being read".into(),
        ))
    }

    fn from_stored(stored: StoredCa) -> Result<Self, PkiError> {
        let key =
            KeyPair::from_pem(&stored.key_pem).map_err(|e| PkiError::Damaged(e.to_string()))?;
        let ca_der = pem_to_der(&stored.cert_pem)?;
        Ok(Self {
            pin: CaPin::of(ca_der.as_ref()),
            ca_der,
            ca_pem: stored.cert_pem,
            issuer: Issuer::new(ca_params(&stored.common_name), key),
        })
    }

    /// A rustls server config with a new certificate for `names` (IP literals become IP
    /// SANs, the rest DNS names), chained to the CA, speaking h2 and http/1.1.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "siderite");
        dn.push(DnType::CommonName, "siderite server");
        params.distinguished_name = dn;
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            if !seen.insert(name.clone()) {
                continue;
            }
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                // A host name that is no DNS name (an underscore, a space) would make a
                // certificate some clients reject as a whole: leave it out.
                Err(_) if !is_dns_name(name) => {
                    tracing::warn!(%name, "not a DNS name: left out of the server certificate");
                    continue;
                }
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        #[allow(deprecated)] // ring: see siderite::tls
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 characters.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The names a server certificate should carry: the host name, `localhost`, every address
/// of every local interface, and what the operator added (`--tls-san`).
pub fn local_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(h) = nix::unistd::gethostname() {
        let h = h.to_string_lossy().into_owned();
        if !h.is_empty() {
            names.push(h);
        }
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                names.push(IpAddr::V4(v4.ip()).to_string());
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                let ip = v6.ip();
                // Link-local addresses need a zone; certificates cannot say one.
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    names.push(IpAddr::V6(ip).to_string());
                }
            }
        }
    }
    names.extend(extra.iter().cloned());
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn one_ca_per_store_and_server_certs_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let a = Pki::load_or_create(&store).await.unwrap();
        let b = Pki::load_or_create(&store).await.unwrap();
        assert_eq!(a.pin, b.pin, "a second start must find the same CA");
        let mut names = local_names(&["siderite.example".into()]);
        assert!(names.iter().any(|n| n == "127.0.0.1"), "{names:?}");
        names.push("bad_host name".into());
        b.server_config(&names).unwrap();
        assert!(is_dns_name("rack-1.example") && !is_dns_name("a_b") && !is_dns_name("-a"));
    }
}
