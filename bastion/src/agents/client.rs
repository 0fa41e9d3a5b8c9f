//! Calls from the bastion to an agent over its channel, each with a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use postern_api::agent::{Health, routes};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fleet::NodeLink;
use super::registry::AgentBody;

pub use crate::link::{CallError, full};

/// An agent's answer read as an error: bounded and free of control bytes, since
/// parse errors quote what the agent sent (serde's "unknown variant …") and the
/// text ends up in logs and in a node's stored `error`.
fn unreadable(e: impl std::fmt::Display) -> CallError {
    CallError::Body(postern_api::validate::peer_text(&e.to_string(), 512))
}

/// Largest JSON answer read from an agent on these control calls.
const MAX_ANSWER: usize = 1024 * 1024;

/// A request to the agent: `path` (with its query) and a JSON body.
fn request(method: Method, path: &str, body: Bytes) -> Result<Request<AgentBody>, CallError> {
    request_with(method, path, full(body))
}

fn request_with(
    method: Method,
    path: &str,
    body: AgentBody,
) -> Result<Request<AgentBody>, CallError> {
    Request::builder()
        .method(method)
        .uri(format!("http://agent{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| CallError::Body(e.to_string()))
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
        let resp = agent.send(request(method, path, payload.into())?).await?;
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

/// An answer of newline-delimited JSON, read one line at a time as it comes:
/// each line at most `max_line` bytes, the whole by `deadline`.
pub struct LineStream {
    body: crate::link::AgentIncoming,
    buf: bytes::BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    max_line: usize,
    deadline: tokio::time::Instant,
}

impl std::fmt::Debug for LineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineStream")
    }
}

impl LineStream {
    /// The next line, parsed; `None` at the end of the answer.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CallError> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let pos = self.scanned + at;
                self.scanned = 0;
                let line = self.buf.split_to(pos + 1);
                return serde_json::from_slice(&line[..pos])
                    .map(Some)
                    .map_err(unreadable);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                return Err(CallError::Body(format!(
                    "a line of the agent's stream is longer than {} bytes",
                    self.max_line
                )));
            }
            let left = self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame())
                .await
                .map_err(|_| CallError::Timeout(left))?;
            match frame {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(CallError::Body(
                        "the agent's stream ended inside a line".into(),
                    ));
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// What a streaming call answered: lines, or (an agent that predates streams
/// and ignored the query) one JSON document.
#[derive(Debug)]
pub enum StreamAnswer {
    Lines(LineStream),
    Whole(Bytes),
}

/// A call whose answer is read as a stream of lines when the agent sends
/// `application/x-ndjson`. Headers must come within `timeout`; the lines by
/// `deadline`.
/// `body` is JSON already serialized: one execution's request is the same for
/// all its nodes, and is serialized once (or a stream that starts with it).
pub async fn call_lines(
    agent: &NodeLink,
    method: Method,
    path: &str,
    body: AgentBody,
    timeout: Duration,
    deadline: Duration,
    max_line: usize,
) -> Result<StreamAnswer, CallError> {
    let started = tokio::time::Instant::now();
    let fut = async { agent.send(request_with(method, path, body)?).await };
    let resp = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| CallError::Timeout(timeout))??;
    let status = resp.status();
    let lines = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
    let deadline = started + deadline;
    if status.is_success() && lines {
        return Ok(StreamAnswer::Lines(LineStream {
            body: resp.into_body(),
            buf: bytes::BytesMut::new(),
            scanned: 0,
            max_line,
            deadline,
        }));
    }
    let bytes =
        tokio::time::timeout_at(deadline, Limited::new(resp.into_body(), max_line).collect())
            .await
            .map_err(|_| CallError::Timeout(deadline - started))?
            .map_err(unreadable)?
            .to_bytes();
    if !status.is_success() {
        return Err(CallError::Status {
            status,
            body: postern_api::validate::peer_text(&String::from_utf8_lossy(&bytes), 500),
        });
    }
    Ok(StreamAnswer::Whole(bytes))
}

pub async fn health(agent: &NodeLink, timeout: Duration) -> Result<Health, CallError> {
    call_json::<(), Health>(agent, Method::GET, routes::HEALTH, None, timeout).await
}
