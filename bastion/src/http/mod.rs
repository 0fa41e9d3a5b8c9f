//! The REST API (axum): admin endpoints under `/api/v1/`, health, readiness and
//! metrics. Every `/api/v1` request is audited with its caller, outcome and source
//! IP by one middleware, so no handler can forget to.

mod admin;
mod auth;
pub mod big_answers;
mod bots;
mod cmdexec;
pub mod console;
mod error;
pub mod exec_events;
mod extract;
mod kubeconfig;
mod nodes;
pub mod openapi;
mod ops;
mod recordings;
mod ssh_keys;
mod sso;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use postern_api::routes;
use serde_json::json;

pub use admin::issue_enrollment_token;
pub use error::ApiError;
pub use extract::{ApiJson, ApiQuery, AuditCtx, Caller, TOKEN_PREFIX, client_ip};
pub use users::issue_api_token;

use crate::audit::Event;
use crate::metrics::inc;
use crate::state::Shared;

/// The REST door's own settings (built in `app.rs` from the flags and what
/// the other listeners turned out to be).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Live execution streams one org may hold open on this bastion, its share
    /// of the bastion's (see `exec_events`).
    pub exec_streams_per_org: usize,
    /// A live execution stream whose client takes no event for this long is
    /// ended (the client resumes with Last-Event-ID), so a reader that stopped
    /// reading does not keep its place.
    pub exec_stream_stall: std::time::Duration,
    /// Where kubectl reaches the Kubernetes door (`https://host:port`), named in
    /// downloaded kubeconfigs; `None` when the door is off.
    pub kube_public_url: Option<String>,
    /// Kubeconfigs name the edge in the TLS server name (the bastion issues the
    /// certificates); `false` with an operator's certificate: in the path.
    pub kube_by_server_name: bool,
    /// The SSH front door as users reach it (`host:port`) and its host key in
    /// OpenSSH's one-line form, for `GET /api/v1/ssh`; `None` when SSH is off.
    pub ssh_endpoint: Option<(String, String)>,
    /// OpenID providers may be on loopback or private networks, over plain
    /// http (a provider beside the bastion, tests). Off: an org admin cannot
    /// make the bastion call into its own network.
    pub sso_private_networks: bool,
    /// The TLS proxies in front of the REST API (CIDRs): from them the
    /// client's address is read from `X-Forwarded-For`, for per-source limits
    /// and the audit log.
    pub trusted_proxies: Vec<String>,
    /// A console session ends after this long without a request.
    pub console_idle: std::time::Duration,
    /// The SSH door as this bastion reaches it itself (its listening address)
    /// and its host key: the browser terminal logs in there. `None` when SSH
    /// is off.
    pub ssh_local: Option<(std::net::SocketAddr, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            exec_streams_per_org: crate::limits::EXEC_STREAMS_PER_ORG,
            exec_stream_stall: crate::limits::EXEC_STREAM_STALL,
            kube_public_url: None,
            kube_by_server_name: false,
            ssh_endpoint: None,
            sso_private_networks: false,
            trusted_proxies: Vec::new(),
            console_idle: std::time::Duration::from_secs(
                postern_api::console::DEFAULT_IDLE_SECONDS,
            ),
            ssh_local: None,
        }
    }
}

/// The REST door: the core it serves from, and what only this door keeps
/// (permits for big answers, the live execution streams open). Handlers read
/// the core through it (`state.store`, `state.audit`…).
#[derive(Debug)]
pub struct Rest {
    core: Arc<Shared>,
    /// Permits for REST answers that may be megabytes.
    pub big_answers: big_answers::BigAnswers,
    /// Live execution streams open, per user, per org and in all.
    pub exec_streams: exec_events::StreamPermits,
    /// Failed sign-ins per source, checked before any password is hashed.
    pub sign_in_attempts: crate::identity::attempts::Attempts,
    /// The OpenID providers' relying parties, read from discovery.
    pub sso: crate::identity::sso::Providers,
    /// This door's settings (read before the core's, which hold none of them).
    pub settings: Settings,
    /// The browser terminals open, per person and in all.
    pub terminals: Arc<console::terminal::Permits>,
}

impl std::ops::Deref for Rest {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.core
    }
}

impl Rest {
    /// The core, for work that outlives the request (an execution's dispatch).
    pub fn core(&self) -> &Arc<Shared> {
        &self.core
    }

    pub fn new(core: Arc<Shared>, settings: Settings) -> Arc<Rest> {
        let sso = crate::identity::sso::Providers::new(settings.sso_private_networks);
        let exec_streams = exec_events::StreamPermits::new(settings.exec_streams_per_org);
        let rest = Arc::new(Rest {
            core,
            big_answers: Default::default(),
            exec_streams,
            sign_in_attempts: Default::default(),
            sso,
            settings,
            terminals: Default::default(),
        });
        rest.core.access.subscribe(Arc::new(RestAccess {
            rest: Arc::downgrade(&rest),
        }));
        rest
    }
}

