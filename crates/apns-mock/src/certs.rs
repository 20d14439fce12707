//! Certificates for the mock APNs: a CA made at start, the server certificate it signs
//! (localhost, 127.0.0.1 and any extra names), client identities for certificate-auth
//! tests, and a `.p8`-format signing key for token-auth demos.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
#[error("generating a certificate failed: {0}")]
pub struct CertError(#[from] rcgen::Error);

/// The mock's private CA.
pub struct MockCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

impl MockCa {
    pub fn new() -> Result<MockCa, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "apns-worker mock APNs CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        Ok(MockCa {
            issuer: CertifiedIssuer::self_signed(params, key)?,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn issue(&self, mut params: CertificateParams, cn: &str) -> Result<Issued, CertError> {
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// The server certificate, for `localhost`, `127.0.0.1`, `::1` and `extra` names.
    pub fn server_cert(&self, extra: &[String]) -> Result<Issued, CertError> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "mock APNs")
    }

    /// A client identity for certificate auth; its common name is the bundle id.
    pub fn client_cert(&self, bundle_id: &str) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, &format!("Apple Push Services: {bundle_id}"))
    }
}

/// A new ES256 signing key in Apple's `.p8` format (PKCS#8 PEM), and its public key PEM.
pub fn generate_signing_key() -> Result<(String, String), CertError> {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok((kp.serialize_pem(), kp.public_key_pem()))
}
