//! `GET /api/v1/kubeconfig`: one kubeconfig with a context for every edge (a
//! cluster) the caller may reach through the bastion's Kubernetes door. Its
//! server is the door, with the bastion's CA. A person's (asked with a login
//! session) holds no secret at all: its user runs `postern kube credentials`,
//! kubectl's exec credential plugin, which hands kubectl a client
//! certificate for the current session, an hour at most. A bot's holds the
//! API token it asked with. No cluster credential ever reaches anyone.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use postern_api::ErrorBody;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::extract::{ApiQuery, Caller};
use super::{ApiError, AppState};
use crate::authz;

/// Most contexts in one kubeconfig; beyond it, ask for one project at a time.
pub const MAX_CONTEXTS: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigQuery {
    /// Only this project's edges.
    pub project: Option<String>,
}

/// A kubeconfig for kubectl and helm through the bastion.
#[utoipa::path(
    get,
    path = "/api/v1/kubeconfig",
    tag = "kubernetes",
    params(KubeconfigQuery),
    responses(
        (status = 200, description = "A kubeconfig (YAML) with one context per edge the caller may reach, named `<project>-<edge>`; its credential is the token of this request", content_type = "application/yaml", body = String),
        (status = 400, description = "Unknown query parameter, or more than 500 edges (ask for one project)", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked API token", body = ErrorBody),
        (status = 404, description = "No such project, or the bastion has no Kubernetes listener (--kube-addr)", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn kubeconfig(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<KubeconfigQuery>,
) -> Result<Response, ApiError> {
    let Some(server) = state.settings.kube_public_url.clone() else {
        return Err(ApiError::NotFound(
            "this bastion has no Kubernetes listener: start it with --kube-addr".into(),
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let p = &caller.principal;
    let projects = match &q.project {
        Some(name) => vec![crate::access::resolve::visible_project(&state.store, p, name).await?],
        None => state.store.list_projects(&p.org_id).await?,
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(state.pki.ca_pem());
    let person = caller.credential.kind == crate::access::authn::CredentialKind::Session;
    let user = format!("postern-{}", p.user_name);
    let (mut clusters, mut contexts) = (Vec::new(), Vec::new());
    for project in projects {
        if authz::kube_groups(p, &project).is_err() {
            if q.project.is_some() {
                return Err(ApiError::NotFound(format!(
                    "project {:?} not found",
                    project.name
                )));
            }
            continue;
        }
        for edge in state.store.list_edges(&project.id).await? {
            if contexts.len() >= MAX_CONTEXTS {
                return Err(ApiError::BadRequest(format!(
                    "you may reach more than {MAX_CONTEXTS} edges: ask for one project at a time with ?project=NAME"
                )));
            }
            let name = format!("{}-{}", project.name, edge.name);
            let cluster = if state.settings.kube_by_server_name {
                json!({
                    "server": server,
                    "tls-server-name": postern_api::kube::server_name_of(&project.name, &edge.name),
                    "certificate-authority-data": ca,
                })
            } else {
                // An operator's certificate covers no per-edge name: the edge
                // goes in the path (`kubectl get --raw` cannot reach it then).
                json!({
                    "server": format!("{server}/k8s/{}/{}", project.name, edge.name),
                    "certificate-authority-data": ca,
                })
            };
            clusters.push(json!({ "name": name, "cluster": cluster }));
            contexts.push(json!({
                "name": name,
                "context": { "cluster": name, "user": user },
            }));
        }
    }
    let current = contexts
        .first()
        .and_then(|c| c["name"].as_str())
        .unwrap_or_default()
        .to_string();
    caller.audit.with(|a| {
        a.detail = Some(json!({ "contexts": contexts.len() }));
    });
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "contexts": contexts,
        "current-context": current,
        "users": [{ "name": user, "user": if person {
            // v1beta1: what kubectl 1.20 (Debian's) speaks, and newer ones
            // still do; the plugin answers in the version asked.
            json!({ "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "postern",
                "args": ["kube", "credentials"],
                "installHint": "kubectl runs postern, the Postern CLI, for a certificate: install it (the postern package) and log in with postern login",
                "provideClusterInfo": false,
                "interactiveMode": "Never",
            }})
        } else {
            json!({ "token": token })
        } }],
        "preferences": {},
    });
    let yaml = serde_yaml::to_string(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = yaml.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    // It holds the caller's token.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