/// The REST door as a subscriber of access changes: it cuts the live
/// execution streams a change no longer allows, at once. Weak: the bus lives
/// in the core, which the door holds.
#[derive(Debug)]
struct RestAccess {
    rest: std::sync::Weak<Rest>,
}

impl crate::access::Door for RestAccess {
    fn name(&self) -> &'static str {
        "rest"
    }

    fn apply<'a>(
        &'a self,
        change: &'a crate::access::AccessChange,
    ) -> crate::access::DoorFuture<'a> {
        Box::pin(async move {
            let cut = self
                .rest
                .upgrade()
                .map(|r| r.exec_streams.cut(change))
                .unwrap_or(0);
            serde_json::json!({ "streams_cut": cut })
        })
    }
}

pub type AppState = Arc<Rest>;

/// The REST API of `core`, with the door's own state.
pub fn router(core: Arc<Shared>, settings: Settings) -> Router {
    let state = Rest::new(core, settings);
    let api = Router::new()
        .route(routes::WHOAMI, get(users::whoami))
        .route(
            routes::PROJECTS,
            get(admin::list_projects).post(admin::create_project),
        )
        .route(routes::PROJECT, get(admin::get_project))
        .route(
            routes::EDGES,
            get(admin::list_edges).post(admin::create_edge),
        )
        .route(routes::NODES, get(nodes::list_nodes))
        .route(
            routes::NODE,
            get(nodes::get_node).delete(nodes::delete_node),
        )
        .route(routes::NODE_LABELS, put(nodes::set_node_labels))
        .route(routes::NODE_APPROVE, post(nodes::approve_node))
        .route(routes::NODE_DISABLE, post(nodes::disable_node))
        .route(routes::NODE_ENABLE, post(nodes::enable_node))
        .route(
            routes::NODE_KUBE_GATEWAY,
            put(nodes::grant_kube_gateway).delete(nodes::revoke_kube_gateway),
        )
        .route(
            routes::ENROLLMENT_TOKENS,
            post(admin::create_enrollment_token),
        )
        .route(
            routes::ENROLLMENT_TOKEN,
            delete(admin::revoke_enrollment_token),
        )
        .route(
            routes::USERS,
            get(users::list_users).post(users::create_user),
        )
        .route(
            routes::USER,
            get(users::get_user).delete(users::delete_user),
        )
        .route(routes::USER_ROLES, put(users::set_role))
        .route(routes::USER_ROLE, delete(users::remove_role))
        .route(
            routes::USER_TOKENS,
            get(users::list_tokens).post(users::create_token),
        )
        .route(routes::SSH_KEYS, get(ssh_keys::list).post(ssh_keys::add))
        .route(routes::SSH_KEY, delete(ssh_keys::delete))
        .route(routes::TOKEN, delete(users::revoke_token))
        .route(routes::AUTH_LOGIN, post(auth::login))
        .route(
            routes::AUTH_CONSOLE,
            post(console::sign_in).get(console::current),
        )
        .route(routes::AUTH_SSO_CONSOLE, get(sso::console_start))
        .route(routes::TERMINAL, get(console::terminal::open))
        .route(routes::AUTH_LOGOUT, post(auth::logout))
        .route(routes::AUTH_SSH_CERT, post(auth::ssh_certificate))
        .route(routes::AUTH_KUBE_CERT, post(auth::kube_certificate))
        .route(routes::AUTH_INVITATION, post(auth::accept_invitation))
        .route(routes::USER_INVITATION, post(auth::create_invitation))
        .route(
            routes::USER_SESSIONS,
            get(auth::list_sessions).delete(auth::end_sessions),
        )
        .route(routes::USER_MFA, delete(auth::reset_mfa))
        .route(routes::USER_DISABLE, post(auth::disable_user))
        .route(routes::USER_ENABLE, post(auth::enable_user))
        .route(
            routes::ORG_POLICY,
            get(auth::get_policy).put(auth::put_policy),
        )
        .route(routes::BOTS, get(bots::list_bots).post(bots::create_bot))
        .route(routes::BOT, delete(bots::delete_bot))
        .route(routes::SSO_PROVIDERS, get(sso::list_providers))
        .route(
            routes::SSO_PROVIDER,
            put(sso::put_provider).delete(sso::delete_provider),
        )
        .route(routes::SSO_GROUPS, get(sso::list_groups))
        .route(routes::SSO_GROUP_ROLES, put(sso::put_group_role))
        .route(routes::SSO_GROUP_ROLE, delete(sso::delete_group_role))
        .route(routes::AUTH_SSO_START, get(sso::start))
        .route(routes::AUTH_SSO_CALLBACK, get(sso::callback))
        .route(
            routes::AUTH_SSO_DEVICE,
            get(sso::device_page).post(sso::device),
        )
        .route(routes::AUTH_SSO_DEVICE_CONFIRM, post(sso::device_confirm))
        .route(routes::AUTH_SSO_DEVICE_APPROVE, post(sso::device_approve))
        .route(routes::AUTH_SSO_COLLECT, post(sso::collect))
        .route(routes::AUDIT, get(admin::audit_page))
        .route(routes::AUDIT_VERIFY, get(admin::audit_verify))
        .route(
            routes::RECORDING_POLICY,
            get(recordings::get_policy).put(recordings::put_policy),
        )
        .route(routes::RECORDINGS, get(recordings::list))
        .route(
            routes::RECORDING,
            get(recordings::get).delete(recordings::delete),
        )
        .route(routes::RECORDING_SEGMENTS, get(recordings::segments))
        .route(routes::RECORDING_CAST, get(recordings::cast))
        .route(routes::RECORDING_LIVE, get(recordings::live))
        .route(
            routes::ORG_RECORDING_RETENTION,
            get(recordings::get_retention).put(recordings::put_retention),
        )
        .route(routes::KUBECONFIG, get(kubeconfig::kubeconfig))
        .route(routes::SSH_ENDPOINT, get(ssh_keys::endpoint))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            audit_admin_requests,
        ))
        .fallback(not_found);
    let exec_body = DefaultBodyLimit::max(postern_api::cmdexec::MAX_EXECUTE_BODY);
    let cmdexec = Router::new()
        .route(
            &format!("{}/", routes::EXECUTE),
            post(cmdexec::execute).layer(exec_body),
        )
        .route(routes::EXECUTE, post(cmdexec::execute).layer(exec_body))
        .route(&format!("{}/", routes::EXECUTION), get(cmdexec::execution))
        .route(routes::EXECUTION, get(cmdexec::execution))
        .route(routes::EXECUTION_EVENTS, get(exec_events::events))
        .route(routes::EXECUTION_CANCEL, post(exec_events::cancel))
        .route(&format!("{}/", routes::HISTORY), get(cmdexec::history))
        .route(routes::HISTORY, get(cmdexec::history))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            audit_requests,
        ))
        .fallback(not_found);
    Router::new()
        .nest(routes::API, api)
        .nest(routes::CMDEXEC, cmdexec)
        .route("/", get(console::assets::index))
        .route("/favicon.svg", get(console::assets::favicon))
        .route("/assets/{*path}", get(console::assets::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(openapi::swagger())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(postern_api::admin::MAX_BODY_BYTES))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers every answer carries unless its handler set its own: no content
/// sniffing, no framing (the console's cookie rides along with any page of
/// this origin, Swagger UI's and the sign-in pages' too), no referrer, and
/// for HTML a policy that runs no script and loads nothing from elsewhere.
/// The console's pages set a policy of their own (`console::assets`).
async fn security_headers(req: Request, next: Next) -> Response {
    use http::header::{self, HeaderValue};
    // Swagger UI's page has script of its own: it keeps the framing rules
    // and goes without a policy.
    let swagger = req.uri().path().starts_with("/swagger-ui");
    let mut resp = next.run(req).await;
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let h = resp.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    if html && !swagger {
        h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ));
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /api/v1 in the README".into())
}

