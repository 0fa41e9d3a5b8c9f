//! Runs one command: `/bin/sh -c CMD`, or a whole script as `/bin/sh FILE`, in its
//! own process group so the timeout kills everything it started, with stdin closed
//! and both output streams captured with bounded memory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use postern_api::cmdexec::{
    AgentExec, AgentExecResult, ContentType, MAX_KEEP_BYTES, NodeExecStatus, Output,
};
use tokio::process::Command;

use super::capture::{Capture, read_all};
use super::now_ms;

/// After the shell exits, how long its leftovers may keep the output pipes open.
const LINGER: Duration = Duration::from_secs(1);

fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (nothing left) is the common, fine case.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn failed(req: &AgentExec, started: i64, error: String) -> AgentExecResult {
    AgentExecResult {
        exec_id: req.exec_id.clone(),
        status: NodeExecStatus::Failed,
        exit_code: None,
        stdout: Output::default(),
        stderr: Output::default(),
        error: Some(error),
        started_at_ms: started,
        finished_at_ms: Some(now_ms()),
    }
}

/// The shell that starts every command: it gives up the agent's protection from
/// the OOM killer (the unit sets `OOMScoreAdjust=-900` so the agent survives
/// memory pressure; a runaway command must not inherit that and make the kernel
/// kill other workloads first), then becomes the command's own shell. Raising
/// one's own score needs no privilege; where /proc is read-only it is skipped.
/// Done in a shell rather than in `pre_exec`, which would need `unsafe`.
const RESET_OOM: &str = "echo 0 > /proc/self/oom_score_adj 2>/dev/null; exec /bin/sh \"$@\"";

/// The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks
/// since boot): with the pid, it names one process, not whichever reused its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills process group `pgid` if its leader is still the process that started
/// at `started` (after an agent crash, the group of a command that outlived it).
pub fn kill_orphan_group(pgid: u32, started: u64) -> bool {
    if start_time(pgid) != Some(started) {
        return false;
    }
    kill_group(Some(pgid));
    true
}

