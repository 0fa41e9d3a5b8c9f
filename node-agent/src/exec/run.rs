//! Runs one command: `/bin/sh -c CMD`, or a whole script as `INTERPRETER FILE` (the
//! program its `#!` line names, else `/bin/sh`), in its
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
    AgentExec, AgentExecResult, CANCEL_GRACE_SECS, ContentType, MAX_KEEP_BYTES, NodeExecStatus,
    Output, OutputStream,
};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::capture::{Capture, read_all};
use super::live::LiveOutput;
use super::now_ms;

/// After the shell exits, how long its leftovers may keep the output pipes open.
const LINGER: Duration = Duration::from_secs(1);

fn kill_group(pgid: Option<u32>) {
    signal_group(pgid, Signal::SIGKILL);
}

fn signal_group(pgid: Option<u32>, signal: Signal) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (nothing left) is the common, fine case.
        let _ = killpg(Pid::from_raw(pid), signal);
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
const RESET_OOM: &str = "echo 0 > /proc/self/oom_score_adj 2>/dev/null; exec \"$@\"";

/// The interpreter a script names on its `#!` line, read as Linux reads it: the
/// first word is the program, the rest of the line (trimmed) its one argument;
/// only the first 255 bytes count. `None` when the script has no `#!` line: it
/// then runs under `/bin/sh`, as a script without one does under a shell.
///
/// Run as `INTERPRETER [ARG] FILE` rather than by executing the file, so a data
/// directory mounted `noexec` still runs scripts, and the program is the one
/// the user wrote (a `#!/bin/bash` script under bash, a python one under python).
pub fn shebang(script: &[u8]) -> Option<(String, Option<String>)> {
    let rest = script.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = &line[..line.len().min(253)];
    let line = std::str::from_utf8(line)
        .ok()?
        .trim_matches([' ', '\t', '\r']);
    let (program, arg) = match line.split_once([' ', '\t']) {
        Some((p, a)) => (p, Some(a.trim_matches([' ', '\t']).to_string())),
        None => (line, None),
    };
    if program.is_empty() {
        return None;
    }
    Some((program.to_string(), arg.filter(|a| !a.is_empty())))
}

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

