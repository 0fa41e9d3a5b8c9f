//! Single sign-on over REST: an org admin's providers and group → role
//! mappings (here), and the sign-in itself (`flow`: the browser's round trip
//! and the CLI's collection; `device`: a headless sign-in's pages). The browser goes from
//! `/auth/sso/start` to the provider and back to `/auth/sso/callback`, which
//! verifies the answer (`identity::oidc`), admits the person
//! (`identity::sso`) and hands the session to the CLI: through its loopback
//! listener as a one-time code the CLI collects (the session never sits in a
//! browser's history), or, for a headless sign-in, to the CLI polling with
//! its device code. Every step is single use, and every refusal says why.

use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use http::StatusCode;
use postern_api::admin::RoleBinding;
use postern_api::identity::{
    Collect, Collected, DeviceStarted, GroupRole, OidcProvider, PutOidcProvider, SessionCreated,
    StartDevice, USER_CODE_ALPHABET,
};
use postern_api::{ErrorBody, validate};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admin::require;
use super::extract::{Anonymous, ApiJson, ApiPath, ApiQuery, Caller};
use super::users::binding_of;
use super::{ApiError, AppState};
use crate::authz::Action;
use crate::clock::{now_ms, rfc3339};
use crate::identity::IdentityError;
use crate::identity::oidc::RelyingParty;
use crate::secrets::{random_bytes, sha256_hex};
use crate::store::{OidcProviderRow, PendingLogin};

mod device;
mod flow;

pub use device::*;
pub use flow::*;

/// How long a sign-in may take at the provider.
const ROUND_TRIP_MS: i64 = 10 * 60_000;
/// How long a device code lives.
const DEVICE_MS: i64 = 10 * 60_000;

fn provider_view(p: &OidcProviderRow) -> OidcProvider {
    OidcProvider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        client_id: p.client_id.clone(),
        redirect_url: p.redirect_url.clone(),
        scopes: p.scopes.clone(),
        groups_claim: p.groups_claim.clone(),
        allowed_domains: p.allowed_domains.clone(),
    }
}

/// `https://…`, or `http://` to a loopback host (tests, a provider beside the
/// bastion).
fn url_ok(what: &str, u: &str) -> Result<(), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{what} must be an https:// URL (http:// only to 127.0.0.1, [::1] or localhost), at most 512 bytes"
        ))
    };
    if u.len() > 512 || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    let rest = if let Some(r) = u.strip_prefix("https://") {
        r
    } else if let Some(r) = u.strip_prefix("http://") {
        let host = r.split(['/', '?']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if !matches!(host, "127.0.0.1" | "[::1]" | "localhost") {
            return Err(bad());
        }
        r
    } else {
        return Err(bad());
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad());
    }
    Ok(())
}

fn short_list(what: &str, items: &[String], max: usize) -> Result<(), ApiError> {
    if items.len() > max
        || items.iter().any(|i| {
            i.is_empty() || i.len() > 128 || i.chars().any(|c| c.is_control() || c.is_whitespace())
        })
    {
        return Err(ApiError::BadRequest(format!(
            "{what}: at most {max} values of 1 to 128 printable characters without spaces"
        )));
    }
    Ok(())
}

