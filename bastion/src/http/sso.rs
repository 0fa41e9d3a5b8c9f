//! Single sign-on over REST: an org admin's providers and group → role
//! mappings, and the sign-in itself. The browser goes from
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

/// What the bastion keeps, sealed, between the redirect and the callback.
#[derive(Debug, Serialize, Deserialize)]
struct RoundTrip {
    nonce: String,
    pkce_verifier: String,
    /// The CLI's loopback listener.
    #[serde(default)]
    cli_redirect: Option<String>,
    /// The device sign-in this round trip finishes.
    #[serde(default)]
    device_id: Option<String>,
    /// The hash of a secret only the CLI that started the sign-in holds: the
    /// code its listener gets is worth nothing without it (a page that
    /// delivers its own code to the listener, or a code sent elsewhere).
    #[serde(default)]
    cli_challenge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    org: String,
    provider: String,
    cli_redirect: String,
    cli_challenge: String,
}

/// Sign-ins under way for one provider at most: strangers start them, and
/// each is a row for minutes.
const MAX_PENDING_PER_PROVIDER: i64 = 10_000;

/// A page for the person in the browser, with its status.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    (
        status,
        [(http::header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Postern: {t}</title></head>\
             <body><h1>{t}</h1><p id=\"message\">{x}</p></body></html>",
            t = esc(title),
            x = esc(text)
        )),
    )
        .into_response()
}

/// Only a loopback listener of the CLI: `http://127.0.0.1:PORT/…`.
fn cli_redirect_ok(u: &str) -> bool {
    let Some(rest) = u
        .strip_prefix("http://127.0.0.1:")
        .or_else(|| u.strip_prefix("http://[::1]:"))
    else {
        return false;
    };
    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
    u.len() <= 200
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && rest[port.len()..].starts_with('/')
        && !u
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '#')
}

async fn provider_named(
    state: &AppState,
    org: &str,
    provider: &str,
) -> Result<OidcProviderRow, ApiError> {
    let unknown = || {
        ApiError::NotFound(format!(
            "no sign-in provider {} in org {}: check the names with your admin",
            validate::peer_line(provider, 64),
            validate::peer_line(org, 64)
        ))
    };
    if validate::name("org", org).is_err() || validate::name("provider", provider).is_err() {
        return Err(unknown());
    }
    let org = state.store.org_by_name(org).await?.ok_or_else(unknown)?;
    state
        .store
        .oidc_provider(&org.id, provider)
        .await?
        .ok_or_else(unknown)
}

async fn relying_party(state: &AppState, p: &OidcProviderRow) -> Result<RelyingParty, ApiError> {
    let secret = String::from_utf8(state.pki.open(&p.client_secret_sealed)?)
        .map_err(|_| ApiError::Internal("a sealed client secret is not text".into()))?;
    Ok(state.sso.relying_party(p, &secret).await?)
}

/// Starts a sign-in at the org's provider for the CLI waiting on a loopback
/// port: the browser is sent to the provider.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/start",
    tag = "auth",
    params(
        ("org" = String, Query, description = "The org"),
        ("provider" = String, Query, description = "The org's provider"),
        ("cli_redirect" = String, Query, description = "The CLI's loopback listener, http://127.0.0.1:PORT/callback"),
        ("cli_challenge" = String, Query, description = "base64url(SHA-256(verifier)) of a secret the CLI keeps and sends to /auth/sso/collect"),
    ),
    responses(
        (status = 303, description = "To the provider"),
        (status = 400, description = "A bad or missing parameter", body = ErrorBody),
        (status = 404, description = "No such org or provider", body = ErrorBody),
        (status = 429, description = "Too many sign-ins started from this source, or under way", body = ErrorBody),
        (status = 503, description = "The provider or the database is unavailable; retry", body = ErrorBody),
    ),
)]
pub async fn start(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiQuery(q): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    // Counted per source like failed sign-ins: strangers start these.
    state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now_ms())
        .ok_or_else(|| {
            IdentityError::TooMany(
                "too many sign-ins started from your address: wait a minute".into(),
            )
        })?;
    if !cli_redirect_ok(&q.cli_redirect) {
        return Err(ApiError::BadRequest(
            "cli_redirect must be the CLI's loopback listener, http://127.0.0.1:PORT/…".into(),
        ));
    }
    if q.cli_challenge.len() != 43
        || !q
            .cli_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::BadRequest(
            "cli_challenge must be base64url(SHA-256(verifier)), 43 characters".into(),
        ));
    }
    let provider = provider_named(&state, &q.org, &q.provider).await?;
    round_trip(
        &state,
        &anon,
        &provider,
        RoundTarget::Cli {
            redirect: q.cli_redirect,
            challenge: q.cli_challenge,
        },
    )
    .await
}

