//! `--kube-node-keys`: keys from this node's own Kubernetes Node object.
//!
//! The agent watches its Node with the kubelet's credentials (so it can read
//! nothing the kubelet could not) for the [`ANNOTATION`], parses it strictly
//! ([`postern_api::kube_keys`]), and holds the live keys for the keys helper beside
//! the bastion's grants. The set is cached in `kube-keys.json` (0600, written
//! atomically) and loaded at start, so it keeps working while the API server, the
//! kubelet or the bastion is down, and after an agent restart: the break-glass
//! path of a cluster. Expired keys are dropped on a timer and never served.
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
use postern_api::kube_keys::{
    ANNOTATION, KubeKey, KubeKeysFile, KubeKeysReport, KubeNodeKey, Parsed, parse_annotation,
};
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
}

/// What to watch: a client with the kubelet's credentials, and the Node's name.
#[derive(Clone)]
pub struct KubeNodeKeysConfig {
    pub client: kube::Client,
    pub node_name: String,
}

impl std::fmt::Debug for KubeNodeKeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeNodeKeysConfig")
            .field("node_name", &self.node_name)
            .finish()
    }
}

impl KubeNodeKeysConfig {
    /// A client from the kubelet's kubeconfig file (its server, CA and credentials).
    pub async fn from_kubeconfig(path: &Path, node_name: &str) -> Result<Self, KubeKeysError> {
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
    /// still live, well formed, and cached for this same Node).
    pub fn open(data_dir: Option<&Path>, node_name: &str) -> KubeKeys {
        let path = data_dir.map(|d| d.join(files::KUBE_KEYS));
        let now = now_ms();
        let file = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<KubeKeysFile>(&b).ok())
            .filter(|f| f.node_name == node_name)
            .map(|mut f| {
                f.keys.retain(|k| k.is_live(now) && k.is_well_formed());
                f
            })
            .unwrap_or_else(|| KubeKeysFile {
                node_name: node_name.to_string(),
                ..KubeKeysFile::default()
            });
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

    /// Takes a freshly parsed annotation; expired keys are left out. Persists and
    /// moves the version only when the set or its rejected lines changed.
    pub async fn apply(&self, parsed: Parsed) -> Result<bool, KubeKeysError> {
        let now = now_ms();
        let changed = {
            let mut s = self.lock();
            let keys: Vec<KubeKey> = parsed.keys.into_iter().filter(|k| k.is_live(now)).collect();
            s.file.observed_at_ms = now;
            if s.file.keys == keys && s.file.rejected == parsed.rejected {
                false
            } else {
                for r in parsed
                    .rejected
                    .iter()
                    .filter(|r| !s.file.rejected.contains(r))
                {
                    tracing::warn!(
                        annotation = ANNOTATION,
                        line = r.line,
                        reason = %r.reason,
                        "skipped a line of the Node annotation; it grants nothing"
                    );
                }
                tracing::info!(
                    keys = keys.len(),
                    rejected = parsed.rejected.len(),
                    "keys from the Kubernetes Node object changed"
                );
                s.file.keys = keys;
                s.file.rejected = parsed.rejected;
                s.version += 1;
                true
            }
        };
        if changed {
            self.bump();
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

/// Watches the Node until `shutdown`: every version of the object is parsed and
/// applied; errors (API server or kubelet credentials gone) leave the held set as
/// it is and are retried with kube's default backoff.
pub async fn watch(cfg: KubeNodeKeysConfig, keys: KubeKeys, shutdown: CancellationToken) {
    let api: kube::Api<Node> = kube::Api::all(cfg.client);
    let stream = watcher::watch_object(api, &cfg.node_name).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    tracing::info!(node = %cfg.node_name, annotation = ANNOTATION, "watching the Kubernetes Node object for keys");
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
                    let text = node
                        .as_ref()
                        .and_then(|n| n.metadata.annotations.as_ref())
                        .and_then(|a| a.get(ANNOTATION))
                        .map(String::as_str)
                        .unwrap_or_default();
                    if node.is_none() {
                        tracing::warn!(node = %cfg.node_name, "the Node object does not exist; no keys from Kubernetes");
                    }
                    if let Err(e) = keys.apply(parse_annotation(text)).await {
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t a";

    #[tokio::test]
    async fn changes_move_the_version_persist_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KubeKeys::open(Some(dir.path()), "n1");
        let v0 = keys.report().version;
        assert!(
            keys.apply(parse_annotation(&format!("logins=root {KEY}\nbad line")))
                .await
                .unwrap()
        );
        // The same annotation again changes nothing.
        assert!(
            !keys
                .apply(parse_annotation(&format!("logins=root {KEY}\nbad line")))
                .await
                .unwrap()
        );
        let r = keys.report();
        assert_eq!(r.version, v0 + 1);
        assert_eq!(r.keys.len(), 1);
        assert_eq!(r.rejected[0].line, 2);
        assert_eq!(keys.for_login("root", None).len(), 1);
        assert!(keys.for_login("deploy", None).is_empty());
        let meta = std::fs::metadata(dir.path().join(files::KUBE_KEYS)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        // A restart serves the cache; another Node's cache is not used.
        assert_eq!(
            KubeKeys::open(Some(dir.path()), "n1")
                .for_login("root", None)
                .len(),
            1
        );
        assert!(
            KubeKeys::open(Some(dir.path()), "n2")
                .for_login("root", None)
                .is_empty()
        );
        // Turned off, the cache goes.
        KubeKeys::disabled(Some(dir.path()));
        assert!(!dir.path().join(files::KUBE_KEYS).exists());
    }

    #[tokio::test]
    async fn expired_keys_are_never_held_and_a_waiter_wakes_on_change() {
        let keys = KubeKeys::open(None, "n1");
        keys.apply(parse_annotation(&format!(
            "expires=2001-01-01T00:00:00Z {KEY}"
        )))
        .await
        .unwrap();
        assert!(keys.for_login("root", None).is_empty());
        assert!(keys.report().keys.is_empty());
        let v = keys.report().version;
        let stop = CancellationToken::new();
        let waiter = {
            let keys = keys.clone();
            let stop = stop.clone();
            tokio::spawn(async move { keys.wait_changed(v, Duration::from_secs(30), &stop).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        keys.apply(parse_annotation(KEY)).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.version, v + 1);
        assert_eq!(r.keys.len(), 1);
        // An old version answers at once.
        let r = keys.wait_changed(0, Duration::from_secs(30), &stop).await;
        assert_eq!(r.version, v + 1);
    }
}
