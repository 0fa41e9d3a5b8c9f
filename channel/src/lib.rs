//! The agent channel's framing under HTTP/2 (ALPN `postern-agent/2`), which
//! lets an idle channel give its HTTP/2 connection up ("park") and start a new
//! one on the same TLS session when it is needed again ("wake").
//!
//! Why: an idle channel's HTTP/2 connection holds buffers and tables it does
//! not use (h2's write and read buffers, HPACK's, the stream table: about
//! 30 KiB per agent, heaptrack), and neither h2 nor hyper gives them back
//! while a connection lives. A parked channel holds its TLS session only; a
//! wake costs one HTTP/2 handshake, sent in the same flight as the request
//! that needed it, so no round trip is added.
//!
//! On the wire, every chunk starts with 4 bytes: its kind, then a 24-bit
//! length of the bytes that follow. DATA chunks carry h2's bytes; control
//! chunks carry none:
//! - the bastion sends PARK once it has no call open and has dropped its h2
//!   connection, at a chunk boundary;
//! - the agent drops its own, ends the DATA chunk it was writing (with
//!   zeros: the bastion discards whatever DATA comes between PARK and
//!   PARKED), and answers PARKED;
//! - while parked, either side sends PING and the other answers PONG;
//! - the bastion sends WAKE, then a new HTTP/2 connection begins.
//!
//! A [`Framed`] is one side of a channel; [`Framed::io`] is the byte stream
//! h2 runs on, while the channel is live. Its state sits behind one mutex,
//! which only the channel's own task takes (h2 does its I/O in whoever polls
//! its connection), so it is never contended.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The ALPN of a channel framed this way. An agent offers it before the plain
/// HTTP/2 channel's; a bastion that does not know it picks the other.
pub const ALPN: &[u8] = b"postern-agent/2";

const HEADER: usize = 4;
/// The most bytes one DATA chunk carries (its length has 24 bits).
const MAX_CHUNK: usize = (1 << 24) - 1;
/// At most this many of h2's slices go into one write.
const MAX_SLICES: usize = 16;
/// The most of a new connection's first write that is held (its preface is
/// 24 bytes).
const MAX_HELD: usize = 64;

const DATA: u8 = 0;

/// The least time between two PINGs a parked side answers (either side
/// pings at most once a second; closer ones are let go unanswered).
pub const MIN_PING_GAP: Duration = Duration::from_millis(100);
/// PINGs in a row, each too soon after the last answered one, that a parked
/// side lets go before it takes them for a flood.
pub const MAX_EARLY_PINGS: u32 = 32;

/// A chunk without bytes, which steers the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Park = 1,
    Parked = 2,
    Wake = 3,
    Ping = 4,
    Pong = 5,
}

impl Control {
    fn from_kind(kind: u8) -> Option<Control> {
        Some(match kind {
            1 => Control::Park,
            2 => Control::Parked,
            3 => Control::Wake,
            4 => Control::Ping,
            5 => Control::Pong,
            _ => return None,
        })
    }
}

/// Which end of the channel this is: the bastion parks and wakes, the agent
/// follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Bastion,
    Agent,
}

/// One side of a framed channel over `T` (the TLS stream).
#[derive(Debug)]
pub struct Framed<T> {
    inner: Arc<Mutex<Inner<T>>>,
}

