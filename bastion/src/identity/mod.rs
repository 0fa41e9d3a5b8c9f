//! Who a person is, proven once, and the short-lived credentials every door
//! takes from that proof. A person signs in (a password and a TOTP code, or an
//! OpenID provider) and gets a login session (`sessions`); from the session
//! come the REST/CLI bearer, an OpenSSH user certificate (`pki::ssh_user_ca`) and the
//! Kubernetes client certificate, each ending with the session.
//!
//! This is core: it knows no door. The REST door's sign-in endpoints call it,
//! the SSH door checks certificates with it.

pub mod attempts;
pub mod local;
pub mod oidc;
pub mod password;
pub mod recovery;
pub mod sessions;
pub mod sso;
pub mod totp;

use crate::access::Denied;
use crate::secrets::SecretError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The person's proof was wrong, or they may not sign in: the message
    /// says what to do, and never which part was wrong when that would help
    /// a guesser.
    #[error("{0}")]
    Refused(String),
    /// Too many attempts: wait, then try again.
    #[error("{0}")]
    TooMany(String),
    /// The request itself was malformed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

impl From<Denied> for IdentityError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) | Denied::NotFound(m) => IdentityError::Refused(m),
            Denied::Forbidden { reason, .. } => IdentityError::Refused(reason),
            Denied::Unavailable(m) => IdentityError::Internal(m),
            Denied::Internal(m) => IdentityError::Internal(m),
        }
    }
}
