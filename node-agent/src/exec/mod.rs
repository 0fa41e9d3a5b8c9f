//! Remote command execution on the node, at most once per exec ID.
//!
//! Before a command starts, its exec ID is recorded as running in the spool (a
//! directory of JSON files, written atomically); the result replaces it when the
//! command ends and stays until the bastion confirms it stored it (`forget`). So a
//! result outlives a dropped channel or a bastion restart, and an exec ID seen once
//! is never run again, even after the agent restarts.

pub mod capture;
pub mod live;
mod run;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use postern_api::cmdexec::{AgentExec, AgentExecResult, LIVE_BYTES_MAX, NodeExecStatus, Output};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub use capture::Capture;
pub use live::LiveOutput;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Commands one agent runs at once by default; more wait their turn, so a flood of
/// requests cannot fork-bomb the node.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// How many forgotten exec IDs are remembered, to refuse a replay.
const TOMBSTONES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec ID {0:?} is malformed: use letters, digits and '-', at most 64")]
    BadId(String),
    #[error("exec ID {0} was already run and its result delivered; it will not run again")]
    Forgotten(String),
    #[error("command is empty")]
    Empty,
    #[error("cannot write the spool: {0}")]
    Spool(std::io::Error),
}

/// One exec the agent holds: its progress, its live output while it has one,
/// and what stops it.
#[derive(Clone)]
struct Entry {
    result: watch::Receiver<AgentExecResult>,
    output: Option<Arc<LiveOutput>>,
    cancel: CancellationToken,
}

impl Entry {
    fn settled(r: AgentExecResult) -> Entry {
        Entry {
            result: watch::channel(r).1,
            output: None,
            cancel: CancellationToken::new(),
        }
    }
}

#[derive(Default)]
struct State {
    live: HashMap<String, Entry>,
    forgotten: HashSet<String>,
    forgotten_order: VecDeque<String>,
}

/// The node's executor, shared by the channel's handlers.
#[derive(Clone)]
pub struct Executor {
    spool: Option<PathBuf>,
    state: Arc<Mutex<State>>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("spool", &self.spool)
            .finish()
    }
}