/// Where a round trip's session goes.
enum RoundTarget {
    Cli { redirect: String, challenge: String },
    Device(String),
}

/// Records a round trip to `provider` (nonce, PKCE verifier, target) and
/// sends the browser there.
async fn round_trip(
    state: &AppState,
    anon: &Anonymous,
    provider: &OidcProviderRow,
    target: RoundTarget,
) -> Result<Response, ApiError> {
    let now = now_ms();
    if state.store.pending_logins_open(&provider.id, now).await? >= MAX_PENDING_PER_PROVIDER {
        return Err(IdentityError::TooMany(
            "too many sign-ins are under way with this provider: retry in a minute".into(),
        )
        .into());
    }
    let rp = relying_party(state, provider).await?;
    let s = rp.start(&provider.scopes);
    let (cli_redirect, cli_challenge, device_id) = match target {
        RoundTarget::Cli {
            redirect,
            challenge,
        } => (Some(redirect), Some(challenge), None),
        RoundTarget::Device(id) => (None, None, Some(id)),
    };
    let trip = RoundTrip {
        nonce: s.nonce,
        pkce_verifier: s.pkce_verifier,
        cli_redirect,
        device_id,
        cli_challenge,
    };
    let sealed = state
        .pki
        .seal(&serde_json::to_vec(&trip).unwrap_or_default())?;
    state
        .store
        .insert_pending_login(
            "sso",
            Some(&provider.org_id),
            Some(&provider.id),
            Some(&sha256_hex(s.state.as_bytes())),
            None,
            None,
            &sealed,
            now,
            now + ROUND_TRIP_MS,
        )
        .await?;
    anon.audit.with(|a| {
        a.org_id = Some(provider.org_id.clone());
        a.detail = Some(json!({ "provider": provider.name, "device": trip.device_id.is_some() }));
    });
    Ok(Redirect::to(&s.url).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    #[allow(dead_code)]
    iss: Option<String>,
    #[allow(dead_code)]
    session_state: Option<String>,
}

/// The provider's answer: verified, the person admitted (or told why not),
/// and the session handed to the CLI.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/callback",
    tag = "auth",
    params(
        ("code" = Option<String>, Query, description = "From the provider"),
        ("state" = Option<String>, Query, description = "From the provider"),
    ),
    responses(
        (status = 303, description = "To the CLI's loopback listener with a one-time code"),
        (status = 200, description = "A headless sign-in is done: a page says to go back to the terminal"),
        (status = 400, description = "A replayed, unknown or expired state, or the provider refused", body = ErrorBody),
        (status = 401, description = "The person is not admitted (the page says why)"),
    ),
)]
pub async fn callback(
    State(state): State<AppState>,
    anon: Anonymous,
    axum::extract::Query(q): axum::extract::Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let refused = |why: String| {
        anon.audit
            .with(|a| a.detail = Some(json!({ "reason": why })));
        page(StatusCode::UNAUTHORIZED, "Sign-in refused", &why)
    };
    let Some(st) = q.state.as_deref().filter(|s| s.len() <= 256) else {
        return Ok(refused(
            "the provider's answer has no state: start again with postern login".into(),
        ));
    };
    let Some(pending) = state
        .store
        .claim_pending_by_state(&sha256_hex(st.as_bytes()), now)
        .await?
    else {
        return Ok(refused(
            "this sign-in is unknown, was used already or has expired: start again with postern login".into(),
        ));
    };
    let trip: RoundTrip = match state
        .pki
        .open(&pending.sealed)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(t) => t,
        None => {
            return Err(ApiError::Internal(
                "a pending sign-in could not be read".into(),
            ));
        }
    };
    let provider = state
        .store
        .oidc_provider_by_id(pending.provider_id.as_deref().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::NotFound("the provider of this sign-in is gone".into()))?;
    anon.audit
        .with(|a| a.org_id = Some(provider.org_id.clone()));
    // From here a refusal also goes back to a waiting CLI, which says why and
    // stops waiting.
    let cli = trip.cli_redirect.clone();
    let refused = |why: String| -> Response {
        let shown = refused(why.clone());
        match &cli {
            Some(c) => {
                let sep = if c.contains('?') { '&' } else { '?' };
                let why = validate::peer_line(&why, 300);
                let q = serde_urlencoded::to_string([("error", why.as_str())]).unwrap_or_default();
                Redirect::to(&format!("{c}{sep}{q}")).into_response()
            }
            None => shown,
        }
    };
    if let Some(e) = &q.error {
        return Ok(refused(format!(
            "{} refused: {} {}",
            provider.name,
            validate::peer_line(e, 100),
            validate::peer_line(q.error_description.as_deref().unwrap_or_default(), 200)
        )));
    }
    let Some(code) = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 2048)
    else {
        return Ok(refused("the provider's answer has no code".into()));
    };
    let mut rp = relying_party(&state, &provider).await?;
    let who = match rp.finish(code, &trip.pkce_verifier, &trip.nonce).await {
        Ok(w) => w,
        Err(e) => return Ok(refused(e.to_string())),
    };
    // A refreshed JWKS serves the next sign-ins too.
    state.sso.keep(&provider, rp);
    let source = anon.source.map(|s| s.to_string());
    let (user, session, detail) = match crate::identity::sso::admit(
        &state,
        &provider,
        &who,
        source.as_deref(),
    )
    .await
    {
        Ok(x) => x,
        Err(IdentityError::Refused(why)) => {
            let out = refused(why.clone());
            anon.audit.with(|a| {
                    // The provider's word, marked as such: not one of our users.
                a.actor = who
                    .preferred_username
                    .as_deref()
                    .or(who.email.as_deref())
                    .map(|n| format!("{}:{}", provider.name, validate::peer_line(n, 64)));
                    a.detail = Some(json!({ "reason": why, "provider": provider.name, "groups": who.groups.iter().take(64).collect::<Vec<_>>(), "amr": who.amr }));
                });
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    let org = state
        .store
        .org_by_id(&user.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    let created = SessionCreated {
        id: session.row.id.clone(),
        token: session.token.expose().to_string(),
        user: user.name.clone(),
        org,
        method: session.row.method.clone(),
        mfa: session.row.mfa,
        expires_at: rfc3339(session.row.expires_at),
        ssh_certificate: None,
        recovery_codes_left: None,
    };
    let sealed = state
        .pki
        .seal(&serde_json::to_vec(&created).unwrap_or_default())?;
    anon.audit.with(|a| {
        a.actor = Some(user.name.clone());
        a.detail = Some(detail);
    });
    if let Some(device_id) = &trip.device_id {
        if !state
            .store
            .finish_device_login(device_id, &sealed, now)
            .await?
        {
            return Ok(refused(
                "this headless sign-in expired or was finished already".into(),
            ));
        }
        return Ok(page(
            StatusCode::OK,
            "Signed in",
            &format!("Signed in as {}. Go back to your terminal.", user.name),
        ));
    }
    let (Some(cli), Some(challenge)) = (trip.cli_redirect, trip.cli_challenge) else {
        return Err(ApiError::Internal("a sign-in with nowhere to go".into()));
    };
    let secret = hex::encode(random_bytes::<24>()?);
    // Collected with the code and the CLI's verifier both (see `collect`).
    if !state
        .store
        .finish_sso_login(
            &pending.id,
            &sha256_hex(format!("{secret}:{challenge}").as_bytes()),
            &sealed,
            now,
        )
        .await?
    {
        return Ok(refused("this sign-in was finished already".into()));
    }
    let sep = if cli.contains('?') { '&' } else { '?' };
    Ok(Redirect::to(&format!("{cli}{sep}code={}_{secret}", pending.id)).into_response())
}

fn user_code() -> Result<String, ApiError> {
    let raw = random_bytes::<8>()?;
    let c: String = raw
        .iter()
        .map(|b| USER_CODE_ALPHABET[*b as usize % USER_CODE_ALPHABET.len()] as char)
        .collect();
    Ok(format!("{}-{}", &c[..4], &c[4..]))
}

/// Starts a headless sign-in: a URL and a short code to open on any device,
/// and a secret with which the CLI collects the session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/device",
    tag = "auth",
    request_body = StartDevice,
    responses(
        (status = 201, description = "Open the URL anywhere and type the code; poll /auth/sso/collect", body = DeviceStarted),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 404, description = "No such org or provider", body = ErrorBody),
        (status = 429, description = "Too many sign-ins started from this source, or under way", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
)]
pub async fn device(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiJson(body): ApiJson<StartDevice>,
) -> Result<(StatusCode, Json<DeviceStarted>), ApiError> {
    let now = now_ms();
    state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now)
        .ok_or_else(|| {
            IdentityError::TooMany(
                "too many sign-ins started from your address: wait a minute".into(),
            )
        })?;
    let p = provider_named(&state, &body.org, &body.provider).await?;
    if state.store.pending_logins_open(&p.id, now).await? >= MAX_PENDING_PER_PROVIDER {
        return Err(IdentityError::TooMany(
            "too many sign-ins are under way with this provider: retry in a minute".into(),
        )
        .into());
    }
    // Shown to whoever approves the code: where the request came from.
    let asked = state.pki.seal(
        &serde_json::to_vec(&json!({ "source": anon.source.map(|s| s.to_string()) }))
            .unwrap_or_default(),
    )?;
    let secret = hex::encode(random_bytes::<24>()?);
    let mut code = user_code()?;
    let mut id = None;
    for _ in 0..3 {
        match state
            .store
            .insert_pending_login(
                "device",
                Some(&p.org_id),
                Some(&p.id),
                None,
                Some(&code),
                Some(&sha256_hex(secret.as_bytes())),
                &asked,
                now,
                now + DEVICE_MS,
            )
            .await
        {
            Ok(i) => {
                id = Some(i);
                break;
            }
            Err(crate::store::StoreError::Conflict(_)) => code = user_code()?,
            Err(e) => return Err(e.into()),
        }
    }
    let id = id.ok_or_else(|| ApiError::Internal("no free device code".into()))?;
    let origin = p
        .redirect_url
        .strip_suffix(&format!(
            "{}{}",
            postern_api::routes::API,
            postern_api::routes::AUTH_SSO_CALLBACK
        ))
        .unwrap_or(&p.redirect_url)
        .to_string();
    anon.audit.with(|a| {
        a.org_id = Some(p.org_id.clone());
        a.detail = Some(json!({ "provider": p.name, "user_code": code }));
    });
    Ok((
        StatusCode::CREATED,
        Json(DeviceStarted {
            // The code is typed, never carried by the link: a link alone
            // approves nothing.
            verification_url: format!(
                "{origin}{}{}",
                postern_api::routes::API,
                postern_api::routes::AUTH_SSO_DEVICE
            ),
            user_code: code,
            poll_code: format!("{id}_{secret}"),
            expires_in: DEVICE_MS / 1000,
            interval: 2,
        }),
    ))
}

