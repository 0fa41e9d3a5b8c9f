//! Users' SSH public keys: add, list, delete. A user manages their own keys; org
//! admins manage everyone's in their org. And where the SSH front door is, with
//! its host key, so clients need not trust it on first use.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use postern_api::ErrorBody;
use postern_api::ssh::{AddSshKey, MAX_KEYS_PER_USER, SshEndpoint, SshKey, known_hosts_name};
use serde_json::json;

use super::admin::plain_id;
use super::extract::{ApiJson, ApiPath, Caller};
use super::users::{may_manage_tokens_of, resolve_user};
use super::{ApiError, AppState};
use crate::access::{AccessChange, Change};
use crate::clock::{now_ms, rfc3339};
use crate::store::{NewSshKey, SshKeyRow, StoreError};
use postern_api::pubkey::parse_user_key;

fn view(user: &str, k: &SshKeyRow) -> SshKey {
    SshKey {
        id: k.id.clone(),
        user: user.to_string(),
        fingerprint: k.fingerprint.clone(),
        algorithm: k.algorithm.clone(),
        comment: k.comment.clone(),
        public_key: k.public_key.clone(),
        created_at: rfc3339(k.created_at),
    }
}

/// Where the SSH front door is and its host key, for `ssh -J` and a
/// `known_hosts` written before the first connection.
#[utoipa::path(
    get,
    path = "/api/v1/ssh",
    tag = "ssh-keys",
    responses(
        (status = 200, description = "The front door's address, host key and a known_hosts line", body = SshEndpoint),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 404, description = "This bastion serves no SSH", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn endpoint(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SshEndpoint>, ApiError> {
    let Some((address, host_key)) = state.settings.ssh_endpoint.clone() else {
        return Err(ApiError::NotFound(
            "this bastion serves no SSH: start it with --ssh-addr".into(),
        ));
    };
    Ok(Json(SshEndpoint {
        known_hosts: format!("{} {host_key}", known_hosts_name(&address)),
        address,
        host_key,
        user: caller.principal.user_name.clone(),
    }))
}

/// The user's SSH public keys (themself, or anyone for org admins).
#[utoipa::path(
    get,
    path = "/api/v1/users/{user}/ssh-keys",
    tag = "ssh-keys",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    responses(
        (status = 200, description = "Keys, oldest first", body = Vec<SshKey>),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<SshKey>>, ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_tokens_of(&caller, &user)?;
    let keys = state.store.list_ssh_keys(&user.id).await?;
    Ok(Json(keys.iter().map(|k| view(&user.name, k)).collect()))
}

/// Registers an SSH public key for the user (themself, or anyone for org admins).
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/ssh-keys",
    tag = "ssh-keys",
    params(
        ("user" = String, Path, description = "User name"),
    ),
    request_body = AddSshKey,
    responses(
        (status = 201, description = "Registered, in canonical form with its fingerprint", body = SshKey),
        (status = 400, description = "Malformed JSON, an unknown field, or not a usable public key (unparsable, several lines, weak RSA, unsupported algorithm)", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org", body = ErrorBody),
        (status = 409, description = "The key is already registered (to this or another user), or the user has 100 keys", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AddSshKey>,
) -> Result<(StatusCode, Json<SshKey>), ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_tokens_of(&caller, &user)?;
    // Someone who signs in through SSO holds roles only as long as their
    // groups say: a registered key would outlive them.
    if state.store.is_sso_user(&user.id).await? {
        return Err(ApiError::BadRequest(format!(
            "{} signs in with single sign-on and uses the session's certificate (postern login): a registered key would outlive their groups",
            user.name
        )));
    }
    let key = parse_user_key(&body.public_key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let row = state
        .store
        .add_ssh_key(
            &NewSshKey {
                user_id: &user.id,
                fingerprint: &key.fingerprint,
                algorithm: &key.algorithm,
                public_key: &key.public_key,
                comment: &key.comment,
            },
            MAX_KEYS_PER_USER,
            now_ms(),
        )
        .await
        .map_err(|e| match e {
            // Do not reveal whether the key belongs to someone else.
            StoreError::Conflict(_) => ApiError::Conflict(format!(
                "key {} is already registered (to this or another user), or the user has {MAX_KEYS_PER_USER} keys",
                key.fingerprint
            )),
            other => other.into(),
        })?;
    caller
        .audit
        .with(|a| a.detail = Some(json!({ "fingerprint": row.fingerprint, "key_id": row.id })));
    Ok((StatusCode::CREATED, Json(view(&user.name, &row))))
}

/// Deletes one of the user's SSH keys; grants of it on nodes are revoked at once.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}/ssh-keys/{key_id}",
    tag = "ssh-keys",
    params(
        ("user" = String, Path, description = "User name"),
        ("key_id" = String, Path, description = "The key's id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 403, description = "Only the user themself or an org_admin may do this", body = ErrorBody),
        (status = 404, description = "No such user in the caller's org, or no such key of theirs", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable, so nothing was changed; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, key_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user = resolve_user(&state, &caller, &name).await?;
    may_manage_tokens_of(&caller, &user)?;
    let not_found = || ApiError::NotFound(format!("user {name:?} has no SSH key {key_id:?}"));
    if !plain_id(&key_id) {
        return Err(not_found());
    }
    let Some(fingerprint) = state.store.delete_ssh_key(&user.id, &key_id).await? else {
        return Err(not_found());
    };
    let change = AccessChange {
        org_id: caller.principal.org_id.clone(),
        user_id: user.id.clone(),
        what: Change::KeyDeleted {
            fingerprint: fingerprint.clone(),
        },
    };
    let mut detail = serde_json::Map::new();
    detail.insert("key_id".into(), json!(key_id));
    detail.insert("fingerprint".into(), json!(fingerprint));
    detail.extend(state.access.publish(change).await);
    caller
        .audit
        .with(|a| a.detail = Some(serde_json::Value::Object(detail)));
    Ok(StatusCode::NO_CONTENT)
}