/// Adds or replaces an OpenID provider of the caller's org.
#[utoipa::path(
    put,
    path = "/api/v1/sso/providers/{name}",
    tag = "sso",
    params(("name" = String, Path, description = "The provider's name in this org, e.g. corp")),
    request_body = PutOidcProvider,
    responses(
        (status = 200, description = "Saved (the secret is sealed and never shown)", body = OidcProvider),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn put_provider(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutOidcProvider>,
) -> Result<Json<OidcProvider>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    validate::name("provider", &name)?;
    url_ok("issuer", &body.issuer)?;
    url_ok("redirect_url", &body.redirect_url)?;
    if !body.redirect_url.ends_with(&format!(
        "{}{}",
        postern_api::routes::API,
        postern_api::routes::AUTH_SSO_CALLBACK
    )) {
        return Err(ApiError::BadRequest(
            "redirect_url must be the bastion's public URL followed by /api/v1/auth/sso/callback"
                .into(),
        ));
    }
    if body.client_id.is_empty()
        || body.client_id.len() > 256
        || body.client_id.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(
            "client_id: 1 to 256 printable characters".into(),
        ));
    }
    if body.client_secret.is_empty() || body.client_secret.len() > 1024 {
        return Err(ApiError::BadRequest(
            "client_secret: 1 to 1024 bytes".into(),
        ));
    }
    let scopes = body.scopes.clone().unwrap_or_else(|| {
        ["openid", "email", "profile", "groups"]
            .map(String::from)
            .to_vec()
    });
    short_list("scopes", &scopes, 16)?;
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ApiError::BadRequest("scopes must include openid".into()));
    }
    let groups_claim = body.groups_claim.clone().unwrap_or_else(|| "groups".into());
    short_list("groups_claim", std::slice::from_ref(&groups_claim), 1)?;
    short_list("allowed_domains", &body.allowed_domains, 64)?;
    let existing = state
        .store
        .oidc_provider(&caller.principal.org_id, &name)
        .await?;
    let row = OidcProviderRow {
        id: existing.map(|e| e.id).unwrap_or_else(crate::store::new_id),
        org_id: caller.principal.org_id.clone(),
        name: name.clone(),
        issuer: body.issuer.trim_end_matches('/').to_string(),
        client_id: body.client_id.clone(),
        client_secret_sealed: state.pki.seal(body.client_secret.as_bytes())?,
        redirect_url: body.redirect_url.clone(),
        scopes,
        groups_claim,
        allowed_domains: body
            .allowed_domains
            .iter()
            .map(|d| d.to_lowercase())
            .collect(),
        created_at: now_ms(),
    };
    state.store.put_oidc_provider(&row).await?;
    let view = provider_view(&row);
    caller.audit.with(|a| {
        a.targets.push(format!("sso:{name}"));
        a.detail = Some(serde_json::to_value(&view).unwrap_or_default());
    });
    Ok(Json(view))
}

/// The org's OpenID providers.
#[utoipa::path(
    get,
    path = "/api/v1/sso/providers",
    tag = "sso",
    responses(
        (status = 200, description = "The providers", body = [OidcProvider]),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_providers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<OidcProvider>>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let all = state
        .store
        .list_oidc_providers(&caller.principal.org_id)
        .await?;
    Ok(Json(all.iter().map(provider_view).collect()))
}

/// Removes an OpenID provider (its users stay; they sign in otherwise).
#[utoipa::path(
    delete,
    path = "/api/v1/sso/providers/{name}",
    tag = "sso",
    params(("name" = String, Path, description = "The provider's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn delete_provider(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Action::ManageOrg)?;
    if !state
        .store
        .delete_oidc_provider(&caller.principal.org_id, &name)
        .await?
    {
        return Err(ApiError::NotFound(format!("provider {name:?} not found")));
    }
    caller.audit.with(|a| a.targets.push(format!("sso:{name}")));
    Ok(StatusCode::NO_CONTENT)
}

/// A provider's group → role mappings.
#[utoipa::path(
    get,
    path = "/api/v1/sso/providers/{name}/groups",
    tag = "sso",
    params(("name" = String, Path, description = "The provider's name")),
    responses(
        (status = 200, description = "The mappings", body = [GroupRole]),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<GroupRole>>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let provider = own_provider(&state, &caller, &name).await?;
    let org = &caller.principal.org_id;
    let projects = state.store.list_projects(org).await?;
    let out = state
        .store
        .group_mappings(&provider.id)
        .await?
        .into_iter()
        .map(|m| GroupRole {
            group: m.group,
            role: m.binding.role,
            project: m.binding.project_id.as_ref().and_then(|id| {
                projects
                    .iter()
                    .find(|p| &p.id == id)
                    .map(|p| p.name.clone())
            }),
            logins: m.binding.logins,
            kube_groups: m.binding.kube_groups,
        })
        .collect();
    Ok(Json(out))
}

/// A provider of the caller's org, by name, or 404.
async fn own_provider(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<OidcProviderRow, ApiError> {
    let not_found = || ApiError::NotFound(format!("provider {name:?} not found"));
    if validate::name("provider", name).is_err() {
        return Err(not_found());
    }
    state
        .store
        .oidc_provider(&caller.principal.org_id, name)
        .await?
        .ok_or_else(not_found)
}

fn group_ok(group: &str) -> Result<(), ApiError> {
    if group.is_empty() || group.len() > 256 || group.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "group: 1 to 256 printable characters".into(),
        ));
    }
    Ok(())
}

