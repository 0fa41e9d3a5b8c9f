//! TOTP enrolment on the user's side: the secret is made here (never by an
//! admin), shown as an `otpauth://` QR code on the terminal, and proven with
//! the code the app then shows.

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use totp_rs::{Builder, Secret};

pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(secret: &[u8], account: &str, issuer: &str) -> String {
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits=6&period=30",
        base32(secret)
    )
}

/// The current code (for `--totp-secret-file`, used by scripts and tests).
pub fn code_now(secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Builder::new()
        .with_secret(Secret::from(secret.to_vec()))
        .build()
        .map(|t| t.generate(now).to_string())
        .unwrap_or_default()
}

/// `uri` as a QR code drawn with half-block characters.
pub fn qr_text(uri: &str) -> String {
    match QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
        Err(_) => String::new(),
    }
}
