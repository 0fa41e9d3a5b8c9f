//! Recovery codes: ten single-use codes shown once at TOTP enrolment, for a
//! person who lost their authenticator. Stored as SHA-256 (each has 60 bits
//! of entropy, and guessing is rate limited as passwords are).

use crate::secrets::{random_bytes, sha256_hex};

use super::IdentityError;

pub const COUNT: usize = 10;

const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// New codes (`xxxx-xxxx-xxxx`) and their hashes.
pub fn generate() -> Result<(Vec<String>, Vec<String>), IdentityError> {
    let mut codes = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        let raw = random_bytes::<12>()?;
        let chars: String = raw
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        codes.push(format!(
            "{}-{}-{}",
            &chars[0..4],
            &chars[4..8],
            &chars[8..12]
        ));
    }
    let hashes = codes.iter().map(|c| hash(c)).collect();
    Ok((codes, hashes))
}

/// The stored form of a code as typed (case, spaces and dashes ignored).
pub fn hash(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(64)
        .collect();
    sha256_hex(norm.as_bytes())
}

/// Whether `code` looks like a recovery code (not a TOTP code).
pub fn looks_like(code: &str) -> bool {
    code.len() <= 32 && code.chars().filter(|c| c.is_ascii_alphanumeric()).count() == 12
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_distinct_and_hash_as_typed() {
        let (codes, hashes) = super::generate().unwrap();
        assert_eq!(codes.len(), super::COUNT);
        let mut sorted = hashes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), super::COUNT);
        assert_eq!(
            super::hash(&codes[0].to_uppercase().replace('-', " ")),
            hashes[0]
        );
        assert!(super::looks_like(&codes[0]));
        assert!(!super::looks_like("123456"));
    }
}
