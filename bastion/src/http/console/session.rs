//! The console's session: a login session whose bearer the browser keeps in
//! an HttpOnly, SameSite=Strict cookie (Secure when the console is reached
//! over https), so no script on the page can read it.
//!
//! What a cookie adds over a bearer, and what answers it here:
//! - the browser sends it with requests other sites make: every request that
//!   changes something must carry the session's CSRF token in a header (a
//!   cross-site form cannot set one), and its `Origin`, when sent, must be
//!   this host;
//! - nobody logs out of a tab left open: the session ends after an idle
//!   timeout (15 minutes unless the bastion is told otherwise), and at an
//!   absolute limit (the org's session length, at most 12 hours).
//!
//! The CSRF token is an HMAC of the fixed label under the session's secret:
//! any replica derives it from the cookie alone, it names that one session,
//! and knowing it lets no one act without the cookie.

use axum::http::HeaderMap;
use http::request::Parts;
use postern_api::console::{COOKIE_PLAIN, COOKIE_TLS, CSRF_HEADER, ConsoleSession};
use russh::keys::{Algorithm, PrivateKey};

use crate::access::authn::{Credential, SESSION_PREFIX};
use crate::authz::Principal;
use crate::clock::{now_ms, rfc3339};
use crate::http::{ApiError, AppState};
use crate::identity::sessions;
use crate::secrets::parse_token;
use crate::store::{ConsoleRow, SessionRow};

/// The value of the first cookie named one of `names`, at most `max` bytes.
/// Bounded: at most 16 Cookie headers of 8 KiB each are looked at.
pub fn cookie(headers: &HeaderMap, names: &[&str], max: usize) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .take(16)
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.len() <= 8192)
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| names.contains(k))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| v.len() <= max)
}

/// The console's session token from the request's cookies, if any: over
/// https only the `__Host-` cookie (which no other host, and no plain-http
/// answer, can have set), over plain http only the plain one.
pub fn cookie_token(headers: &HeaderMap, tls: bool) -> Option<String> {
    let name = if tls { COOKIE_TLS } else { COOKIE_PLAIN };
    cookie(headers, &[name], 256).filter(|v| v.starts_with(SESSION_PREFIX))
}

/// What the console's cookie established about a request, beside its
/// principal: the session's bearer (its CSRF token derives from it) and its
/// console row.
#[derive(Debug, Clone)]
pub struct ConsoleAuth {
    pub token: String,
    pub row: ConsoleRow,
}

/// The CSRF token of the session whose bearer is `token`.
pub fn csrf_token(token: &str) -> String {
    use base64::Engine;
    let secret = parse_token(SESSION_PREFIX, token)
        .map(|(_, s)| s)
        .unwrap_or(token);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, b"postern console csrf v1");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

/// Whether `presented` is the CSRF token of `token`. Their hashes are
/// compared, so the time taken tells nothing about the token's bytes.
pub fn csrf_matches(token: &str, presented: &str) -> bool {
    let h = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    h(&csrf_token(token)).as_ref() == h(presented).as_ref()
}

/// Whether the request's `Origin` is this host (any port or scheme the
/// browser used to reach it: what counts is that the page that sent it was
/// served by this host). `None` when the browser sent no `Origin`.
pub fn same_origin(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(http::header::ORIGIN)?.to_str().ok();
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    Some(match (origin, host) {
        (Some(o), Some(h)) => {
            let o = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            o.is_some_and(|o| o.eq_ignore_ascii_case(h))
        }
        _ => false,
    })
}

