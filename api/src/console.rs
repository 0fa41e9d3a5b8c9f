//! The web console's own bodies: its sign-in (the session's bearer goes into
//! an HttpOnly cookie, never to the page's script) and what the page learns
//! of its session, among it the CSRF token every write must carry. All else
//! the console does goes through the public API with the same bodies as the
//! CLI.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The header a console write carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-postern-csrf";
/// The cookie over TLS: `__Host-` makes the browser keep it only when set
/// Secure, for this host, with `Path=/`.
pub const COOKIE_TLS: &str = "__Host-postern";
/// The cookie over plain http (a loopback bastion, `dev`).
pub const COOKIE_PLAIN: &str = "postern_console";
/// Idle console sessions end after this long unless the bastion says otherwise.
pub const DEFAULT_IDLE_SECONDS: u64 = 15 * 60;
/// A console session lasts at most this long, whatever the org allows.
pub const MAX_CONSOLE_SECONDS: i64 = 12 * 3600;
/// Terminal sizes the browser may ask for.
pub const MAX_TERMINAL_COLS: u32 = 1000;
pub const MAX_TERMINAL_ROWS: u32 = 500;

/// `POST /api/v1/auth/console`: a local user's sign-in for the console.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogin {
    pub name: String,
    pub password: String,
    /// A six-digit TOTP code, or a recovery code (`xxxx-xxxx-xxxx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The console's session as its page sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleSession {
    /// The session's id (it shows among the user's sessions).
    pub id: String,
    pub user: String,
    pub org: String,
    /// `password`, `password+totp`, `recovery_code` or `sso:<provider>`.
    pub method: String,
    pub mfa: bool,
    /// Send it as `X-Postern-CSRF` with every request that changes anything.
    pub csrf_token: String,
    /// The session ends this long after its last request.
    pub idle_timeout_seconds: u64,
    /// And at this time whatever happens (RFC 3339).
    pub expires_at: String,
    /// Whether the bastion's SSH door is on (the terminal needs it).
    pub terminal: bool,
}

/// Query of the terminal's WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    /// The unix login on the node.
    pub login: String,
    #[serde(default)]
    pub cols: Option<u32>,
    #[serde(default)]
    pub rows: Option<u32>,
}

/// A control message the browser sends as a WebSocket text frame; keystrokes
/// go as binary frames.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TerminalControl {
    Resize { cols: u32, rows: u32 },
}
