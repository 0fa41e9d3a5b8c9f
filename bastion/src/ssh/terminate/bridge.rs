//! One terminated channel: the client's session channel bridged to a session
//! channel on the bastion's own connection to the node, message by message
//! (pty, shell, exec, subsystem, window changes, signals, exit status), and
//! recorded as the policy says; or a `-L` forwarding bridged to the node's
//! direct-tcpip (which the node's sshd holds to the role's `forward_to`).
//!
//! Requests the client wants answered are sent on with a reply wanted, and the
//! node's answers go back in order: SSH answers a channel's requests in the
//! order they were made.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use postern_api::recordings::RecordingLevel;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Destination, Upstreams};
use crate::audit::Event;
use crate::clock::{now_ms, rfc3339};
use crate::metrics::inc;
use crate::recording::{Meta, Tape};
use crate::ssh::handler::SshUser;
use crate::ssh::target::Refusal;

/// An exec's command as recorded: bounded, printable.
const COMMAND_MAX: usize = 1024;

/// What every terminated channel of one client connection shares.
#[derive(Clone)]
pub struct Opening {
    pub shared: Arc<crate::ssh::Door>,
    pub user: Arc<SshUser>,
    pub dest: Destination,
    pub peer: SocketAddr,
    pub upstreams: Arc<Upstreams>,
    pub cancel: CancellationToken,
    pub server: russh::server::Handle,
}

impl Opening {
    async fn refuse(&self, reply: ChannelOpenHandle, what: &str, r: Refusal) {
        inc(&self.shared.metrics.ssh_denied);
        let mut ev = Event::new("ssh.connect", "denied")
            .org(&self.user.principal.org_id)
            .actor(&self.user.principal.user_name)
            .source(Some(self.peer.ip().to_string()))
            .target(format!("host:{}", self.dest.node))
            .detail(json!({ "reason": r.reason, "mode": "terminate", "channel": what, "login": self.dest.login, "key": self.user.fingerprint }));
        if let Some(p) = &r.project {
            ev = ev.project(p);
        }
        if let Some(n) = &r.node {
            ev = ev.target(format!("node:{n}"));
        }
        // In the log before the user reads the refusal (whoever looks finds it).
        self.shared.audit.batched_written(ev).await;
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: r.reason,
            })
            .await;
    }
}

/// Whether an exec looks like a file transfer (scp, rsync): only the marker
/// says so. Its output is recorded like any other: the command's text is the
/// client's word, and `scp; bash -i` must not run unrecorded.
fn is_transfer(command: &str) -> bool {
    let first = command.split_whitespace().next().unwrap_or("");
    let prog = first.rsplit('/').next().unwrap_or(first);
    matches!(prog, "scp" | "rsync" | "sftp-server") || command.contains("rsync --server")
}

