//! The unix socket the keys helper asks: one JSON line in (`KeysQuery`), one JSON
//! line out (`KeysAnswer`), then close. Also keeps `link.json` fresh and prints
//! break-glass keys only while the bastion has been unreachable beyond the grace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use postern_api::ssh::{BreakGlassFile, KeysAnswer, KeysQuery, LinkState, files};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::GrantStore;
use crate::channel::AgentStatus;
use crate::fsutil::write_private;

const MAX_QUERY: u64 = 4096;
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `link.json` is refreshed; bounds how stale the helper's view can be.
pub const LINK_REFRESH: Duration = Duration::from_secs(5);

/// Break-glass keys from the agent's configuration.
#[derive(Debug, Clone, Default)]
pub struct BreakGlass {
    pub keys: Vec<String>,
    pub grace: Duration,
}

impl BreakGlass {
    /// Reads `authorized_keys`-style lines (blank lines and `#` comments skipped);
    /// each must be a plain key, without options.
    pub fn load(path: &Path, grace: Duration) -> Result<BreakGlass, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read break-glass keys {}: {e}", path.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let key = match (parts.next(), parts.next()) {
                (Some(a), Some(b)) => format!("{a} {b}"),
                _ => String::new(),
            };
            if !postern_api::ssh::check_key_text(&key) {
                return Err(format!(
                    "{}:{}: not a plain public key line (\"ssh-ed25519 AAAA… comment\", no options)",
                    path.display(),
                    n + 1
                ));
            }
            keys.push(key);
        }
        Ok(BreakGlass { keys, grace })
    }
}