fn cancelled_before_start(exec_id: &str) -> AgentExecResult {
    AgentExecResult {
        exec_id: exec_id.to_string(),
        status: NodeExecStatus::Cancelled,
        exit_code: None,
        stdout: Output::default(),
        stderr: Output::default(),
        error: Some("cancelled before it started".into()),
        started_at_ms: now_ms(),
        finished_at_ms: Some(now_ms()),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Executor {
    /// An executor spooling to `dir` (created 0700); with `None`, results live in
    /// memory only (the benchmark swarm).
    pub fn new(dir: Option<PathBuf>) -> Executor {
        Executor::with_slots(dir, Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)))
    }

    /// An executor sharing its concurrency limit with others (many agents in one
    /// process share one set of file descriptors).
    pub fn with_slots(dir: Option<PathBuf>, slots: Arc<Semaphore>) -> Executor {
        let ex = Executor {
            spool: dir,
            state: Arc::new(Mutex::new(State::default())),
            slots,
        };
        ex.recover();
        ex
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads spooled results. A command still marked running was cut short by an
    /// agent restart: its outcome is unknown, so it is reported lost, never rerun.
    fn recover(&self) {
        let Some(dir) = &self.spool else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(mut r) = serde_json::from_str::<AgentExecResult>(&text) else {
                tracing::warn!(path = %path.display(), "unreadable spool entry; leaving it");
                continue;
            };
            if !r.status.is_final() {
                // The command may have outlived the agent (kill -9, OOM): end it,
                // since nobody is left to enforce its timeout or collect it.
                let group_file = dir.join(format!("{}.pgid", r.exec_id));
                let killed = std::fs::read_to_string(&group_file)
                    .ok()
                    .and_then(|t| {
                        let (g, s) = t.trim().split_once(' ')?;
                        Some((g.parse().ok()?, s.parse().ok()?))
                    })
                    .is_some_and(|(g, s)| run::kill_orphan_group(g, s));
                let _ = std::fs::remove_file(&group_file);
                let cancel_file = dir.join(format!("{}.cancel", r.exec_id));
                let cancelled = cancel_file.exists();
                let _ = std::fs::remove_file(&cancel_file);
                r.status = if cancelled {
                    NodeExecStatus::Cancelled
                } else {
                    NodeExecStatus::Lost
                };
                r.error = Some(if cancelled {
                    "cancelled; the agent restarted while the command was being stopped, and what was left of it was killed".into()
                } else if killed {
                    "the agent restarted while the command ran; what was left of it was killed, and its outcome is unknown".into()
                } else {
                    "the agent restarted while the command ran; its outcome is unknown".into()
                });
                r.finished_at_ms = Some(now_ms());
                let _ = self.persist(&r);
            }
            self.lock()
                .live
                .insert(r.exec_id.clone(), Entry::settled(r));
        }
    }

    fn persist(&self, r: &AgentExecResult) -> Result<(), ExecError> {
        let Some(dir) = &self.spool else {
            return Ok(());
        };
        crate::fsutil::private_dir(dir).map_err(ExecError::Spool)?;
        let data = serde_json::to_vec(r).map_err(|e| ExecError::Spool(std::io::Error::other(e)))?;
        crate::fsutil::write_private(&dir.join(format!("{}.json", r.exec_id)), &data)
            .map_err(ExecError::Spool)
    }

    /// Starts the exec unless this ID was seen; either way returns its progress.
    pub fn start(&self, req: AgentExec) -> Result<watch::Receiver<AgentExecResult>, ExecError> {
        if !valid_id(&req.exec_id) {
            return Err(ExecError::BadId(req.exec_id.chars().take(80).collect()));
        }
        if req.command.trim().is_empty() {
            return Err(ExecError::Empty);
        }
        let mut st = self.lock();
        if let Some(e) = st.live.get(&req.exec_id) {
            return Ok(e.result.clone());
        }
        if st.forgotten.contains(&req.exec_id) {
            return Err(ExecError::Forgotten(req.exec_id));
        }
        let running = AgentExecResult {
            exec_id: req.exec_id.clone(),
            status: NodeExecStatus::Running,
            exit_code: None,
            stdout: Output::default(),
            stderr: Output::default(),
            error: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
        };
        // Recorded before the command starts: this is what makes it at most once.
        self.persist(&running)?;
        let (tx, rx) = watch::channel(running);
        let output = LiveOutput::new(req.keep_bytes.clamp(2, LIVE_BYTES_MAX));
        let cancel = CancellationToken::new();
        st.live.insert(
            req.exec_id.clone(),
            Entry {
                result: rx.clone(),
                output: Some(output.clone()),
                cancel: cancel.clone(),
            },
        );
        drop(st);
        let me = self.clone();
        tokio::spawn(async move {
            // Closed only if the executor is gone; then run anyway rather than drop it.
            let slot = tokio::select! {
                s = me.slots.clone().acquire_owned() => s.ok(),
                _ = cancel.cancelled() => None,
            };
            if cancel.is_cancelled() {
                // Cancelled while it waited for a slot: it never starts.
                drop(slot);
                let r = cancelled_before_start(&req.exec_id);
                if let Err(e) = me.persist(&r) {
                    tracing::error!(exec_id = %req.exec_id, error = %e, "cannot spool a result; it is held in memory only");
                }
                let _ = tx.send(r);
                return;
            }
            let _slot = slot;
            let scratch = me
                .spool
                .clone()
                .unwrap_or_else(std::env::temp_dir)
                .join("scripts");
            let req2 = req.clone();
            // Where the command's process group is noted while it runs, so an
            // agent killed meanwhile can end it at its next start (see recover).
            let group_file = me
                .spool
                .as_ref()
                .map(|d| d.join(format!("{}.pgid", req.exec_id)));
            let note = group_file.clone();
            let noted = move |pgid: u32| {
                if let (Some(path), Some(t)) = (note, run::start_time(pgid)) {
                    let _ = crate::fsutil::write_private(&path, format!("{pgid} {t}").as_bytes());
                }
            };
            // A crash of the run itself must still end in a result, never a hang.
            let stop = cancel.clone();
            let result =
                match tokio::spawn(
                    async move { run::run(&req2, &scratch, noted, output, stop).await },
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => AgentExecResult {
                        exec_id: req.exec_id.clone(),
                        status: NodeExecStatus::Failed,
                        exit_code: None,
                        stdout: Output::default(),
                        stderr: Output::default(),
                        error: Some(format!("the agent's executor failed: {e}")),
                        started_at_ms: now_ms(),
                        finished_at_ms: Some(now_ms()),
                    },
                };
            if let Err(e) = me.persist(&result) {
                tracing::error!(exec_id = %req.exec_id, error = %e, "cannot spool a result; it is held in memory only");
            }
            if let Some(path) = group_file {
                let _ = std::fs::remove_file(path);
            }
            if let Some(dir) = &me.spool {
                let _ = std::fs::remove_file(dir.join(format!("{}.cancel", req.exec_id)));
            }
            let _ = tx.send(result);
        });
        Ok(rx)
    }

    pub fn get(&self, exec_id: &str) -> Option<watch::Receiver<AgentExecResult>> {
        self.lock().live.get(exec_id).map(|e| e.result.clone())
    }

    /// What a stream of this exec reads: its live output (none for a result
    /// recovered from the spool) and its progress.
    pub fn stream_source(
        &self,
        exec_id: &str,
    ) -> Option<(Option<Arc<LiveOutput>>, watch::Receiver<AgentExecResult>)> {
        self.lock()
            .live
            .get(exec_id)
            .map(|e| (e.output.clone(), e.result.clone()))
    }

    /// Stops an exec: one waiting for a slot never starts, a running one's process
    /// group gets SIGTERM, then SIGKILL after the grace; a finished one is left as
    /// it is. An exec ID not seen yet (the cancel overtook the command on the
    /// channel) is recorded as cancelled, so the command never runs when it comes.
    /// Answers the exec's state.
    pub fn cancel(&self, exec_id: &str) -> Result<AgentExecResult, ExecError> {
        if !valid_id(exec_id) {
            return Err(ExecError::BadId(exec_id.chars().take(80).collect()));
        }
        let mut st = self.lock();
        if let Some(e) = st.live.get(exec_id) {
            let current = e.result.borrow().clone();
            if !current.status.is_final() {
                // Noted on disk: an agent restarted during the grace reports
                // the command cancelled, not lost.
                if let Some(dir) = &self.spool {
                    let _ =
                        crate::fsutil::write_private(&dir.join(format!("{exec_id}.cancel")), b"");
                }
                e.cancel.cancel();
            }
            return Ok(current);
        }
        if st.forgotten.contains(exec_id) {
            return Err(ExecError::Forgotten(exec_id.to_string()));
        }
        let r = cancelled_before_start(exec_id);
        self.persist(&r)?;
        st.live
            .insert(exec_id.to_string(), Entry::settled(r.clone()));
        Ok(r)
    }

    /// Exec IDs whose final results are held, at most `limit`.
    pub fn finished_ids(&self, limit: usize) -> Vec<String> {
        self.lock()
            .live
            .iter()
            .filter(|(_, e)| e.result.borrow().status.is_final())
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect()
    }

    pub fn was_forgotten(&self, exec_id: &str) -> bool {
        self.lock().forgotten.contains(exec_id)
    }

    /// The bastion stored the result: drop it from the spool, remember the ID.
    pub fn forget(&self, exec_id: &str) -> bool {
        if !valid_id(exec_id) {
            return false;
        }
        let mut st = self.lock();
        let Some(e) = st.live.get(exec_id) else {
            return false;
        };
        if !e.result.borrow().status.is_final() {
            return false;
        }
        st.live.remove(exec_id);
        if st.forgotten.insert(exec_id.to_string()) {
            st.forgotten_order.push_back(exec_id.to_string());
            if st.forgotten_order.len() > TOMBSTONES
                && let Some(old) = st.forgotten_order.pop_front()
            {
                st.forgotten.remove(&old);
            }
        }
        drop(st);
        if let Some(dir) = &self.spool {
            let _ = std::fs::remove_file(dir.join(format!("{exec_id}.json")));
        }
        true
    }

    /// Waits until the exec has a final result or `wait` passes; returns what is known.
    pub async fn wait(
        mut rx: watch::Receiver<AgentExecResult>,
        wait: std::time::Duration,
    ) -> AgentExecResult {
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| r.status.is_final())).await;
        rx.borrow().clone()
    }
}