/// Bridges one session channel until either end closes it (or access, or a
/// strict recording that cannot write, cuts it).
pub async fn session(o: Opening, channel: Channel<Msg>, reply: ChannelOpenHandle) {
    let shared = &o.shared;
    let started = now_ms();
    let kill = o.cancel.child_token();
    let live = shared
        .live
        .relay(&o.user.principal.user_id, &o.user.fingerprint, kill.clone());
    let a = match super::authorize(shared, &o.user, &o.dest).await {
        Ok(a) => a,
        Err(r) => return o.refuse(reply, "session", r).await,
    };
    live.authorized_for(&a.target.project.id);
    let node = match o.upstreams.get(shared, &o.user, &a, &o.dest.login).await {
        Ok(n) => n,
        Err(r) => return o.refuse(reply, "session", r).await,
    };
    let host = a.target.place.hostname.clone();
    let upstream = match node.handle.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(node = %a.target.place.node_id, error = %e, "the node's sshd refused a session channel");
            let r = Refusal {
                reason: format!("node {host}'s sshd refused a session; try again"),
                project: Some(a.target.project.name.clone()),
                node: Some(a.target.place.node_id.clone()),
            };
            return o.refuse(reply, "session", r).await;
        }
    };
    let event = |action: &str, detail: serde_json::Value| {
        let mut base = json!({
            "mode": "terminate",
            "hostname": host,
            "edge": a.target.place.edge_name,
            "login": o.dest.login,
            "key": o.user.fingerprint,
            "recording_level": a.level.as_str(),
        });
        if let (Some(b), serde_json::Value::Object(d)) = (base.as_object_mut(), detail) {
            b.extend(d);
        }
        Event::new(action, "ok")
            .org(&a.principal.org_id)
            .actor(&a.principal.user_name)
            .source(Some(o.peer.ip().to_string()))
            .project(&a.target.project.name)
            .target(format!("node:{}", a.target.place.node_id))
            .detail(base)
    };
    if let Err(e) = shared
        .audit
        .before(event("ssh.session.start", json!({})))
        .await
    {
        tracing::error!(error = %e, "audit log unwritable; refusing the SSH session");
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "the bastion cannot write its audit log, so no session is opened; try again shortly".into(),
            })
            .await;
        return;
    }
    reply.accept().await;
    inc(&shared.metrics.ssh_sessions);
    let meta = Meta {
        org_id: a.principal.org_id.clone(),
        project_id: a.target.project.id.clone(),
        node_id: a.target.place.node_id.clone(),
        hostname: host.clone(),
        user_id: a.principal.user_id.clone(),
        user_name: a.principal.user_name.clone(),
        login: o.dest.login.clone(),
        kind: "shell",
        command: String::new(),
        width: 80,
        height: 24,
        term: String::new(),
        pod: None,
    };
    let b = Bridge {
        o: &o,
        level: a.level,
        input: a.input,
        meta: std::sync::Mutex::new(meta),
        tape: OnceLock::new(),
        record_output: AtomicBool::new(true),
        started: AtomicBool::new(false),
        asked: std::sync::Mutex::new(std::collections::VecDeque::new()),
        kill: kill.clone(),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        refused: AtomicBool::new(false),
    };
    let how = b.run(channel, upstream).await;
    drop(live);
    let Bridge {
        tape,
        up,
        down,
        refused,
        ..
    } = b;
    let ended = match tape.into_inner() {
        Some(t) => t.finish().await,
        None => None,
    };
    let recording = match (&ended, a.level) {
        (Some(e), _) => json!(e),
        (None, RecordingLevel::Off) => json!("off"),
        (None, _) if refused.load(Ordering::Relaxed) => {
            json!("refused: the recorder could not start")
        }
        (None, _) => json!("none: no shell, exec or subsystem was started"),
    };
    shared
        .audit
        .batched(event(
            "ssh.session.end",
            json!({
                "started_at": rfc3339(started),
                "ended_at": rfc3339(now_ms()),
                "bytes_to_node": up.load(Ordering::Relaxed),
                "bytes_from_node": down.load(Ordering::Relaxed),
                "end": how,
                "recording": recording,
            }),
        ))
        .await;
}

/// A request sent on to the node whose answer is awaited, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Other,
    Subsystem,
}

struct Bridge<'a> {
    o: &'a Opening,
    level: RecordingLevel,
    /// Record the user's input too (the policy's `input`).
    input: bool,
    meta: std::sync::Mutex<Meta>,
    tape: OnceLock<Tape>,
    /// Off only once the node accepted a subsystem (sftp: a binary protocol).
    record_output: AtomicBool,
    /// A shell, exec or subsystem was asked for: a channel runs one.
    started: AtomicBool,
    /// Requests awaiting the node's answer, oldest first.
    asked: std::sync::Mutex<std::collections::VecDeque<Asked>>,
    kill: CancellationToken,
    up: AtomicU64,
    down: AtomicU64,
    refused: AtomicBool,
}