/// Runs the command to completion or timeout. `scratch` holds script files.
/// `started` learns the command's process group as soon as it exists.
pub async fn run(
    req: &AgentExec,
    scratch: &Path,
    started_group: impl FnOnce(u32),
) -> AgentExecResult {
    let started = now_ms();
    let mut cmd = Command::new("/bin/sh");
    // `$0` of the wrapper, then the arguments of the command's shell.
    cmd.arg("-c").arg(RESET_OOM).arg("/bin/sh");
    // Absolute: the command runs in `/`, and `--data-dir` may have been relative.
    let scratch = std::path::absolute(scratch).unwrap_or_else(|_| scratch.to_path_buf());
    let script_path = scratch.join(format!("{}.sh", req.exec_id));
    match req.content_type {
        ContentType::String => {
            cmd.arg("-c").arg(&req.command);
        }
        ContentType::Base64 => {
            let script = match base64::engine::general_purpose::STANDARD.decode(req.command.trim())
            {
                Ok(s) => s,
                Err(e) => return failed(req, started, format!("script is not valid base64: {e}")),
            };
            let write = async {
                tokio::fs::create_dir_all(&scratch).await?;
                tokio::fs::write(&script_path, &script).await?;
                tokio::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o700))
                    .await
            };
            if let Err(e) = write.await {
                return failed(
                    req,
                    started,
                    format!("cannot write the script to {}: {e}", script_path.display()),
                );
            }
            cmd.arg(&script_path);
        }
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(req, started, format!("cannot start /bin/sh: {e}")),
    };
    let pgid = child.id();
    if let Some(p) = pgid {
        started_group(p);
    }
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pgid);
        return failed(req, started, "no output pipes".into());
    };
    let keep = req.keep_bytes.min(MAX_KEEP_BYTES);
    let mut out_task = tokio::spawn(read_all(out, Capture::new(keep)));
    let mut err_task = tokio::spawn(read_all(err, Capture::new(keep)));

    let timeout = Duration::from_secs(req.timeout_secs);
    let exit = tokio::select! {
        s = child.wait() => Some(s),
        _ = tokio::time::sleep(timeout) => None,
    };
    let (status, exit_code, error) = match exit {
        None => {
            kill_group(pgid);
            let _ = child.wait().await;
            (
                NodeExecStatus::TimedOut,
                None,
                Some(format!("killed after the {}s timeout", req.timeout_secs)),
            )
        }
        Some(Err(e)) => {
            kill_group(pgid);
            (
                NodeExecStatus::Failed,
                None,
                Some(format!("waiting for the command failed: {e}")),
            )
        }
        Some(Ok(s)) => match s.code() {
            Some(0) => (NodeExecStatus::Succeeded, Some(0), None),
            Some(c) => (NodeExecStatus::Failed, Some(c), None),
            None => (
                NodeExecStatus::Failed,
                None,
                Some(format!("terminated by a signal ({s})")),
            ),
        },
    };
    // Whatever the shell left behind must not hold the pipes (or the node) forever.
    let (mut stdout, mut stderr) = (None, None);
    let drained = tokio::time::timeout(LINGER, async {
        stdout = Some((&mut out_task).await);
        stderr = Some((&mut err_task).await);
    })
    .await;
    kill_group(pgid);
    if drained.is_err() {
        tracing::info!(exec_id = %req.exec_id, "killed processes the command left running");
    }
    // Each handle is awaited at most once: a finished one is never polled again.
    let stdout = match stdout {
        Some(r) => r,
        None => out_task.await,
    };
    let stderr = match stderr {
        Some(r) => r,
        None => err_task.await,
    };
    let stdout = stdout.map(Capture::finish).unwrap_or_default();
    let stderr = stderr.map(Capture::finish).unwrap_or_default();
    if req.content_type == ContentType::Base64 {
        let _ = tokio::fs::remove_file(&script_path).await;
    }
    AgentExecResult {
        exec_id: req.exec_id.clone(),
        status,
        exit_code,
        stdout,
        stderr,
        error,
        started_at_ms: started,
        finished_at_ms: Some(now_ms()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(command: &str) -> AgentExec {
        AgentExec {
            exec_id: "t1".into(),
            command: command.into(),
            content_type: ContentType::String,
            timeout_secs: 10,
            keep_bytes: 4096,
        }
    }

    /// The agent runs with `OOMScoreAdjust=-900`; its commands must not inherit
    /// that, whatever the agent's own score: they start at 0.
    #[tokio::test]
    async fn commands_do_not_inherit_the_agents_oom_score() {
        // The test process takes a score other than 0 for its commands to inherit.
        // Systemd lowers the agent's to -900 with privilege; this sandbox lacks
        // CAP_SYS_RESOURCE, so the test raises it instead (allowed to anyone):
        // inheritance, and the reset, are the same either way.
        std::fs::write("/proc/self/oom_score_adj", "500").unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/self/oom_score_adj").unwrap(),
            "500\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let r = run(&req("cat /proc/self/oom_score_adj"), dir.path(), |_| {}).await;
        assert_eq!(r.status, NodeExecStatus::Succeeded, "{r:?}");
        assert_eq!(String::from_utf8_lossy(&r.stdout.data), "0\n");
        // Scripts too, and the command's own arguments are untouched.
        let script = base64::engine::general_purpose::STANDARD
            .encode("printf '%s|' \"$0\" \"$#\"; cat /proc/self/oom_score_adj");
        let mut q = req(&script);
        q.content_type = ContentType::Base64;
        let r = run(&q, dir.path(), |_| {}).await;
        let out = String::from_utf8_lossy(&r.stdout.data).into_owned();
        assert!(out.ends_with("|0|0\n"), "{out:?}");
    }

    #[tokio::test]
    async fn nul_and_binary_output_survive() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&req("printf 'a\\000b\\377'"), dir.path(), |_| {}).await;
        assert_eq!(r.stdout.data, b"a\0b\xff");
    }
}