/// Collects a finished sign-in's session, once: the code from the loopback
/// redirect, or a headless sign-in's poll code (`pending` until the person
/// has signed in).
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/collect",
    tag = "auth",
    request_body = Collect,
    responses(
        (status = 200, description = "`pending`, or `done` with the session (shown only now)", body = Collected),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Unknown, expired or collected already", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 429, description = "Too many bad codes from this source", body = ErrorBody),
    ),
)]
pub async fn collect(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiJson(body): ApiJson<Collect>,
) -> Result<Json<Collected>, ApiError> {
    let now = now_ms();
    let attempt = state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now)
        .ok_or_else(|| {
            IdentityError::TooMany("too many bad codes from your address: wait a minute".into())
        })?;
    let bad = || {
        ApiError::Unauthorized(
            "this sign-in code is unknown, expired or was used: run postern login again".into(),
        )
    };
    let (id, secret) = body
        .code
        .trim()
        .split_once('_')
        .filter(|(i, s)| i.len() <= 64 && s.len() <= 128)
        .ok_or_else(bad)?;
    let p: PendingLogin = state.store.pending_by_id(id).await?.ok_or_else(bad)?;
    // A loopback sign-in's code goes with the verifier of the challenge its
    // CLI sent to `start`; a device code's poll secret stands alone (only
    // the CLI that asked for it holds it).
    let presented = match (p.kind.as_str(), &body.verifier) {
        ("sso", Some(v)) if v.len() <= 128 => {
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ring::digest::digest(&ring::digest::SHA256, v.as_bytes()));
            format!("{secret}:{challenge}")
        }
        ("device", None) => secret.to_string(),
        _ => return Err(bad()),
    };
    let matches = p
        .poll_hash
        .as_deref()
        .is_some_and(|h| crate::secrets::secret_matches(&presented, h));
    if !matches {
        return Err(bad());
    }
    // The right secret: polling is no guessing.
    attempt.succeeded();
    if p.session_sealed.is_none() {
        if p.kind == "device" && p.finished_at.is_none() && p.expires_at > now {
            return Ok(Json(Collected {
                status: "pending".into(),
                session: None,
            }));
        }
        return Err(bad());
    }
    let sealed = state
        .store
        .collect_device_login(id)
        .await?
        .ok_or_else(bad)?;
    let session: SessionCreated = state
        .pki
        .open(&sealed)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::Internal("a finished sign-in could not be read".into()))?;
    anon.audit.with(|a| {
        a.actor = Some(session.user.clone());
        a.org_id = p.org_id.clone();
        a.detail = Some(json!({ "session_id": session.id, "kind": p.kind }));
    });
    Ok(Json(Collected {
        status: "done".into(),
        session: Some(session),
    }))
}