impl Bridge<'_> {
    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ask(&self, what: Asked) {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(what);
    }

    /// The node answered the oldest request: a subsystem it accepted stops the
    /// output's recording (its bytes are sftp's, marked as such).
    fn answered(&self, ok: bool) {
        let what = self
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if ok && what == Some(Asked::Subsystem) {
            self.record_output.store(false, Ordering::Relaxed);
        }
    }

    /// A second shell, exec or subsystem on one channel is refused here (sshd
    /// would refuse it too; the recording must not be misled by it).
    fn first_start(&self) -> bool {
        !self.started.swap(true, Ordering::Relaxed)
    }

    /// Starts the recording at the session's first shell, exec or subsystem;
    /// false when a strict policy cannot record (the request is then refused).
    async fn start(&self, kind: &'static str, command: &str) -> bool {
        if self.level == RecordingLevel::Off || self.tape.get().is_some() {
            return true;
        }
        let meta = {
            let mut m = self.meta();
            m.kind = kind;
            m.command = postern_api::validate::peer_line(command, COMMAND_MAX);
            m.clone()
        };
        match self
            .o
            .shared
            .recorder
            .start(meta, self.level, self.kill.clone())
            .await
        {
            Ok(t) => {
                let _ = self.tape.set(t);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, level = self.level.as_str(), "cannot start a recording");
                self.refused.store(true, Ordering::Relaxed);
                self.level != RecordingLevel::Strict
            }
        }
    }

    async fn run(
        &self,
        channel: Channel<Msg>,
        upstream: Channel<russh::client::Msg>,
    ) -> &'static str {
        let cid = channel.id();
        let (mut crd, cwr) = channel.split();
        let (mut nrd, nwr) = upstream.split();
        let server = &self.o.server;
        let up = async {
            while let Some(msg) = crd.wait().await {
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        self.up.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if self.input
                            && let Some(t) = self.tape.get()
                        {
                            t.input(&data).await;
                        }
                        nwr.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        nwr.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof => nwr.eof().await,
                    ChannelMsg::Close => break,
                    ChannelMsg::RequestPty {
                        term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        terminal_modes,
                        ..
                    } => {
                        {
                            let mut m = self.meta();
                            m.width = col_width.clamp(1, 10_000);
                            m.height = row_height.clamp(1, 10_000);
                            m.term = postern_api::validate::peer_line(&term, 64);
                        }
                        self.ask(Asked::Other);
                        nwr.request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                    }
                    ChannelMsg::RequestShell { .. }
                    | ChannelMsg::Exec { .. }
                    | ChannelMsg::RequestSubsystem { .. }
                        if !self.first_start() =>
                    {
                        let _ = server.channel_failure(cid).await;
                        Ok(())
                    }
                    ChannelMsg::RequestShell { .. } => {
                        if !self.start("shell", "").await {
                            let _ = server.channel_failure(cid).await;
                            break;
                        }
                        self.ask(Asked::Other);
                        nwr.request_shell(true).await
                    }
                    ChannelMsg::Exec { command, .. } => {
                        let text = String::from_utf8_lossy(&command).into_owned();
                        if !self.start("exec", &text).await {
                            let _ = server.channel_failure(cid).await;
                            break;
                        }
                        let transfer = is_transfer(&text);
                        if let Some(t) = self.tape.get() {
                            let shown = postern_api::validate::peer_line(&text, COMMAND_MAX);
                            t.marker(&if transfer {
                                format!("file transfer: {shown}")
                            } else {
                                format!("exec: {shown}")
                            })
                            .await;
                        }
                        self.ask(Asked::Other);
                        nwr.exec(true, command).await
                    }
                    ChannelMsg::RequestSubsystem { name, .. } => {
                        if !self.start("subsystem", &name).await {
                            let _ = server.channel_failure(cid).await;
                            break;
                        }
                        // A subsystem (sftp) speaks a binary protocol: once
                        // the node runs it (its answer, not the client's
                        // word), its bytes are marked, not recorded.
                        self.ask(Asked::Subsystem);
                        if let Some(t) = self.tape.get() {
                            t.marker(&format!(
                                "subsystem: {}",
                                postern_api::validate::peer_line(&name, 64)
                            ))
                            .await;
                        }
                        nwr.request_subsystem(true, &name).await
                    }
                    ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                    } => {
                        if let Some(t) = self.tape.get() {
                            t.resize(col_width, row_height).await;
                        }
                        nwr.window_change(col_width, row_height, pix_width, pix_height)
                            .await
                    }
                    ChannelMsg::SetEnv {
                        variable_name,
                        variable_value,
                        ..
                    } => nwr.set_env(false, variable_name, variable_value).await,
                    ChannelMsg::Signal { signal } => nwr.signal(signal).await,
                    ChannelMsg::RequestX11 { .. } => {
                        // Refused, as on the jump path: never towards a node.
                        let _ = server.channel_failure(cid).await;
                        Ok(())
                    }
                    // The handler refuses agent forwarding (and russh answers
                    // it): nothing to send on, nothing more to answer.
                    ChannelMsg::AgentForward { .. } => Ok(()),
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = nwr.eof().await;
        };
        let down = async {
            // sshd sends EOF when the command's output ends, which may be
            // before its exit status. The client closes the channel once it
            // has EOF both ways, and russh answers that close at once, so an
            // exit status sent on after it is lost (OpenSSH's multiplexing
            // master then reports "Control master terminated unexpectedly",
            // and Ansible a host it cannot reach). The EOF waits for the exit
            // status, or the node's close.
            let (mut eof_held, mut ended) = (false, false);
            while let Some(msg) = nrd.wait().await {
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        self.down.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if self.record_output.load(Ordering::Relaxed)
                            && let Some(t) = self.tape.get()
                        {
                            t.output(&data).await;
                        }
                        cwr.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        self.down.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if self.record_output.load(Ordering::Relaxed)
                            && let Some(t) = self.tape.get()
                        {
                            t.output(&data).await;
                        }
                        cwr.extended_data_bytes(ext, data).await
                    }
                    // After the exit status, nothing is left to wait for.
                    ChannelMsg::Eof if ended => cwr.eof().await,
                    ChannelMsg::Eof => {
                        eof_held = true;
                        Ok(())
                    }
                    ChannelMsg::Close => break,
                    ChannelMsg::Success => {
                        self.answered(true);
                        server
                            .channel_success(cid)
                            .await
                            .map_err(|_| russh::Error::SendError)
                    }
                    ChannelMsg::Failure => {
                        self.answered(false);
                        server
                            .channel_failure(cid)
                            .await
                            .map_err(|_| russh::Error::SendError)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        if let Some(t) = self.tape.get() {
                            t.marker(&format!("exit status {exit_status}")).await;
                        }
                        let sent = cwr.exit_status(exit_status).await;
                        ended = true;
                        if std::mem::take(&mut eof_held) {
                            let _ = cwr.eof().await;
                        }
                        sent
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    } => {
                        let sent = server
                            .exit_signal_request(
                                cid,
                                signal_name,
                                core_dumped,
                                error_message,
                                lang_tag,
                            )
                            .await
                            .map_err(|_| russh::Error::SendError);
                        ended = true;
                        if std::mem::take(&mut eof_held) {
                            let _ = cwr.eof().await;
                        }
                        sent
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = cwr.eof().await;
        };
        let how = tokio::select! {
            _ = async {
                tokio::pin!(up);
                tokio::pin!(down);
                tokio::select! {
                    // The node closed: the client closes its side at once.
                    _ = &mut down => { let _ = tokio::time::timeout(Duration::from_secs(2), &mut up).await; }
                    _ = &mut up => { let _ = tokio::time::timeout(Duration::from_secs(10), &mut down).await; }
                }
            } => "closed",
            _ = self.kill.cancelled() => "cut",
        };
        // Either loop may be gone (connection cut); do not wait on them.
        let _ = tokio::time::timeout(Duration::from_secs(2), nwr.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), cwr.close()).await;
        how
    }
}