/// Maps a group of one provider to a role (in a project, or org-wide for
/// org_admin); people that provider puts in the group get it at their next
/// sign-in.
#[utoipa::path(
    put,
    path = "/api/v1/sso/providers/{name}/groups/{group}/roles",
    tag = "sso",
    params(
        ("name" = String, Path, description = "The provider's name"),
        ("group" = String, Path, description = "The group as the provider names it in the groups claim"),
    ),
    request_body = RoleBinding,
    responses(
        (status = 200, description = "Saved", body = GroupRole),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such provider or project", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn put_group_role(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, group)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RoleBinding>,
) -> Result<Json<GroupRole>, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let provider = own_provider(&state, &caller, &name).await?;
    group_ok(&group)?;
    if !body.forward_to.is_empty() {
        return Err(ApiError::BadRequest(
            "forward_to is granted per user (PUT /api/v1/users/{user}/roles), not per group".into(),
        ));
    }
    let binding = binding_of(&state, &caller, &body).await?;
    state
        .store
        .put_group_mapping(
            &caller.principal.org_id,
            &provider.id,
            &group,
            &binding,
            now_ms(),
        )
        .await?;
    caller.audit.with(|a| {
        a.targets
            .push(format!("group:{}", validate::peer_line(&group, 120)));
        a.detail =
            Some(json!({ "role": body.role, "project": body.project, "logins": body.logins }));
    });
    Ok(Json(GroupRole {
        group,
        role: body.role,
        project: body.project,
        logins: body.logins,
        kube_groups: body.kube_groups,
    }))
}

/// Removes a group's role (`scope`: the project, or `org`). People keep it
/// until their next sign-in; end their sessions to take it at once.
#[utoipa::path(
    delete,
    path = "/api/v1/sso/providers/{name}/groups/{group}/roles/{scope}",
    tag = "sso",
    params(
        ("name" = String, Path, description = "The provider's name"),
        ("group" = String, Path, description = "The group"),
        ("scope" = String, Path, description = "The project's name, or `org` for the org-wide role"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing, invalid, expired or ended credential: log in again", body = ErrorBody),
        (status = 403, description = "Only an org_admin", body = ErrorBody),
        (status = 404, description = "No such provider, project or mapping", body = ErrorBody),
        (status = 503, description = "The database or the audit log is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn delete_group_role(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, group, scope)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Action::ManageOrg)?;
    let provider = own_provider(&state, &caller, &name).await?;
    let org = &caller.principal.org_id;
    let scope_id = if scope == "org" {
        None
    } else {
        Some(
            state
                .store
                .project_by_name(org, &scope)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("project {scope:?} not found")))?
                .id,
        )
    };
    if !state
        .store
        .delete_group_mapping(&provider.id, &group, scope_id.as_deref())
        .await?
    {
        return Err(ApiError::NotFound("no such group mapping".into()));
    }
    caller.audit.with(|a| {
        a.targets
            .push(format!("group:{}", validate::peer_line(&group, 120)))
    });
    Ok(StatusCode::NO_CONTENT)
}
