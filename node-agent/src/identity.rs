//! The agent's identity: node id, hostname, the bastion's URL and CA, and the key
//! and certificate it presents. Kept in the data directory (0700, files 0600) so a
//! restarted agent reconnects without enrolling again; swapped in place when the
//! bastion rotates the certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::{private_dir, write_private};

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
    pub controller: String,
    pub ca_hash: String,
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
        let creds = Credentials {
            key_pem: read("node.key")?,
            cert_pem: read("node.crt")?,
        };
        Ok(Identity::new(
            meta,
            read("ca.crt")?,
            creds,
            Some(dir.to_path_buf()),
        ))
    }

    /// Writes everything to `dir` (0700), each file 0600 and replaced atomically.
    pub fn save(&self) -> Result<(), IdentityError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        private_dir(dir).map_err(io_err(dir))?;
        let creds = self.credentials();
        let meta = serde_json::to_vec_pretty(&self.meta)
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        for (name, data) in [
            ("node.key", creds.key_pem.as_bytes()),
            ("node.crt", creds.cert_pem.as_bytes()),
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
