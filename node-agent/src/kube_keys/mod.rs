//! `--kube-node-keys`: keys from this node's own Kubernetes Node object.
//!
//! The agent watches its Node with the kubelet's credentials (so it can read
//! nothing the kubelet could not) for the [`ANNOTATION`] and its signature
//! [`SIG_ANNOTATION`], uses them only when signed by a key of
//! `--kube-node-keys-signer` ([`postern_api::kube_keys::signed`]: writers of
//! `nodes/status` can change annotations too), parses the key lines strictly, and
//! holds the live keys for the keys helper beside the bastion's grants. An absent,
//! unsigned or otherwise refused annotation grants nothing, at once: the cache is
//! for when the API server cannot be asked, not for when its answer is bad.
//!
//! The set is cached in `kube-keys.json` (0600, written atomically) and loaded at
//! start, so it keeps working while the API server, the kubelet or the bastion is
//! down, and after an agent restart: the break-glass path of a cluster. The cache
//! also keeps the last accepted document's serial, so an older document is never
//! taken again. Expired keys are dropped on a timer and never served.
//!
//! The bastion learns the set by long-polling `GET /v1/kube-keys` over the channel;
//! [`KubeKeys::wait_changed`] answers when the version moves.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use postern_api::kube_keys::signed::{
    self, Context, MAX_SIGNERS_FILE_BYTES, Outcome, SIG_ANNOTATION, Signers,
};
use postern_api::kube_keys::{ANNOTATION, KubeKey, KubeKeysFile, KubeKeysReport, KubeNodeKey};
use postern_api::ssh::files;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::fsutil::write_private;

/// How often expired keys are looked for; a key's `expiry-time=` makes sshd refuse
/// it at the second anyway, this only tidies the set and the bastion's view.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum KubeKeysError {
    #[error("cannot read the kubelet kubeconfig {0}: {1}")]
    Kubeconfig(String, String),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("--kube-node-keys-signer {0}: {1}")]
    Signers(String, String),
}

