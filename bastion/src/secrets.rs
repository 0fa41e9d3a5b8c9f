//! Secrets: bearer tokens (random, shown once, stored as SHA-256, compared in
//! constant time) and the operator's master key that seals the CA key at rest.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// A secret string whose `Debug` never shows it, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("the system random number generator failed")]
    Rng,
    #[error("cannot read master key file {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write master key file {path}: {source}")]
    WriteKey {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "master key in {0} is not 64 hex digits (32 bytes); generate one with `head -c32 /dev/urandom | xxd -p -c64`"
    )]
    BadKey(String),
    #[error(
        "cannot decrypt the CA key: the master key differs from the one it was sealed with (check --master-key-file)"
    )]
    Unseal,
    #[error("sealed data is malformed")]
    Malformed,
    #[error(
        "master key file {path} can be read by others (mode {mode:04o}): it unseals the CA key; run `chmod 600 {path}` (and keep it owned by the bastion's user)"
    )]
    KeyTooOpen { path: String, mode: u32 },
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SecretError::Rng)?;
    Ok(b)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// A freshly made bearer token: `id` is public (used for lookup and revocation),
/// `full` is what the holder presents, `hash` is what the store keeps.
#[derive(Debug)]
pub struct NewToken {
    pub id: String,
    pub full: Secret,
    pub hash: String,
}

/// Makes `<prefix>_<id>_<secret>`: the id is hex, the secret 256 random bits.
pub fn new_token(prefix: &str) -> Result<NewToken, SecretError> {
    let id = hex::encode(random_bytes::<12>()?);
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let hash = sha256_hex(secret.as_bytes());
    Ok(NewToken {
        full: Secret::new(format!("{prefix}_{id}_{secret}")),
        id,
        hash,
    })
}

/// Splits a presented token into (id, secret), if it has the expected shape.
pub fn parse_token<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('_')?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 24
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && !secret.is_empty()
        && secret.len() <= 64;
    ok.then_some((id, secret))
}

/// Compares the presented secret's hash with the stored one in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    let presented = sha256_hex(secret.as_bytes());
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// The operator-supplied key that seals secrets at rest (the CA key).
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

const SEAL_AAD: &[u8] = b"postern-sealed-v1";

impl MasterKey {
    /// A random key that lives only in memory: for tests and in-memory CAs.
    pub fn random() -> Result<MasterKey, SecretError> {
        Ok(MasterKey(random_bytes::<32>()?))
    }

    /// The same key, for a second owner.
    pub fn duplicate(&self) -> MasterKey {
        MasterKey(self.0)
    }

    pub fn from_hex(s: &str, origin: &str) -> Result<MasterKey, SecretError> {
        let bytes = hex::decode(s.trim()).map_err(|_| SecretError::BadKey(origin.to_string()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecretError::BadKey(origin.to_string()))?;
        Ok(MasterKey(arr))
    }

    /// Loads the key file; refused when group or others may read or write it.
    pub fn load(path: &Path) -> Result<MasterKey, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| SecretError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyTooOpen {
                path: path.display().to_string(),
                mode,
            });
        }
        let s = std::fs::read_to_string(path).map_err(|source| SecretError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        MasterKey::from_hex(&s, &path.display().to_string())
    }

    /// For `dev` mode: loads the key file, or makes one (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, SecretError> {
        // `try_exists`, not `exists`: a key this user may not see is an error,
        // never a reason to write a new one over it.
        let exists = path.try_exists().map_err(|source| SecretError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        if exists {
            return MasterKey::load(path);
        }
        let key = random_bytes::<32>()?;
        crate::fsutil::write_private(path, hex::encode(key).as_bytes()).map_err(|source| {
            SecretError::WriteKey {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok(MasterKey(key))
    }

    /// A secret derived from the master key for `label` (HMAC-SHA256), for
    /// names every replica must agree on and outsiders must not guess.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let tag = ring::hmac::sign(&key, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn key(&self) -> LessSafeKey {
        // CHACHA20_POLY1305 takes any 32-byte key, so this cannot fail.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, &self.0).expect("32-byte key");
        LessSafeKey::new(unbound)
    }

    /// ChaCha20-Poly1305 with a random nonce; output is base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, SecretError> {
        let nonce_bytes = random_bytes::<12>()?;
        let mut buf = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(SEAL_AAD),
                &mut buf,
            )
            .map_err(|_| SecretError::Malformed)?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let raw = STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(SEAL_AAD),
                &mut buf,
            )
            .map_err(|_| SecretError::Unseal)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = new_token("pst").unwrap();
        let (id, secret) = parse_token("pst", t.full.expose()).unwrap();
        assert_eq!(id, t.id);
        assert!(secret_matches(secret, &t.hash));
        assert!(!secret_matches("wrong", &t.hash));
        assert!(parse_token("pet", t.full.expose()).is_none());
        assert!(parse_token("pst", "pst_short_x").is_none());
        assert!(!format!("{:?}", t.full).contains(secret));
    }

    #[test]
    fn seal_open() {
        let k = MasterKey(random_bytes().unwrap());
        let sealed = k.seal(b"ca key").unwrap();
        assert_eq!(k.open(&sealed).unwrap(), b"ca key");
        let other = MasterKey(random_bytes().unwrap());
        assert!(matches!(other.open(&sealed), Err(SecretError::Unseal)));
        assert!(matches!(k.open("AAAA"), Err(SecretError::Malformed)));
    }

    #[test]
    fn a_master_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = MasterKey::load(&path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        MasterKey::load(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        MasterKey::load(&path).unwrap();
        // The key dev makes is private from the start.
        let made = dir.path().join("dev.key");
        MasterKey::load_or_create(&made).unwrap();
        MasterKey::load(&made).unwrap();
    }
}
