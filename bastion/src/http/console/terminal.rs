//! A shell on a node in the browser: a WebSocket whose other end is an SSH
//! connection this bastion makes to its own SSH door, in the terminating mode
//! (`LOGIN+NODE`), logged in with the console session's own key and a
//! certificate for the session.
//!
//! Why through the door rather than beside it: the door already decides who
//! may log in where, records the session per the project's policy, audits it,
//! and cuts it when the session ends or access is taken back, on every
//! replica. A browser terminal goes through all of that unchanged; nothing
//! here grants anything.
//!
//! The WebSocket carries keystrokes and output as binary frames; text frames
//! are control messages (`{"type":"resize",…}` from the browser; `exit` and
//! `error` from here). A cross-site page cannot open one: the `Origin` must be
//! this host, and the CSRF token comes as a subprotocol (`csrf.TOKEN`), which
//! a browser only sends when the page's own script asked for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use postern_api::console::{MAX_TERMINAL_COLS, MAX_TERMINAL_ROWS, TerminalControl, TerminalQuery};
use postern_api::{ErrorBody, validate};
use russh::ChannelMsg;
use russh::keys::{PrivateKey, PublicKeyOrCertificate};
use serde_json::json;

use super::session;
use crate::authz::Action;
use crate::clock::now_ms;
use crate::http::extract::{ApiPath, ApiQuery, Caller};
use crate::http::{ApiError, AppState};

/// The subprotocol the console speaks; the server answers with it.
pub const PROTOCOL: &str = "postern-terminal";
/// A WebSocket frame the browser sends is at most this large.
const MAX_FRAME: usize = 64 * 1024;
/// A browser that takes no output for this long loses its terminal.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// The SSH door must answer within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Terminals one person may have open on this bastion, and open in a minute.
pub const TERMINALS_PER_USER: usize = 8;
pub const OPENS_PER_MINUTE: usize = 20;
/// Terminals open on this bastion in all.
pub const TERMINALS_TOTAL: usize = 512;

/// The terminals open on this bastion, per person and in all. Each is an SSH
/// connection to the door from this bastion's own address, where the door's
/// per-source limits count all of them together: without a person's share,
/// one person (any role may try) could hold every place, and fill the audit
/// log with refused logins.
#[derive(Debug, Default)]
pub struct Permits {
    state: std::sync::Mutex<PermitState>,
}

#[derive(Debug, Default)]
struct PermitState {
    total: usize,
    /// Per user: terminals open, and when the last ones were opened.
    users: std::collections::HashMap<String, (usize, std::collections::VecDeque<i64>)>,
}

/// One open terminal's place; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    permits: Arc<Permits>,
    user: String,
}

impl Permits {
    pub fn acquire(self: &Arc<Self>, user: &str, now: i64) -> Result<Permit, ApiError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.total >= TERMINALS_TOTAL {
            return Err(ApiError::TooManyRequests(
                "this bastion has as many terminals open as it allows: try again in a minute"
                    .into(),
            ));
        }
        let (open, opened) = st.users.entry(user.to_string()).or_default();
        while opened.front().is_some_and(|t| now - t >= 60_000) {
            opened.pop_front();
        }
        if *open >= TERMINALS_PER_USER {
            return Err(ApiError::TooManyRequests(format!(
                "you have {TERMINALS_PER_USER} terminals open: close one first"
            )));
        }
        if opened.len() >= OPENS_PER_MINUTE {
            return Err(ApiError::TooManyRequests(format!(
                "you opened {OPENS_PER_MINUTE} terminals in the last minute: wait a minute"
            )));
        }
        *open += 1;
        opened.push_back(now);
        st.total += 1;
        Ok(Permit {
            permits: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.permits.state.lock().unwrap_or_else(|p| p.into_inner());
        st.total = st.total.saturating_sub(1);
        if let Some((open, opened)) = st.users.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 && opened.is_empty() {
                st.users.remove(&self.user);
            }
        }
    }
}

