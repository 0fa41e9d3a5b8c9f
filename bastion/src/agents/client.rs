//! Calls from the bastion to an agent over its channel, each with a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use postern_api::agent::{Health, routes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::fleet::NodeLink;
use super::registry::AgentBody;

#[derive(Debug, Error)]
pub enum CallError {
    #[error("agent call timed out after {0:?}")]
    Timeout(Duration),
    #[error("agent channel failed: {0}")]
    Channel(#[from] hyper::Error),
    #[error("agent answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("agent answer unreadable: {0}")]
    Body(String),
    #[error("the node's channel moved to another replica")]
    Moved,
    #[error("peer replica: {0}")]
    Peer(String),
}

/// An agent's answer read as an error: bounded and free of control bytes, since
/// parse errors quote what the agent sent (serde's "unknown variant …") and the
/// text ends up in logs and in a node's stored `error`.
fn unreadable(e: impl std::fmt::Display) -> CallError {
    CallError::Body(postern_api::validate::peer_text(&e.to_string(), 512))
}

/// Largest JSON answer read from an agent on these control calls.
const MAX_ANSWER: usize = 1024 * 1024;

pub fn full(data: impl Into<Bytes>) -> AgentBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub async fn call_json<Req: Serialize, Resp: DeserializeOwned>(
    agent: &NodeLink,
    method: Method,
    path: &str,
    body: Option<&Req>,
    timeout: Duration,
) -> Result<Resp, CallError> {
    call_json_limited(agent, method, path, body, timeout, MAX_ANSWER).await
}

/// [`call_json`] for answers that may be larger than the control calls' limit
/// (exec results, sized by `--exec-keep-bytes`).
pub async fn call_json_limited<Req: Serialize, Resp: DeserializeOwned>(
    agent: &NodeLink,
    method: Method,
    path: &str,
    body: Option<&Req>,
    timeout: Duration,
    max_answer: usize,
) -> Result<Resp, CallError> {
    let fut = async {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| CallError::Body(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://agent{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(payload))
            .map_err(|e| CallError::Body(e.to_string()))?;
        let resp = agent.send(req).await?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), max_answer)
            .collect()
            .await
            .map_err(unreadable)?
            .to_bytes();
        if !status.is_success() {
            return Err(CallError::Status {
                status,
                body: postern_api::validate::peer_text(&String::from_utf8_lossy(&bytes), 500),
            });
        }
        serde_json::from_slice(&bytes).map_err(unreadable)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| CallError::Timeout(timeout))?
}

pub async fn health(agent: &NodeLink, timeout: Duration) -> Result<Health, CallError> {
    call_json::<(), Health>(agent, Method::GET, routes::HEALTH, None, timeout).await
}