impl<T> Clone for Framed<T> {
    fn clone(&self) -> Self {
        Framed {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<T> {
    io: T,
    role: Role,
    /// The header being read, how much of it came, and the DATA still to come
    /// of the chunk it began.
    rd_head: [u8; HEADER],
    rd_got: usize,
    rd_left: usize,
    /// The header being written, how much of it went, and the DATA still owed
    /// to the chunk it began.
    wr_head: [u8; HEADER],
    wr_sent: usize,
    wr_left: usize,
    /// Whole chunks not written yet, which go out before anything else: a
    /// wake's WAKE and the new connection's preface, held so that they leave
    /// with its first frames (one record, one write) instead of each alone.
    held: Vec<u8>,
    hold_next: bool,
    /// PINGs this side sent and no PONG answered yet: their PONGs may still
    /// come after a wake, or during the next park.
    owed: u32,
    /// A read's error kept for the next read (bytes before it went first),
    /// and whether one was given.
    failed: Option<io::Error>,
    broken: bool,
    /// The agent read PARK while its h2 ran: h2 reads nothing more.
    park: bool,
    park_waker: Option<Waker>,
}

/// The header of a DATA chunk of `n` bytes (`n` ≤ [`MAX_CHUNK`]).
fn data_head(n: usize) -> [u8; HEADER] {
    [DATA, (n >> 16) as u8, (n >> 8) as u8, n as u8]
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("agent channel framing: {what}"),
    )
}

impl<T> Framed<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(io: T, role: Role) -> Self {
        Framed {
            inner: Arc::new(Mutex::new(Inner {
                io,
                role,
                rd_head: [0; HEADER],
                rd_got: 0,
                rd_left: 0,
                wr_head: [0; HEADER],
                wr_sent: HEADER,
                wr_left: 0,
                held: Vec::new(),
                hold_next: false,
                owed: 0,
                failed: None,
                broken: false,
                park: false,
                park_waker: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // Nothing panics while holding it; a poisoned state is still whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The byte stream for an HTTP/2 connection, while the channel is live.
    pub fn io(&self) -> FramedIo<T> {
        FramedIo(self.clone())
    }

    /// Closes the stream underneath (TLS: close_notify), after what is owed
    /// of a chunk.
    pub async fn close(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut g = self.lock();
            ready!(g.poll_finish_chunk(cx))?;
            Pin::new(&mut g.io).poll_shutdown(cx)
        })
        .await
    }

    /// Runs `f` on the stream underneath (a test reads what was written).
    pub fn with_io<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock().io)
    }

    /// Whether nothing of a chunk is half written: the bastion parks only
    /// then, so the agent's h2 never sees a chunk cut short.
    pub fn at_boundary(&self) -> bool {
        let g = self.lock();
        g.chunk_done() && g.held.is_empty() && !g.hold_next
    }

    /// Answers once the agent's live h2 read PARK: its connection is to be
    /// dropped and PARKED sent.
    pub fn poll_park(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.lock();
        if g.park {
            return Poll::Ready(());
        }
        g.park_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The bastion's wake: WAKE, then a new h2 connection on [`Framed::io`].
    /// WAKE and the connection's first write (its preface) are held and go
    /// out with its next write or flush.
    pub fn wake(&self) {
        let mut g = self.lock();
        // What is owed of a chunk begun before (a PING or PONG whose send
        // was dropped half-way) goes first, as `send` would have sent it.
        let (head, sent, left) = (g.wr_head, g.wr_sent, g.wr_left);
        g.held.extend_from_slice(&head[sent..]);
        let len = g.held.len() + left;
        g.held.resize(len, 0);
        g.wr_sent = HEADER;
        g.wr_left = 0;
        g.held.extend_from_slice(&[Control::Wake as u8, 0, 0, 0]);
        g.hold_next = true;
    }

    /// Live again (after WAKE): reading and writing are h2's.
    pub fn rearm(&self) {
        let mut g = self.lock();
        g.park = false;
        g.park_waker = None;
    }

    /// Sends `control`, first ending a DATA chunk left unfinished (its rest
    /// is zeros), and flushes. If this is dropped half-way, the next send
    /// finishes this one's header first.
    pub async fn send(&self, control: Control) -> io::Result<()> {
        let mut queued = false;
        std::future::poll_fn(|cx| {
            let mut g = self.lock();
            let inner = &mut *g;
            ready!(inner.poll_finish_chunk(cx))?;
            if !queued {
                inner.wr_head = [control as u8, 0, 0, 0];
                inner.wr_sent = 0;
                queued = true;
                if control == Control::Ping {
                    inner.owed = inner.owed.saturating_add(1);
                }
                ready!(inner.poll_finish_chunk(cx))?;
            }
            Pin::new(&mut inner.io).poll_flush(cx)
        })
        .await
    }

    /// The next control chunk, or `None` when the peer closed the stream.
    /// DATA is skipped when `discard_data` (the h2 bytes that come between
    /// PARK and PARKED) and refused otherwise. Cancel-safe: what was read of a
    /// chunk stays read.
    pub async fn recv(&self, discard_data: bool) -> io::Result<Option<Control>> {
        std::future::poll_fn(|cx| {
            let mut g = self.lock();
            let inner = &mut *g;
            loop {
                if inner.rd_left > 0 {
                    let mut scratch = [0u8; 2048];
                    let n = inner.rd_left.min(scratch.len());
                    let mut buf = ReadBuf::new(&mut scratch[..n]);
                    ready!(Pin::new(&mut inner.io).poll_read(cx, &mut buf))?;
                    if buf.filled().is_empty() {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    inner.rd_left -= buf.filled().len();
                    continue;
                }
                match ready!(inner.poll_header(cx))? {
                    None => return Poll::Ready(Ok(None)),
                    Some((DATA, len)) if discard_data && len > 0 => inner.rd_left = len,
                    Some((DATA, _)) => {
                        return Poll::Ready(Err(invalid("HTTP/2 bytes on a parked channel")));
                    }
                    Some((kind, 0)) => match Control::from_kind(kind) {
                        // Parking: a PING or PONG that crossed the last wake.
                        Some(c) if discard_data && inner.stray(c) => {}
                        Some(c) => return Poll::Ready(Ok(Some(c))),
                        None => return Poll::Ready(Err(invalid("an unknown chunk"))),
                    },
                    Some(_) => return Poll::Ready(Err(invalid("a control chunk with a length"))),
                }
            }
        })
        .await
    }

    /// Answers once the next chunk is DATA (a new h2 connection's first
    /// bytes), letting through a PING or PONG that crossed the wake. The agent
    /// waits for it under a deadline after WAKE: hyper's own keep-alive starts
    /// only once its handshake is done, and a bastion gone between WAKE and
    /// its preface would otherwise be waited for without end. Cancel-safe.
    pub async fn data_ahead(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut g = self.lock();
            let inner = &mut *g;
            loop {
                if inner.rd_left > 0 {
                    return Poll::Ready(Ok(()));
                }
                match ready!(inner.poll_header(cx))? {
                    None => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                    Some((DATA, len)) if len > 0 => inner.rd_left = len,
                    Some((kind, 0)) if Control::from_kind(kind).is_some_and(|c| inner.stray(c)) => {
                    }
                    Some(_) => {
                        return Poll::Ready(Err(invalid(
                            "a chunk out of turn where HTTP/2 was due",
                        )));
                    }
                }
            }
        })
        .await
    }

    /// The bastion's park, once its h2 connection is dropped at a chunk
    /// boundary: PARK, then the agent's h2 bytes still on their way are
    /// skipped until its PARKED. Each step within `within`.
    pub async fn park(&self, within: Duration) -> io::Result<()> {
        timed(within, self.send(Control::Park)).await?;
        match timed(within, self.recv(true)).await? {
            Some(Control::Parked) => Ok(()),
            Some(other) => Err(invalid(&format!("{other:?} where PARKED was due"))),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Holds a parked channel: PINGs the peer after `every` without a
    /// chunk from it, answers its PINGs, and fails when a PING goes
    /// unanswered `within`, the peer closes, or it sends out of turn (a PONG
    /// for no PING). Answers the first control other than PING and PONG
    /// (WAKE, for the agent), or `None` when the peer closed the channel.
    /// PINGs closer together than [`MIN_PING_GAP`] go unanswered (the
    /// network may bunch honest ones), and more than [`MAX_EARLY_PINGS`] of
    /// them in a row are a flood: an error. Cancel-safe as to the stream
    /// (PINGs owed are counted in it); a new call starts its timers anew.
    pub async fn parked(&self, every: Duration, within: Duration) -> io::Result<Option<Control>> {
        let mut ping_at = Instant::now() + every;
        let mut answer_by: Option<Instant> = None;
        let mut last_pong: Option<Instant> = None;
        let mut early = 0u32;
        loop {
            let heard = tokio::select! {
                r = self.recv(false) => r?,
                () = tokio::time::sleep_until(answer_by.unwrap_or(ping_at)) => {
                    if answer_by.is_some() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "a parked agent channel did not answer a ping in time",
                        ));
                    }
                    timed(within, self.send(Control::Ping)).await?;
                    answer_by = Some(Instant::now() + within);
                    continue;
                }
            };
            // Anything from the peer shows it alive.
            answer_by = None;
            ping_at = Instant::now() + every;
            match heard {
                Some(Control::Ping) => {
                    let now = Instant::now();
                    if last_pong.is_none_or(|t| now - t >= MIN_PING_GAP) {
                        early = 0;
                        last_pong = Some(now);
                        timed(within, self.send(Control::Pong)).await?;
                    } else {
                        early += 1;
                        if early > MAX_EARLY_PINGS {
                            return Err(invalid("pinged too often"));
                        }
                    }
                }
                Some(Control::Pong) => {
                    let mut g = self.lock();
                    if g.owed == 0 {
                        return Err(invalid("a PONG for no PING"));
                    }
                    g.owed -= 1;
                }
                other => return Ok(other),
            }
        }
    }
}

async fn timed<R>(
    within: Duration,
    step: impl std::future::Future<Output = io::Result<R>>,
) -> io::Result<R> {
    tokio::time::timeout(within, step).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the agent channel's peer did not keep up",
        )
    })?
}