#[derive(Debug, Clone)]
pub struct KeysService {
    pub grants: GrantStore,
    pub status: Arc<AgentStatus>,
    pub break_glass: Option<BreakGlass>,
    pub kube_keys: crate::kube_keys::KubeKeys,
    pub data_dir: PathBuf,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl KeysService {
    fn answer(&self, q: &KeysQuery) -> KeysAnswer {
        if postern_api::validate::login(&q.login).is_err() {
            return KeysAnswer::default();
        }
        let grants = self.grants.for_login(&q.login, q.fingerprint.as_deref());
        let mut break_glass = Vec::new();
        if let Some(bg) = &self.break_glass
            && !self.status.connected.load(Ordering::SeqCst)
        {
            let down_for = now_ms() - self.status.down_since_ms.load(Ordering::SeqCst);
            if down_for > bg.grace.as_millis() as i64 {
                tracing::warn!(
                    login = %q.login,
                    down_for_s = down_for / 1000,
                    "bastion unreachable beyond the grace: offering break-glass keys to sshd"
                );
                break_glass = bg.keys.clone();
            }
        }
        KeysAnswer {
            grants,
            break_glass,
            kube_keys: self.kube_keys.for_login(&q.login, q.fingerprint.as_deref()),
        }
    }

    /// Serves the helper until shutdown; keeps `link.json` fresh meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let sock = self.data_dir.join(files::SOCKET);
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        self.write_break_glass().await;
        let tasks = TaskTracker::new();
        let mut tick = tokio::time::interval(LINK_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.write_link().await,
                _ = prune.tick() => {
                    if let Err(e) = self.grants.prune().await {
                        tracing::warn!(error = %e, "could not prune expired grants");
                    }
                }
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let svc = self.clone();
                        tasks.spawn(async move {
                            if tokio::time::timeout(QUERY_TIMEOUT, svc.serve_one(stream)).await.is_err() {
                                tracing::debug!("keys helper query timed out");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keys socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(QUERY_TIMEOUT, tasks.wait()).await;
        // Leave a final "down" record: the path to the bastion goes with us, from
        // now. A stop is not an outage: if the channel was up until this moment,
        // the helper's break-glass grace starts now, not when it last went down.
        self.status.mark_down();
        self.write_link().await;
        let _ = std::fs::remove_file(&sock);
        Ok(())
    }

    async fn serve_one(&self, stream: UnixStream) -> std::io::Result<()> {
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        BufReader::new(rd.take(MAX_QUERY))
            .read_line(&mut line)
            .await?;
        let answer = match serde_json::from_str::<KeysQuery>(line.trim()) {
            Ok(q) => self.answer(&q),
            Err(e) => {
                tracing::debug!(error = %e, "malformed keys helper query");
                KeysAnswer::default()
            }
        };
        let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
        wr.shutdown().await
    }

    async fn write_link(&self) {
        let up = self.status.connected.load(Ordering::SeqCst);
        let state = LinkState {
            up,
            down_since_ms: self.status.down_since_ms.load(Ordering::SeqCst),
            written_ms: now_ms(),
        };
        let path = self.data_dir.join(files::LINK);
        let r = tokio::task::spawn_blocking(move || {
            let data = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
            write_private(&path, &data)
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!("could not refresh link.json for the keys helper");
        }
    }

    async fn write_break_glass(&self) {
        let path = self.data_dir.join(files::BREAK_GLASS);
        let Some(bg) = &self.break_glass else {
            let _ = tokio::fs::remove_file(&path).await;
            return;
        };
        let file = BreakGlassFile {
            keys: bg.keys.clone(),
            grace_secs: bg.grace.as_secs(),
        };
        let r = tokio::task::spawn_blocking(move || {
            let data = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
            write_private(&path, &data)
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!("could not write break-glass.json for the keys helper");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn service(dir: &Path, status: Arc<AgentStatus>) -> KeysService {
        KeysService {
            grants: GrantStore::open(Some(dir)),
            status,
            break_glass: Some(BreakGlass {
                keys: vec![
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBreakGlassKeyBreakGlassKeyBreakGl".into(),
                ],
                grace: Duration::from_secs(60),
            }),
            kube_keys: crate::kube_keys::KubeKeys::disabled(None),
            data_dir: dir.to_path_buf(),
        }
    }

    fn link(dir: &Path) -> LinkState {
        serde_json::from_slice(&std::fs::read(dir.join(files::LINK)).unwrap()).unwrap()
    }

    /// A stop is not an outage. An agent that ran (and was connected) far longer
    /// than the break-glass grace, then is stopped by `systemctl stop`, must leave
    /// a record from which the helper counts the bastion lost from the stop, not
    /// from when the agent started or the channel last dropped.
    #[tokio::test]
    async fn a_clean_stop_does_not_open_break_glass() {
        let dir = tempfile::tempdir().unwrap();
        let status = Arc::new(AgentStatus::default());
        let hour_ago = now_ms() - 3_600_000;
        status.down_since_ms.store(hour_ago, Ordering::SeqCst);
        status.mark_up();
        let stop = CancellationToken::new();
        let task = tokio::spawn(service(dir.path(), status.clone()).run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        let l = link(dir.path());
        assert!(
            !l.up,
            "the agent is gone, and the path to the bastion with it"
        );
        let lost_for = now_ms() - l.unreachable_since_agent_silent();
        assert!(
            (0..5_000).contains(&lost_for),
            "the helper would count the bastion lost for {lost_for} ms after a clean stop"
        );
    }

    /// A real outage keeps its start: a channel down for an hour, then a stop,
    /// still counts from the loss.
    #[tokio::test]
    async fn a_stop_during_an_outage_keeps_the_outage_start() {
        let dir = tempfile::tempdir().unwrap();
        let status = Arc::new(AgentStatus::default());
        status.mark_up();
        status.mark_down();
        let lost_at = now_ms() - 3_600_000;
        status.down_since_ms.store(lost_at, Ordering::SeqCst);
        status.mark_down();
        assert_eq!(status.down_since_ms.load(Ordering::SeqCst), lost_at);
        let stop = CancellationToken::new();
        let svc = service(dir.path(), status.clone());
        let q = KeysQuery {
            login: "root".into(),
            fingerprint: None,
        };
        assert_eq!(
            svc.answer(&q).break_glass.len(),
            1,
            "down an hour, grace 60 s"
        );
        let task = tokio::spawn(svc.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(link(dir.path()).unreachable_since_agent_silent(), lost_at);
    }
}
