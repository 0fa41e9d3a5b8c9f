//! The web console: its pages (built from `console/` in the repository and
//! embedded in this binary, see [`assets`]), its sign-in, which puts the
//! session in a cookie ([`session`]), and the browser terminal ([`terminal`]).
//!
//! Everything else the console shows or does goes through the public REST
//! API with the same checks and audit as the CLI: a cookie only stands in
//! for the `Authorization` header (`extract::Caller`).

pub mod assets;
pub mod session;
pub mod terminal;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::SET_COOKIE;
use postern_api::ErrorBody;
use postern_api::console::{ConsoleLogin, ConsoleSession, MAX_CONSOLE_SECONDS};
use postern_api::validate;
use serde_json::json;

use super::extract::{Anonymous, ApiJson, Caller};
use super::{ApiError, AppState};
use crate::access::authn::CredentialKind;
use crate::clock::{now_ms, rfc3339};
use crate::identity::{local, sessions};

/// Signs a local user in to the console: the session goes into a cookie.
#[utoipa::path(
    post,
    path = "/api/v1/auth/console",
    tag = "auth",
    request_body = ConsoleLogin,
    responses(
        (status = 201, description = "Signed in; the session is in an HttpOnly cookie", body = ConsoleSession),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Wrong name or password, a wrong or used code, or a code is required", body = ErrorBody),
        (status = 403, description = "Sent by a page of another site (its Origin)", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this source or for this user; wait", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
)]
pub async fn sign_in(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<ConsoleLogin>,
) -> Result<Response, ApiError> {
    anon.audit
        .with(|a| a.actor = Some(validate::peer_line(&body.name, 64)));
    for (what, v) in [("name", &body.name), ("password", &body.password)] {
        if v.len() > postern_api::identity::MAX_FIELD {
            return Err(ApiError::BadRequest(format!("{what} is too long")));
        }
    }
    if body.code.as_ref().is_some_and(|c| c.len() > 64) {
        return Err(ApiError::BadRequest("code is too long".into()));
    }
    // A page of another site cannot sign someone in to its own account here.
    if session::same_origin(&headers) == Some(false) {
        return Err(ApiError::Forbidden(
            "this sign-in came from a page of another site: sign in on the console itself".into(),
        ));
    }
    let typed = local::Typed {
        name: &body.name,
        password: &body.password,
        code: body.code.as_deref(),
    };
    let signed = match local::sign_in(
        &state.store,
        &state.pki,
        &state.sign_in_attempts,
        typed,
        anon.source_or_local(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            let reason = e.to_string();
            let org = match state.store.user_by_name(&body.name).await {
                Ok(Some(u)) => Some(u.org_id),
                _ => None,
            };
            anon.audit.with(|a| {
                a.org_id = org;
                a.detail = Some(json!({ "method": "password", "console": true, "reason": reason }));
            });
            return Err(e.into());
        }
    };
    let source = anon.source.map(|s| s.to_string());
    let new = sessions::issue(
        &state.store,
        &signed.user,
        signed.method,
        signed.mfa,
        source.as_deref(),
        Some(MAX_CONSOLE_SECONDS),
    )
    .await?;
    let console = session::open(&state, &new.row, now_ms()).await?;
    let (user, org) = session::user_and_org(&state, &signed.user.id).await?;
    anon.audit.with(|a| {
        a.actor = Some(user.name.clone());
        a.org_id = Some(user.org_id.clone());
        a.detail = Some(json!({
            "method": signed.method, "mfa": signed.mfa, "console": true,
            "session_id": new.row.id, "expires_at": rfc3339(new.row.expires_at),
            "recovery_codes_left": signed.recovery_left,
        }));
    });
    let token = new.token.expose();
    let tls = session::over_tls(&state, &headers, anon.source);
    let view = session::view(&state, token, &new.row, &console, &user.name, &org);
    Ok((
        StatusCode::CREATED,
        [
            (
                SET_COOKIE,
                session::set_cookie(Some(token), new.row.expires_at, tls),
            ),
            (http::header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Json(view),
    )
        .into_response())
}

/// The console's own session: who is signed in, until when, and the CSRF
/// token its page sends with every write.
#[utoipa::path(
    get,
    path = "/api/v1/auth/console",
    tag = "auth",
    responses(
        (status = 200, description = "The console session of the cookie", body = ConsoleSession),
        (status = 400, description = "Called with a bearer, not the console's cookie", body = ErrorBody),
        (status = 401, description = "No console session, or it ended (idle, expired, logged out)", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
)]
pub async fn current(
    State(state): State<AppState>,
    caller: Caller,
    headers: http::HeaderMap,
) -> Result<Response, ApiError> {
    let token = match (caller.console, session::cookie_token(&headers)) {
        (true, Some(t)) => t,
        _ => {
            return Err(ApiError::BadRequest(
                "this is the console's call: it reads the console's cookie, not a bearer".into(),
            ));
        }
    };
    let row = state
        .store
        .session(&caller.credential.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("your session is gone: sign in again".into()))?;
    let console = state
        .store
        .console_session(&row.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("not a console session: sign in again".into()))?;
    let (user, org) = session::user_and_org(&state, &caller.principal.user_id).await?;
    Ok((
        [(http::header::CACHE_CONTROL, "no-store")],
        Json(session::view(
            &state, &token, &row, &console, &user.name, &org,
        )),
    )
        .into_response())
}

/// The `Set-Cookie` headers that clear the console's cookie, whichever name
/// it had.
pub fn clear_cookies() -> [(http::HeaderName, String); 2] {
    [
        (SET_COOKIE, session::set_cookie(None, 0, false)),
        (SET_COOKIE, session::set_cookie(None, 0, true)),
    ]
}

/// Whether a caller signed in through the console (for answers that also
/// clear its cookie).
pub fn is_console(caller: &Caller) -> bool {
    caller.console && caller.credential.kind == CredentialKind::Session
}
