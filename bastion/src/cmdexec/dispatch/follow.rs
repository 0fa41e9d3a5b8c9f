//! Following one call's answer: live output gathered into events (bounded
//! per node) and queued in order, then the result (see `dispatch`).

use super::*;

/// Reads one call's answer: the live output into the store as events (in
/// order, through the writer, gathered by [`Gather`]; offsets advance only past
/// what was queued), then the result. An older agent answers with the result
/// alone. What was gathered is queued before any return, so a call that ends
/// (or fails) loses nothing; if this future is dropped instead, what it held
/// back was not counted in `offsets`, and the next call asks for it again.
pub(super) async fn follow(
    engine: &Engine,
    exec: &ExecutionRow,
    node_id: &str,
    hostname: &str,
    call: impl std::future::Future<Output = Result<StreamAnswer, CallError>>,
    offsets: &mut LiveOffsets,
) -> Result<AgentExecResult, CallError> {
    let mut lines = match call.await? {
        StreamAnswer::Whole(bytes) => {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallError::Body(validate::peer_text(&e.to_string(), 512)));
        }
        StreamAnswer::Lines(l) => l,
    };
    let mut gather = Gather::new(offsets, hostname);
    let queue = move |events: Vec<ExecEvent>| async move {
        for event in events {
            let _ = engine
                .write(
                    ResultUpdate::Event {
                        exec_id: exec.id.clone(),
                        node_id: node_id.into(),
                        event: Box::new(event),
                    },
                    false,
                )
                .await;
        }
    };
    loop {
        // `Lines::next` is cancel-safe (it keeps what it read in its buffer),
        // and has its own deadline: this one only bounds how long gathered
        // output waits.
        let next = match gather.due() {
            Some(due) => {
                match tokio::time::timeout_at(due, lines.next::<AgentStreamLine>()).await {
                    Ok(next) => next,
                    Err(_) => {
                        queue(gather.flush()).await;
                        continue;
                    }
                }
            }
            None => lines.next::<AgentStreamLine>().await,
        };
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) => {
                queue(gather.flush()).await;
                return Err(CallError::Body(
                    "the agent's stream ended without a result".into(),
                ));
            }
            Err(e) => {
                queue(gather.flush()).await;
                return Err(e);
            }
        };
        let events = match line {
            AgentStreamLine::Result(r) => {
                queue(gather.flush()).await;
                return Ok(r);
            }
            AgentStreamLine::Out {
                stream,
                offset,
                data,
            } => gather.out(stream, offset, data, tokio::time::Instant::now()),
            AgentStreamLine::Cut { stream, offset } => gather.cut(stream, offset),
        };
        queue(events).await;
    }
}

/// How long live output is gathered before it is stored: the real agent
/// already gathers for 50 ms, a hostile one need not, and each event is a row
/// replayed to every reader.
pub(super) const GATHER: Duration = Duration::from_millis(100);
/// Output events a node stores per execution at most (across both streams and
/// every call that follows it); then live output stops on both streams with
/// `output_truncated`, and the result keeps the head and tail as always. Full
/// chunks reach `LIVE_BYTES_MAX` on both streams in 32 events; a command that
/// trickles output reaches this after about 7 minutes of one event per `GATHER`.
pub(super) const MAX_OUTPUT_EVENTS: u32 = 4096;

/// Output received but not yet queued: consecutive bytes of one stream.
#[derive(Debug)]
pub(super) struct Gathered {
    pub(super) stream: OutputStream,
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    /// When it is queued even if nothing more arrives.
    due: tokio::time::Instant,
}

/// Turns the agent's output lines into events. Consecutive chunks of one
/// stream are merged up to `STREAM_CHUNK` bytes or `GATHER`; a chunk of the
/// other stream, a cut or the end of the call queues what was gathered first,
/// so events keep the order the agent sent. Only output that continues what
/// was gathered or queued is taken: a resumed stream may repeat, and an agent
/// must not grow the store past `LIVE_BYTES_MAX`.
#[derive(Debug)]
pub(super) struct Gather<'a> {
    pub(super) offsets: &'a mut LiveOffsets,
    pub(super) hostname: &'a str,
    pub(super) pending: Option<Gathered>,
}

impl<'a> Gather<'a> {
    pub(super) fn new(offsets: &'a mut LiveOffsets, hostname: &'a str) -> Gather<'a> {
        Gather {
            offsets,
            hostname,
            pending: None,
        }
    }

    pub(super) fn due(&self) -> Option<tokio::time::Instant> {
        self.pending.as_ref().map(|p| p.due)
    }

    /// Where the next output of `stream` must start (`u64::MAX`: stored no more).
    pub(super) fn expected(&mut self, stream: OutputStream) -> u64 {
        match &self.pending {
            Some(p) if p.stream == stream => p.offset.saturating_add(p.data.len() as u64),
            _ => *self.offsets.of(stream),
        }
    }

    /// A chunk of output: the events to queue now, often none.
    pub(super) fn out(
        &mut self,
        stream: OutputStream,
        offset: u64,
        data: Vec<u8>,
        now: tokio::time::Instant,
    ) -> Vec<ExecEvent> {
        let end = offset.saturating_add(data.len() as u64);
        if offset != self.expected(stream) || data.is_empty() || end > LIVE_BYTES_MAX as u64 {
            return Vec::new();
        }
        let mut events = Vec::new();
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.stream != stream || p.data.len() + data.len() > STREAM_CHUNK)
        {
            events = self.flush();
            // The events' cap may have stopped this stream just now.
            if offset != *self.offsets.of(stream) {
                return events;
            }
        }
        match &mut self.pending {
            Some(p) => p.data.extend_from_slice(&data),
            None => {
                self.pending = Some(Gathered {
                    stream,
                    offset,
                    data,
                    due: now + GATHER,
                })
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.data.len() >= STREAM_CHUNK)
        {
            events.extend(self.flush());
        }
        events
    }

    /// The agent stopped live output of `stream` at `offset`.
    pub(super) fn cut(&mut self, stream: OutputStream, offset: u64) -> Vec<ExecEvent> {
        if offset == u64::MAX || offset != self.expected(stream) {
            return Vec::new();
        }
        let mut events = self.flush();
        let at = self.offsets.of(stream);
        if *at != u64::MAX {
            // Nothing more of this stream will be stored.
            *at = u64::MAX;
            events.push(ExecEvent::OutputTruncated {
                hostname: self.hostname.into(),
                stream,
                offset,
            });
        }
        events
    }

    /// What was gathered, as an event to queue now; past `MAX_OUTPUT_EVENTS`,
    /// followed by the end of live output on both streams.
    pub(super) fn flush(&mut self) -> Vec<ExecEvent> {
        let Some(p) = self.pending.take() else {
            return Vec::new();
        };
        *self.offsets.of(p.stream) = p.offset.saturating_add(p.data.len() as u64);
        self.offsets.events = self.offsets.events.saturating_add(1);
        let (data, encoding) = encode_output(p.data);
        let mut events = vec![ExecEvent::Output {
            hostname: self.hostname.into(),
            stream: p.stream,
            offset: p.offset,
            data,
            encoding,
        }];
        if self.offsets.events >= MAX_OUTPUT_EVENTS {
            for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                let at = self.offsets.of(stream);
                if *at != u64::MAX {
                    events.push(ExecEvent::OutputTruncated {
                        hostname: self.hostname.into(),
                        stream,
                        offset: *at,
                    });
                    *at = u64::MAX;
                }
            }
        }
        events
    }
}
