//! The agent's identity: node id, hostname, the bastion's URLs and CA, and the key
//! and certificate it presents. Kept in the data directory (0700, files 0600) so a
//! restarted agent reconnects without enrolling again; swapped in place when the
//! bastion rotates the certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::enroll::Controller;
use crate::fsutil::{private_dir, sync_dir, write_private};

/// The key and certificate being installed, both in one file: written (atomically)
/// before `node.key` and `node.crt` are replaced one after the other, removed
/// after. A crash between the two replacements leaves it behind, and `load`
/// finishes the swap from it, so the agent never comes back with a key and a
/// certificate that do not belong together.
const SWAP_FILE: &str = "node.swap.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Swap {
    key_pem: String,
    cert_pem: String,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{0} holds no enrollment: run `postern-agent join …` first (or point --data-dir at the directory you joined with)"
    )]
    NotEnrolled(String),
    #[error("{0} already holds an enrollment (node {1}); delete the directory to join again")]
    AlreadyEnrolled(String, String),
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("key or certificate error: {0}")]
    Crypto(String),
}

/// What is kept in `agent.json` (no secrets; the key is in `node.key`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub node_id: String,
    pub hostname: String,
    /// The bastion replicas, comma-separated: one string rather than a list so
    /// files written before failover existed (a single URL) still load.
    pub controller: String,
    pub ca_hash: String,
}

impl Meta {
    /// The bastion replicas to dial, in order.
    pub fn controllers(&self) -> Result<Vec<Controller>, String> {
        Controller::parse_list(&self.controller)
    }
}

#[derive(Clone)]
pub struct Credentials {
    pub key_pem: String,
    pub cert_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

#[derive(Debug)]
pub struct Identity {
    pub meta: Meta,
    pub ca_pem: String,
    creds: RwLock<Credentials>,
    /// A key made for a rotation CSR, waiting for its certificate.
    pending_key: RwLock<Option<String>>,
    dir: Option<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Identity {
    pub fn new(
        meta: Meta,
        ca_pem: String,
        creds: Credentials,
        dir: Option<PathBuf>,
    ) -> Arc<Identity> {
        Arc::new(Identity {
            meta,
            ca_pem,
            creds: RwLock::new(creds),
            pending_key: RwLock::new(None),
            dir,
        })
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn credentials(&self) -> Credentials {
        self.creds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_enrolled(dir: &Path) -> bool {
        dir.join("agent.json").exists()
    }

    pub fn load(dir: &Path) -> Result<Arc<Identity>, IdentityError> {
        let meta_path = dir.join("agent.json");
        if !meta_path.exists() {
            return Err(IdentityError::NotEnrolled(dir.display().to_string()));
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        let meta: Meta =
            serde_json::from_str(&read("agent.json")?).map_err(|e| IdentityError::Corrupt {
                path: meta_path.display().to_string(),
                detail: e.to_string(),
            })?;
        let ca_pem = read("ca.crt")?;
        let swap_path = dir.join(SWAP_FILE);
        let creds = match std::fs::read(&swap_path) {
            Ok(bytes) => {
                // A rotation was cut short: finish it.
                let swap: Swap =
                    serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
                        path: swap_path.display().to_string(),
                        detail: e.to_string(),
                    })?;
                let creds = Credentials {
                    key_pem: swap.key_pem,
                    cert_pem: swap.cert_pem,
                };
                crate::tls::check_cert_matches(&creds.cert_pem, &creds.key_pem, &ca_pem)?;
                write_pair(dir, &creds)?;
                creds
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Credentials {
                key_pem: read("node.key")?,
                cert_pem: read("node.crt")?,
            },
            Err(e) => return Err(io_err(&swap_path)(e)),
        };
        Ok(Identity::new(meta, ca_pem, creds, Some(dir.to_path_buf())))
    }

    /// Writes everything to `dir` (0700), each file 0600 and replaced atomically.
    pub fn save(&self) -> Result<(), IdentityError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        private_dir(dir).map_err(io_err(dir))?;
        let creds = self.credentials();
        let meta = serde_json::to_vec_pretty(&self.meta)
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        write_pair(dir, &creds)?;
        for (name, data) in [
            ("ca.crt", self.ca_pem.as_bytes()),
            // Written last: its presence marks a complete enrollment.
            ("agent.json", meta.as_slice()),
        ] {
            let p = dir.join(name);
            write_private(&p, data).map_err(io_err(&p))?;
        }
        Ok(())
    }

    /// Rotation, step one: a new key made here; only the CSR leaves the node.
    pub fn new_csr(&self) -> Result<String, IdentityError> {
        let (key_pem, csr) = make_csr(&self.meta.hostname)?;
        *self.pending_key.write().unwrap_or_else(|p| p.into_inner()) = Some(key_pem);
        Ok(csr)
    }

    /// Rotation, step two: installs the certificate for the pending key, after
    /// checking that it is for that key and signed by our CA.
    pub fn install_cert(&self, cert_pem: &str) -> Result<(), IdentityError> {
        let key_pem = self
            .pending_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                IdentityError::Crypto("no CSR is pending; call POST /v1/csr first".into())
            })?;
        crate::tls::check_cert_matches(cert_pem, &key_pem, &self.ca_pem)?;
        let old = {
            let mut creds = self.creds.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(
                &mut *creds,
                Credentials {
                    key_pem,
                    cert_pem: cert_pem.to_string(),
                },
            )
        };
        if let Err(e) = self.save() {
            // Keep using what is on disk so memory and disk never disagree.
            *self.creds.write().unwrap_or_else(|p| p.into_inner()) = old;
            return Err(e);
        }
        *self.pending_key.write().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
}

/// Replaces `node.key` and `node.crt` as one step: see [`SWAP_FILE`].
fn write_pair(dir: &Path, creds: &Credentials) -> Result<(), IdentityError> {
    let swap_path = dir.join(SWAP_FILE);
    let swap = serde_json::to_vec(&Swap {
        key_pem: creds.key_pem.clone(),
        cert_pem: creds.cert_pem.clone(),
    })
    .map_err(|e| IdentityError::Crypto(e.to_string()))?;
    write_private(&swap_path, &swap).map_err(io_err(&swap_path))?;
    for (name, data) in [("node.key", &creds.key_pem), ("node.crt", &creds.cert_pem)] {
        let p = dir.join(name);
        write_private(&p, data.as_bytes()).map_err(io_err(&p))?;
    }
    std::fs::remove_file(&swap_path).map_err(io_err(&swap_path))?;
    sync_dir(dir).map_err(io_err(dir))
}

/// Makes a P-256 key and a CSR for it; returns (key PEM, CSR PEM).
pub fn make_csr(hostname: &str) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate().map_err(|e| IdentityError::Crypto(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Crypto(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer};

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    fn creds(ca: &Ca) -> Credentials {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Credentials {
            cert_pem: p.signed_by(&key, &ca.issuer).unwrap().pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn identity(dir: &Path, ca: &Ca, c: Credentials) -> Arc<Identity> {
        identity_with(dir, ca, c, "https://127.0.0.1:1")
    }

    fn identity_with(dir: &Path, ca: &Ca, c: Credentials, controller: &str) -> Arc<Identity> {
        let meta = Meta {
            node_id: "n".into(),
            hostname: "h".into(),
            controller: controller.into(),
            ca_hash: "sha256:x".into(),
        };
        Identity::new(meta, ca.pem.clone(), c, Some(dir.to_path_buf()))
    }

    fn urls(meta: &Meta) -> Vec<String> {
        meta.controllers()
            .unwrap()
            .into_iter()
            .map(|c| c.url)
            .collect()
    }

    #[test]
    fn several_controllers_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let list =
            Controller::parse_list("https://a.example:8443, https://b.example:8443/").unwrap();
        identity_with(dir.path(), &ca, creds(&ca), &Controller::format_list(&list))
            .save()
            .unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(
            loaded.meta.controller,
            "https://a.example:8443,https://b.example:8443"
        );
        assert_eq!(
            urls(&loaded.meta),
            ["https://a.example:8443", "https://b.example:8443"]
        );
    }

    /// An `agent.json` written before failover existed, byte for byte in its
    /// old shape, loads as a list of one.
    #[test]
    fn an_old_single_url_identity_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        identity(dir.path(), &ca, creds(&ca)).save().unwrap();
        let old = r#"{
  "node_id": "n-old",
  "hostname": "h",
  "controller": "https://bastion.example.com:8443",
  "ca_hash": "sha256:x"
}"#;
        std::fs::write(dir.path().join("agent.json"), old).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.meta.node_id, "n-old");
        assert_eq!(urls(&loaded.meta), ["https://bastion.example.com:8443"]);
        let only = &loaded.meta.controllers().unwrap()[0];
        assert_eq!(
            (only.host.as_str(), only.port),
            ("bastion.example.com", 8443)
        );
    }

