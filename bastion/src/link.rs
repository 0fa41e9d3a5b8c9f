//! The wire of a call to a node's agent, wherever its channel is (here, or
//! on a peer replica that holds it): the request and answer body types, the
//! error a call ends in, and the headers a peer reads. A leaf: the fleet (`agents`) and the
//! peers (`replicas`) both speak it, and neither names the other for it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
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
    /// Shown bounded: h2's text quotes what the agent sent (a GOAWAY's debug
    /// data, up to a frame), and these errors are logged per call.
    #[error("agent channel failed: {}", postern_api::validate::peer_text(&.0.to_string(), 200))]
    Stream(#[from] h2::Error),
    #[error("agent answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("agent answer unreadable: {0}")]
    Body(String),
    #[error("the node's channel moved to another replica")]
    Moved,
    /// The channel ended while the call waited for it (it was parked, or
    /// being parked or woken).
    #[error("agent channel closed")]
    Closed,
    #[error("peer replica: {0}")]
    Peer(String),
}

/// What a channel's calls hold of it: how many are open (a request being
/// sent, an answer being read), and when the last one ended. A channel parks
/// only when none is open and it has been quiet a while.
#[derive(Debug)]
pub struct Usage {
    open: AtomicUsize,
    last_ms: AtomicI64,
}

impl Usage {
    pub fn new(now_ms: i64) -> Self {
        Usage {
            open: AtomicUsize::new(0),
            last_ms: AtomicI64::new(now_ms),
        }
    }

    /// Calls open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// When the last call ended (or the channel came up, before any).
    pub fn last_ms(&self) -> i64 {
        self.last_ms.load(Ordering::Relaxed)
    }
}

/// One call's hold on its channel, from its start until it is dropped.
#[derive(Debug)]
pub struct InUse(Arc<Usage>);

impl InUse {
    pub fn new(usage: &Arc<Usage>) -> Self {
        usage.open.fetch_add(1, Ordering::AcqRel);
        InUse(usage.clone())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0
            .last_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A body of these bytes.
pub fn full(data: impl Into<Bytes>) -> AgentBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An agent's answer as it streams: from the node's own channel here (h2),
/// or relayed by the peer replica that holds it (hyper).
#[derive(Debug)]
pub struct AgentIncoming(Source);

#[derive(Debug)]
enum Source {
    /// `data_done`: every DATA frame was read; trailers (if any) are next.
    /// `left`: what the answer's content-length says is still to come.
    Local {
        recv: h2::RecvStream,
        data_done: bool,
        left: Option<u64>,
        _in_use: InUse,
    },
    Peer(hyper::body::Incoming),
}

impl AgentIncoming {
    /// `length`: the answer's content-length, if it gave one.
    /// `in_use` keeps the channel from parking while the answer is read.
    pub fn local(recv: h2::RecvStream, length: Option<u64>, in_use: InUse) -> Self {
        AgentIncoming(Source::Local {
            recv,
            data_done: false,
            left: length,
            _in_use: in_use,
        })
    }

    pub fn peer(body: hyper::body::Incoming) -> Self {
        AgentIncoming(Source::Peer(body))
    }
}

impl Body for AgentIncoming {
    type Data = Bytes;
    type Error = CallError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CallError>>> {
        match &mut self.get_mut().0 {
            Source::Peer(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(CallError::from))),
            Source::Local {
                recv,
                data_done,
                left,
                ..
            } => {
                if !*data_done {
                    match ready!(recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // The window opens again as the reader takes the
                            // bytes: a reader that stops holds the agent back,
                            // never the bastion's memory.
                            let _ = recv.flow_control().release_capacity(data.len());
                            if let Some(left) = left {
                                *left = left.saturating_sub(data.len() as u64);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                match ready!(recv.poll_trailers(cx)) {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::Local { recv, .. } => recv.is_end_stream(),
            Source::Peer(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::Local { left: Some(n), .. } => SizeHint::with_exact(*n),
            Source::Local { left: None, .. } => SizeHint::default(),
            Source::Peer(body) => body.size_hint(),
        }
    }
}