/// Reads the signer keys (`--kube-node-keys-signer`): OpenSSH public keys, one per
/// line. Refused whole when a line is bad or none is there.
pub fn load_signers(path: &Path) -> Result<Signers, KubeKeysError> {
    let shown = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| KubeKeysError::Signers(shown.clone(), e.to_string());
    let meta = std::fs::metadata(path).map_err(|e| err(&e))?;
    if meta.len() > MAX_SIGNERS_FILE_BYTES as u64 {
        return Err(err(&format!("larger than {MAX_SIGNERS_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(&e))?;
    Signers::parse(&text).map_err(|e| err(&e))
}

/// What to watch: a client with the kubelet's credentials, the Node's name, and
/// the keys whose signature makes its annotation usable.
#[derive(Clone)]
pub struct KubeNodeKeysConfig {
    pub client: kube::Client,
    pub node_name: String,
    pub signers: Arc<Signers>,
}

impl std::fmt::Debug for KubeNodeKeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeNodeKeysConfig")
            .field("node_name", &self.node_name)
            .field("signers", &self.signers.fingerprints().collect::<Vec<_>>())
            .finish()
    }
}

impl KubeNodeKeysConfig {
    /// A client from the kubelet's kubeconfig file (its server, CA and credentials).
    pub async fn from_kubeconfig(
        path: &Path,
        node_name: &str,
        signers: Signers,
    ) -> Result<Self, KubeKeysError> {
        let shown = path.display().to_string();
        let err =
            |e: &dyn std::fmt::Display| KubeKeysError::Kubeconfig(shown.clone(), e.to_string());
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| err(&e))?;
        let client = kube::Client::try_from(cfg).map_err(|e| err(&e))?;
        Ok(KubeNodeKeysConfig {
            client,
            node_name: node_name.to_string(),
            signers: Arc::new(signers),
        })
    }
}

#[derive(Debug, Default)]
struct State {
    file: KubeKeysFile,
    version: u64,
}

/// The keys learned from Kubernetes; cheap to clone. Disabled, it holds nothing.
#[derive(Debug, Clone)]
pub struct KubeKeys {
    enabled: bool,
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Serializes file writes so an older set never overwrites a newer one.
    write: Arc<tokio::sync::Mutex<()>>,
    path: Option<PathBuf>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl KubeKeys {
    /// Not configured: serves nothing, and removes any cache an earlier run left,
    /// so turning the flag off also takes the keys away from the helper's fallback.
    pub fn disabled(data_dir: Option<&Path>) -> KubeKeys {
        if let Some(d) = data_dir {
            let _ = std::fs::remove_file(d.join(files::KUBE_KEYS));
        }
        KubeKeys::new(false, None, KubeKeysFile::default())
    }

    /// Configured for Node `node_name`: starts from the cache in `data_dir` (keys
    /// still live, well formed, cached for this same Node, and from a document
    /// signed by one of `signers`).
    pub fn open(data_dir: Option<&Path>, node_name: &str, signers: &Signers) -> KubeKeys {
        let path = data_dir.map(|d| d.join(files::KUBE_KEYS));
        let now = now_ms();
        let mut dropped = false;
        let file = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<KubeKeysFile>(&b).ok())
            .filter(|f| f.node_name == node_name)
            .map(|mut f| {
                // A cache from before signatures were required may hold keys any
                // status writer put there, and one whose signer was taken out of
                // --kube-node-keys-signer holds keys nobody vouches for any more.
                // The serial stays: it still bounds what may come next.
                let vouched = f.signed.as_ref().is_some_and(|d| signers.contains(&d.signer));
                if !vouched && !f.keys.is_empty() {
                    tracing::warn!(
                        keys = f.keys.len(),
                        "the cached keys from the Kubernetes Node object are not signed by a --kube-node-keys-signer key; they are not used"
                    );
                    f.keys.clear();
                    f.rejected.clear();
                    dropped = true;
                }
                f.keys.retain(|k| k.is_live(now) && k.is_well_formed());
                f
            })
            .unwrap_or_else(|| KubeKeysFile {
                node_name: node_name.to_string(),
                ..KubeKeysFile::default()
            });
        if dropped && let Some(p) = path.as_deref() {
            // At once, not at the next change: the keys helper reads this file
            // whenever the agent does not answer.
            let written = serde_json::to_vec(&file)
                .map_err(std::io::Error::other)
                .and_then(|data| write_private(p, &data));
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not write the Kubernetes keys cache");
            }
        }
        if !file.keys.is_empty() {
            tracing::info!(
                keys = file.keys.len(),
                "serving cached keys from the Kubernetes Node object until the API server answers"
            );
        }
        KubeKeys::new(true, path, file)
    }

    fn new(enabled: bool, path: Option<PathBuf>, file: KubeKeysFile) -> KubeKeys {
        KubeKeys {
            enabled,
            state: Arc::new(Mutex::new(State { file, version: 1 })),
            changed: Arc::new(tokio::sync::watch::channel(1).0),
            write: Arc::default(),
            path,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live keys that let `login` in, optionally only the key with `fingerprint`.
    pub fn for_login(&self, login: &str, fingerprint: Option<&str>) -> Vec<KubeKey> {
        let now = now_ms();
        self.lock()
            .file
            .keys
            .iter()
            .filter(|k| k.is_live(now) && k.allows_login(login))
            .filter(|k| fingerprint.is_none_or(|f| f == k.fingerprint))
            .cloned()
            .collect()
    }

    pub fn report(&self) -> KubeKeysReport {
        let now = now_ms();
        let s = self.lock();
        KubeKeysReport {
            version: s.version,
            keys: s
                .file
                .keys
                .iter()
                .filter(|k| k.is_live(now))
                .map(KubeNodeKey::of)
                .collect(),
            rejected: s.file.rejected.clone(),
        }
    }

    /// The report once the version differs from `after`, or after `wait`, or when
    /// `stop` is cancelled (the channel ended), whichever is first.
    pub async fn wait_changed(
        &self,
        after: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> KubeKeysReport {
        let mut rx = self.changed.subscribe();
        if *rx.borrow_and_update() == after {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.changed() => {}
                _ = stop.cancelled() => {}
            }
        }
        self.report()
    }

    /// Checks the Node's annotations (`None`: absent, or no Node) against the
    /// signers, this Node's name and the last accepted serial, and applies what
    /// comes out: the document's keys, or none with the reason.
    pub async fn observe(
        &self,
        doc: Option<&str>,
        sig: Option<&str>,
        signers: &Signers,
    ) -> Result<bool, KubeKeysError> {
        let (node_name, floor) = {
            let s = self.lock();
            (s.file.node_name.clone(), s.file.signed.clone())
        };
        // One watch task calls this, so the floor cannot move between the check
        // and the apply.
        let outcome = signed::evaluate(
            doc,
            sig,
            &Context {
                node_name: &node_name,
                signers,
                now_ms: now_ms(),
                floor: floor.as_ref(),
            },
        );
        self.apply(outcome).await
    }

    /// Takes a checked annotation; expired keys are left out. Moves the version
    /// only when the set or its rejected lines changed, and persists then or when
    /// a newer document was accepted. A refused or absent document leaves the last
    /// accepted one on record, as the floor for the next.
    pub async fn apply(&self, outcome: Outcome) -> Result<bool, KubeKeysError> {
        let now = now_ms();
        let Outcome { parsed, accepted } = outcome;
        let (changed, persist) = {
            let mut s = self.lock();
            let keys: Vec<KubeKey> = parsed.keys.into_iter().filter(|k| k.is_live(now)).collect();
            s.file.observed_at_ms = now;
            let newer = accepted.is_some() && s.file.signed != accepted;
            if newer {
                s.file.signed = accepted;
            }
            if s.file.keys == keys && s.file.rejected == parsed.rejected {
                (false, newer)
            } else {
                for r in parsed
                    .rejected
                    .iter()
                    .filter(|r| !s.file.rejected.contains(r))
                {
                    if r.line == 0 {
                        tracing::warn!(
                            annotation = ANNOTATION,
                            reason = %r.reason,
                            "the Node annotation is not used; no keys from Kubernetes"
                        );
                    } else {
                        tracing::warn!(
                            annotation = ANNOTATION,
                            line = r.line,
                            reason = %r.reason,
                            "skipped a line of the Node annotation; it grants nothing"
                        );
                    }
                }
                tracing::info!(
                    keys = keys.len(),
                    rejected = parsed.rejected.len(),
                    "keys from the Kubernetes Node object changed"
                );
                s.file.keys = keys;
                s.file.rejected = parsed.rejected;
                s.version += 1;
                (true, true)
            }
        };
        if changed {
            self.bump();
        }
        if persist {
            self.persist().await?;
        }
        Ok(changed)
    }

    /// Drops expired keys; persists and moves the version when one went.
    pub async fn prune(&self) -> Result<bool, KubeKeysError> {
        let now = now_ms();
        let changed = {
            let mut s = self.lock();
            let before = s.file.keys.len();
            s.file.keys.retain(|k| k.is_live(now));
            let changed = s.file.keys.len() != before;
            if changed {
                s.version += 1;
            }
            changed
        };
        if changed {
            tracing::info!("a key from the Kubernetes Node object expired");
            self.bump();
            self.persist().await?;
        }
        Ok(changed)
    }

    fn bump(&self) {
        let v = self.lock().version;
        self.changed.send_replace(v);
    }

    async fn persist(&self) -> Result<(), KubeKeysError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let _one_writer = self.write.lock().await;
        // Snapshot under the writer lock, so the newest state is what lands last.
        let snapshot = self.lock().file.clone();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let data = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
            write_private(&path, &data)
        })
        .await
        .map_err(|e| KubeKeysError::Write(shown.clone(), std::io::Error::other(e)))?
        .map_err(|e| KubeKeysError::Write(shown, e))
    }
}