/// Runs the command to completion, timeout or cancel. `scratch` holds script
/// files. `started` learns the command's process group as soon as it exists;
/// `live` sees the output as it is written; `stop` cancels it (SIGTERM to its
/// group, SIGKILL after [`CANCEL_GRACE_SECS`]).
pub async fn run(
    req: &AgentExec,
    scratch: &Path,
    started_group: impl FnOnce(u32),
    live: std::sync::Arc<LiveOutput>,
    stop: CancellationToken,
) -> AgentExecResult {
    let started = now_ms();
    let mut cmd = Command::new("/bin/sh");
    // `$0` of the wrapper, then the program it becomes and its arguments.
    cmd.arg("-c").arg(RESET_OOM).arg("/bin/sh");
    // Absolute: the command runs in `/`, and `--data-dir` may have been relative.
    let scratch = std::path::absolute(scratch).unwrap_or_else(|_| scratch.to_path_buf());
    let script_path = scratch.join(format!("{}.sh", req.exec_id));
    match req.content_type {
        ContentType::String => {
            cmd.arg("/bin/sh").arg("-c").arg(&req.command);
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
            match shebang(&script) {
                Some((program, arg)) => {
                    cmd.arg(program);
                    if let Some(a) = arg {
                        cmd.arg(a);
                    }
                }
                None => {
                    cmd.arg("/bin/sh");
                }
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
    let live_err = live.clone();
    let mut out_task = tokio::spawn(read_all(out, Capture::new(keep), move |b| {
        live.push(OutputStream::Stdout, b)
    }));
    let mut err_task = tokio::spawn(read_all(err, Capture::new(keep), move |b| {
        live_err.push(OutputStream::Stderr, b)
    }));

    let timeout = Duration::from_secs(req.timeout_secs);
    let exit = tokio::select! {
        s = child.wait() => Exit::Done(s),
        _ = tokio::time::sleep(timeout) => Exit::TimedOut,
        _ = stop.cancelled() => Exit::Cancelled,
    };
    let (status, exit_code, error) = match exit {
        Exit::Cancelled => {
            signal_group(pgid, Signal::SIGTERM);
            let grace = Duration::from_secs(CANCEL_GRACE_SECS);
            let how = match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(s)) => format!("cancelled: stopped by SIGTERM ({s})"),
                _ => {
                    kill_group(pgid);
                    let _ = child.wait().await;
                    format!(
                        "cancelled: still running {CANCEL_GRACE_SECS}s after SIGTERM, killed with SIGKILL"
                    )
                }
            };
            (NodeExecStatus::Cancelled, None, Some(how))
        }
        Exit::TimedOut => {
            kill_group(pgid);
            let _ = child.wait().await;
            (
                NodeExecStatus::TimedOut,
                None,
                Some(format!("killed after the {}s timeout", req.timeout_secs)),
            )
        }
        Exit::Done(Err(e)) => {
            kill_group(pgid);
            (
                NodeExecStatus::Failed,
                None,
                Some(format!("waiting for the command failed: {e}")),
            )
        }
        Exit::Done(Ok(s)) => match s.code() {
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

enum Exit {
    Done(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Cancelled,
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
        let r = run(
            &req("cat /proc/self/oom_score_adj"),
            dir.path(),
            |_| {},
            LiveOutput::new(4096),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(r.status, NodeExecStatus::Succeeded, "{r:?}");
        assert_eq!(String::from_utf8_lossy(&r.stdout.data), "0\n");
        // Scripts too, and the command's own arguments are untouched.
        let script = base64::engine::general_purpose::STANDARD
            .encode("printf '%s|' \"$0\" \"$#\"; cat /proc/self/oom_score_adj");
        let mut q = req(&script);
        q.content_type = ContentType::Base64;
        let r = run(
            &q,
            dir.path(),
            |_| {},
            LiveOutput::new(4096),
            CancellationToken::new(),
        )
        .await;
        let out = String::from_utf8_lossy(&r.stdout.data).into_owned();
        assert!(out.ends_with("|0|0\n"), "{out:?}");
    }

    /// A script runs under the program its `#!` line names (bash, python), with
    /// that line's one argument; without one it runs under /bin/sh.
    #[tokio::test]
    async fn scripts_run_under_their_shebang() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "#!/bin/bash\necho \"bash=${BASH_VERSION:+yes}\"\n",
                "bash=yes\n",
            ),
            (
                "#!/usr/bin/env python3\nimport sys\nprint('python', sys.version_info[0])\n",
                "python 3\n",
            ),
            ("#! /bin/sh -e\necho first; false; echo never\n", "first\n"),
            ("echo \"plain=${BASH_VERSION:-sh}\"\n", "plain=sh\n"),
        ];
        for (text, want) in cases {
            let mut q = req(&base64::engine::general_purpose::STANDARD.encode(text));
            q.content_type = ContentType::Base64;
            let r = run(
                &q,
                dir.path(),
                |_| {},
                LiveOutput::new(4096),
                CancellationToken::new(),
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&r.stdout.data),
                want,
                "{text:?}: {r:?}"
            );
        }
    }

    #[test]
    fn shebang_reads_as_linux_does() {
        assert_eq!(shebang(b"echo hi"), None);
        assert_eq!(shebang(b"#!"), None);
        assert_eq!(shebang(b"#!/bin/bash\n"), Some(("/bin/bash".into(), None)));
        assert_eq!(
            shebang(b"#!/usr/bin/env  python3 -u \r\nx"),
            Some(("/usr/bin/env".into(), Some("python3 -u".into())))
        );
        assert_eq!(shebang(&[b'#', b'!', 0xff, b'\n']), None);
    }

    /// A cancel stops the whole group, even a command that ignores SIGTERM and a
    /// child it left in the background: nothing is left running.
    #[tokio::test]
    async fn cancel_kills_a_group_that_ignores_term() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let cmd = format!(
            "trap '' TERM; echo started; sleep 300 & echo $! > {}; wait",
            pid_file.display()
        );
        let stop = CancellationToken::new();
        let live = LiveOutput::new(4096);
        let (s2, l2) = (stop.clone(), live.clone());
        tokio::spawn(async move {
            // Cancel once the command has printed, so it is really running.
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (tx, rx) = tokio::sync::watch::channel(AgentExecResult {
                    exec_id: "t1".into(),
                    status: NodeExecStatus::Running,
                    exit_code: None,
                    stdout: Output::default(),
                    stderr: Output::default(),
                    error: None,
                    started_at_ms: 0,
                    finished_at_ms: None,
                });
                use futures_util::StreamExt;
                let mut s = Box::pin(super::super::live::stream(
                    Some(l2.clone()),
                    rx,
                    Default::default(),
                ));
                let first = tokio::time::timeout(Duration::from_millis(10), s.next()).await;
                drop(tx);
                if first.is_ok() {
                    break;
                }
            }
            s2.cancel();
        });
        let started = std::time::Instant::now();
        let r = run(&req(&cmd), dir.path(), |_| {}, live, stop).await;
        assert_eq!(r.status, NodeExecStatus::Cancelled, "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("SIGKILL"), "{r:?}");
        assert!(started.elapsed() >= Duration::from_secs(CANCEL_GRACE_SECS));
        assert_eq!(String::from_utf8_lossy(&r.stdout.data), "started\n");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        // Gone, or a zombie waiting for init to reap it: not running either way.
        // A process SIGKILL reached shows as running while it exits; give it a moment.
        let mut last = String::new();
        for _ in 0..40 {
            match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
                Err(_) => return,
                Ok(stat) if stat.rsplit_once(") ").unwrap().1.starts_with('Z') => return,
                Ok(stat) => last = stat,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the background child is still alive: {last}");
    }

    #[tokio::test]
    async fn nul_and_binary_output_survive() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            &req("printf 'a\\000b\\377'"),
            dir.path(),
            |_| {},
            LiveOutput::new(4096),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(r.stdout.data, b"a\0b\xff");
    }
}
