//! Passwords: argon2id (RustCrypto's `argon2`, its default parameters) into a
//! PHC string; hashing runs off the runtime, a few at a time, so a burst of
//! sign-ins cannot stall the bastion or take all its memory.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use super::IdentityError;

/// Shortest password accepted: long passphrases beat composition rules.
pub const MIN_LEN: usize = 12;
/// Longest password accepted (bytes): hashing is bounded work.
pub const MAX_LEN: usize = 1024;

/// Hashes at once at most; each takes ~19 MiB.
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(4));
/// Hashes waiting at most; past it a sign-in is told to retry, so a flood
/// queues no unbounded work.
const MAX_WAITING: usize = 64;
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Checks a new password's length; says what is wanted.
pub fn acceptable(password: &str) -> Result<(), IdentityError> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(IdentityError::Invalid(format!(
            "the password is too short: use at least {MIN_LEN} characters (a few words make a good one)"
        )));
    }
    if password.len() > MAX_LEN {
        return Err(IdentityError::Invalid(format!(
            "the password is longer than {MAX_LEN} bytes"
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IdentityError> {
    use std::sync::atomic::Ordering;
    if WAITING.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
        WAITING.fetch_sub(1, Ordering::SeqCst);
        return Err(IdentityError::TooMany(
            "the bastion is busy signing people in: retry in a few seconds".into(),
        ));
    }
    let permit = HASHING.acquire().await;
    WAITING.fetch_sub(1, Ordering::SeqCst);
    let _permit = permit.map_err(|_| IdentityError::Internal("password hashing closed".into()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IdentityError::Internal(format!("password hashing failed: {e}")))
}

/// The PHC string of a new password.
pub async fn hash(password: &str) -> Result<String, IdentityError> {
    acceptable(password)?;
    let pw = password.as_bytes().to_vec();
    blocking(move || {
        Argon2::default()
            .hash_password(&pw)
            .map(|h| h.to_string())
            .map_err(|e| IdentityError::Internal(format!("cannot hash the password: {e}")))
    })
    .await?
}

/// Whether `password` matches the stored PHC string. A password over
/// [`MAX_LEN`] never does (and costs nothing).
pub async fn verify(password: &str, phc: &str) -> Result<bool, IdentityError> {
    if password.len() > MAX_LEN {
        return Ok(false);
    }
    let pw = password.as_bytes().to_vec();
    let phc = phc.to_string();
    blocking(move || {
        let Ok(parsed) = PasswordHash::new(&phc) else {
            tracing::error!("a stored password hash is not a PHC string");
            return false;
        };
        Argon2::default().verify_password(&pw, &parsed).is_ok()
    })
    .await
}

/// A PHC string to verify against when the user does not exist, so that an
/// unknown name costs the same time as a wrong password.
pub async fn decoy() -> String {
    static DECOY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DECOY
        .get_or_init(|| async {
            hash("a decoy password nobody has")
                .await
                .unwrap_or_default()
        })
        .await
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_verifies_and_others_do_not() {
        let h = hash("correct horse battery staple").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery staple", &h).await.unwrap());
        assert!(!verify("correct horse battery stapl", &h).await.unwrap());
        assert!(!verify(&"x".repeat(MAX_LEN + 1), &h).await.unwrap());
        assert!(!verify("anything", "not a phc string").await.unwrap());
        assert!(matches!(
            hash("short").await,
            Err(IdentityError::Invalid(_))
        ));
    }
}
