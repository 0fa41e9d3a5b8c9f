//! TOTP (RFC 6238, `totp-rs`): SHA-1, six digits, 30-second steps, one step of
//! skew either way, as every authenticator app expects. The step a code
//! matched is returned so the caller can accept each step once.

use totp_rs::{Builder, Secret, Totp};

use super::IdentityError;

/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;

fn totp(secret: &[u8]) -> Result<Totp, IdentityError> {
    Builder::new()
        .with_secret(Secret::from(secret.to_vec()))
        .with_skew(1)
        .with_step_duration(30)
        .with_digits(6)
        .build()
        .map_err(|e| IdentityError::Internal(format!("bad TOTP secret: {e}")))
}

/// A new random secret.
pub fn new_secret() -> Result<Vec<u8>, IdentityError> {
    Ok(crate::secrets::random_bytes::<SECRET_BYTES>()?.to_vec())
}

/// The secret as authenticator apps take it typed in (base32).
pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The `otpauth://` URI an authenticator app scans (as a QR code).
pub fn otpauth_uri(secret: &[u8], user: &str, issuer: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(user),
        base32(secret),
        enc(issuer)
    )
}

/// The time step `code` matches at `unix_secs`, if any. Anything but six
/// ASCII digits matches nothing.
pub fn check(secret: &[u8], code: &str, unix_secs: u64) -> Result<Option<u64>, IdentityError> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(totp(secret)?.check(code, unix_secs))
}

/// The code for `unix_secs` (for tests and enrolment checks).
pub fn code_at(secret: &[u8], unix_secs: u64) -> Result<String, IdentityError> {
    Ok(totp(secret)?.generate(unix_secs).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_neighbours_only() {
        let s = new_secret().unwrap();
        let t = 1_800_000_000;
        let code = code_at(&s, t).unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(check(&s, &code, t).unwrap(), Some(t / 30));
        assert_eq!(check(&s, &code, t + 30).unwrap(), Some(t / 30));
        assert_eq!(check(&s, &code, t + 90).unwrap(), None);
        assert_eq!(check(&s, "12345", t).unwrap(), None);
        assert_eq!(check(&s, "12345a", t).unwrap(), None);
        assert_eq!(check(&s, "１２３４５６", t).unwrap(), None);
        let uri = otpauth_uri(&s, "ann@x", "Postern");
        assert!(
            uri.starts_with("otpauth://totp/Postern:ann%40x?secret="),
            "{uri}"
        );
    }

    /// RFC 6238 appendix B, SHA-1.
    #[test]
    fn rfc_6238_vectors() {
        let s = b"12345678901234567890";
        assert_eq!(code_at(s, 59).unwrap(), "287082");
        assert_eq!(code_at(s, 1_111_111_109).unwrap(), "081804");
        assert_eq!(code_at(s, 2_000_000_000).unwrap(), "279037");
    }
}