/// Opens a shell on a node (WebSocket).
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/edges/{edge}/nodes/{node}/terminal",
    tag = "console",
    params(
        ("project" = String, Path, description = "Project name or id"),
        ("edge" = String, Path, description = "Edge name"),
        ("node" = String, Path, description = "The node's hostname"),
        ("login" = String, Query, description = "The unix login on the node"),
        ("cols" = Option<u32>, Query, description = "Terminal width (1-1000)"),
        ("rows" = Option<u32>, Query, description = "Terminal height (1-500)"),
    ),
    responses(
        (status = 101, description = "The terminal: binary frames both ways, text frames for control"),
        (status = 400, description = "Not a WebSocket, a bad login or size, or called without the console's cookie", body = ErrorBody),
        (status = 401, description = "No console session", body = ErrorBody),
        (status = 403, description = "Another site's page, or no CSRF token among the subprotocols", body = ErrorBody),
        (status = 404, description = "No such project visible to the caller, edge or node", body = ErrorBody),
        (status = 429, description = "Too many terminals open or opened in the last minute, by you or on this bastion", body = ErrorBody),
        (status = 503, description = "The bastion's SSH door is off", body = ErrorBody),
    ),
)]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    headers: http::HeaderMap,
    ApiPath((project, edge, node)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<TerminalQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if session::same_origin(&headers) != Some(true) {
        return Err(ApiError::Forbidden(
            "a terminal opens only from the console's own page (the Origin is another site's or missing)".into(),
        ));
    }
    let Some(console) = caller.console.clone() else {
        return Err(ApiError::BadRequest(
            "the browser terminal is the console's: from a shell, use ssh LOGIN+NODE@bastion"
                .into(),
        ));
    };
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .take(8)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .take(16)
        .collect();
    let csrf_ok = offered
        .iter()
        .filter_map(|p| p.strip_prefix("csrf."))
        .any(|t| session::csrf_matches(&console.token, t));
    if !csrf_ok || !offered.iter().any(|p| p == PROTOCOL) {
        return Err(ApiError::Forbidden(format!(
            "the terminal needs the subprotocols {PROTOCOL} and csrf.TOKEN (the console's CSRF token): reload the console"
        )));
    }
    if validate::login(&q.login).is_err() {
        return Err(ApiError::BadRequest(format!(
            "{:?} is not a unix login name",
            validate::peer_line(&q.login, 40)
        )));
    }
    let cols = q.cols.unwrap_or(80);
    let rows = q.rows.unwrap_or(24);
    if !(1..=MAX_TERMINAL_COLS).contains(&cols) || !(1..=MAX_TERMINAL_ROWS).contains(&rows) {
        return Err(ApiError::BadRequest(format!(
            "cols must be 1-{MAX_TERMINAL_COLS} and rows 1-{MAX_TERMINAL_ROWS}"
        )));
    }
    let Some((door, host_key)) = state.settings.ssh_local.clone() else {
        return Err(ApiError::Unavailable(
            "this bastion's SSH door is off, and the terminal goes through it: ask an operator to start the bastion with --ssh-addr".into(),
        ));
    };
    let p =
        crate::http::admin::resolve_project(&state, &caller, &project, Action::ReadProject).await?;
    let e = crate::http::admin::resolve_edge(&state, &p, &edge).await?;
    let n = crate::http::nodes::resolve_node(&state, &caller, &e, &node).await?;
    let Ok(ws) = ws else {
        return Err(ApiError::BadRequest(
            "the terminal is a WebSocket: open it with the console".into(),
        ));
    };
    let permit = state
        .terminals
        .acquire(&caller.principal.user_id, now_ms())?;
    let sealed = state.pki.open(&console.row.terminal_key_sealed)?;
    let key = std::str::from_utf8(&sealed)
        .ok()
        .and_then(|pem| PrivateKey::from_openssh(pem).ok())
        .ok_or_else(|| ApiError::Internal("the terminal's sealed key could not be read".into()))?;
    let now = (now_ms() / 1000) as u64;
    let cert = state.pki.user_ca().certify(
        key.public_key(),
        &caller.principal.user_name,
        &caller.credential.id,
        now,
        (caller.credential.expires_at / 1000) as u64,
    )?;
    let dest = format!("{}+{}.{}.{}", q.login, n.hostname, e.name, p.name);
    caller.audit.with(|a| {
        a.project = Some(p.id.clone());
        a.targets = vec![format!("node:{}", n.hostname)];
        a.detail = Some(json!({ "login": q.login, "session_id": caller.credential.id }));
    });
    let shutdown = state.shutdown.clone();
    let session = Watched {
        core: state.core().clone(),
        org_id: caller.principal.org_id.clone(),
        id: caller.credential.id.clone(),
        last_used_at: console.row.last_used_at,
        clock: session::IdleClock::of(&state),
    };
    let up = Upstream {
        door,
        host_key,
        user: dest,
        key: Arc::new(key),
        cert,
        cols,
        rows,
    };
    Ok(ws
        .protocols([PROTOCOL])
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            tokio::select! {
                _ = run(socket, up, session) => {}
                _ = shutdown.cancelled() => {}
            }
        })
        .into_response())
}

/// The console session a terminal keeps in use, and checks is still in use.
struct Watched {
    core: Arc<crate::state::Shared>,
    org_id: String,
    id: String,
    /// The last use written when the terminal opened.
    last_used_at: i64,
    clock: session::IdleClock,
}

impl Watched {
    /// The time the session goes idle, as the store says now; `None` when it
    /// went idle already (it is then ended, here and on every door) or is
    /// gone.
    async fn alive_until(&self) -> Option<i64> {
        let row = self.core.store.console_session(&self.id).await.ok()??;
        if self.clock.expired(row.last_used_at, now_ms()) {
            let _ = session::end_idle(&self.core, &self.org_id, &self.id, self.clock).await;
            return None;
        }
        Some(row.last_used_at + self.clock.alive_ms())
    }
}

/// Where the terminal's SSH connection goes and with what.
struct Upstream {
    door: SocketAddr,
    host_key: String,
    user: String,
    key: Arc<PrivateKey>,
    cert: russh::keys::Certificate,
    cols: u32,
    rows: u32,
}

