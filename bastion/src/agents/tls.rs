//! TLS for the agent port: TLS 1.3 only, client certificates from our CA verified
//! when presented (required for the channel, absent for enrollment).

use std::sync::Arc;

use postern_api::agent::{ALPN_CHANNEL, ALPN_ENROLL};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::pki::{Pki, PkiError};

pub fn server_config(pki: &Pki, names: &[String]) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(pki.ca_der().clone())
        .map_err(|e| PkiError::BadCert(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::BadCert(e.to_string()))?;
    let (chain, key) = pki.server_cert(names)?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::BadCert(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::BadCert(e.to_string()))?;
    // The framed channel first: an agent that offers it can park (`postern_channel`).
    cfg.alpn_protocols = vec![
        postern_channel::ALPN.to_vec(),
        ALPN_CHANNEL.to_vec(),
        ALPN_ENROLL.to_vec(),
    ];
    // Agents hold one long connection; resumption tickets would only cost memory.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}
