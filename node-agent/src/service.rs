//! The routes the agent serves to the bastion over the channel.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use postern_api::ErrorBody;
use postern_api::agent::{CsrResponse, Health, InstallCert, routes};
use postern_api::cmdexec::{AgentExec, AgentExecResult, MAX_EXECUTE_BODY, StreamFrom};
use postern_api::ssh::{GrantPush, GrantPushed};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::exec::{ExecError, Executor};
use crate::identity::Identity;
use crate::kube_keys::KubeKeys;
use crate::ssh::GrantStore;
use crate::ssh::relay::{self, Ports};

type Reply<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

/// What the agent's routes on one channel serve from.
#[derive(Clone)]
pub struct Ctx {
    pub identity: Arc<Identity>,
    pub executor: Executor,
    pub grants: GrantStore,
    pub kube_keys: KubeKeys,
    pub ports: Ports,
    pub kube: Option<Arc<crate::kube::Gateway>>,
    pub labels: Arc<std::collections::BTreeMap<String, String>>,
    /// Cancelled when the channel ends; stops the SSH relays it carried.
    pub channel_ended: CancellationToken,
}

/// The agent's API on one channel.
pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route(routes::HEALTH, get(health))
        .route(routes::CSR, post(csr))
        .route(routes::CERT, put(cert))
        .route(
            routes::EXEC,
            get(exec_list)
                .post(exec)
                .layer(DefaultBodyLimit::max(MAX_EXECUTE_BODY + 64 * 1024)),
        )
        .route(routes::EXEC_ONE, get(exec_get).delete(exec_forget))
        .route(routes::EXEC_STREAM, get(exec_stream))
        .route(routes::EXEC_CANCEL, post(exec_cancel))
        .route(
            postern_api::ssh::GRANTS_ROUTE,
            put(put_grants).layer(DefaultBodyLimit::max(1024 * 1024)),
        )
        .route(postern_api::kube_keys::ROUTE, get(kube_keys_poll))
        .layer(DefaultBodyLimit::max(64 * 1024))
        // A relayed stream is unbounded by nature; flow control bounds its buffers.
        .route(postern_api::ssh::CONNECT_ROUTE, post(connect))
        // Kubernetes bodies stream both ways (watches, exec): flow control bounds them.
        .route("/v1/kube/{*rest}", any(kube_request))
        .with_state(ctx)
}

fn fail(status: StatusCode, e: impl std::fmt::Display) -> (StatusCode, Json<ErrorBody>) {
    (status, Json(ErrorBody::new("agent_error", e.to_string())))
}

async fn health(State(c): State<Ctx>) -> Json<Health> {
    Json(Health {
        node_id: c.identity.meta.node_id.clone(),
        hostname: c.identity.meta.hostname.clone(),
        agent_version: postern_api::VERSION.to_string(),
        // Only what this agent can do: the bastion decides whether it serves.
        kube_gateway_capable: c.kube.is_some(),
        kube_node_keys: c.kube_keys.enabled(),
        exec_stream: true,
        labels: (*c.labels).clone(),
    })
}

async fn csr(State(c): State<Ctx>) -> Reply<CsrResponse> {
    // Key generation is CPU work; keep it off the runtime's I/O threads.
    let id = c.identity.clone();
    let csr = tokio::task::spawn_blocking(move || id.new_csr())
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(CsrResponse { csr_pem: csr }))
}

async fn cert(State(c): State<Ctx>, Json(body): Json<InstallCert>) -> Reply<Value> {
    let id = c.identity.clone();
    tokio::task::spawn_blocking(move || id.install_cert(&body.cert_pem))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e))?;
    tracing::info!("installed a rotated node certificate");
    Ok(Json(json!({ "installed": true })))
}