/// The cookie that ties the device pages' forms to the browser that loaded
/// them: `SameSite=Strict`, so a page elsewhere cannot post them for a
/// visitor (and push their sign-in into someone else's device request).
const CSRF_COOKIE: &str = "postern_sso_csrf";

fn csrf_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == CSRF_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page with a form, and the CSRF cookie its form carries.
fn form_page(title: &str, body: &str, csrf: &str) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(http::header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Postern: {t}</title></head>\
             <body><h1>{t}</h1>{body}</body></html>",
            t = esc(title)
        )),
    )
        .into_response();
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path={}{}; HttpOnly; SameSite=Strict; Max-Age=900",
        postern_api::routes::API,
        "/auth/sso"
    );
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    resp
}

/// The headless sign-in page: type the code your terminal shows.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/device",
    tag = "auth",
    responses((status = 200, description = "A page with a form for the code", content_type = "text/html")),
)]
pub async fn device_page() -> Result<Response, ApiError> {
    let csrf = hex::encode(random_bytes::<32>()?);
    Ok(form_page(
        "Sign in a device",
        &format!(
            "<p>Type the code that <code>postern login --headless</code> shows in your terminal.</p>\
             <form method=\"post\" action=\"{api}/auth/sso/device/confirm\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"text\" name=\"code\" autofocus autocomplete=\"off\" placeholder=\"ABCD-EFGH\">\
             <button type=\"submit\">Next</button></form>",
            api = postern_api::routes::API
        ),
        &csrf,
    ))
}

