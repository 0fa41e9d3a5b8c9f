//! The bastion's certificate authorities: made at first start and kept in the
//! store with their keys sealed by the operator's master key. The X.509 CA
//! signs node CSRs (short-lived client certificates) and the agent port's
//! server certificate; the user CA (`pki::ssh_user_ca`) signs people's OpenSSH
//! certificates. The master key also seals other secrets at rest (TOTP
//! secrets, OpenID client secrets): [`Pki::seal`], [`Pki::open`].
//!
//! A node certificate names the node by id in its CN. The CSR proves possession of
//! the key and supplies the public key; nothing else it asks for is honoured.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;
use time::OffsetDateTime;

use crate::clock::now_ms;
pub mod ssh_user_ca;

use ssh_user_ca::UserCa;

/// The store's row for the SSH user CA (`cert_pem` holds its public key).
const USER_CA_ROW: &str = "ssh-user";
use crate::secrets::{MasterKey, SecretError, random_bytes};
use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum PkiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("invalid certificate: {0}")]
    BadCert(String),
    #[error("user CA: {0}")]
    UserCa(String),
}

/// Node certificates start this long before their issue, for clocks that lag.
pub const NOT_BEFORE_SLACK_MS: i64 = 60_000;

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
    pub not_after_ms: i64,
}

/// What the bastion reads from a node's client certificate at handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertInfo {
    pub node_id: String,
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

pub struct Pki {
    /// Seals secrets kept in the store.
    master: MasterKey,
    user_ca: crate::pki::ssh_user_ca::UserCa,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    ca_hash: String,
    node_cert_ttl: Duration,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_hash", &self.ca_hash)
            .finish()
    }
}

impl NodeCertInfo {
    /// Rotation is due at two thirds of the certificate's life, counted from issue.
    pub fn rotation_due(&self, now_ms: i64) -> bool {
        let issued = self.not_before_ms + NOT_BEFORE_SLACK_MS;
        now_ms >= issued + (self.not_after_ms - issued) * 2 / 3
    }
}

impl Pki {
    /// Loads the CA from the store, or makes and stores one on first start.
    pub async fn load_or_create(
        store: &Store,
        master: &MasterKey,
        node_cert_ttl: Duration,
    ) -> Result<Arc<Pki>, PkiError> {
        let (cert_pem, sealed) = match store.load_ca().await? {
            Some(ca) => ca,
            None => {
                let (cert_pem, key_pem) = new_ca()?;
                let sealed = master.seal(key_pem.as_bytes())?;
                tracing::info!("created a new certificate authority");
                store.insert_ca(&cert_pem, &sealed, now_ms()).await?
            }
        };
        let key_pem =
            String::from_utf8(master.open(&sealed)?).map_err(|_| SecretError::Malformed)?;
        let user_ca = match store.load_ca_row(USER_CA_ROW).await? {
            Some((_, sealed)) => sealed,
            None => {
                let ca = UserCa::generate().map_err(|e| PkiError::UserCa(e.to_string()))?;
                let pem = ca
                    .to_openssh()
                    .map_err(|e| PkiError::UserCa(e.to_string()))?;
                let sealed = master.seal(pem.as_bytes())?;
                tracing::info!(fingerprint = %ca.fingerprint(), "created a new SSH user certificate authority");
                store
                    .insert_ca_row(USER_CA_ROW, ca.public_openssh(), &sealed, now_ms())
                    .await?
                    .1
            }
        };
        let user_pem =
            String::from_utf8(master.open(&user_ca)?).map_err(|_| SecretError::Malformed)?;
        let user_ca =
            UserCa::from_openssh(&user_pem).map_err(|e| PkiError::UserCa(e.to_string()))?;
        Pki::from_pem(
            cert_pem,
            &key_pem,
            node_cert_ttl,
            master.duplicate(),
            user_ca,
        )
    }

