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
use crate::clock::{now_ms, rfc3339};
use crate::identity::sessions;

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
    // A page of another site cannot sign someone in to its own account here.
    if session::same_origin(&headers) == Some(false) {
        return Err(ApiError::Forbidden(
            "this sign-in came from a page of another site: sign in on the console itself".into(),
        ));
    }
    let signed = super::auth::password_sign_in(
        &state,
        &anon,
        &body.name,
        &body.password,
        body.code.as_deref(),
        json!({ "method": "password", "console": true }),
    )
    .await?;
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
    session::open(&state, &new.row, now_ms()).await?;
    let user = signed.user;
    let org = state.store.org_name(&user.org_id).await?;
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
    let tls = session::over_tls(&state.settings.trusted_proxies, &headers, anon.peer);
    let view = session::view(&state, token, &new.row, &user.name, &org);
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
pub async fn current(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let Some(console) = &caller.console else {
        return Err(ApiError::BadRequest(
            "this is the console's call: it reads the console's cookie, not a bearer".into(),
        ));
    };
    let row = state
        .store
        .session(&caller.credential.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("your session is gone: sign in again".into()))?;
    let org = state.store.org_name(&caller.principal.org_id).await?;
    Ok((
        [(http::header::CACHE_CONTROL, "no-store")],
        Json(session::view(
            &state,
            &console.token,
            &row,
            &caller.principal.user_name,
            &org,
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