fn exec_error(e: ExecError) -> (StatusCode, Json<ErrorBody>) {
    match e {
        ExecError::Forgotten(_) => fail(StatusCode::GONE, e),
        ExecError::Spool(_) => fail(StatusCode::INTERNAL_SERVER_ERROR, e),
        _ => fail(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecQuery {
    /// Answer with the exec's stream (output as it comes, then the result)
    /// instead of the result alone.
    #[serde(default)]
    stream: Option<u8>,
}

/// Starts the exec (once per ID) and answers with its result when it finishes,
/// or with its current state if the wait runs out first; with `?stream=1`, with
/// its stream from the start.
async fn exec(
    State(c): State<Ctx>,
    Query(q): Query<ExecQuery>,
    Json(req): Json<AgentExec>,
) -> Result<Response, (StatusCode, Json<ErrorBody>)> {
    use axum::response::IntoResponse;
    let wait = Duration::from_secs(req.timeout_secs.saturating_add(15));
    let id = req.exec_id.clone();
    let rx = c.executor.start(req).map_err(exec_error)?;
    if q.stream.unwrap_or(0) != 0 {
        return exec_stream_of(&c, &id, StreamFrom::default());
    }
    Ok(Json(Executor::wait(rx, wait).await).into_response())
}

fn exec_stream_of(
    c: &Ctx,
    id: &str,
    from: StreamFrom,
) -> Result<Response, (StatusCode, Json<ErrorBody>)> {
    let Some((output, result)) = c.executor.stream_source(id) else {
        return Err(unknown_exec(c, id));
    };
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(crate::exec::live::stream(
            output, result, from,
        )))
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn unknown_exec(c: &Ctx, id: &str) -> (StatusCode, Json<ErrorBody>) {
    if c.executor.was_forgotten(id) {
        return fail(
            StatusCode::GONE,
            format!("exec {id} was delivered and forgotten"),
        );
    }
    fail(
        StatusCode::NOT_FOUND,
        format!("exec {id} was never started here"),
    )
}

/// The exec's stream from the given offsets: the bastion resuming after a drop.
async fn exec_stream(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    Query(from): Query<StreamFrom>,
) -> Result<Response, (StatusCode, Json<ErrorBody>)> {
    exec_stream_of(&c, &id, from)
}

/// Cancels the exec (see [`Executor::cancel`]) and answers its state.
async fn exec_cancel(State(c): State<Ctx>, Path(id): Path<String>) -> Reply<AgentExecResult> {
    Ok(Json(c.executor.cancel(&id).map_err(exec_error)?))
}

/// Finished results still spooled, for the bastion to drop those it stored.
async fn exec_list(State(c): State<Ctx>) -> Json<postern_api::agent::SpooledExecs> {
    Json(postern_api::agent::SpooledExecs {
        finished: c
            .executor
            .finished_ids(postern_api::agent::MAX_SPOOLED_LISTED),
    })
}

#[derive(Deserialize)]
struct WaitQuery {
    /// Seconds to wait for a final result.
    wait: Option<u64>,
}

async fn exec_get(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Reply<AgentExecResult> {
    let Some(rx) = c.executor.get(&id) else {
        return Err(unknown_exec(&c, &id));
    };
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(3_700));
    Ok(Json(Executor::wait(rx, wait).await))
}

async fn exec_forget(State(c): State<Ctx>, Path(id): Path<String>) -> StatusCode {
    if c.executor.forget(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn put_grants(State(c): State<Ctx>, Json(push): Json<GrantPush>) -> Reply<GrantPushed> {
    let held = c
        .grants
        .merge(push.grants, &push.revoke)
        .await
        .map_err(|e| match e {
            crate::ssh::GrantError::Invalid(..) => fail(StatusCode::BAD_REQUEST, e),
            crate::ssh::GrantError::Write(..) => fail(StatusCode::INTERNAL_SERVER_ERROR, e),
        })?;
    Ok(Json(GrantPushed { held }))
}

#[derive(Deserialize)]
struct KubeKeysQuery {
    /// The version the bastion holds; 0 at first.
    after: Option<u64>,
    /// Seconds to wait for another version (at most `MAX_WAIT_SECS`).
    wait: Option<u64>,
}

/// The keys learned from Kubernetes, long-polled by the bastion; the wait ends
/// with the channel.
async fn kube_keys_poll(
    State(c): State<Ctx>,
    Query(q): Query<KubeKeysQuery>,
) -> Reply<postern_api::kube_keys::KubeKeysReport> {
    if !c.kube_keys.enabled() {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "this agent does not read keys from Kubernetes (--kube-node-keys)",
        ));
    }
    let wait = Duration::from_secs(
        q.wait
            .unwrap_or(0)
            .min(postern_api::kube_keys::MAX_WAIT_SECS),
    );
    Ok(Json(
        c.kube_keys
            .wait_changed(q.after.unwrap_or(0), wait, &c.channel_ended)
            .await,
    ))
}

async fn connect(State(c): State<Ctx>, Path(port): Path<u16>, req: Request) -> Response {
    relay::connect(c.ports, c.channel_ended, port, req).await
}

async fn kube_request(State(c): State<Ctx>, req: Request) -> Response {
    crate::kube::handle(c.kube.clone(), c.channel_ended.clone(), req).await
}