impl<T> Inner<T> {
    /// Whether nothing is owed of the chunk being written.
    fn chunk_done(&self) -> bool {
        self.wr_sent == HEADER && self.wr_left == 0
    }

    /// `n` bytes of the held chunks went out; once none are left, their
    /// buffer goes too.
    fn consume_held(&mut self, n: usize) {
        self.held.drain(..n);
        if self.held.is_empty() {
            self.held = Vec::new();
        }
    }

    /// Whether `c` may be passed over where it is not the turn of controls:
    /// a PING (the peer pinged before it read WAKE or PARK; answering is not
    /// owed), or the PONG of a PING this side sent. Anything else there is
    /// out of turn.
    fn stray(&mut self, c: Control) -> bool {
        match c {
            Control::Ping => true,
            Control::Pong if self.owed > 0 => {
                self.owed -= 1;
                true
            }
            _ => false,
        }
    }
}

impl<T> Inner<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Writes the held chunks, and lets their buffer go.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hold_next = false;
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume_held(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads a whole header: its kind and length, or `None` at a clean end.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<(u8, usize)>>> {
        while self.rd_got < HEADER {
            let mut buf = ReadBuf::new(&mut self.rd_head[self.rd_got..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(if self.rd_got == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
            self.rd_got += n;
        }
        self.rd_got = 0;
        let [kind, a, b, c] = self.rd_head;
        let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
        Poll::Ready(Ok(Some((kind, len))))
    }

    /// Writes what is owed of the current chunk: the rest of its header, then
    /// zeros for DATA its writer (h2, now dropped) never gave.
    fn poll_finish_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        const ZEROS: [u8; 1024] = [0; 1024];
        ready!(self.poll_write_held(cx))?;
        while !self.chunk_done() {
            let n = if self.wr_sent < HEADER {
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.wr_head[self.wr_sent..]))?
            } else {
                let k = self.wr_left.min(ZEROS.len());
                ready!(Pin::new(&mut self.io).poll_write(cx, &ZEROS[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if self.wr_sent < HEADER {
                self.wr_sent += n;
            } else {
                self.wr_left -= n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The byte stream an HTTP/2 connection runs on: its bytes go out in DATA
/// chunks, and what comes in DATA chunks is what it reads.
#[derive(Debug)]
pub struct FramedIo<T>(Framed<T>);

impl<T> AsyncRead for FramedIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads on through the chunks while bytes are there and `buf` has
    /// room, so small chunks cost one read, not one each. An error met after
    /// some bytes were read is kept for the next read.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.0.lock();
        let inner = &mut *g;
        if let Some(e) = inner.failed.take() {
            inner.broken = true;
            return Poll::Ready(Err(e));
        }
        if inner.broken {
            return Poll::Ready(Err(invalid("the channel failed before")));
        }
        let start = buf.filled().len();
        // What a step's outcome makes of this read: bytes read so far win
        // over a wait or an error (which is kept).
        macro_rules! settle {
            ($e:expr) => {
                match $e {
                    Poll::Ready(Ok(v)) => v,
                    Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) if buf.filled().len() > start => {
                        inner.failed = Some(e);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            };
        }
        loop {
            if inner.park {
                // This connection is being dropped; what follows is not its.
                settle!(Poll::<io::Result<()>>::Pending);
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if inner.rd_left > 0 {
                let n = if buf.remaining() <= inner.rd_left {
                    let before = buf.filled().len();
                    settle!(Pin::new(&mut inner.io).poll_read(cx, buf));
                    buf.filled().len() - before
                } else {
                    // Only this chunk's rest: the next header is ours to read.
                    let dst = buf.initialize_unfilled_to(inner.rd_left);
                    let mut part = ReadBuf::new(dst);
                    let read = Pin::new(&mut inner.io).poll_read(cx, &mut part);
                    let n = part.filled().len();
                    settle!(read);
                    buf.advance(n);
                    n
                };
                if n == 0 {
                    settle!(Poll::<io::Result<()>>::Ready(Err(
                        io::ErrorKind::UnexpectedEof.into()
                    )));
                }
                inner.rd_left -= n;
                continue;
            }
            match settle!(inner.poll_header(cx)) {
                // The end of the stream: h2 sees it as one (after the bytes
                // before it, at the next read).
                None => return Poll::Ready(Ok(())),
                Some((DATA, 0)) => settle!(Poll::<io::Result<()>>::Ready(Err(invalid(
                    "an empty DATA chunk"
                )))),
                Some((DATA, len)) => inner.rd_left = len,
                Some((kind, 0)) => match (inner.role, Control::from_kind(kind)) {
                    (Role::Agent, Some(Control::Park)) => {
                        inner.park = true;
                        if let Some(w) = inner.park_waker.take() {
                            w.wake();
                        }
                    }
                    (_, Some(c)) if inner.stray(c) => {}
                    _ => settle!(Poll::<io::Result<()>>::Ready(Err(invalid(
                        "a control chunk out of turn on a live channel"
                    )))),
                },
                Some(_) => settle!(Poll::<io::Result<()>>::Ready(Err(invalid(
                    "a control chunk with a length"
                )))),
            }
        }
    }
}

impl<T> AsyncWrite for FramedIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut g = self.0.lock();
        let inner = &mut *g;
        if inner.park {
            // Being dropped: nothing more of this connection goes out.
            return Poll::Pending;
        }
        if inner.hold_next && inner.chunk_done() {
            // A new connection's first write (its preface): held, whole.
            inner.hold_next = false;
            let n = total.min(MAX_HELD);
            inner.held.extend_from_slice(&data_head(n));
            let mut owed = n;
            for b in bufs {
                let k = b.len().min(owed);
                inner.held.extend_from_slice(&b[..k]);
                owed -= k;
            }
            return Poll::Ready(Ok(n));
        }
        // The chunk's length was promised when it began: whatever h2 writes
        // next continues its byte stream, so the chunk's rest is taken from
        // these slices, up to what is still owed.
        loop {
            if inner.chunk_done() {
                let n = total.min(MAX_CHUNK);
                inner.wr_head = data_head(n);
                inner.wr_sent = 0;
                inner.wr_left = n;
            }
            let mut slices = [io::IoSlice::new(&[]); MAX_SLICES + 2];
            let mut used = 0;
            if !inner.held.is_empty() {
                slices[0] = io::IoSlice::new(&inner.held);
                used = 1;
            }
            if inner.wr_sent < HEADER {
                slices[used] = io::IoSlice::new(&inner.wr_head[inner.wr_sent..]);
                used += 1;
            }
            let mut owed = inner.wr_left;
            for b in bufs {
                if owed == 0 || used == slices.len() {
                    break;
                }
                let k = b.len().min(owed);
                if k > 0 {
                    slices[used] = io::IoSlice::new(&b[..k]);
                    used += 1;
                    owed -= k;
                }
            }
            let n = ready!(Pin::new(&mut inner.io).poll_write_vectored(cx, &slices[..used]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let held = inner.held.len().min(n);
            if held > 0 {
                inner.consume_held(held);
            }
            let n = n - held;
            let head = (HEADER - inner.wr_sent).min(n);
            inner.wr_sent += head;
            let data = n - head;
            inner.wr_left -= data;
            if data > 0 {
                return Poll::Ready(Ok(data));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.0.lock();
        ready!(g.poll_write_held(cx))?;
        Pin::new(&mut g.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.0.lock();
        if g.park {
            // A connection being dropped for a park never closes the session.
            return Poll::Ready(Ok(()));
        }
        ready!(g.poll_write_held(cx))?;
        Pin::new(&mut g.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    type Side = Framed<DuplexStream>;

    const LONG: Duration = Duration::from_secs(30);

    fn pair(capacity: usize) -> (Side, Side) {
        let (a, b) = duplex(capacity);
        (Framed::new(a, Role::Bastion), Framed::new(b, Role::Agent))
    }

    /// The agent's side as the node agent runs it: serve h2 until PARK, then
    /// answer PARKED and PONG until WAKE, then serve a new connection.
    /// Answers how many connections it served.
    async fn agent(side: Side) -> usize {
        let mut served = 0;
        loop {
            let Ok(mut conn) = h2::server::handshake(side.io()).await else {
                return served;
            };
            served += 1;
            loop {
                tokio::select! {
                    req = conn.accept() => {
                        let Some(Ok((req, mut respond))) = req else { return served };
                        let path = req.uri().path().to_string();
                        let mut tx = respond.send_response(http::Response::new(()), false).unwrap();
                        tx.send_data(Bytes::from(path), true).unwrap();
                    }
                    () = std::future::poll_fn(|cx| side.poll_park(cx)) => break,
                }
            }
            drop(conn);
            side.send(Control::Parked).await.unwrap();
            match side.parked(LONG, LONG).await {
                Ok(Some(Control::Wake)) => side.rearm(),
                Ok(other) => panic!("agent got {other:?} while parked"),
                Err(_) => return served,
            }
        }
    }

    async fn get(sender: &mut h2::client::SendRequest<Bytes>, path: &str) -> String {
        let req = http::Request::get(format!("https://node{path}"))
            .body(())
            .unwrap();
        let (answer, _) = sender.send_request(req, true).unwrap();
        let mut body = answer.await.unwrap().into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn a_channel_parks_and_wakes_and_serves_again() {
        let (bastion, node) = pair(64 * 1024);
        let agent = tokio::spawn(agent(node));
        for round in 0..3 {
            let (mut sender, conn) = h2::client::handshake(bastion.io()).await.unwrap();
            let conn = tokio::spawn(conn);
            assert_eq!(
                get(&mut sender, &format!("/r{round}")).await,
                format!("/r{round}")
            );
            // Park: h2 gone at a boundary, then PARK; the agent's h2 bytes
            // (its SETTINGS ack, window updates) are skipped until PARKED.
            drop(sender);
            conn.abort();
            let _ = conn.await;
            assert!(bastion.at_boundary());
            bastion.park(LONG).await.unwrap();
            // Parked: pings answered.
            bastion.send(Control::Ping).await.unwrap();
            assert_eq!(bastion.recv(false).await.unwrap(), Some(Control::Pong));
            bastion.wake();
        }
        let (mut sender, conn) = h2::client::handshake(bastion.io()).await.unwrap();
        tokio::spawn(conn);
        assert_eq!(get(&mut sender, "/last").await, "/last");
        drop(sender);
        drop(bastion);
        assert_eq!(agent.await.unwrap(), 4);
    }

    /// Bytes cross whole and in order when the stream under takes a few at a
    /// time: headers and data cut anywhere.
    #[tokio::test]
    async fn data_crosses_a_stream_that_takes_a_few_bytes_at_a_time() {
        let (bastion, node) = pair(3);
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut io = bastion.io();
                for part in sent.chunks(777) {
                    io.write_all(part).await.unwrap();
                }
                io.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        node.io().read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, sent);
    }

    /// The agent's h2 was dropped half-way through a chunk: the chunk is
    /// ended with zeros before PARKED, and the bastion, skipping DATA until
    /// PARKED, finds it.
    #[tokio::test]
    async fn a_chunk_cut_short_by_a_park_is_ended_before_parked() {
        let (bastion, node) = pair(16);
        let mut io = node.io();
        // 16 bytes fit: the header and 12 of the 100 promised.
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &[7u8; 100]))
            .await
            .unwrap();
        assert_eq!(n, 12);
        assert!(!node.at_boundary());
        drop(io);
        let parked = tokio::spawn(async move { node.send(Control::Parked).await });
        assert_eq!(bastion.recv(true).await.unwrap(), Some(Control::Parked));
        parked.await.unwrap().unwrap();
    }

    async fn raw(bytes: &[u8], role: Role, discard: bool) -> io::Result<Option<Control>> {
        let (a, mut b) = duplex(1024);
        b.write_all(bytes).await.unwrap();
        drop(b);
        Framed::new(a, role).recv(discard).await
    }

    /// What h2 reads of `bytes` from the peer, this side having sent
    /// `pings` PINGs first.
    async fn live_read(bytes: &[u8], role: Role, pings: u32) -> io::Result<Vec<u8>> {
        let (a, mut b) = duplex(1024);
        let side = Framed::new(a, role);
        for _ in 0..pings {
            side.send(Control::Ping).await.unwrap();
        }
        b.write_all(bytes).await.unwrap();
        drop(b);
        let mut got = Vec::new();
        side.io().read_to_end(&mut got).await.map(|_| got)
    }

    /// What a hostile or broken peer may send gets an error, never a panic
    /// or a hang, and a parked channel takes no HTTP/2 bytes.
    #[tokio::test]
    async fn a_peer_out_of_turn_is_an_error() {
        // Parked: DATA, an unknown kind, a control with a length, a cut header.
        assert!(raw(&[0, 0, 0, 1, 9], Role::Bastion, false).await.is_err());
        assert!(raw(&[9, 0, 0, 0], Role::Bastion, false).await.is_err());
        assert!(raw(&[4, 0, 0, 1], Role::Bastion, false).await.is_err());
        assert!(raw(&[4, 0], Role::Bastion, false).await.is_err());
        assert!(
            raw(&[0, 0, 0, 2, 1], Role::Bastion, true).await.is_err(),
            "DATA cut short"
        );
        assert_eq!(raw(&[], Role::Bastion, false).await.unwrap(), None);
        assert_eq!(
            raw(&[0, 0, 0, 1, 9, 2, 0, 0, 0], Role::Bastion, true)
                .await
                .unwrap(),
            Some(Control::Parked)
        );
        // Live: an empty DATA chunk, a PARK sent to the bastion, a PONG for
        // no PING; PINGs pass, and the PONGs of PINGs sent.
        assert!(live_read(&[0, 0, 0, 0], Role::Bastion, 0).await.is_err());
        assert!(live_read(&[1, 0, 0, 0], Role::Bastion, 0).await.is_err());
        assert!(live_read(&[5, 0, 0, 0], Role::Bastion, 0).await.is_err());
        let crossed = [4, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 42];
        assert_eq!(live_read(&crossed, Role::Bastion, 2).await.unwrap(), [42]);
        assert!(live_read(&crossed, Role::Bastion, 1).await.is_err());
        // Chunks read on in one go; an error after bytes comes after them.
        let mut io = {
            let (a, mut b) = duplex(1024);
            b.write_all(&[0, 0, 0, 1, 1, 0, 0, 0, 2, 2, 3, 9, 0, 0, 0])
                .await
                .unwrap();
            drop(b);
            Framed::new(a, Role::Bastion).io()
        };
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        assert_eq!(&buf[..3], [1, 2, 3]);
        assert!(io.read(&mut buf).await.is_err());
        assert!(io.read(&mut buf).await.is_err());
        // A stream cut inside a chunk is an error, at a boundary an end.
        assert!(live_read(&[0, 0, 0, 5, 1], Role::Agent, 0).await.is_err());
        assert_eq!(
            live_read(&[0, 0, 0, 1, 1], Role::Agent, 0).await.unwrap(),
            [1]
        );
    }

    /// A parked side pings a quiet peer, and a peer that never answers is
    /// found dead; one that answers is kept, until it wakes the channel.
    #[tokio::test]
    async fn a_parked_peer_is_pinged_and_found_dead_when_silent() {
        // Above the least gap between PINGs a side answers.
        let short = MIN_PING_GAP + Duration::from_millis(20);
        let (bastion, silent) = duplex(1024);
        let bastion = Framed::new(bastion, Role::Bastion);
        let e = bastion.parked(short, short).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(silent);

        let (bastion, node) = pair(1024);
        let node = tokio::spawn(async move { node.parked(LONG, LONG).await });
        // A few pings answered, then a wake.
        let held = tokio::time::timeout(short * 6, bastion.parked(short, short)).await;
        assert!(held.is_err(), "an answering peer was given up: {held:?}");
        bastion.send(Control::Wake).await.unwrap();
        assert_eq!(node.await.unwrap().unwrap(), Some(Control::Wake));

        // A peer that closes is an end, one that floods PINGs an error.
        let (bastion, node) = pair(1024);
        let parked = tokio::spawn(async move { node.parked(LONG, LONG).await });
        bastion.close().await.unwrap();
        drop(bastion);
        assert_eq!(parked.await.unwrap().unwrap(), None);
        // PINGs in a bunch: one answered, the channel kept; a PONG for no
        // PING: an error.
        let (bastion, node) = pair(1024);
        let parked = tokio::spawn(async move { node.parked(LONG, LONG).await });
        for _ in 0..3 {
            bastion.send(Control::Ping).await.unwrap();
        }
        assert_eq!(bastion.recv(false).await.unwrap(), Some(Control::Pong));
        let answered_twice = tokio::time::timeout(short, bastion.recv(false)).await;
        assert!(answered_twice.is_err(), "{answered_twice:?}");
        bastion.send(Control::Pong).await.unwrap();
        let e = parked.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    /// A PING or PONG that crossed a wake is let through where the next
    /// connection's bytes, or a new park's PARKED, are due; anything else
    /// out of turn there is an error.
    #[tokio::test]
    async fn strays_that_crossed_a_wake_are_let_through() {
        let (bastion, node) = pair(1024);
        node.rearm();
        bastion.send(Control::Ping).await.unwrap();
        bastion.io().write_all(b"preface").await.unwrap();
        node.data_ahead().await.unwrap();
        let mut got = [0u8; 7];
        node.io().read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"preface");

        // The bastion pinged just before it woke the channel, and parks it
        // again before the PONG came: the PONG passes, as does a PING.
        let (bastion, node) = pair(1024);
        bastion.send(Control::Ping).await.unwrap();
        node.send(Control::Pong).await.unwrap();
        node.send(Control::Ping).await.unwrap();
        node.send(Control::Parked).await.unwrap();
        bastion.park(LONG).await.unwrap();
        // A second PONG would be for no PING.
        let (bastion, node) = pair(1024);
        bastion.send(Control::Ping).await.unwrap();
        node.send(Control::Pong).await.unwrap();
        node.send(Control::Pong).await.unwrap();
        assert!(bastion.park(LONG).await.is_err());

        let (bastion, node) = pair(1024);
        node.rearm();
        bastion.send(Control::Wake).await.unwrap();
        assert!(node.data_ahead().await.is_err());
    }

    /// The stream under, as a test sees it: takes at most `allow` bytes
    /// (then waits), counts the writes that reach it, never has bytes to read.
    struct Sink {
        allow: std::sync::atomic::AtomicUsize,
        writes: std::sync::atomic::AtomicUsize,
        out: Mutex<Vec<u8>>,
    }

    impl Sink {
        fn new(allow: usize) -> Self {
            Sink {
                allow: allow.into(),
                writes: 0.into(),
                out: Mutex::default(),
            }
        }

        fn out(&self) -> Vec<u8> {
            self.out.lock().unwrap().clone()
        }

        fn writes(&self) -> usize {
            self.writes.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            use std::sync::atomic::Ordering::Relaxed;
            let mut allow = self.allow.load(Relaxed);
            if allow == 0 {
                return Poll::Pending;
            }
            self.writes.fetch_add(1, Relaxed);
            let mut out = self.out.lock().unwrap();
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(allow);
                out.extend_from_slice(&b[..k]);
                allow -= k;
                n += k;
            }
            self.allow.fetch_sub(n, Relaxed);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A wake's WAKE and the new connection's preface leave with its first
    /// frames, in one write; a flush sends them alone when nothing follows.
    #[tokio::test]
    async fn a_wake_leaves_with_the_first_frames_in_one_write() {
        let side = Framed::new(Sink::new(usize::MAX), Role::Bastion);
        side.wake();
        assert!(!side.at_boundary());
        let mut io = side.io();
        io.write_all(b"PRI-PREFACE").await.unwrap();
        assert_eq!(side.with_io(Sink::writes), 0);
        io.write_all(b"SETTINGS").await.unwrap();
        let mut want = vec![3, 0, 0, 0, 0, 0, 0, 11];
        want.extend_from_slice(b"PRI-PREFACE");
        want.extend_from_slice(&[0, 0, 0, 8]);
        want.extend_from_slice(b"SETTINGS");
        assert_eq!(side.with_io(|c| (c.writes(), c.out())), (1, want));
        assert!(side.at_boundary());

        let side = Framed::new(Sink::new(usize::MAX), Role::Bastion);
        side.wake();
        let mut io = side.io();
        io.write_all(b"PRI").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            side.with_io(Sink::out),
            [3, 0, 0, 0, 0, 0, 0, 3, b'P', b'R', b'I']
        );
        assert!(side.at_boundary());
    }

    /// A PING cut half-way (its send dropped when a call came) is finished
    /// before WAKE, so the agent reads whole headers.
    #[tokio::test]
    async fn a_ping_cut_by_a_wake_is_finished_before_it() {
        use std::sync::atomic::Ordering::Relaxed;
        let side = Framed::new(Sink::new(2), Role::Bastion);
        {
            let mut ping = std::pin::pin!(side.send(Control::Ping));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(ping.as_mut().poll(&mut cx).is_pending());
        }
        side.wake();
        side.with_io(|h| h.allow.store(usize::MAX, Relaxed));
        let mut io = side.io();
        io.write_all(b"PRI").await.unwrap();
        io.write_all(b"S").await.unwrap();
        let out = side.with_io(Sink::out);
        assert_eq!(
            out,
            [
                4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 3, b'P', b'R', b'I', 0, 0, 0, 1, b'S'
            ]
        );
    }
}