#[derive(Debug, Deserialize)]
struct DeviceForm {
    code: String,
    csrf: String,
}

/// The form's fields, once its CSRF field matches the browser's cookie; else
/// what to tell the person.
fn device_form(headers: &http::HeaderMap, body: &[u8]) -> Result<DeviceForm, &'static str> {
    let form: DeviceForm = serde_urlencoded::from_bytes(body)
        .map_err(|_| "This form is incomplete: open the sign-in page again.")?;
    match csrf_of(headers) {
        Some(c) if crate::secrets::secret_matches(&form.csrf, &sha256_hex(c.as_bytes())) => {
            Ok(form)
        }
        _ => Err(
            "This form did not come from this browser's sign-in page: open the sign-in page again and type the code there.",
        ),
    }
}

/// The device request a code names, while it waits; a page otherwise.
async fn waiting_device(
    state: &AppState,
    anon: &Anonymous,
    code: &str,
) -> Result<Result<PendingLogin, Response>, ApiError> {
    let now = now_ms();
    let Some(attempt) = state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now)
    else {
        return Ok(Err(page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many tries",
            "Too many wrong codes from your address: wait a minute.",
        )));
    };
    let code = code.trim().to_ascii_uppercase();
    let found = if code.len() <= 16 {
        state.store.pending_by_user_code(&code).await?
    } else {
        None
    };
    match found.filter(|d| d.kind == "device" && d.finished_at.is_none() && d.expires_at > now) {
        Some(d) => {
            attempt.succeeded();
            Ok(Ok(d))
        }
        None => Ok(Err(page(
            StatusCode::NOT_FOUND,
            "Unknown code",
            "This code is unknown or has expired: check it, or run postern login --headless again.",
        ))),
    }
}

