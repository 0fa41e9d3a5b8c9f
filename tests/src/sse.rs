//! A client for an execution's server-sent event stream, as a browser's
//! EventSource or `curl -N` reads it: one HTTP/1.1 GET, events parsed as they
//! arrive, and the freedom not to read (a paused reader).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
    /// When the client parsed it.
    pub at: Instant,
}

/// An open stream; `next` reads the next event.
pub struct SseReader {
    body: Incoming,
    buf: Vec<u8>,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseReader")
    }
}

/// Opens the stream at `path`; answers the status and, on 200, the reader (else
/// the error body).
pub async fn open(
    addr: SocketAddr,
    path: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> Result<SseReader, (u16, Value)> {
    open_with(addr, path, token, last_event_id, None).await
}

/// [`open`] with a fixed receive buffer: a paused reader's socket then fills
/// soon, as a slow client's would across a real network.
pub async fn open_with(
    addr: SocketAddr,
    path: &str,
    token: &str,
    last_event_id: Option<&str>,
    recv_buffer: Option<u32>,
) -> Result<SseReader, (u16, Value)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n).unwrap();
    }
    let tcp = socket.connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", addr.to_string())
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {token}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        return Err((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ));
    }
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream",
        "an event stream"
    );
    Ok(SseReader {
        body: resp.into_body(),
        buf: Vec::new(),
    })
}

impl SseReader {
    /// The next event (comments and keep-alives skipped), or `None` at the end
    /// of the stream. Panics if none comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse(&block) {
                    return Some(ev);
                }
                continue;
            }
            let frame = tokio::time::timeout_at(until, self.body.frame())
                .await
                .expect("no event in time");
            match frame {
                None => return None,
                Some(f) => {
                    if let Ok(data) = f.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Every event up to the end of the stream.
    pub async fn all(&mut self, within: Duration) -> Vec<Sse> {
        let until = Instant::now() + within;
        let mut out = Vec::new();
        while let Some(e) = self
            .next(until.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(e);
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(block: &[u8]) -> Option<Sse> {
    let text = std::str::from_utf8(block).expect("events are UTF-8");
    let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
    let mut any = false;
    for line in text.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "id" => id = Some(value.parse().expect("numeric event ids")),
            "event" => event = value.to_string(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    any.then(|| Sse {
        id,
        event,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
        at: Instant::now(),
    })
}

/// A node's output as the events carried it, stream by stream, bytes decoded.
pub fn output_of(events: &[Sse], host: &str, stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.event == "output") {
        if e.data["hostname"] != host || e.data["stream"] != stream {
            continue;
        }
        assert_eq!(
            e.data["offset"].as_u64().unwrap(),
            out.len() as u64,
            "chunks in order, none missing"
        );
        let text = e.data["data"].as_str().unwrap();
        match e.data["encoding"].as_str().unwrap() {
            "utf-8" => out.extend_from_slice(text.as_bytes()),
            _ => {
                use base64::Engine;
                out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .unwrap(),
                );
            }
        }
    }
    out
}
