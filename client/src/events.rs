//! An execution's live events (`text/event-stream`), read incrementally with
//! every line and event bounded, so a faulty or hostile server cannot make the
//! client hold more than one event.

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use postern_api::cmdexec::ExecEvent;

use crate::ClientError;

/// The largest SSE event accepted: an output chunk is at most
/// `STREAM_CHUNK` bytes, base64 and JSON escaping at most sextuple it.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// A stream that sends nothing at all, not even the keep-alive comments the
/// bastion sends every 15 s, for this long is taken for dead.
pub const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(45);

/// One event as the server sent it: its id (for `Last-Event-ID`) and body.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: ExecEvent,
}

pub struct EventStream {
    body: Incoming,
    lines: LineBuf,
    url: String,
    /// The fields of the event being read.
    id: Option<String>,
    data: String,
    done: bool,
    idle: std::time::Duration,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish()
    }
}

impl EventStream {
    pub(crate) fn new(body: Incoming, url: String, idle: std::time::Duration) -> EventStream {
        EventStream {
            body,
            lines: LineBuf::default(),
            url,
            id: None,
            data: String::new(),
            done: false,
            idle,
        }
    }

    fn bad(&self, why: impl Into<String>) -> ClientError {
        ClientError::Decode {
            url: self.url.clone(),
            why: why.into(),
        }
    }

    /// The next event; `None` when the server ended the stream. Event kinds
    /// this client does not know are skipped, so a newer server still works.
    /// Anything received, keep-alive comments included, shows the stream is
    /// alive; [`STREAM_IDLE`] (by default) without a byte is a
    /// [`ClientError::Timeout`].
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            while let Some(line) = self.take_line() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => return Some(Err(e)),
                };
                if line.is_empty() {
                    if self.data.is_empty() {
                        continue;
                    }
                    let data = std::mem::take(&mut self.data);
                    let id = self.id.take();
                    match serde_json::from_str::<ExecEvent>(&data) {
                        Ok(event) => return Some(Ok(Event { id, event })),
                        Err(_) => continue,
                    }
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line.as_str(), ""),
                };
                match field {
                    "data" => {
                        if self.data.len() + value.len() > MAX_EVENT_BYTES {
                            return Some(Err(self.bad("an event larger than 1 MiB")));
                        }
                        if !self.data.is_empty() {
                            self.data.push('\n');
                        }
                        self.data.push_str(value);
                    }
                    "id" => self.id = Some(value.chars().take(64).collect()),
                    _ => {}
                }
            }
            if self.done {
                return None;
            }
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    self.done = true;
                    return Some(Err(ClientError::Timeout {
                        url: self.url.clone(),
                        secs: self.idle.as_secs(),
                    }));
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ClientError::Unreachable {
                        url: self.url.clone(),
                        why: format!("the event stream broke: {e}"),
                    }));
                }
                None => self.done = true,
            }
        }
    }

    fn take_line(&mut self) -> Option<Result<String, ClientError>> {
        match self.lines.take(self.done)? {
            Ok(line) => Some(Ok(line)),
            Err(why) => Some(Err(self.bad(why))),
        }
    }
}

/// Received bytes cut into lines (ending in `\n`, `\r\n` or `\r`, as SSE
/// allows), each at most [`MAX_EVENT_BYTES`].
#[derive(Debug, Default)]
struct LineBuf {
    buf: BytesMut,
    /// Where the scan for a line ending stopped: the bytes before it hold
    /// none, so a line trickled in small frames is scanned once in all.
    scanned: usize,
}

impl LineBuf {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line; `done`: no more bytes will come.
    fn take(&mut self, done: bool) -> Option<Result<String, &'static str>> {
        let from = self.scanned.min(self.buf.len());
        let end = self.buf[from..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map(|i| from + i);
        let Some(end) = end else {
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_EVENT_BYTES {
                self.clear();
                return Some(Err("a line longer than 1 MiB"));
            }
            if done {
                // A last line without its ending: an event cut short; drop it.
                self.clear();
            }
            return None;
        };
        // A `\r` at the very end may be the first half of `\r\n`.
        if self.buf[end] == b'\r' && end + 1 == self.buf.len() && !done {
            self.scanned = end;
            return None;
        }
        self.scanned = 0;
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let skip = if self.buf[end] == b'\r' && self.buf.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        self.buf.advance(end + skip);
        Some(Ok(line))
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.scanned = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<Result<String, &'static str>> {
        let mut l = LineBuf::default();
        let mut out = Vec::new();
        for c in chunks {
            l.push(c);
            while let Some(line) = l.take(false) {
                out.push(line);
            }
        }
        while let Some(line) = l.take(true) {
            out.push(line);
        }
        out
    }

    #[test]
    fn lines_split_the_same_however_the_bytes_arrive() {
        let whole: &[u8] = b"id: 1\r\ndata: {\"a\"}\n\n: keep-alive\rdata: x\r\n\r\ncut sh";
        let expected = lines_of(&[whole]);
        let want: Vec<Result<String, &str>> =
            ["id: 1", "data: {\"a\"}", "", ": keep-alive", "data: x", ""]
                .iter()
                .map(|l| Ok(l.to_string()))
                .collect();
        assert_eq!(expected, want);
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(lines_of(&[a, b]), expected, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(lines_of(&bytewise), expected);
    }

    #[test]
    fn an_overlong_line_is_an_error_and_the_next_lines_still_read() {
        let mut l = LineBuf::default();
        let big = vec![b'x'; 64 * 1024];
        let mut errors = 0;
        for _ in 0..17 {
            l.push(&big);
            while let Some(r) = l.take(false) {
                assert!(r.is_err());
                errors += 1;
            }
        }
        assert_eq!(errors, 1);
        l.push(b"\ndata: ok\n");
        assert_eq!(l.take(false), Some(Ok(String::new())));
        assert_eq!(l.take(false), Some(Ok("data: ok".to_string())));
    }
}