/// One annotation of the Node (`None`: no Node, or no such annotation).
fn annotation<'n>(node: Option<&'n Node>, name: &str) -> Option<&'n str> {
    node?
        .metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// Watches the Node until `shutdown`: every version of the object is checked and
/// applied (no Node, or no annotation, is no keys); errors (API server or kubelet
/// credentials gone) leave the held set as it is and are retried with kube's
/// default backoff.
pub async fn watch(cfg: KubeNodeKeysConfig, keys: KubeKeys, shutdown: CancellationToken) {
    let api: kube::Api<Node> = kube::Api::all(cfg.client);
    let stream = watcher::watch_object(api, &cfg.node_name).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    tracing::info!(
        node = %cfg.node_name,
        annotation = ANNOTATION,
        signers = ?cfg.signers.fingerprints().collect::<Vec<_>>(),
        "watching the Kubernetes Node object for keys signed by these keys"
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = prune.tick() => {
                if let Err(e) = keys.prune().await {
                    tracing::warn!(error = %e, "could not write the Kubernetes keys cache");
                }
            }
            item = stream.next() => match item {
                Some(Ok(node)) => {
                    if !healthy {
                        tracing::info!(node = %cfg.node_name, "the Kubernetes API server answers again");
                        healthy = true;
                    }
                    if node.is_none() {
                        tracing::warn!(node = %cfg.node_name, "the Node object does not exist; no keys from Kubernetes");
                    }
                    let doc = annotation(node.as_ref(), ANNOTATION);
                    let sig = annotation(node.as_ref(), SIG_ANNOTATION);
                    if let Err(e) = keys.observe(doc, sig, &cfg.signers).await {
                        tracing::warn!(error = %e, "could not write the Kubernetes keys cache");
                    }
                }
                Some(Err(e)) => {
                    // Logged once per outage: the backoff retries every few seconds.
                    if healthy {
                        tracing::warn!(node = %cfg.node_name, error = %e, "cannot watch the Node object; serving the keys held until it answers");
                        healthy = false;
                    } else {
                        tracing::debug!(error = %e, "Node watch still failing");
                    }
                }
                None => {
                    tracing::error!("the Node watch ended; keys from Kubernetes are frozen");
                    shutdown.cancelled().await;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
