//! One recording: the lines a session adds (`Tape`), and the task that writes
//! them to the store in chained, compressed segments.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_api::recordings::{RecordingLevel, chain};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{RecordError, Recorder, SEGMENT_AGE, SEGMENT_BYTES};
use crate::store::{ChunkRow, RecordingRow, Store};

/// Full segments waiting for the writer: with the one being filled and the
/// one being written, a session holds at most four segments (256 KiB).
const QUEUED: usize = 2;
/// Output is encoded in pieces at most this long, so one line stays bounded
/// however large a packet is (JSON escapes grow a byte to six at worst).
const PIECE: usize = 8 * 1024;
/// One store write's deadline, tried twice: a strict session ends within 5 s
/// of the store going away.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// Who and what a recording is of.
#[derive(Debug, Clone)]
pub struct Meta {
    pub org_id: String,
    pub project_id: String,
    pub node_id: String,
    pub hostname: String,
    pub user_id: String,
    pub user_name: String,
    pub login: String,
    /// `shell`, `exec`, `subsystem`; `jump` for a relayed session;
    /// `kube_exec`, `kube_attach` for kubectl's.
    pub kind: &'static str,
    pub command: String,
    pub width: u32,
    pub height: u32,
    pub term: String,
    /// kubectl exec and attach: `NAMESPACE/POD`.
    pub pod: Option<String>,
}

impl Meta {
    pub(super) fn row(&self, id: &str, policy: &str, replica: &str, now: i64) -> RecordingRow {
        RecordingRow {
            id: id.to_string(),
            org_id: self.org_id.clone(),
            project_id: self.project_id.clone(),
            node_id: self.node_id.clone(),
            hostname: self.hostname.clone(),
            user_id: self.user_id.clone(),
            user_name: self.user_name.clone(),
            login: self.login.clone(),
            kind: self.kind.to_string(),
            command: self.command.clone(),
            policy: policy.to_string(),
            replica: replica.to_string(),
            width: self.width as i64,
            height: self.height as i64,
            started_at: now,
            ended_at: None,
            status: "live".into(),
            chunks: 0,
            cast_bytes: 0,
            stored_bytes: 0,
            gaps: 0,
            // The chain starts from the recording's id.
            last_hash: id.to_string(),
            pod: self.pod.clone(),
        }
    }
}

/// What a finished recording left: the session's final audit entry holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ended {
    pub id: String,
    pub last_hash: String,
    pub segments: i64,
    pub gaps: i64,
    pub status: &'static str,
}

#[derive(Debug)]
struct Pending {
    lines: Vec<u8>,
    at_ms: i64,
}

#[derive(Debug, Default)]
struct Filling {
    lines: Vec<u8>,
    /// When the first line of `lines` was added (for the age cut) and its
    /// session time.
    first: Option<(Instant, i64)>,
    /// The end of the last output, when it stopped inside a UTF-8 character.
    carry: Vec<u8>,
}

impl Filling {
    fn take(&mut self) -> Option<Pending> {
        let (_, at_ms) = self.first.take()?;
        Some(Pending {
            lines: std::mem::take(&mut self.lines),
            at_ms,
        })
    }
}

/// A recording being made. Dropping it without [`Tape::finish`] still ends it
/// (the writer flushes what it holds); `finish` also says how it ended.
#[derive(Debug)]
pub struct Tape {
    pub id: String,
    started: Instant,
    filling: Arc<Mutex<Filling>>,
    full: mpsc::Sender<Pending>,
    done: oneshot::Receiver<Ended>,
    /// Bytes of cast so far, and the most there may be.
    written: std::sync::atomic::AtomicU64,
    max_bytes: u64,
    level: RecordingLevel,
    cut: CancellationToken,
}

pub(super) async fn start(
    recorder: &Recorder,
    meta: Meta,
    level: RecordingLevel,
    cut: CancellationToken,
) -> Result<Tape, RecordError> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = crate::clock::now_ms();
    let row = meta.row(&id, level.as_str(), &recorder.replica, now);
    tokio::time::timeout(WRITE_DEADLINE, recorder.store.create_recording(&row))
        .await
        .map_err(|_| crate::store::StoreError::Unreachable {
            url: "the store".into(),
            detail: "no answer in time".into(),
        })??;
    let header = serde_json::json!({
        "version": 2,
        "width": meta.width,
        "height": meta.height,
        "timestamp": now / 1000,
        "env": { "TERM": meta.term, "SHELL": "" },
        "title": format!("{}@{} ({})", meta.login, meta.hostname, meta.user_name),
    });
    let mut lines = header.to_string().into_bytes();
    lines.push(b'\n');
    let filling = Arc::new(Mutex::new(Filling {
        lines,
        first: Some((Instant::now(), 0)),
        carry: Vec::new(),
    }));
    let (full, rx) = mpsc::channel(QUEUED);
    let (done_tx, done) = oneshot::channel();
    let writer = Writer {
        store: recorder.store.clone(),
        zstd: None,
        id: id.clone(),
        level,
        cut: cut.clone(),
        seq: 0,
        offset: 0,
        head: id.clone(),
        gaps: 0,
        lost: 0,
        failed: false,
    };
    recorder
        .tasks
        .spawn(writer.run(filling.clone(), rx, done_tx));
    Ok(Tape {
        id,
        started: Instant::now(),
        filling,
        full,
        done,
        written: std::sync::atomic::AtomicU64::new(0),
        max_bytes: recorder.max_bytes,
        level,
        cut,
    })
}

