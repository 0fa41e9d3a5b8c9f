//! OpenSSH public keys from outside: users' keys as they arrive over the REST API,
//! and keys in Kubernetes Node annotations. Parsed with `ssh-key` (the crate russh
//! uses), limited to algorithms the bastion's front door can verify, and reduced to
//! the canonical `<algorithm> <base64>` that grants carry. One parser for both, so
//! a key is held to the same rules whichever way it reaches a node.

use ssh_key::{Algorithm, HashAlg, PublicKey};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("public_key is empty: paste one line from your ~/.ssh/id_ed25519.pub")]
    Empty,
    #[error("public_key is longer than {0} bytes")]
    TooLong(usize),
    #[error("public_key must be a single line")]
    MultiLine,
    #[error(
        "public_key is not an OpenSSH public key ({0}); expected e.g. \"ssh-ed25519 AAAA… you@host\""
    )]
    Unparsable(String),
    #[error(
        "{0} keys are not accepted; use ssh-ed25519 (ssh-keygen -t ed25519), ecdsa-sha2-nistp256/384/521 or ssh-rsa of at least 2048 bits"
    )]
    Algorithm(String),
    #[error("RSA keys must have at least 2048 bits; this one has {0}")]
    WeakRsa(usize),
}

/// A user's key, checked and ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    pub fingerprint: String,
    pub algorithm: String,
    pub public_key: String,
    pub comment: String,
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// `<algorithm> <base64>` without the comment.
pub fn canonical(key: &PublicKey) -> Result<String, KeyError> {
    let mut k = key.clone();
    k.set_comment("");
    let text = k
        .to_openssh()
        .map_err(|e| KeyError::Unparsable(e.to_string()))?;
    Ok(text.trim_end().to_string())
}

pub fn parse_user_key(line: &str) -> Result<UserKey, KeyError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(KeyError::Empty);
    }
    if line.len() > crate::ssh::MAX_PUBLIC_KEY_LEN {
        return Err(KeyError::TooLong(crate::ssh::MAX_PUBLIC_KEY_LEN));
    }
    if line.contains(['\n', '\r']) {
        return Err(KeyError::MultiLine);
    }
    let key = PublicKey::from_openssh(line).map_err(|e| KeyError::Unparsable(e.to_string()))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .map(|r| r.key_size() as usize)
                .unwrap_or(0);
            if bits < 2048 {
                return Err(KeyError::WeakRsa(bits));
            }
        }
        other => return Err(KeyError::Algorithm(other.to_string())),
    }
    let comment: &str = key.comment().as_ref();
    let comment: String = comment
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let public_key = canonical(&key)?;
    if !crate::ssh::check_key_text(&public_key) {
        return Err(KeyError::Unparsable("unexpected encoding".into()));
    }
    Ok(UserKey {
        fingerprint: fingerprint(&key),
        algorithm: key.algorithm().to_string(),
        public_key,
        comment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2JQ1wJ5z0XQ9Q5a0a4wq4C9n9m6QH2b6YwFQ2pR1L alice@laptop";

    #[test]
    fn ed25519_is_parsed_and_canonicalized() {
        let k = parse_user_key(ED).expect("valid key");
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "alice@laptop");
        assert!(k.fingerprint.starts_with("SHA256:"), "{}", k.fingerprint);
        assert_eq!(
            k.public_key,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2JQ1wJ5z0XQ9Q5a0a4wq4C9n9m6QH2b6YwFQ2pR1L"
        );
    }

    #[test]
    fn junk_is_refused_with_a_reason() {
        assert_eq!(parse_user_key("  "), Err(KeyError::Empty));
        assert_eq!(
            parse_user_key(&format!("{ED}\n{ED}")),
            Err(KeyError::MultiLine)
        );
        assert!(matches!(
            parse_user_key("ssh-ed25519 notbase64!"),
            Err(KeyError::Unparsable(_))
        ));
        assert!(matches!(
            parse_user_key("command=\"sh\" ssh-ed25519 AAAA"),
            Err(KeyError::Unparsable(_))
        ));
        assert!(matches!(
            parse_user_key(&"A".repeat(10_000)),
            Err(KeyError::TooLong(_))
        ));
    }
}
