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
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, SendStream};
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::{Mutex, MutexGuard, Notify, oneshot};

use crate::link::{AgentBody, AgentIncoming, BoxError, CallError, InUse, Usage};

/// A channel's HTTP/2 handle as its calls share it: one at a time (streams
/// open in turn), and absent while the channel is parked (its task holds it
/// then, and gives it back live or ends it).
#[derive(Debug)]
pub struct ChannelHandle {
    slot: Mutex<Option<SendRequest<Bytes>>>,
    /// Told by a call that found the handle held: when the channel's task is
    /// the holder, parked, it wakes the channel.
    wanted: Notify,
    usage: Arc<Usage>,
}

impl ChannelHandle {
    pub fn new(h2: SendRequest<Bytes>) -> Self {
        ChannelHandle {
            slot: Mutex::new(Some(h2)),
            wanted: Notify::new(),
            usage: Arc::new(Usage::new(crate::clock::now_ms())),
        }
    }

    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// The handle, unless a call holds it now (the channel's task, to park).
    pub fn try_hold(&self) -> Option<MutexGuard<'_, Option<SendRequest<Bytes>>>> {
        let held = self.slot.try_lock().ok()?;
        // A call told `wanted` when it found the handle held by another call
        // (not by a park): that is no reason to wake what is parked next.
        let mut stale = pin!(self.wanted.notified());
        let _ = stale.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        Some(held)
    }

    /// Answers when a call waits for the handle.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }
}

/// Sends `req` on the channel and answers the agent's response head; the
/// answer's body streams as it is read, the request's keeps going on its own
/// task when it was not sent whole at once.
///
/// Streams are opened one at a time, as hyper did: a request waits here (not
/// in h2's queue of streams to open) while the agent's stream limit is
/// reached, so a caller that gives up meanwhile sends nothing. A parked
/// channel is woken first.
pub async fn send(
    sender: &ChannelHandle,
    req: Request<AgentBody>,
) -> Result<Response<AgentIncoming>, CallError> {
    let in_use = InUse::new(&sender.usage);
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    // As hyper did: a body of known length says so (the agent may read it).
    if let Some(len) = body.size_hint().exact()
        && (len != 0
            || !matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
            ))
    {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    let eos = body.is_end_stream();
    let (answer, mut stream) = {
        let mut slot = match sender.slot.try_lock() {
            Ok(slot) => slot,
            Err(_) => {
                sender.wanted.notify_one();
                sender.slot.lock().await
            }
        };
        let Some(sender) = slot.as_mut() else {
            return Err(CallError::Closed);
        };
        std::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
        let (answer, stream) = sender.send_request(Request::from_parts(parts, ()), eos)?;
        // A stream that had to queue for the agent's stream limit is waited
        // for here, still holding the handle: h2 keeps one waker per stream,
        // so the next call must not wait on this stream while its body pipe
        // does too (one of the two would never be woken). A caller that gives
        // up meanwhile resets it (h2 would not: the handle still refers to it).
        let mut queued = ResetOnDrop(Some(stream));
        std::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
        let Some(stream) = queued.0.take() else {
            return Err(CallError::Body("the request's stream was lost".into()));
        };
        (answer, stream)
    };
    // Dropped with this call before the answer came (its caller gave up):
    // the stream is reset, not fed on to an agent nobody listens to.
    let (answered, cancelled) = oneshot::channel::<()>();
    if !eos {
        let mut body = body;
        // A body that is all there already (most: a JSON request, bounded by
        // its caller) goes to h2 whole, which sends it as the agent's window
        // allows; only one that waits for more gets a task to feed it.
        let mut cx = Context::from_waker(Waker::noop());
        let first = match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(first) => Some(first),
            Poll::Pending => None,
        };
        match first {
            Some(Some(Ok(frame))) if frame.is_data() && body.is_end_stream() => {
                if let Ok(data) = frame.into_data()
                    && stream.send_data(data, true).is_err()
                {
                    stream.send_reset(Reason::INTERNAL_ERROR);
                }
            }
            Some(None) => {
                // Ended without a frame (a body is not polled past its end).
                let _ = stream.send_data(Bytes::new(), true);
            }
            first => {
                let in_use = InUse::new(&sender.usage);
                tokio::spawn(pipe(first.flatten(), body, stream, cancelled, in_use));
            }
        }
    }
    let answer = answer.await?;
    let _ = answered.send(());
    let length = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok(answer.map(|recv| AgentIncoming::local(recv, length, in_use)))
}

/// Resets the stream it holds when dropped still holding it.
struct ResetOnDrop(Option<SendStream<Bytes>>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(stream) = &mut self.0 {
            stream.send_reset(Reason::CANCEL);
        }
    }
}

/// A frame read from the request body, or its failure.
type BodyFrame = Result<Frame<Bytes>, BoxError>;