impl Tape {
    fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Adds one line; hands the segment to the writer when it is full (and
    /// waits while two are already waiting: a slow store slows the session
    /// rather than growing its memory).
    async fn line(&self, code: &str, text: &str) {
        if let Some(p) = self.append(code, text) {
            // The writer is gone only once the session is being cut.
            let _ = self.full.send(p).await;
        }
    }

    /// Adds the line under the lock; a full segment comes back to be handed
    /// to the writer.
    fn append(&self, code: &str, text: &str) -> Option<Pending> {
        let mut f = lock(&self.filling);
        self.append_locked(&mut f, code, text)
    }

    /// [`Tape::append`] with the segment already in hand.
    fn append_locked(&self, f: &mut Filling, code: &str, text: &str) -> Option<Pending> {
        use std::sync::atomic::Ordering;
        let secs = self.secs();
        // Written straight into the segment (no line of its own: this runs
        // for every packet of output), and taken back if over the limit.
        let start = f.lines.len();
        let _ = write!(f.lines, "[{secs:.6}, \"{code}\", ");
        if serde_json::to_writer(&mut f.lines, text).is_err() {
            f.lines.extend_from_slice(b"\"\"");
        }
        f.lines.extend_from_slice(b"]\n");
        let len = (f.lines.len() - start) as u64;
        let before = self.written.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            f.lines.truncate(start);
            if before <= self.max_bytes {
                // Once: the cast says where it stops, and a strict session
                // (which may not run unrecorded) ends here.
                self.written.store(u64::MAX / 2, Ordering::Relaxed);
                let _ = writeln!(
                    f.lines,
                    "[{secs:.6}, \"m\", \"recording limit of {} bytes reached: the rest of this session is not recorded\"]",
                    self.max_bytes
                );
                if self.level == RecordingLevel::Strict {
                    tracing::warn!(recording = %self.id, "strict recording full: ending the session");
                    self.cut.cancel();
                }
            }
            return None;
        }
        if f.first.is_none() {
            f.first = Some((Instant::now(), (secs * 1000.0) as i64));
        }
        if f.lines.len() >= SEGMENT_BYTES {
            f.take()
        } else {
            None
        }
    }

    /// Output from the node (`o`).
    pub async fn output(&self, data: &[u8]) {
        for piece in data.chunks(PIECE) {
            // One lock per piece, and the bytes read in place: this runs for
            // every packet a session prints (a copy and an allocation per
            // packet showed in the profile of a recorded bulk print).
            let full = {
                let mut f = lock(&self.filling);
                // The end of a character cut off the last piece comes first;
                // most pieces have none.
                let joined;
                let bytes: &[u8] = if f.carry.is_empty() {
                    piece
                } else {
                    let mut b = std::mem::take(&mut f.carry);
                    b.extend_from_slice(piece);
                    joined = b;
                    &joined
                };
                let (now, rest) = bytes.split_at(complete_utf8(bytes));
                f.carry = rest.to_vec();
                if now.is_empty() {
                    None
                } else {
                    // Borrowed when valid UTF-8, the usual case.
                    let text = String::from_utf8_lossy(now);
                    self.append_locked(&mut f, "o", &text)
                }
            };
            if let Some(p) = full {
                // The writer is gone only once the session is being cut.
                let _ = self.full.send(p).await;
            }
        }
    }

    /// The terminal was resized (`r`, `COLSxROWS`).
    pub async fn resize(&self, cols: u32, rows: u32) {
        self.line("r", &format!("{cols}x{rows}")).await;
    }

    /// A marker (`m`): an exec, a subsystem, a file transfer, a gap.
    pub async fn marker(&self, text: &str) {
        self.line("m", text).await;
    }

    /// Ends the recording: what is buffered is written, the row is closed,
    /// and the chain's head returned.
    /// Input from the user (`i`), when the policy records it.
    pub async fn input(&self, data: &[u8]) {
        let text = String::from_utf8_lossy(data).into_owned();
        self.line("i", &text).await;
    }

    pub async fn finish(self) -> Option<Ended> {
        let Tape { full, done, .. } = self;
        drop(full);
        // The writer's own deadlines bound this; the extra margin covers a
        // segment queued behind a slow write.
        tokio::time::timeout(WRITE_DEADLINE * 8, done)
            .await
            .ok()?
            .ok()
    }
}

fn lock(m: &Mutex<Filling>) -> std::sync::MutexGuard<'_, Filling> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How much of `bytes` is whole characters: an incomplete UTF-8 sequence at
/// the end waits for the rest (at most 3 bytes); invalid bytes elsewhere are
/// left to the lossy conversion.
fn complete_utf8(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=3.min(n) {
        let b = bytes[n - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return n,
        };
        return if need > back { n - back } else { n };
    }
    n
}

