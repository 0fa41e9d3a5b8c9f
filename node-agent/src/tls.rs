//! TLS for the agent: the pinned-CA verifier used to enroll (no trust on first
//! use: the bastion's chain must contain the CA whose hash the join command
//! carries), the mTLS client configuration of the channel, and the check that a
//! rotated certificate belongs to our key and CA.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use postern_api::agent::{ALPN_CHANNEL, ALPN_ENROLL};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::identity::{Credentials, IdentityError};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn crypto(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Crypto(e.to_string())
}

pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(crypto)
}

/// Accepts the bastion's certificate only if its chain contains the CA with the
/// pinned hash and the leaf verifies against that CA for the dialled name.
#[derive(Debug)]
pub struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    algs: WebPkiSupportedAlgorithms,
    /// Set when the chain held no CA with the pinned hash, to give a precise error.
    pub mismatch: AtomicBool,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256(c) == self.pin) else {
            self.mismatch.store(true, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The enrollment client configuration and its verifier (to read `mismatch`).
pub fn enroll_config(pin: [u8; 32]) -> Result<(Arc<ClientConfig>, Arc<PinnedCa>), IdentityError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa {
        pin,
        algs: provider.signature_verification_algorithms,
        provider: provider.clone(),
        mismatch: AtomicBool::new(false),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crypto)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok((Arc::new(cfg), verifier))
}

/// The channel's client configuration: our CA as the only root, our certificate.
pub fn channel_config(
    ca_pem: &str,
    creds: &Credentials,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(ca_pem)?).map_err(crypto)?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).map_err(crypto)?;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crypto)?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert_der(&creds.cert_pem)?], key)
        .map_err(crypto)?;
    // The framed channel, which parks while idle, where the bastion knows it.
    cfg.alpn_protocols = vec![postern_channel::ALPN.to_vec(), ALPN_CHANNEL.to_vec()];
    // One long-lived connection per agent: no session cache worth its memory.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Checks that `cert_pem` is for `key_pem` and is a client certificate from our CA.
pub fn check_cert_matches(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<(), IdentityError> {
    let provider = provider();
    let cert = cert_der(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(crypto)?;
    CertifiedKey::from_der(vec![cert.clone()], key, &provider).map_err(|e| {
        IdentityError::Crypto(format!("certificate does not match the pending key: {e}"))
    })?;
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(ca_pem)?).map_err(crypto)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(crypto)?;
    verifier
        .verify_client_cert(&cert, &[], UnixTime::now())
        .map_err(|e| {
            IdentityError::Crypto(format!(
                "certificate is not a valid client certificate from our CA: {e}"
            ))
        })?;
    Ok(())
}