/// Whether the browser reached the console over https: through one of the
/// `trusted` TLS proxies (`peer` is the TCP peer, not the client address
/// read from `X-Forwarded-For`), which says so in `X-Forwarded-Proto`.
pub fn over_tls(trusted: &[String], headers: &HeaderMap, peer: Option<std::net::IpAddr>) -> bool {
    let from_proxy =
        peer.is_some_and(|ip| trusted.iter().any(|c| crate::access::authn::in_cidr(ip, c)));
    from_proxy
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A console session's idle clock. Uses are written at most every
/// [`IdleClock::every_ms`] (a busy page is not a write a request), so a
/// session counts as idle once its last written use is older than the
/// timeout plus that interval: it never ends before the timeout, and at most
/// that interval after it.
#[derive(Debug, Clone, Copy)]
pub struct IdleClock {
    pub idle_ms: i64,
}

impl IdleClock {
    pub fn of(state: &AppState) -> IdleClock {
        IdleClock {
            idle_ms: i64::try_from(state.settings.console_idle.as_millis()).unwrap_or(i64::MAX / 4),
        }
    }

    /// How often a use is written at most: 30 s, or a quarter of a shorter
    /// timeout.
    pub fn every_ms(&self) -> i64 {
        TOUCH_EVERY_MS.min(self.idle_ms / 4).max(1)
    }

    /// How old the last written use may be in a live session.
    pub fn alive_ms(&self) -> i64 {
        self.idle_ms + self.every_ms()
    }

    pub fn expired(&self, last_used_at: i64, now: i64) -> bool {
        now - last_used_at > self.alive_ms()
    }

    /// Records a use at `now` (unless one was written lately, or the session
    /// is idle already: then it stays so).
    pub async fn touch(
        &self,
        store: &crate::store::Store,
        id: &str,
        now: i64,
    ) -> Result<(), crate::store::StoreError> {
        store
            .touch_console_session(id, now, self.every_ms(), self.alive_ms())
            .await
    }

    /// The timeout as people say it.
    pub fn said(&self) -> String {
        match self.idle_ms {
            ms if ms >= 120_000 && ms % 60_000 == 0 => format!("{} minutes", ms / 60_000),
            ms => format!("{} seconds", ms / 1000),
        }
    }
}

/// Ends a console session that went idle, on every door; the refusal its
/// caller shows.
pub async fn end_idle(
    state: &crate::state::Shared,
    org_id: &str,
    id: &str,
    clock: IdleClock,
) -> ApiError {
    if let Err(e) = sessions::end(state, org_id, id, "idle").await {
        return e.into();
    }
    ApiError::Unauthorized(format!(
        "your console session ended after {} without use: sign in again",
        clock.said()
    ))
}

/// How often a console session's last use is written at most.
const TOUCH_EVERY_MS: i64 = 30_000;

/// The `Set-Cookie` value that hands the browser `token` until `expires_at`
/// (unix ms), or that clears the cookie when `token` is `None`.
pub fn set_cookie(token: Option<&str>, expires_at: i64, tls: bool) -> String {
    let name = if tls { COOKIE_TLS } else { COOKIE_PLAIN };
    let secure = if tls { "; Secure" } else { "" };
    match token {
        Some(t) => {
            let age = ((expires_at - now_ms()) / 1000).max(0);
            format!("{name}={t}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
        }
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Makes a just-issued login session a console session: the idle clock and
/// the terminal's key, certified for the session (one key per session).
pub async fn open(
    state: &AppState,
    session: &SessionRow,
    now: i64,
) -> Result<ConsoleRow, ApiError> {
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| ApiError::Internal(format!("cannot make the terminal's key: {e}")))?;
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| ApiError::Internal(format!("cannot encode the terminal's key: {e}")))?;
    let sealed = state.pki.seal(pem.as_bytes())?;
    let fingerprint = key
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    if !state
        .store
        .set_session_ssh_key(&session.id, &fingerprint)
        .await?
    {
        return Err(ApiError::Internal("a new session had a key already".into()));
    }
    let row = ConsoleRow {
        session_id: session.id.clone(),
        last_used_at: now,
        terminal_key_sealed: sealed,
    };
    state.store.insert_console_session(&row).await?;
    Ok(row)
}

/// The console's view of a session.
pub fn view(
    state: &AppState,
    token: &str,
    session: &SessionRow,
    user: &str,
    org: &str,
) -> ConsoleSession {
    ConsoleSession {
        id: session.id.clone(),
        user: user.to_string(),
        org: org.to_string(),
        method: session.method.clone(),
        mfa: session.mfa,
        csrf_token: csrf_token(token),
        idle_timeout_seconds: state.settings.console_idle.as_secs(),
        expires_at: rfc3339(session.expires_at),
        terminal: state.settings.ssh_local.is_some(),
    }
}

/// A console request's caller, from its cookie: the session must be a
/// console session that has not been idle too long; a request that changes
/// something must carry the CSRF token and, when it names one, this host as
/// its `Origin`. Each use moves the idle clock.
pub async fn authenticate(
    state: &AppState,
    parts: &Parts,
    token: &str,
) -> Result<(Principal, Credential, ConsoleAuth), ApiError> {
    let (principal, credential) = crate::access::authn::session_principal(&state.store, token)
        .await
        .map_err(|e| match e {
            crate::access::Denied::Unauthenticated(_) => ApiError::Unauthorized(
                "your console session ended or expired: sign in again".into(),
            ),
            other => other.into(),
        })?;
    let console = state
        .store
        .console_session(&credential.id)
        .await?
        .ok_or_else(|| {
            ApiError::Unauthorized("this cookie is not a console session: sign in again".into())
        })?;
    let now = now_ms();
    let clock = IdleClock::of(state);
    if clock.expired(console.last_used_at, now) {
        return Err(end_idle(state, &principal.org_id, &credential.id, clock).await);
    }
    let safe = matches!(
        parts.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    if !safe {
        if same_origin(&parts.headers) == Some(false) {
            return Err(ApiError::Forbidden(
                "this request came from a page of another site: use the console itself".into(),
            ));
        }
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !csrf_matches(token, presented) {
            return Err(ApiError::Forbidden(format!(
                "this request carries no valid {CSRF_HEADER} header: reload the console and try again"
            )));
        }
    }
    clock.touch(&state.store, &credential.id, now).await?;
    Ok((
        principal,
        credential,
        ConsoleAuth {
            token: token.to_string(),
            row: console,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_the_sessions_own() {
        let a = "pss_abc_secretone";
        let b = "pss_abc_secrettwo";
        assert_eq!(csrf_token(a), csrf_token(a));
        assert_ne!(csrf_token(a), csrf_token(b));
        assert!(csrf_matches(a, &csrf_token(a)));
        assert!(!csrf_matches(a, &csrf_token(b)));
        assert!(!csrf_matches(a, ""));
    }

    #[test]
    fn the_cookie_is_read_by_name_and_bounded() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "other=1; postern_console=pss_x_y; more=2".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h, false).as_deref(), Some("pss_x_y"));
        // Over https only the `__Host-` cookie counts.
        assert_eq!(cookie_token(&h, true), None);
        h.append(
            http::header::COOKIE,
            "__Host-postern=pss_h_s".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h, true).as_deref(), Some("pss_h_s"));
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "postern_console=nope".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h, false), None);
        let mut h = HeaderMap::new();
        let long = format!("postern_console=pss_{}", "a".repeat(300));
        h.append(http::header::COOKIE, long.parse().unwrap());
        assert_eq!(cookie_token(&h, false), None);
    }

    #[test]
    fn only_this_host_is_the_same_origin() {
        let h = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::HOST, "bastion.example:8443".parse().unwrap());
            h.insert(http::header::ORIGIN, origin.parse().unwrap());
            same_origin(&h)
        };
        assert_eq!(h("https://bastion.example:8443"), Some(true));
        assert_eq!(h("https://evil.example"), Some(false));
        assert_eq!(h("https://bastion.example:8443.evil.example"), Some(false));
        assert_eq!(h("null"), Some(false));
        assert_eq!(same_origin(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let c = set_cookie(Some("pss_a_b"), now_ms() + 60_000, true);
        assert!(c.starts_with("__Host-postern=pss_a_b; Path=/; HttpOnly; SameSite=Strict"));
        assert!(c.ends_with("; Secure"));
        let c = set_cookie(None, 0, false);
        assert!(c.contains("Max-Age=0") && !c.contains("Secure"));
    }
}