struct Writer {
    store: Store,
    /// One zstd context for the recording's life (making one per segment
    /// showed in the profile).
    zstd: Option<zstd::bulk::Compressor<'static>>,
    id: String,
    level: RecordingLevel,
    cut: CancellationToken,
    seq: i64,
    offset: i64,
    head: String,
    gaps: i64,
    /// Bytes of the cast lost since the last segment that was stored.
    lost: i64,
    failed: bool,
}

impl Writer {
    async fn run(
        mut self,
        filling: Arc<Mutex<Filling>>,
        mut full: mpsc::Receiver<Pending>,
        done: oneshot::Sender<Ended>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                p = full.recv() => match p {
                    Some(p) => self.write(p).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let aged = {
                        let mut f = lock(&filling);
                        match f.first {
                            Some((at, _)) if at.elapsed() >= SEGMENT_AGE => f.take(),
                            _ => None,
                        }
                    };
                    if let Some(p) = aged {
                        self.write(p).await;
                    }
                }
            }
        }
        let last = lock(&filling).take();
        if let Some(p) = last {
            self.write(p).await;
        }
        let status = if self.failed { "failed" } else { "ended" };
        let finished = tokio::time::timeout(
            WRITE_DEADLINE,
            self.store
                .finish_recording(&self.id, crate::clock::now_ms(), status, None),
        )
        .await;
        if !matches!(finished, Ok(Ok(()))) {
            tracing::warn!(recording = %self.id, "cannot close the recording's row; it shows live until its replica restarts");
        }
        let _ = done.send(Ended {
            id: self.id,
            last_hash: self.head,
            segments: self.seq,
            gaps: self.gaps,
            status,
        });
    }

    async fn write(&mut self, p: Pending) {
        if self.failed {
            return;
        }
        let mut lines = p.lines;
        if self.lost > 0 {
            // What was lost is named where it was lost, in the cast itself.
            let mut marked = format!(
                "[{:.6}, \"m\", \"gap: {} bytes of this recording could not be stored\"]\n",
                p.at_ms as f64 / 1000.0,
                self.lost
            )
            .into_bytes();
            marked.extend_from_slice(&lines);
            lines = marked;
        }
        let sha = chain(&self.head, &lines);
        let data = match self.compress(&lines) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot compress a recording segment");
                return self.lose(lines.len());
            }
        };
        let row = ChunkRow {
            seq: self.seq,
            offset: self.offset,
            raw_len: lines.len() as i64,
            at_ms: p.at_ms,
            sha256: sha.clone(),
            data: Some(data),
        };
        let gaps = self.gaps;
        for attempt in 0..2 {
            match tokio::time::timeout(
                WRITE_DEADLINE,
                self.store.append_chunk(&self.id, &row, gaps),
            )
            .await
            {
                Ok(Ok(())) => {
                    self.seq += 1;
                    self.offset += lines.len() as i64;
                    self.head = sha;
                    self.lost = 0;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(recording = %self.id, attempt, error = %e, "a recording segment was not stored")
                }
                Err(_) => {
                    tracing::warn!(recording = %self.id, attempt, "a recording segment was not stored in time")
                }
            }
        }
        self.lose(lines.len());
    }

    fn compress(&mut self, lines: &[u8]) -> std::io::Result<Vec<u8>> {
        if self.zstd.is_none() {
            self.zstd = Some(zstd::bulk::Compressor::new(3)?);
        }
        match &mut self.zstd {
            Some(z) => z.compress(lines),
            None => compress(lines),
        }
    }

    fn lose(&mut self, n: usize) {
        match self.level {
            RecordingLevel::Strict => {
                // No unrecorded second: the session ends now.
                tracing::error!(recording = %self.id, "strict recording cannot write: ending the session");
                self.failed = true;
                self.cut.cancel();
            }
            _ => {
                self.gaps += 1;
                self.lost += n as i64;
            }
        }
    }
}

/// zstd at its default level: on terminal output a third of deflate's size
/// for about the same CPU (measured in `postern-recording-bench`).
fn compress(lines: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(lines, 3)
}

/// Inflates a stored segment, refusing one that would grow past `max` (a
/// corrupt or hostile row must not take the reader's memory).
pub fn decompress(data: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    zstd::bulk::decompress(data, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_wait_for_their_rest() {
        let s = "é€😀".as_bytes();
        assert_eq!(complete_utf8(s), s.len());
        assert_eq!(complete_utf8(&s[..1]), 0);
        assert_eq!(complete_utf8(&s[..4]), 2);
        assert_eq!(complete_utf8(&s[..8]), 5);
        assert_eq!(complete_utf8(b"abc\xff"), 4);
    }

    #[test]
    fn segments_round_trip_and_a_bomb_is_refused() {
        let lines = b"[0.1, \"o\", \"hello\"]\n".repeat(1000);
        let z = compress(&lines).unwrap();
        assert!(z.len() < lines.len() / 10);
        assert_eq!(decompress(&z, SEGMENT_BYTES * 4).unwrap(), lines);
        assert!(decompress(&z, 100).is_err());
    }
}