/// The client half: the door must show this bastion's own host key.
struct DoorClient {
    host_key: String,
}

impl russh::client::Handler for DoorClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.to_openssh().is_ok_and(|k| same_key(&k, &self.host_key))
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// Two OpenSSH public key lines name the same key (comments aside).
fn same_key(a: &str, b: &str) -> bool {
    let body = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    body(a) == body(b)
}

async fn send_control(socket: &mut WebSocket, v: serde_json::Value) {
    let _ = tokio::time::timeout(
        SEND_TIMEOUT,
        socket.send(Message::Text(v.to_string().into())),
    )
    .await;
}

/// Bridges the WebSocket and a shell through the SSH door until either ends.
async fn run(mut socket: WebSocket, up: Upstream, session: Watched) {
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut handle = russh::client::connect(
            config,
            up.door,
            DoorClient {
                host_key: up.host_key.clone(),
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "the browser terminal could not reach the SSH door");
            "the bastion's SSH door could not be reached; try again".to_string()
        })?;
        let auth = handle
            .authenticate_openssh_cert(up.user.clone(), up.key.clone(), up.cert.clone())
            .await
            .map_err(|_| "the SSH door closed the connection during the login".to_string())?;
        if !auth.success() {
            return Err("the SSH door refused your session: sign in to the console again".into());
        }
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|_| {
                let (login, node) = up.user.split_once('+').unwrap_or((&up.user, ""));
                format!(
                    "the SSH door refused a shell as {login} on {node}: one of your roles must give you that login there (the Account page lists yours), or ask the project's admin"
                )
            })?;
        channel
            .request_pty(false, "xterm-256color", up.cols, up.rows, 0, 0, &[])
            .await
            .map_err(|_| "the SSH door refused a terminal".to_string())?;
        channel
            .request_shell(false)
            .await
            .map_err(|_| "the SSH door refused a shell".to_string())?;
        Ok::<_, String>((handle, channel))
    })
    .await;
    let (handle, mut channel) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => {
            send_control(&mut socket, json!({ "type": "error", "message": why })).await;
            close(socket).await;
            return;
        }
        Err(_) => {
            send_control(
                &mut socket,
                json!({ "type": "error", "message": "the SSH door did not answer in time; try again" }),
            )
            .await;
            close(socket).await;
            return;
        }
    };
    // The idle clock: a keystroke is a use, written at the next tick; a
    // keystroke after the session went idle (no use here or in any other
    // tab) ends it instead of reviving it.
    let clock = session.clock;
    let mut alive_until = session.last_used_at + clock.alive_ms();
    let mut last_key: Option<i64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(
        u64::try_from(clock.every_ms()).unwrap_or(30_000),
    ));
    let idle_out = json!({
        "type": "error",
        "message": format!("your console session ended after {} without use: sign in again", clock.said()),
    });
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let now = now_ms();
                    if now > alive_until {
                        match session.alive_until().await {
                            Some(t) => alive_until = t,
                            None => {
                                send_control(&mut socket, idle_out.clone()).await;
                                break;
                            }
                        }
                    }
                    last_key = Some(now);
                    alive_until = alive_until.max(now + clock.alive_ms());
                    if channel.data_bytes(b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    match serde_json::from_str::<TerminalControl>(t.as_str()) {
                        Ok(TerminalControl::Resize { cols, rows }) => {
                            let cols = cols.clamp(1, MAX_TERMINAL_COLS);
                            let rows = rows.clamp(1, MAX_TERMINAL_ROWS);
                            let _ = channel.window_change(cols, rows, 0, 0).await;
                        }
                        Err(_) => {
                            send_control(&mut socket, json!({ "type": "error", "message": "unknown control message: the console sends only {\"type\":\"resize\",\"cols\":N,\"rows\":N}" })).await;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            out = channel.wait() => match out {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Binary(data))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    send_control(&mut socket, json!({ "type": "exit", "status": exit_status })).await;
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    send_control(&mut socket, json!({ "type": "exit", "signal": format!("{signal_name:?}") })).await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            _ = tick.tick() => {
                if let Some(t) = last_key.take() {
                    // Written as of the keystroke, so a use just inside the
                    // timeout is not lost to the tick's lateness.
                    let _ = clock.touch(&session.core.store, &session.id, t).await;
                } else if now_ms() > alive_until {
                    match session.alive_until().await {
                        Some(t) => alive_until = t,
                        None => {
                            send_control(&mut socket, idle_out.clone()).await;
                            break;
                        }
                    }
                }
            }
        }
    }
    let _ = channel.close().await;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    close(socket).await;
}

/// Ends the WebSocket with a close frame (the browser then sees a clean end,
/// not 1005), within the send deadline.
async fn close(mut socket: WebSocket) {
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_key_is_compared_without_its_comment() {
        assert!(super::same_key("ssh-ed25519 AAAA x@y", "ssh-ed25519 AAAA"));
        assert!(!super::same_key("ssh-ed25519 AAAA", "ssh-ed25519 AAAB"));
    }
}