    /// New CAs that live only in memory, never stored: for tests and fuzzing.
    pub fn in_memory(node_cert_ttl: Duration) -> Result<Arc<Pki>, PkiError> {
        let (cert_pem, key_pem) = new_ca()?;
        let user_ca = UserCa::generate()?;
        Pki::from_pem(
            cert_pem,
            &key_pem,
            node_cert_ttl,
            MasterKey::random()?,
            user_ca,
        )
    }

    /// The SSH user CA.
    pub fn user_ca(&self) -> &UserCa {
        &self.user_ca
    }

    /// Seals a secret for the store.
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, SecretError> {
        self.master.seal(plaintext)
    }

    /// Opens what [`Pki::seal`] sealed.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        self.master.open(sealed)
    }

    fn from_pem(
        cert_pem: String,
        key_pem: &str,
        node_cert_ttl: Duration,
        master: MasterKey,
        user_ca: UserCa,
    ) -> Result<Arc<Pki>, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let ca_der = pem_to_der(&cert_pem)?;
        let ca_hash = postern_api::agent::format_ca_hash(
            ring::digest::digest(&ring::digest::SHA256, &ca_der).as_ref(),
        );
        Ok(Arc::new(Pki {
            master,
            user_ca,
            ca_pem: cert_pem,
            ca_der,
            issuer,
            ca_hash,
            node_cert_ttl,
        }))
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// `sha256:<hex>` of the CA certificate, the pin in every join command.
    pub fn ca_hash(&self) -> &str {
        &self.ca_hash
    }

    pub fn node_cert_ttl(&self) -> Duration {
        self.node_cert_ttl
    }

    /// Signs a node's CSR after checking its self-signature. The certificate is a
    /// TLS client certificate for `node_id`, valid for the node certificate TTL.
    pub fn sign_node_csr(&self, csr_pem: &str, node_id: &str) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationName, NODE_ORG);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (serial, serial_hex) = new_serial()?;
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        // Slack for node clocks that are slightly behind.
        params.not_before = now - time::Duration::milliseconds(NOT_BEFORE_SLACK_MS);
        let not_after =
            now + time::Duration::try_from(self.node_cert_ttl).unwrap_or(time::Duration::days(1));
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
            not_after_ms: i64::try_from(not_after.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX),
        })
    }

    /// Signs a person's CSR for the Kubernetes door: a TLS client certificate
    /// naming the login session `session_id` (its CN, under [`USER_ORG`]),
    /// valid until `not_after_ms` (the caller caps it at the session's end).
    pub fn sign_user_csr(
        &self,
        csr_pem: &str,
        session_id: &str,
        not_after_ms: i64,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, session_id);
        dn.push(DnType::OrganizationName, USER_ORG);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (serial, serial_hex) = new_serial()?;
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::milliseconds(NOT_BEFORE_SLACK_MS);
        let not_after =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(not_after_ms) * 1_000_000)
                .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
            not_after_ms,
        })
    }

    /// A certificate naming replica `name`, for both ends of peering (server and
    /// client). Made at every start, so it is never older than the process.
    pub fn replica_cert(
        &self,
        name: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, REPLICA_ORG);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(replica_dns_name(name).try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(new_serial()?.0);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(365);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }

    /// A fresh server certificate for the agent port, for the given DNS names and IPs.
    pub fn server_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "postern bastion");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(new_serial()?.0);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(90);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }
}

fn new_ca() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Postern CA");
    dn.push(DnType::OrganizationName, "postern");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(new_serial()?.0);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 128 random bits with the top bit clear, so the DER integer is positive.
fn new_serial() -> Result<(SerialNumber, String), PkiError> {
    let mut b = random_bytes::<16>()?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok((SerialNumber::from_slice(&b), hex::encode(b)))
}

pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.into_owned())
        .map_err(|e| PkiError::BadCert(e.to_string()))
}

/// The organization of node certificates; a certificate without it is never a node's.
pub const NODE_ORG: &str = "postern node";
/// The organization of replica certificates; a certificate without it is never a peer's.
pub const REPLICA_ORG: &str = "postern replica";
/// The organization of people's client certificates (the Kubernetes door); a
/// certificate without it is never a person's, and one with it never a node's.
pub const USER_ORG: &str = "postern user";