/// `ssh -L` in the terminating mode: a direct-tcpip channel to the node, which
/// the node's sshd holds to the role's `forward_to` (the one-time grant carries
/// it as `permitopen`). Bytes are counted, not recorded.
pub async fn forward(
    o: Opening,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    host: String,
    port: u32,
) {
    let shared = &o.shared;
    let kill = o.cancel.child_token();
    let live = shared
        .live
        .relay(&o.user.principal.user_id, &o.user.fingerprint, kill.clone());
    let a = match super::authorize(shared, &o.user, &o.dest).await {
        Ok(a) => a,
        Err(r) => return o.refuse(reply, "direct-tcpip", r).await,
    };
    live.authorized_for(&a.target.project.id);
    let dest = format!("{host}:{port}");
    if !a.target.forward_to.iter().any(|t| t == &dest) {
        let r = Refusal {
            reason: format!(
                "your role does not allow forwarding to {dest} on node {}; it allows: {}",
                a.target.place.hostname,
                if a.target.forward_to.is_empty() {
                    "none".into()
                } else {
                    a.target.forward_to.join(", ")
                }
            ),
            project: Some(a.target.project.name.clone()),
            node: Some(a.target.place.node_id.clone()),
        };
        return o.refuse(reply, "direct-tcpip", r).await;
    }
    let node = match o.upstreams.get(shared, &o.user, &a, &o.dest.login).await {
        Ok(n) => n,
        Err(r) => return o.refuse(reply, "direct-tcpip", r).await,
    };
    let upstream = match node
        .handle
        .channel_open_direct_tcpip(host.clone(), port, "127.0.0.1", 0)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let r = Refusal {
                reason: format!(
                    "node {}'s sshd refused to forward to {dest}: {e}",
                    a.target.place.hostname
                ),
                project: Some(a.target.project.name.clone()),
                node: Some(a.target.place.node_id.clone()),
            };
            return o.refuse(reply, "direct-tcpip", r).await;
        }
    };
    reply.accept().await;
    shared.audit.best_effort(
        Event::new("ssh.forward", "ok")
            .org(&a.principal.org_id)
            .actor(&a.principal.user_name)
            .source(Some(o.peer.ip().to_string()))
            .project(&a.target.project.name)
            .target(format!("node:{}", a.target.place.node_id))
            .detail(json!({ "mode": "terminate", "to": dest, "login": o.dest.login })),
    );
    let (mut crd, cwr) = channel.split();
    let (mut nrd, nwr) = upstream.split();
    let up = async {
        while let Some(ChannelMsg::Data { data }) = crd.wait().await {
            if nwr.data_bytes(data).await.is_err() {
                break;
            }
        }
        let _ = nwr.eof().await;
    };
    let down = async {
        while let Some(m) = nrd.wait().await {
            let delivered = match m {
                ChannelMsg::Data { data } => cwr.data_bytes(data).await.is_ok(),
                ChannelMsg::Eof | ChannelMsg::Close => false,
                _ => true,
            };
            if !delivered {
                break;
            }
        }
        let _ = cwr.eof().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = kill.cancelled() => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), nwr.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), cwr.close()).await;
    drop(live);
}