/// Feeds the request body on (after `first`, already read from it) until it
/// ends, unless the call is dropped before its answer came: then the stream
/// is reset (CANCEL).
async fn pipe(
    first: Option<BodyFrame>,
    body: AgentBody,
    mut tx: SendStream<Bytes>,
    answered: oneshot::Receiver<()>,
    _in_use: InUse,
) {
    {
        let mut feed = pin!(feed(first, body, &mut tx));
        tokio::select! {
            biased;
            () = &mut feed => return,
            r = answered => if r.is_ok() {
                feed.await;
                return;
            },
        }
    }
    tx.send_reset(Reason::CANCEL);
}

/// Feeds `body` into the stream, a frame once the stream has room, until the
/// body ends, fails (the stream is reset) or the agent resets the stream.
/// The same steps as hyper's `PipeToSendStream`. `first` was read already.
async fn feed(mut first: Option<BodyFrame>, body: AgentBody, tx: &mut SendStream<Bytes>) {
    let mut body = pin!(body);
    loop {
        // Room for at least a byte before the next frame is read: the body's
        // source is held back while the agent is.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            let room = std::future::poll_fn(|cx| {
                loop {
                    match tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        other => return other,
                    }
                }
            })
            .await;
            if !matches!(room, Some(Ok(_))) {
                // Reset, or the channel is gone.
                return;
            }
        }
        let frame = match first.take() {
            Some(frame) => Some(frame),
            None => {
                let next = body.frame();
                let reset = std::future::poll_fn(|cx| tx.poll_reset(cx));
                tokio::select! {
                    biased;
                    _ = reset => return,
                    f = next => f,
                }
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
                    if tx.send_data(data, eos).is_err() {
                        tx.send_reset(Reason::INTERNAL_ERROR);
                        return;
                    }
                    if eos {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    /// A real HTTP/2 server (hyper's, as the agent runs) on an in-memory
    /// pipe, allowing `streams` at once, and an h2 client handle to it.
    async fn channel<F, Fut>(streams: u32, serve: F) -> ChannelHandle
    where
        F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(1024 * 1024);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let serve = serve.clone();
                async move { Ok::<_, std::convert::Infallible>(serve(req).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(streams)
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (sender, conn) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(conn);
        ChannelHandle::new(sender)
    }

    fn post(path: &str, body: AgentBody) -> Request<AgentBody> {
        Request::builder()
            .method(Method::POST)
            .uri(format!("http://agent{path}"))
            .body(body)
            .unwrap()
    }

    /// A call on its own task, as a node's task makes it.
    fn spawn_call(
        sender: &Arc<ChannelHandle>,
        path: &'static str,
        body: AgentBody,
    ) -> tokio::task::JoinHandle<Result<Response<AgentIncoming>, CallError>> {
        let sender = sender.clone();
        tokio::spawn(async move { send(&sender, post(path, body)).await })
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_resets_its_stream() {
        let (outcome_tx, mut outcome) = tokio::sync::mpsc::channel::<&'static str>(1);
        let sender = channel(16, move |req: Request<hyper::body::Incoming>| {
            let outcome_tx = outcome_tx.clone();
            async move {
                // Reads the body to its end, answering only then.
                let read = req.into_body().collect().await;
                let _ = outcome_tx
                    .send(if read.is_ok() { "ended" } else { "reset" })
                    .await;
                Response::new(Full::new(Bytes::new()))
            }
        })
        .await;
        let (body_tx, body) = crate::agents::stream_body(4);
        body_tx.send(Bytes::from_static(b"first")).await.unwrap();
        // The caller gives up before any answer, its body still open.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), send(&sender, post("/x", body))).await;
        assert!(gave_up.is_err());
        let seen = tokio::time::timeout(Duration::from_secs(5), outcome.recv())
            .await
            .expect("the agent was left waiting on a stream nobody answers");
        assert_eq!(seen, Some("reset"));
        drop(body_tx);
    }

    #[tokio::test]
    async fn a_call_that_gives_up_while_the_agents_streams_are_taken_is_never_sent() {
        let release = Arc::new(tokio::sync::Notify::new());
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (r, s) = (release.clone(), seen.clone());
        let sender = Arc::new(
            channel(1, move |req: Request<hyper::body::Incoming>| {
                let (release, seen) = (r.clone(), s.clone());
                async move {
                    let path = req.uri().path().to_string();
                    seen.lock().unwrap().push(path.clone());
                    if path == "/a" {
                        release.notified().await;
                    }
                    Response::new(Full::new(Bytes::new()))
                }
            })
            .await,
        );
        let held = spawn_call(&sender, "/a", crate::link::full("a"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // "/b" waits for a stream in h2; "/c" waits here, and gives up.
        let queued = spawn_call(&sender, "/b", crate::link::full("b"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            send(&sender, post("/c", crate::link::full("c"))),
        )
        .await;
        assert!(gave_up.is_err());
        release.notify_one();
        assert!(held.await.unwrap().is_ok());
        assert!(queued.await.unwrap().is_ok());
        // A later call goes through, and "/c" never reached the agent.
        send(&sender, post("/d", crate::link::full("d")))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, ["/a", "/b", "/d"]);
    }

    /// A streamed body on a stream that had to queue for the agent's stream
    /// limit, read whole by the agent before it answers, while another call
    /// waits behind it: both are answered once the first stream ends.
    #[tokio::test]
    async fn a_queued_stream_with_a_streamed_body_is_fed_once_it_opens() {
        let release = Arc::new(tokio::sync::Notify::new());
        let r = release.clone();
        let sender = Arc::new(
            channel(1, move |req: Request<hyper::body::Incoming>| {
                let release = r.clone();
                async move {
                    if req.uri().path() == "/a" {
                        release.notified().await;
                    }
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    Response::new(Full::new(body))
                }
            })
            .await,
        );
        let held = spawn_call(&sender, "/a", crate::link::full("a"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (body_tx, body) = crate::agents::stream_body(4);
        let queued = spawn_call(&sender, "/b", body);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let behind = spawn_call(&sender, "/c", crate::link::full("c"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        body_tx.send(Bytes::from_static(b"streamed")).await.unwrap();
        drop(body_tx);
        release.notify_one();
        for call in [held, queued, behind] {
            let answer = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .expect("a call was never woken")
                .unwrap()
                .unwrap();
            assert!(answer.status().is_success());
        }
    }

    /// A call that gives up while its stream is queued for the agent's
    /// stream limit resets it: the agent, which reads a body before it
    /// answers, is not left waiting on a half-open stream once it opens.
    #[tokio::test]
    async fn a_call_that_gives_up_while_its_stream_is_queued_resets_it() {
        let release = Arc::new(tokio::sync::Notify::new());
        let waiting = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let (r, w) = (release.clone(), waiting.clone());
        let sender = Arc::new(
            channel(1, move |req: Request<hyper::body::Incoming>| {
                let (release, waiting) = (r.clone(), w.clone());
                async move {
                    if req.uri().path() == "/a" {
                        release.notified().await;
                    }
                    // How many handlers are waiting for their body now.
                    waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    Response::new(Full::new(body.unwrap_or_default()))
                }
            })
            .await,
        );
        let held = spawn_call(&sender, "/a", crate::link::full("a"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            send(&sender, post("/b", crate::link::full("b"))),
        )
        .await;
        assert!(gave_up.is_err());
        release.notify_one();
        assert!(held.await.unwrap().is_ok());
        // No further call comes to clear h2's hold on "/b".
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            waiting.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the agent waits on a stream the bastion gave up"
        );
    }

    /// A call on a parked channel (its task holds the handle, empty) tells
    /// the task so and waits; it goes out on the connection the wake puts
    /// back, or fails `Closed` when the channel ended parked. Meanwhile, and
    /// until its answer is read, it counts as open: the channel does not park
    /// under it.
    #[tokio::test]
    async fn a_call_on_a_parked_channel_wakes_it_and_waits_for_it() {
        let handle = Arc::new(
            channel(16, |_req: Request<hyper::body::Incoming>| async {
                Response::new(Full::new(Bytes::from_static(b"ok")))
            })
            .await,
        );
        let mut slot = handle.try_hold().unwrap();
        let h2 = slot.take().unwrap();
        let call = spawn_call(&handle, "/a", crate::link::full("a"));
        tokio::time::timeout(Duration::from_secs(5), handle.wanted())
            .await
            .expect("a call waiting on a parked channel did not ask for it");
        assert_eq!(handle.usage().open(), 1);
        // Woken (the same connection stands in for a new one).
        *slot = Some(h2);
        drop(slot);
        let answer = call.await.unwrap().unwrap();
        assert_eq!(handle.usage().open(), 1, "an answer being read is open");
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(handle.usage().open(), 0);

        // Ended while parked.
        let mut slot = handle.try_hold().unwrap();
        *slot = None;
        let call = spawn_call(&handle, "/b", crate::link::full("b"));
        handle.wanted().await;
        drop(slot);
        assert!(matches!(call.await.unwrap(), Err(CallError::Closed)));
        assert_eq!(handle.usage().open(), 0);
    }

    /// Calls that only waited for each other leave no reason to wake behind:
    /// the channel's task, parking later, is not woken by it.
    #[tokio::test]
    async fn calls_waiting_for_each_other_do_not_wake_a_later_park() {
        let handle = Arc::new(
            channel(16, |_req: Request<hyper::body::Incoming>| async {
                Response::new(Full::new(Bytes::new()))
            })
            .await,
        );
        {
            // A call holding the handle, another finding it held.
            let busy = handle.slot.lock().await;
            let waiting = spawn_call(&handle, "/a", crate::link::full("a"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(busy);
            waiting.await.unwrap().unwrap();
        }
        let _parked = handle.try_hold().unwrap();
        let woken = tokio::time::timeout(Duration::from_millis(200), handle.wanted()).await;
        assert!(woken.is_err(), "a stale request woke the parked channel");
    }
}