/// The login session a person's client certificate names (see
/// [`Pki::sign_user_csr`]); an error for any other certificate.
pub fn user_cert_session(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    subject_of(&cert, USER_ORG)
}

/// The CN of a certificate of our CA whose organization is `org` exactly.
fn subject_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    org: &str,
) -> Result<String, PkiError> {
    let orgs: Vec<_> = cert.subject().iter_organization().collect();
    if orgs.len() != 1 || orgs[0].as_str().ok() != Some(org) {
        return Err(PkiError::BadCert(format!("not a {org} certificate")));
    }
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    match cns.as_slice() {
        [cn] => cn
            .as_str()
            .map(str::to_string)
            .map_err(|_| PkiError::BadCert("unreadable common name".into())),
        _ => Err(PkiError::BadCert("not exactly one common name".into())),
    }
}

/// The replica a peer certificate (already verified against the CA by rustls)
/// names; a node certificate is refused.
pub fn replica_name_of(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    subject_of(&cert, REPLICA_ORG)
}

/// The DNS name a replica's certificate carries, which its peers dial it by.
pub fn replica_dns_name(name: &str) -> String {
    format!("{name}.replica.postern.internal")
}

/// Reads the node id, serial and validity from a node certificate (already
/// verified against the CA by rustls); a replica's certificate is refused.
pub fn node_cert_info(der: &[u8]) -> Result<NodeCertInfo, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    let node_id = subject_of(&cert, NODE_ORG)?;
    Ok(NodeCertInfo {
        node_id,
        serial: hex::encode(cert.raw_serial()),
        not_before_ms: cert.validity().not_before.timestamp() * 1000,
        not_after_ms: cert.validity().not_after.timestamp() * 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_due_at_two_thirds_of_life_from_issue() {
        let issued = 1_000_000;
        let c = NodeCertInfo {
            node_id: "n".into(),
            serial: "s".into(),
            not_before_ms: issued - NOT_BEFORE_SLACK_MS,
            not_after_ms: issued + 9_000,
        };
        assert!(!c.rotation_due(issued + 5_999));
        assert!(c.rotation_due(issued + 6_000));
    }

    /// A node certificate never passes as a peer's, nor a replica's as a node's,
    /// nor either as a person's:
    /// both come from the one CA, so the organization alone tells them apart.
    #[test]
    fn node_and_replica_certificates_are_not_interchangeable() {
        #![allow(clippy::unwrap_used)]
        let pki = Pki::in_memory(Duration::from_secs(3600)).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let node = pem_to_der(&pki.sign_node_csr(&csr, "node-1").unwrap().cert_pem).unwrap();
        let (replica, _) = pki.replica_cert("r1").unwrap();
        let (server, _) = pki.server_cert(&["localhost".into()]).unwrap();

        assert_eq!(node_cert_info(&node).unwrap().node_id, "node-1");
        assert_eq!(replica_name_of(&replica[0]).unwrap(), "r1");
        assert!(node_cert_info(&replica[0]).is_err());
        assert!(replica_name_of(&node).is_err());
        assert!(replica_name_of(&server[0]).is_err());
        assert!(node_cert_info(&server[0]).is_err());
        // A person's certificate names their session, and passes for nothing
        // else; nothing else passes for a person's.
        let not_after = now_ms() + 600_000;
        let user =
            pem_to_der(&pki.sign_user_csr(&csr, "s-1", not_after).unwrap().cert_pem).unwrap();
        assert_eq!(user_cert_session(&user).unwrap(), "s-1");
        assert!(node_cert_info(&user).is_err());
        assert!(replica_name_of(&user).is_err());
        for other in [&node, &replica[0], &server[0]] {
            assert!(user_cert_session(other).is_err());
        }
        assert!(pki.sign_user_csr("not a csr", "s-1", not_after).is_err());
    }
}
