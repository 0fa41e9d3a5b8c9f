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
        exec_release_inline: true,
        spooled_finished: Some(
            u32::try_from(
                c.executor
                    .finished_ids(postern_api::agent::MAX_SPOOLED_LISTED)
                    .len(),
            )
            .unwrap_or(u32::MAX),
        ),
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
    /// With `stream`: the body is the command's JSON and a newline, held open
    /// until the bastion sends [`postern_api::agent::RELEASE_LINE`] (see
    /// [`Health::exec_release_inline`]).
    #[serde(default)]
    release: Option<u8>,
}

/// Starts the exec (once per ID) and answers with its result when it finishes,
/// or with its current state if the wait runs out first; with `?stream=1`, with
/// its stream from the start.
async fn exec(
    State(c): State<Ctx>,
    Query(q): Query<ExecQuery>,
    request: Request,
) -> Result<Response, (StatusCode, Json<ErrorBody>)> {
    use axum::extract::FromRequest;
    use axum::response::IntoResponse;
    let streamed = q.stream.unwrap_or(0) != 0;
    if streamed && q.release.unwrap_or(0) != 0 {
        return exec_held(&c.executor, &c.channel_ended, request).await;
    }
    let Json(req) = Json::<AgentExec>::from_request(request, &())
        .await
        .map_err(|e| fail(e.status(), e.body_text()))?;
    let wait = Duration::from_secs(req.timeout_secs.saturating_add(15));
    let id = req.exec_id.clone();
    let rx = c.executor.start(req).map_err(exec_error)?;
    if streamed {
        return exec_stream_of(&c.executor, &id, StreamFrom::default());
    }
    Ok(Json(Executor::wait(rx, wait).await).into_response())
}

/// How long the command's JSON line may take to arrive on a held request.
const EXEC_LINE_WITHIN: Duration = Duration::from_secs(30);
/// How long after the command's timeout a held request waits for its release
/// (the bastion stores the result first; a database outage can take a while).
/// Past it, or when the request ends without one, the DELETE or the next
/// channel's sweep releases the result.
const RELEASE_WITHIN: Duration = Duration::from_secs(600);

/// `POST /v1/exec?stream=1&release=1`: reads the command's JSON line, starts
/// it and answers its stream; a task keeps reading the request for the
/// release line, and forgets the stored result when it comes.
async fn exec_held(
    executor: &Executor,
    channel_ended: &CancellationToken,
    request: Request,
) -> Result<Response, (StatusCode, Json<ErrorBody>)> {
    use http_body_util::BodyExt;
    let limit = MAX_EXECUTE_BODY + 64 * 1024;
    let mut body = request.into_body();
    let mut line = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + EXEC_LINE_WITHIN;
    // Where the search for the newline got to: each frame is looked at once,
    // however small the frames come.
    let mut scanned = 0;
    let newline = loop {
        if let Some(at) = line[scanned..].iter().position(|b| *b == b'\n') {
            break scanned + at;
        }
        scanned = line.len();
        if line.len() > limit {
            return Err(fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the command is larger than {limit} bytes"),
            ));
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    line.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => return Err(fail(StatusCode::BAD_REQUEST, e)),
            Ok(None) => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "the request ended before the command's line",
                ));
            }
            Err(_) => {
                return Err(fail(
                    StatusCode::REQUEST_TIMEOUT,
                    "the command's line did not arrive in time",
                ));
            }
        }
    };
    let rest = line.split_off(newline + 1);
    let req: AgentExec = serde_json::from_slice(&line[..newline])
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("the command's JSON: {e}")))?;
    let id = req.exec_id.clone();
    let wait_release = Duration::from_secs(req.timeout_secs).saturating_add(RELEASE_WITHIN);
    executor.start(req).map_err(exec_error)?;
    let response = exec_stream_of(executor, &id, StreamFrom::default())?;
    let (executor, ended) = (executor.clone(), channel_ended.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = ended.cancelled() => {}
            released = tokio::time::timeout(wait_release, read_release(body, rest)) => {
                if released.unwrap_or(false) {
                    executor.forget(&id);
                }
            }
        }
    });
    Ok(response)
}

/// Reads a held request to its release line (after `seen`); `false` when it
/// ends, fails or says anything else. Never holds more than the line's length.
async fn read_release(mut body: axum::body::Body, seen: bytes::BytesMut) -> bool {
    use http_body_util::BodyExt;
    let want = postern_api::agent::RELEASE_LINE;
    let mut got = seen.to_vec();
    loop {
        if got.len() >= want.len() {
            return got.starts_with(want);
        }
        if !want.starts_with(&got) {
            return false;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data[..data.len().min(want.len())]);
                }
            }
            _ => return false,
        }
    }
}

