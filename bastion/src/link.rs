//! The wire of a call to a node's agent, wherever its channel is (here, or
//! on a peer replica that holds it): the request body type, the error a call
//! ends in, and the headers a peer reads. A leaf: the fleet (`agents`) and the
//! peers (`replicas`) both speak it, and neither names the other for it.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use thiserror::Error;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies the bastion sends to agents.
pub type AgentBody = BoxBody<Bytes, BoxError>;

/// The header naming the node a peer request is for.
pub const NODE_HEADER: &str = "postern-node";
/// Marks an answer written by the peer itself (the node moved, its channel
/// failed), never by the agent: the caller retries instead of taking it as the
/// agent's refusal.
pub const PEER_ERROR_HEADER: &str = "postern-peer-error";

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

/// A body of these bytes.
pub fn full(data: impl Into<Bytes>) -> AgentBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}
