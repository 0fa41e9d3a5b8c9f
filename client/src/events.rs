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

/// One event as the server sent it: its id (for `Last-Event-ID`) and body.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: ExecEvent,
}

pub struct EventStream {
    body: Incoming,
    buf: BytesMut,
    url: String,
    /// The fields of the event being read.
    id: Option<String>,
    data: String,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish()
    }
}

impl EventStream {
    pub(crate) fn new(body: Incoming, url: String) -> EventStream {
        EventStream {
            body,
            buf: BytesMut::new(),
            url,
            id: None,
            data: String::new(),
            done: false,
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
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
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

    /// The next complete line in the buffer, without its ending (`\n`,
    /// `\r\n` or `\r`).
    fn take_line(&mut self) -> Option<Result<String, ClientError>> {
        let end = self.buf.iter().position(|&b| b == b'\n' || b == b'\r');
        let Some(end) = end else {
            if self.buf.len() > MAX_EVENT_BYTES {
                self.buf.clear();
                return Some(Err(self.bad("a line longer than 1 MiB")));
            }
            if self.done && !self.buf.is_empty() {
                // A last line without its ending: an event cut short; drop it.
                self.buf.clear();
            }
            return None;
        };
        // A `\r` at the very end may be the first half of `\r\n`.
        if self.buf[end] == b'\r' && end + 1 == self.buf.len() && !self.done {
            return None;
        }
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let skip = if self.buf[end] == b'\r' && self.buf.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        self.buf.advance(end + skip);
        Some(Ok(line))
    }
}