/// [`audit_requests`], and for mutations also an entry before they act, which
/// must be written or the request is refused (see `Caller`). Executions audit
/// first in the engine instead.
async fn audit_admin_requests(state: State<AppState>, req: Request, next: Next) -> Response {
    let mutation = !matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    audit_requests_with(state, req, next, mutation).await
}

/// Audits every API request after it is answered: who, from where, what, outcome.
async fn audit_requests(state: State<AppState>, req: Request, next: Next) -> Response {
    audit_requests_with(state, req, next, false).await
}

async fn audit_requests_with(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
    audit_first: bool,
) -> Response {
    inc(&state.metrics.api_requests);
    let ctx = AuditCtx::default();
    ctx.with(|a| a.audit_first = audit_first);
    req.extensions_mut().insert(ctx.clone());
    let method = req.method().clone();
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.0.path().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let source = extract::client_ip(
        req.headers(),
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        &state.settings.trusted_proxies,
    )
    .map(|ip| ip.to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let outcome = match status.as_u16() {
        // 101: a WebSocket (the terminal) was opened.
        101..=399 => "ok",
        401 | 403 => "denied",
        404 => "not_found",
        400..=499 => "rejected",
        _ => "error",
    };
    let info = ctx.with(std::mem::take);
    let mut ev = Event::new(format!("api {method} {matched}"), outcome)
        .source(source)
        .detail(json!({ "path": postern_api::validate::peer_line(&path, 1024), "status": status.as_u16(), "detail": info.detail }));
    ev.actor = info.actor;
    ev.org_id = info.org_id;
    ev.project = info.project;
    ev.targets = info.targets;
    ev.exec_id = info.exec_id;
    // A change's outcome (an execution's too) is in the log before its
    // answer: whoever reads the log next finds it. Reads only queue theirs.
    if !matches!(
        method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        state.audit.batched_written(ev).await;
    } else {
        state.audit.batched(ev).await;
    }
    resp
}