fn exec_stream_of(
    executor: &Executor,
    id: &str,
    from: StreamFrom,
) -> Result<Response, (StatusCode, Json<ErrorBody>)> {
    let Some((output, result)) = executor.stream_source(id) else {
        return Err(unknown_exec(executor, id));
    };
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(crate::exec::live::stream(
            output, result, from,
        )))
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn unknown_exec(executor: &Executor, id: &str) -> (StatusCode, Json<ErrorBody>) {
    if executor.was_forgotten(id) {
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
    exec_stream_of(&c.executor, &id, from)
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
        return Err(unknown_exec(&c.executor, &id));
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

#[cfg(test)]
mod tests {
    //! The held exec request as a faulty or hostile peer could send it.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn command(id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "exec_id": id, "command": "echo held", "content_type": "string",
            "timeout_secs": 10, "keep_bytes": 4096
        }))
        .unwrap()
    }

    /// A request whose body is fed by the test, chunk by chunk.
    fn held(chunks: usize) -> (tokio::sync::mpsc::Sender<Bytes>, Request) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(chunks.max(1));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let req = Request::builder()
            .method("POST")
            .uri("/v1/exec?stream=1&release=1")
            .body(axum::body::Body::from_stream(stream))
            .unwrap();
        (tx, req)
    }

    async fn finished(ex: &Executor, id: &str) {
        let rx = ex.get(id).unwrap();
        let r = Executor::wait(rx, Duration::from_secs(10)).await;
        assert!(r.status.is_final(), "{r:?}");
    }

    #[tokio::test]
    async fn a_release_on_the_request_drops_the_spooled_result() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(Some(dir.path().to_path_buf()));
        let ended = CancellationToken::new();
        let (tx, req) = held(4);
        // The line split across frames, as a peer may send it.
        let line = command("0001-held");
        tx.send(Bytes::copy_from_slice(&line[..5])).await.unwrap();
        tx.send(Bytes::copy_from_slice(&line[5..])).await.unwrap();
        tx.send(Bytes::from_static(b"\n")).await.unwrap();
        let resp = exec_held(&ex, &ended, req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        finished(&ex, "0001-held").await;
        assert!(ex.finished_ids(10).contains(&"0001-held".to_string()));
        assert!(dir.path().join("0001-held.json").exists());
        tx.send(Bytes::from_static(postern_api::agent::RELEASE_LINE))
            .await
            .unwrap();
        drop(tx);
        for _ in 0..100 {
            if ex.was_forgotten("0001-held") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ex.was_forgotten("0001-held"));
        assert!(!dir.path().join("0001-held.json").exists());
    }

    #[tokio::test]
    async fn anything_but_the_release_line_keeps_the_result() {
        for tail in [&b"releasX\n"[..], b"rel", b"", &[0xff; 4096][..]] {
            let dir = tempfile::tempdir().unwrap();
            let ex = Executor::new(Some(dir.path().to_path_buf()));
            let ended = CancellationToken::new();
            let (tx, req) = held(4);
            let mut line = command("0002-kept");
            line.push(b'\n');
            tx.send(Bytes::from(line)).await.unwrap();
            exec_held(&ex, &ended, req).await.unwrap();
            finished(&ex, "0002-kept").await;
            tx.send(Bytes::copy_from_slice(tail)).await.unwrap();
            drop(tx);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!ex.was_forgotten("0002-kept"), "{tail:?}");
            assert!(ex.finished_ids(10).contains(&"0002-kept".to_string()));
        }
    }

    #[tokio::test]
    async fn a_bad_held_request_is_refused_and_starts_nothing() {
        let ex = Executor::new(None);
        let ended = CancellationToken::new();
        // Malformed JSON, unknown fields, an ended body, an oversized line.
        let mut bad: Vec<(Vec<Bytes>, StatusCode)> = vec![
            (vec![Bytes::from_static(b"{not json\n")], StatusCode::BAD_REQUEST),
            (
                vec![Bytes::from_static(
                    b"{\"exec_id\":\"0003\",\"command\":\"id\",\"content_type\":\"string\",\"timeout_secs\":5,\"keep_bytes\":1,\"extra\":1}\n",
                )],
                StatusCode::BAD_REQUEST,
            ),
            (vec![Bytes::from_static(b"{\"exec_id\"")], StatusCode::BAD_REQUEST),
        ];
        let big = Bytes::from(vec![b' '; 256 * 1024]);
        bad.push((vec![big; 8], StatusCode::PAYLOAD_TOO_LARGE));
        for (chunks, want) in bad {
            let (tx, req) = held(chunks.len());
            for c in chunks {
                tx.send(c).await.unwrap();
            }
            drop(tx);
            let (status, _) = exec_held(&ex, &ended, req).await.unwrap_err();
            assert_eq!(status, want);
        }
        assert!(ex.finished_ids(10).is_empty());
        assert!(ex.get("0003").is_none());
    }
}