/// Step two: what the code would approve, said plainly, before anything
/// happens.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/device/confirm",
    tag = "auth",
    responses(
        (status = 200, description = "A page naming the org, the provider and where the request came from, with a Continue button", content_type = "text/html"),
        (status = 400, description = "A form without this browser's CSRF cookie", content_type = "text/html"),
        (status = 404, description = "An unknown or expired code", content_type = "text/html"),
    ),
)]
pub async fn device_confirm(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let form = match device_form(&headers, &body) {
        Ok(f) => f,
        Err(why) => return Ok(page(StatusCode::BAD_REQUEST, "Start again", why)),
    };
    let device = match waiting_device(&state, &anon, &form.code).await? {
        Ok(d) => d,
        Err(p) => return Ok(p),
    };
    let provider = state
        .store
        .oidc_provider_by_id(device.provider_id.as_deref().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::NotFound("the provider of this code is gone".into()))?;
    let org = state
        .store
        .org_by_id(&provider.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    let asked_from = state
        .pki
        .open(&device.sealed)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["source"].as_str().map(str::to_string))
        .unwrap_or_else(|| "an unknown address".into());
    let age = (now_ms() - device.expires_at + DEVICE_MS).max(0) / 1000;
    let csrf = csrf_of(&headers).unwrap_or_default();
    Ok(form_page(
        "Approve this sign-in?",
        &format!(
            "<p id=\"request\">A device asked {age} s ago, from <b>{from}</b>, to sign in to the org <b>{org}</b> \
             with <b>{provider}</b>. Continuing gives <b>that device</b> a session as you.</p>\
             <p>Continue only if you started it yourself, just now, with <code>postern login --headless</code>.</p>\
             <form method=\"post\" action=\"{api}/auth/sso/device/approve\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf_field}\">\
             <input type=\"hidden\" name=\"code\" value=\"{code}\">\
             <button type=\"submit\">Continue to {provider}</button></form>",
            from = esc(&asked_from),
            org = esc(&org),
            provider = esc(&provider.name),
            code = esc(&form.code),
            csrf_field = esc(&form.csrf),
            api = postern_api::routes::API
        ),
        &csrf,
    ))
}

/// Step three: the person confirmed; off to the provider.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/device/approve",
    tag = "auth",
    responses(
        (status = 303, description = "To the provider"),
        (status = 400, description = "A form without this browser's CSRF cookie", content_type = "text/html"),
        (status = 404, description = "An unknown or expired code", content_type = "text/html"),
    ),
)]
pub async fn device_approve(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let form = match device_form(&headers, &body) {
        Ok(f) => f,
        Err(why) => return Ok(page(StatusCode::BAD_REQUEST, "Start again", why)),
    };
    let device = match waiting_device(&state, &anon, &form.code).await? {
        Ok(d) => d,
        Err(p) => return Ok(p),
    };
    let provider = state
        .store
        .oidc_provider_by_id(device.provider_id.as_deref().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::NotFound("the provider of this code is gone".into()))?;
    round_trip(&state, &anon, &provider, RoundTarget::Device(device.id)).await
}
