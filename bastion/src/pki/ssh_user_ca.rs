//! The user certificate authority: an Ed25519 key, made at first start and
//! kept in the store sealed by the master key, that signs OpenSSH user
//! certificates for login sessions. The SSH door takes a certificate only
//! after checking what russh leaves to it (FACTS.md): the signer is this CA,
//! now is inside the validity window, it is a user certificate, it names the
//! user, and it carries no critical option.

use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{Certificate, Fingerprint, HashAlg, LineEnding, PrivateKey, PublicKey};

use super::PkiError;
use crate::secrets::random_bytes;

/// Certificates start this long before their issue, for clocks that lag.
pub const NOT_BEFORE_SLACK_SECS: u64 = 60;

/// The certificate's key id: `postern:<session id>`, by which the door finds
/// the session (and the user's sshd logs name it).
const KEY_ID_PREFIX: &str = "postern:";

pub struct UserCa {
    key: PrivateKey,
    public: String,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for UserCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCa")
            .field("fingerprint", &self.fingerprint.to_string())
            .finish()
    }
}

/// What a valid certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    pub session_id: String,
    pub principal: String,
    /// Unix seconds.
    pub valid_before: u64,
}

fn internal(e: impl std::fmt::Display) -> PkiError {
    PkiError::UserCa(e.to_string())
}

impl UserCa {
    /// A new CA.
    pub fn generate() -> Result<UserCa, PkiError> {
        let seed = random_bytes::<32>()?;
        UserCa::from_key(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
    }

    /// The CA of an OpenSSH private key (as stored, once unsealed).
    pub fn from_openssh(pem: &str) -> Result<UserCa, PkiError> {
        UserCa::from_key(PrivateKey::from_openssh(pem).map_err(internal)?)
    }

    fn from_key(key: PrivateKey) -> Result<UserCa, PkiError> {
        let public = key.public_key().to_openssh().map_err(internal)?;
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        Ok(UserCa {
            key,
            public,
            fingerprint,
        })
    }

    /// The private key in OpenSSH form, to be sealed before it is stored.
    pub fn to_openssh(&self) -> Result<String, PkiError> {
        Ok(self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(internal)?
            .to_string())
    }

    /// The CA's public key (`ssh-ed25519 AAAA…`), for `TrustedUserCAKeys`.
    pub fn public_openssh(&self) -> &str {
        &self.public
    }

    pub fn fingerprint(&self) -> String {
        self.fingerprint.to_string()
    }

    /// Signs a user certificate for `key`, naming `principal`, for the
    /// session `session_id`, valid until `valid_before` (unix seconds).
    pub fn certify(
        &self,
        key: &PublicKey,
        principal: &str,
        session_id: &str,
        now: u64,
        valid_before: u64,
    ) -> Result<Certificate, PkiError> {
        let nonce = random_bytes::<32>()?;
        let serial = u64::from_be_bytes(random_bytes::<8>()?);
        let mut b = Builder::new(
            nonce.to_vec(),
            key.key_data().clone(),
            now.saturating_sub(NOT_BEFORE_SLACK_SECS),
            valid_before,
        )
        .map_err(internal)?;
        b.serial(serial)
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(format!("{KEY_ID_PREFIX}{session_id}")))
            .and_then(|b| b.valid_principal(principal))
            .and_then(|b| b.extension("permit-pty", ""))
            .and_then(|b| b.extension("permit-port-forwarding", ""))
            .and_then(|b| b.comment(format!("postern session for {principal}")))
            .map_err(internal)?;
        b.sign(&self.key).map_err(internal)
    }

    /// Checks a certificate a client presented, at `now` (unix seconds), for
    /// the SSH user `principal`; says why when it is refused.
    pub fn check(
        &self,
        cert: &Certificate,
        principal: &str,
        now: u64,
    ) -> Result<Certified, String> {
        if cert.validate_at(now, [&self.fingerprint]).is_err() {
            return Err(if cert.valid_before() <= now {
                "the certificate has expired: log in again with postern login".into()
            } else if cert.valid_after() > now {
                "the certificate is not valid yet: check this machine's clock".into()
            } else {
                "the certificate was not signed by this bastion's user CA".into()
            });
        }
        if cert.cert_type() != CertType::User {
            return Err("a host certificate cannot log in".into());
        }
        if !cert.critical_options().is_empty() {
            // None are issued here; one we do not know must not be ignored.
            return Err(
                "the certificate carries critical options this bastion does not issue".into(),
            );
        }
        if !cert.valid_principals().iter().any(|p| p == principal) {
            return Err(format!(
                "the certificate is not for {principal}: log in as the user it names"
            ));
        }
        let Some(session_id) = cert.key_id().strip_prefix(KEY_ID_PREFIX) else {
            return Err("the certificate names no Postern session".into());
        };
        Ok(Certified {
            session_id: session_id.to_string(),
            principal: principal.to_string(),
            valid_before: cert.valid_before(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_key() -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&random_bytes::<32>().unwrap()))
    }

    #[test]
    fn a_certificate_is_checked_for_signer_window_type_and_principal() {
        let ca = UserCa::generate().unwrap();
        let again = UserCa::from_openssh(&ca.to_openssh().unwrap()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let key = user_key();
        let now = 1_800_000_000;
        let cert = ca
            .certify(key.public_key(), "ann", "s1", now, now + 3600)
            .unwrap();
        let ok = ca.check(&cert, "ann", now).unwrap();
        assert_eq!(ok.session_id, "s1");
        // The text form round-trips (it is what `postern login` writes).
        let text = cert.to_openssh().unwrap();
        let back = Certificate::from_openssh(&text).unwrap();
        assert!(ca.check(&back, "ann", now).is_ok());
        assert!(
            ca.check(&cert, "bob", now)
                .unwrap_err()
                .contains("not for bob")
        );
        assert!(
            ca.check(&cert, "ann", now + 3600)
                .unwrap_err()
                .contains("expired")
        );
        assert!(
            ca.check(&cert, "ann", now - 3600)
                .unwrap_err()
                .contains("not valid yet")
        );
        let other = UserCa::generate().unwrap();
        let forged = other
            .certify(key.public_key(), "ann", "s1", now, now + 3600)
            .unwrap();
        assert!(
            ca.check(&forged, "ann", now)
                .unwrap_err()
                .contains("not signed")
        );
    }
}
