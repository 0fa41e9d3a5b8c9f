//! One call over a node's own channel, on h2 directly: the request's head,
//! its body fed under HTTP/2 flow control, the answer as it streams.
//!
//! Why not hyper's client here: it keeps, per connection, a dispatch task and
//! queue (9 KiB of the 61 a channel held, heaptrack) and hands every request
//! through that task and a spawned one of its own before h2 sees it. With h2
//! the caller's task opens the stream and is woken by the connection for its
//! answer. The connection itself is driven by the channel's task
//! (`agent_port::channel`).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, SendStream};
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::link::{AgentBody, AgentIncoming, CallError};

/// Sends `req` on the channel and answers the agent's response head; the
/// answer's body streams as it is read, the request's keeps going on its own
/// task when it was not sent whole at once.
pub async fn send(
    sender: &SendRequest<Bytes>,
    req: Request<AgentBody>,
) -> Result<Response<AgentIncoming>, CallError> {
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    // As hyper did: a body of known length says so (the agent may read it).
    if let Some(len) = body.size_hint().exact()
        && (len != 0 || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH))
    {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    let eos = body.is_end_stream();
    let mut sender = sender.clone().ready().await?;
    let (answer, stream) = sender.send_request(Request::from_parts(parts, ()), eos)?;
    if !eos {
        let mut pipe = Box::pin(pipe(body, stream));
        // A body that is all there already (most: a JSON request) is sent
        // now; only one that waits for more gets a task.
        let mut cx = Context::from_waker(Waker::noop());
        if pipe.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(pipe);
        }
    }
    let answer = answer.await?;
    let length = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok(answer.map(|recv| AgentIncoming::local(recv, length)))
}

/// Feeds `body` into the stream, a frame once the stream has room, until the
/// body ends, fails (the stream is reset) or the agent resets the stream.
/// The same steps as hyper's `PipeToSendStream`.
async fn pipe(body: AgentBody, mut tx: SendStream<Bytes>) {
    let mut body = pin!(body);
    loop {
        // Room for at least a byte before the next frame is read: the body's
        // source is held back while the agent is.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            let room = std::future::poll_fn(|cx| match tx.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) => Poll::Pending,
                other => other,
            })
            .await;
            if !matches!(room, Some(Ok(_))) {
                // Reset, or the channel is gone.
                return;
            }
        }
        let frame = {
            let next = body.frame();
            let reset = std::future::poll_fn(|cx| tx.poll_reset(cx));
            tokio::select! {
                biased;
                _ = reset => return,
                f = next => f,
            }
        };
        match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body to an agent failed; resetting its stream");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    if tx.send_data(data, eos).is_err() || eos {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        let _ = tx.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// HTTP/1's hop-by-hop headers, which HTTP/2 forbids (h2 refuses a request
/// that has them); a relayed request could carry one.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}