    /// A crash between replacing the key and replacing the certificate (a
    /// rotation cut short by kill -9 or a power loss) must not leave an agent
    /// whose key and certificate disagree: the next start finishes the swap.
    #[test]
    fn a_rotation_cut_short_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let (old, new) = (creds(&ca), creds(&ca));
        identity(dir.path(), &ca, old.clone()).save().unwrap();
        // The state a crash after the swap file and the key, before the cert, leaves.
        let swap = serde_json::to_vec(&Swap {
            key_pem: new.key_pem.clone(),
            cert_pem: new.cert_pem.clone(),
        })
        .unwrap();
        write_private(&dir.path().join(SWAP_FILE), &swap).unwrap();
        write_private(&dir.path().join("node.key"), new.key_pem.as_bytes()).unwrap();

        let loaded = Identity::load(dir.path()).unwrap().credentials();
        assert_eq!(loaded.key_pem, new.key_pem);
        assert_eq!(loaded.cert_pem, new.cert_pem);
        crate::tls::check_cert_matches(&loaded.cert_pem, &loaded.key_pem, &ca.pem).unwrap();
        assert!(!dir.path().join(SWAP_FILE).exists());
        let on_disk = Identity::load(dir.path()).unwrap().credentials();
        assert_eq!(
            on_disk.cert_pem, new.cert_pem,
            "the swap was written through"
        );
    }

    /// A crash while the swap file itself was being written leaves only its
    /// temporary file: the old pair stands.
    #[test]
    fn a_half_written_swap_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let old = creds(&ca);
        identity(dir.path(), &ca, old.clone()).save().unwrap();
        std::fs::write(
            dir.path()
                .join(format!("{SWAP_FILE}.{}.tmp", std::process::id())),
            b"{\"key_pem\": \"-----BEG",
        )
        .unwrap();
        let loaded = Identity::load(dir.path()).unwrap().credentials();
        assert_eq!(loaded.cert_pem, old.cert_pem);
    }
}
