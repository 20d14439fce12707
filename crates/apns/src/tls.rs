//! TLS for the APNs connections: rustls with the ring provider, ALPN `h2`, the Mozilla
//! root store plus an optional extra CA (how a mock or a proxy is trusted), and an
//! optional client identity for certificate auth. There is no way to turn verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::secret::{Secret, SecretError, SecretSource};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot read CA file {path}: {reason}")]
    ReadCa { path: PathBuf, reason: String },
    #[error("CA file {0} holds no PEM certificate")]
    EmptyCa(PathBuf),
    #[error("CA file {path}: a certificate is not usable as a trust anchor: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("client certificate {source_name}: no PEM certificate found")]
    NoCertificate { source_name: String },
    #[error("client key {source_name}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { source_name: String },
    #[error("PKCS#12 file {source_name}: cannot open it (wrong password or not PKCS#12): {reason}")]
    Pkcs12 { source_name: String, reason: String },
    #[error("PKCS#12 file {source_name}: holds no private key with its certificate chain")]
    Pkcs12Empty { source_name: String },
    #[error("client certificate and key do not belong together or are unsupported: {0}")]
    Identity(String),
    #[error("building the TLS configuration failed: {0}")]
    Config(String),
}

/// A TLS client identity for certificate auth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    Pem {
        certificate: SecretSource,
        key: SecretSource,
    },
    Pkcs12 {
        file: SecretSource,
        /// Read when the identity is loaded; a trailing newline of a file is dropped.
        password: SecretSource,
    },
}

/// A loaded identity: the certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Secret<PrivateKeyDer<'static>>,
}

impl IdentitySource {
    pub fn load(&self) -> Result<Identity, TlsError> {
        match self {
            IdentitySource::Pem { certificate, key } => {
                let cert_pem = certificate.load()?;
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(cert_pem.expose())
                        .filter_map(Result::ok)
                        .collect();
                if chain.is_empty() {
                    return Err(TlsError::NoCertificate {
                        source_name: certificate.describe(),
                    });
                }
                let key_pem = key.load()?;
                let key_der = PrivateKeyDer::from_pem_slice(key_pem.expose()).map_err(|_| {
                    TlsError::NoKey {
                        source_name: key.describe(),
                    }
                })?;
                Ok(Identity {
                    chain,
                    key: Secret::new(key_der),
                })
            }
            IdentitySource::Pkcs12 { file, password } => {
                let data = file.load()?;
                let raw = password.load()?;
                let pw = String::from_utf8(raw.expose().clone()).map_err(|_| TlsError::Pkcs12 {
                    source_name: file.describe(),
                    reason: format!("the password ({}) is not UTF-8", password.describe()),
                })?;
                let pw = Secret::new(pw.trim_end_matches(['\r', '\n']).to_string());
                let store = p12_keystore::KeyStore::from_pkcs12(
                    data.expose(),
                    pw.expose(),
                    p12_keystore::Pkcs12ImportPolicy::Relaxed,
                )
                .map_err(|e| TlsError::Pkcs12 {
                    source_name: file.describe(),
                    reason: e.to_string(),
                })?;
                let (_, chain) =
                    store
                        .private_key_chain()
                        .ok_or_else(|| TlsError::Pkcs12Empty {
                            source_name: file.describe(),
                        })?;
                if chain.certs().is_empty() {
                    return Err(TlsError::Pkcs12Empty {
                        source_name: file.describe(),
                    });
                }
                let certs = chain
                    .certs()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_der().to_vec()))
                    .collect();
                let key = PrivateKeyDer::try_from(chain.key().as_der().to_vec())
                    .map_err(|e| TlsError::Identity(e.to_string()))?;
                Ok(Identity {
                    chain: certs,
                    key: Secret::new(key),
                })
            }
        }
    }
}

/// The crate's one crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// When a certificate (DER) expires, in seconds since the epoch; None if it does not
/// parse.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Read every certificate of a PEM CA file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::ReadCa {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::EmptyCa(path.to_path_buf()));
    }
    Ok(certs)
}

/// The client configuration for one app's connections.
pub fn client_config(
    extra_ca: Option<&Path>,
    identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in load_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key.expose().clone_key())
            .map_err(|e| TlsError::Identity(e.to_string()))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_and_identity_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a cert").unwrap();
        let e = client_config(Some(&empty), None).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let e = client_config(Some(&dir.path().join("missing.pem")), None).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let id = IdentitySource::Pem {
            certificate: SecretSource::File(empty.clone()),
            key: SecretSource::File(empty.clone()),
        };
        assert!(matches!(id.load(), Err(TlsError::NoCertificate { .. })));
        let id = IdentitySource::Pkcs12 {
            file: SecretSource::File(empty),
            password: SecretSource::Value(Secret::new("pw".into())),
        };
        let e = id.load().err().expect("not pkcs12");
        assert!(matches!(e, TlsError::Pkcs12 { .. }), "{e}");
        assert!(!e.to_string().contains("pw\""));
    }

    #[test]
    fn loads_pem_and_pkcs12_identities() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let pem = IdentitySource::Pem {
            certificate: SecretSource::Value(Secret::new(cert.pem())),
            key: SecretSource::Value(Secret::new(kp.serialize_pem())),
        };
        let id = pem.load().unwrap();
        assert_eq!(id.chain.len(), 1);
        assert!(client_config(None, Some(id)).is_ok());

        let p12 = pkcs12(cert.der(), &kp.serialize_der(), "secret");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.p12");
        std::fs::write(&path, p12).unwrap();
        let src = IdentitySource::Pkcs12 {
            file: SecretSource::File(path.clone()),
            password: SecretSource::Value(Secret::new("secret".into())),
        };
        let id = src.load().unwrap();
        assert_eq!(id.chain[0].as_ref(), cert.der().as_ref());
        let wrong = IdentitySource::Pkcs12 {
            file: SecretSource::File(path),
            password: SecretSource::Value(Secret::new("wrong".into())),
        };
        assert!(matches!(wrong.load(), Err(TlsError::Pkcs12 { .. })));
    }

    /// Write a PKCS#12 archive, as `openssl pkcs12 -export` would.
    pub(crate) fn pkcs12(cert_der: &[u8], key_der: &[u8], password: &str) -> Vec<u8> {
        let mut ks = p12_keystore::KeyStore::new();
        let chain = p12_keystore::PrivateKeyChain::new(
            b"1".to_vec(),
            p12_keystore::PrivateKey::from_der(key_der).unwrap(),
            vec![p12_keystore::Certificate::from_der(cert_der).unwrap()],
        );
        ks.add_entry("apns", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
        ks.writer(password).write().unwrap()
    }
}
