//! A running command's output as it is written, for the bastion's live stream:
//! the first bytes of each stream up to a cap (what a person watching reads;
//! the result keeps head and tail as always), and the stream of lines the
//! bastion reads, resumable from any offset after a dropped channel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use postern_api::cmdexec::{AgentExecResult, AgentStreamLine, OutputStream, STREAM_CHUNK};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Buffers {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_cut: bool,
    stderr_cut: bool,
}

/// One command's live output, shared by its pipe readers and its streams.
#[derive(Debug)]
pub struct LiveOutput {
    cap: usize,
    bufs: Mutex<Buffers>,
    /// Bumped on every push, so a stream waits without missing one.
    generation: watch::Sender<u64>,
}

impl LiveOutput {
    pub fn new(cap: usize) -> Arc<LiveOutput> {
        Arc::new(LiveOutput {
            cap,
            bufs: Mutex::new(Buffers::default()),
            generation: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffers> {
        self.bufs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends what the command wrote, up to the cap; past it the stream is cut.
    pub fn push(&self, stream: OutputStream, data: &[u8]) {
        {
            let mut guard = self.lock();
            let b = &mut *guard;
            let (buf, cut) = match stream {
                OutputStream::Stdout => (&mut b.stdout, &mut b.stdout_cut),
                OutputStream::Stderr => (&mut b.stderr, &mut b.stderr_cut),
            };
            if *cut {
                return;
            }
            let room = self.cap.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..room.min(data.len())]);
            if data.len() > room {
                *cut = true;
            }
        }
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The next line for a reader at `pos`: a chunk of either stream, or the
    /// cut of one once its reader has all of it. Advances `pos`.
    fn next_line(&self, pos: &mut Position) -> Option<AgentStreamLine> {
        let b = self.lock();
        for (stream, buf, cut, at, cut_sent) in [
            (
                OutputStream::Stdout,
                &b.stdout,
                b.stdout_cut,
                &mut pos.stdout,
                &mut pos.stdout_cut_sent,
            ),
            (
                OutputStream::Stderr,
                &b.stderr,
                b.stderr_cut,
                &mut pos.stderr,
                &mut pos.stderr_cut_sent,
            ),
        ] {
            let start = usize::try_from(*at).unwrap_or(usize::MAX);
            if start < buf.len() {
                let end = buf.len().min(start + STREAM_CHUNK);
                *at = end as u64;
                return Some(AgentStreamLine::Out {
                    stream,
                    offset: start as u64,
                    data: buf[start..end].to_vec(),
                });
            }
            if cut && !*cut_sent {
                *cut_sent = true;
                return Some(AgentStreamLine::Cut {
                    stream,
                    offset: buf.len() as u64,
                });
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct Position {
    stdout: u64,
    stderr: u64,
    stdout_cut_sent: bool,
    stderr_cut_sent: bool,
}

/// How long a stream waits for output before it looks again (so every wait
/// has an end, even if a notification were lost).
const POLL: Duration = Duration::from_secs(30);
/// How long new output is gathered before it is sent.
const COALESCE: Duration = Duration::from_millis(50);

/// The lines of one exec from the given offsets: output as it comes, then the
/// result, which ends the stream. Without live output (a result recovered from
/// the spool) only the result is sent.
pub fn stream(
    live: Option<Arc<LiveOutput>>,
    result: watch::Receiver<AgentExecResult>,
    from: postern_api::cmdexec::StreamFrom,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let generation = live.as_ref().map(|l| l.generation.subscribe());
    let pos = Position {
        stdout: from.stdout,
        stderr: from.stderr,
        ..Position::default()
    };
    let state = (live, generation, pos, false);
    futures_util::stream::unfold(state, move |(live, mut generation, mut pos, done)| {
        let mut result = result.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if let Some(line) = live.as_ref().and_then(|l| l.next_line(&mut pos)) {
                    return Some((Ok(encode(&line)), (live, generation, pos, false)));
                }
                let current = result.borrow_and_update().clone();
                if current.status.is_final() {
                    // All output was pushed before the result was set; look once
                    // more for what arrived since the check above.
                    if let Some(line) = live.as_ref().and_then(|l| l.next_line(&mut pos)) {
                        return Some((Ok(encode(&line)), (live, generation, pos, false)));
                    }
                    let line = AgentStreamLine::Result(current);
                    return Some((Ok(encode(&line)), (live, generation, pos, true)));
                }
                let more_output = async {
                    match generation.as_mut() {
                        Some(g) => {
                            let _ = g.changed().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let woke = tokio::time::timeout(POLL, async {
                    tokio::select! {
                        _ = more_output => true,
                        _ = result.changed() => false,
                    }
                })
                .await;
                if woke == Ok(true) {
                    // Gather what follows for a moment: a command that writes a
                    // byte at a time is sent (and stored) in chunks, not bytes.
                    // A command that ends meanwhile is not kept waiting: its
                    // output and result go at once (a short command's answer
                    // no longer takes 50 ms more than the command).
                    tokio::select! {
                        _ = tokio::time::sleep(COALESCE) => {}
                        _ = result.changed() => {}
                    }
                }
            }
        }
    })
}

fn encode(line: &AgentStreamLine) -> Bytes {
    let mut v = serde_json::to_vec(line).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::StreamExt;
    use postern_api::cmdexec::{NodeExecStatus, Output, StreamFrom};

    fn running() -> AgentExecResult {
        AgentExecResult {
            exec_id: "e".into(),
            status: NodeExecStatus::Running,
            exit_code: None,
            stdout: Output::default(),
            stderr: Output::default(),
            error: None,
            started_at_ms: 0,
            finished_at_ms: None,
        }
    }

    fn lines(bytes: &[Bytes]) -> Vec<AgentStreamLine> {
        bytes
            .iter()
            .map(|b| serde_json::from_slice(b.strip_suffix(b"\n").unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn output_then_cut_then_result_from_any_offset() {
        let live = LiveOutput::new(8);
        let (tx, rx) = watch::channel(running());
        live.push(OutputStream::Stdout, b"hello ");
        live.push(OutputStream::Stderr, b"oops");
        live.push(OutputStream::Stdout, b"world, and more");
        let mut done = running();
        done.status = NodeExecStatus::Succeeded;
        tx.send(done.clone()).unwrap();
        let all: Vec<Bytes> = stream(Some(live.clone()), rx.clone(), StreamFrom::default())
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(
            lines(&all),
            vec![
                AgentStreamLine::Out {
                    stream: OutputStream::Stdout,
                    offset: 0,
                    data: b"hello wo".to_vec()
                },
                AgentStreamLine::Cut {
                    stream: OutputStream::Stdout,
                    offset: 8
                },
                AgentStreamLine::Out {
                    stream: OutputStream::Stderr,
                    offset: 0,
                    data: b"oops".to_vec()
                },
                AgentStreamLine::Result(done.clone()),
            ]
        );
        // Resumed past what the reader had: only the rest.
        let rest: Vec<Bytes> = stream(
            Some(live),
            rx,
            StreamFrom {
                stdout: 8,
                stderr: 2,
            },
        )
        .map(|r| r.unwrap())
        .collect()
        .await;
        let rest = lines(&rest);
        assert_eq!(rest.len(), 3, "{rest:?}");
        assert!(matches!(&rest[1], AgentStreamLine::Out { offset: 2, data, .. } if data == b"ps"));
    }

    #[tokio::test]
    async fn a_stream_follows_output_as_it_is_written() {
        let live = LiveOutput::new(1024);
        let (tx, rx) = watch::channel(running());
        let mut s = Box::pin(stream(Some(live.clone()), rx, StreamFrom::default()));
        live.push(OutputStream::Stdout, b"one");
        let first = s.next().await.unwrap().unwrap();
        assert!(
            std::str::from_utf8(&first)
                .unwrap()
                .contains("\"k\":\"out\"")
        );
        let waiting = tokio::spawn(async move { s.next().await.map(|r| r.unwrap()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        live.push(OutputStream::Stdout, b"two");
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(
            lines(&[second]),
            vec![AgentStreamLine::Out {
                stream: OutputStream::Stdout,
                offset: 3,
                data: b"two".to_vec()
            }]
        );
        drop(tx);
    }
}
