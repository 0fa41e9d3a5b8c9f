//! The bodies of the fuzz targets, one function per target in `fuzz/fuzz_targets/`.
//!
//! Each libFuzzer target is one line that calls its body here, and
//! `tests/tests/fuzz_replay.rs` calls the same body on every seed
//! (`fuzz/seeds/<target>/`), every input cargo-fuzz kept after a crash
//! (`fuzz/artifacts/<target>/`) and the corpus `scripts/fuzz` grew in its cache.
//! So a crash input is checked by the ordinary test run, without cargo-fuzz or a
//! fuzz build, and the long fuzzing (`scripts/fuzz`) tests exactly the same
//! assertions. A body panics when an invariant breaks; an input it cannot use is
//! no failure.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use postern_agent::exec::capture::Capture;
use postern_api::kube_keys::{self, KubeKeysFile, MAX_KEYS, MAX_REJECTED};
use postern_api::labels::{Labels, MAX_SELECTOR_BYTES, Selector};
use postern_api::ssh::{BreakGlassFile, GrantsFile, KeysAnswer, KeysQuery, LinkState};
use postern_api::{admin, agent, cmdexec, kube, ssh, validate};
use postern_bastion::pki::{Pki, node_cert_info, pem_to_der};
use postern_bastion::ssh::keys::parse_user_key;

/// A target's body: panics when the input breaks an invariant.
pub type Body = fn(&[u8]);

/// Every target by its name (the file name in `fuzz/fuzz_targets/`).
pub const TARGETS: &[(&str, Body)] = &[
    ("agent_channel", agent_channel),
    ("authorized_key", authorized_key),
    ("channel_framing", channel_framing),
    ("csr", csr),
    ("identity", identity),
    ("keys_helper", keys_helper),
    ("kube_annotation", kube_annotation),
    ("kube_request", kube_request),
    ("label_selector", label_selector),
    ("output_capture", output_capture),
    ("rest_bodies", rest_bodies),
];

/// The body of the target called `name`.
pub fn body(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("serializes"))
            .expect("what was read reads again");
        assert_eq!(v, again);
    }
}

fn parses<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

/// Messages on the agent channel, both ways: what the bastion reads from an
/// agent and what an agent reads from the bastion. Nothing panics, and what
/// parses survives a round trip unchanged.
pub fn agent_channel(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 9 {
        // Bastion → agent.
        0 => parses::<cmdexec::AgentExec>(rest),
        1 => parses::<ssh::GrantPush>(rest),
        2 => parses::<agent::InstallCert>(rest),
        // Agent → bastion.
        3 => {
            round_trip::<cmdexec::AgentExecResult>(rest);
            if let Ok(r) = serde_json::from_slice::<cmdexec::AgentExecResult>(rest) {
                let n = serde_json::to_vec(&r).expect("serializes").len();
                let kept = r.stdout.data.len().max(r.stderr.data.len());
                if kept <= cmdexec::MAX_KEEP_BYTES
                    && r.exec_id.len() <= 64
                    && r.error
                        .as_ref()
                        .is_none_or(|e| e.len() <= cmdexec::MAX_ERROR_TEXT)
                    && r.stdout.sha256.len() <= 64
                    && r.stderr.sha256.len() <= 64
                {
                    assert!(n <= cmdexec::max_result_answer(kept), "{n} bytes");
                }
            }
        }
        4 => parses::<agent::Health>(rest),
        5 => parses::<agent::CsrResponse>(rest),
        6 => parses::<ssh::GrantPushed>(rest),
        // Enrollment, both ways.
        7 => parses::<agent::EnrollRequest>(rest),
        _ => {
            parses::<agent::EnrollResponse>(rest);
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = agent::parse_ca_hash(s);
            }
        }
    }
}

/// The agent channel's framing (`postern_channel`) fed by a hostile peer, on
/// either side: live (what h2 reads), parked (the controls, with h2's bytes
/// skipped or refused), waiting for a new connection's bytes after a wake,
/// and the write side (h2's writes cut anywhere, then a park). Nothing panics
/// or waits on bytes that came, and the framing does exactly what a plain
/// reading of the chunks says: h2 gets the DATA chunks' bytes in order, a
/// control out of turn or a chunk cut short is an error, the agent stops at
/// PARK, and what is written reads back as written.
pub fn channel_framing(data: &[u8]) {
    use postern_channel::{Control, Framed, Role};
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    let Some((&mode, peer)) = data.split_first() else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Bastion
    } else {
        Role::Agent
    };
    // The stream under sometimes has nothing yet: every read then waits once.
    let pends = mode & 16 != 0;
    let mut cx = Context::from_waker(Waker::noop());
    let chunks = plain_chunks(peer);
    match (mode >> 1) & 7 {
        // Live: what h2 reads.
        0 => {
            let side = Framed::new(Fed::new(peer, pends), role);
            let mut io = side.io();
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            // Polled until the end, an error, or waits that read nothing
            // (PARK): the stream under never waits twice in a row.
            let left = |side: &Framed<Fed<'_>>| side.with_io(|f| f.peer.len());
            let mut idle = 0;
            let outcome = loop {
                let before = left(&side);
                let mut rb = ReadBuf::new(&mut buf);
                match std::pin::Pin::new(&mut io).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => break "end",
                    Poll::Ready(Ok(())) => got.extend_from_slice(rb.filled()),
                    Poll::Ready(Err(_)) => break "error",
                    Poll::Pending if left(&side) == before => {
                        idle += 1;
                        if idle == 2 {
                            break "park";
                        }
                        continue;
                    }
                    Poll::Pending => {}
                }
                idle = 0;
            };
            let mut want = Vec::new();
            let expected = 'walk: {
                for c in &chunks {
                    match *c {
                        Chunk::Data(bytes) if !bytes.is_empty() => want.extend_from_slice(bytes),
                        Chunk::Control(1, 0) if role == Role::Agent => break 'walk "park",
                        Chunk::Control(4, 0) => {}
                        Chunk::CutData(bytes) => {
                            want.extend_from_slice(bytes);
                            break 'walk "error";
                        }
                        _ => break 'walk "error",
                    }
                }
                "end"
            };
            assert_eq!(outcome, expected, "chunks {chunks:?}");
            assert_eq!(got, want, "chunks {chunks:?}");
            if expected == "park" {
                let mut park = std::pin::pin!(std::future::poll_fn(|cx| side.poll_park(cx)));
                assert!(park.as_mut().poll(&mut cx).is_ready());
            }
        }
        // Parked (controls; h2's bytes refused) and parking (h2's bytes and
        // PINGs skipped), then after a wake (h2's bytes due).
        op @ 1..=3 => {
            let side = Framed::new(Fed::new(peer, pends), role);
            let skip = op == 2;
            let poll = |cx: &mut Context<'_>| {
                if op == 3 {
                    std::pin::pin!(side.data_ahead())
                        .as_mut()
                        .poll(cx)
                        .map(|r| r.map(|()| None))
                } else {
                    std::pin::pin!(side.recv(skip)).as_mut().poll(cx)
                }
            };
            // A wait is followed by bytes: polled again (cancel-safe).
            let got = loop {
                match poll(&mut cx) {
                    Poll::Ready(r) => break r,
                    Poll::Pending => continue,
                }
            };
            let expected: Result<Option<u8>, ()> = 'walk: {
                for c in &chunks {
                    match *c {
                        Chunk::Data(bytes) if op == 3 && !bytes.is_empty() => break 'walk Ok(None),
                        // A DATA header is all it waits for.
                        Chunk::CutData(_) if op == 3 => break 'walk Ok(None),
                        Chunk::Data(bytes) if skip && !bytes.is_empty() => {}
                        Chunk::Control(4, 0) if op != 1 => {}
                        Chunk::Control(kind @ 1..=5, 0) if op != 3 => break 'walk Ok(Some(kind)),
                        _ => break 'walk Err(()),
                    }
                }
                if op == 3 { Err(()) } else { Ok(None) }
            };
            match (expected, got) {
                (Ok(None), Ok(None)) | (Err(()), Err(_)) => {}
                (Ok(Some(kind)), Ok(Some(c))) => assert_eq!(c as u8, kind),
                (e, r) => panic!("expected {e:?}, got {r:?}, chunks {chunks:?}"),
            }
        }
        // The write side: h2's writes, in pieces the input sizes, through a
        // stream that takes at most a few bytes at a time, given up at some
        // point, then PARKED (after zeros for the chunk's rest).
        _ => {
            let cap = usize::from(mode >> 5) + 1;
            let side = Framed::new(Fed::sink(cap), role);
            let mut io = side.io();
            let mut written = Vec::new();
            let mut rest = peer;
            'writes: while let Some((&len, tail)) = rest.split_first() {
                let len = (usize::from(len) % 48 + 1).min(tail.len());
                if len == 0 {
                    break;
                }
                let (piece, tail) = tail.split_at(len);
                rest = tail;
                let (a, b) = piece.split_at(piece.len() / 2);
                let slices = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
                let mut io = std::pin::Pin::new(&mut io);
                match io.as_mut().poll_write_vectored(&mut cx, &slices) {
                    Poll::Ready(Ok(n)) => {
                        assert!(n > 0 && n <= piece.len());
                        written.extend_from_slice(&piece[..n]);
                        // h2 gives up here when the input says so.
                        if n < piece.len() && len % 2 == 0 {
                            break 'writes;
                        }
                        if n < piece.len() {
                            written.extend_from_slice(&piece[n..]);
                            let mut left = &piece[n..];
                            while !left.is_empty() {
                                match io.as_mut().poll_write(&mut cx, left) {
                                    Poll::Ready(Ok(k)) => left = &left[k..],
                                    r => panic!("a sink that takes bytes refused: {r:?}"),
                                }
                            }
                        }
                    }
                    r => panic!("a sink that takes bytes refused: {r:?}"),
                }
            }
            let parked = std::pin::pin!(side.send(Control::Parked))
                .as_mut()
                .poll(&mut cx);
            assert!(matches!(parked, Poll::Ready(Ok(()))), "{parked:?}");
            let out = side_sink(&side);
            let chunks = plain_chunks(&out);
            let Some((Chunk::Control(2, 0), data)) = chunks.split_last() else {
                panic!("PARKED does not end what was written: {chunks:?}");
            };
            let mut sent = Vec::new();
            for c in data {
                let Chunk::Data(bytes) = c else {
                    panic!("not DATA before PARKED: {chunks:?}");
                };
                assert!(!bytes.is_empty());
                sent.extend_from_slice(bytes);
            }
            assert!(sent.starts_with(&written), "{sent:?} against {written:?}");
            assert!(sent[written.len()..].iter().all(|&b| b == 0));
        }
    }

    fn side_sink(side: &Framed<Fed<'_>>) -> Vec<u8> {
        let mut out = Vec::new();
        side.with_io(|f: &Fed<'_>| out.extend_from_slice(&f.out));
        out
    }
}

/// A chunk as a plain reading of the framing sees it: `CutData` is DATA the
/// end cut short (what came of it), `Cut` a header cut short.
#[derive(Debug)]
enum Chunk<'a> {
    Data(&'a [u8]),
    Control(u8, usize),
    CutData(&'a [u8]),
    Cut,
}

fn plain_chunks(mut peer: &[u8]) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    while !peer.is_empty() {
        let Some((head, rest)) = peer.split_first_chunk::<4>() else {
            out.push(Chunk::Cut);
            break;
        };
        let len = usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
        if head[0] != 0 {
            out.push(Chunk::Control(head[0], len));
            if len > 0 {
                break;
            }
            peer = rest;
            continue;
        }
        if rest.len() < len {
            out.push(Chunk::CutData(rest));
            break;
        }
        out.push(Chunk::Data(&rest[..len]));
        peer = &rest[len..];
    }
    out
}

/// What a peer sent, all of it there (after a wait before each read, when
/// `pends`), then the end; writes are kept, at most `cap` bytes a call.
struct Fed<'a> {
    peer: &'a [u8],
    pends: bool,
    waited: bool,
    cap: usize,
    out: Vec<u8>,
}

impl<'a> Fed<'a> {
    fn new(peer: &'a [u8], pends: bool) -> Self {
        Fed {
            peer,
            pends,
            waited: false,
            cap: usize::MAX,
            out: Vec::new(),
        }
    }

    fn sink(cap: usize) -> Self {
        Fed {
            cap,
            ..Fed::new(&[], false)
        }
    }
}

impl tokio::io::AsyncRead for Fed<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pends && !self.waited && !self.peer.is_empty() {
            self.waited = true;
            return std::task::Poll::Pending;
        }
        self.waited = false;
        // A few bytes at a time, as TLS records may cut them.
        let n = buf.remaining().min(self.peer.len()).min(3);
        buf.put_slice(&self.peer[..n]);
        self.peer = &self.peer[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Fed<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.cap);
        self.out.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Public-key text as users register it (`POST /users/{u}/ssh-keys`): nothing
/// panics, and a key that is accepted is stored in a canonical form that parses
/// again to the same fingerprint and passes the agent's key check.
pub fn authorized_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = parse_user_key(text) {
        assert!(ssh::check_key_text(&k.public_key), "{:?}", k.public_key);
        assert!(!k.comment.chars().any(char::is_control));
        let again = parse_user_key(&k.public_key).expect("the canonical form parses");
        assert_eq!(again.fingerprint, k.fingerprint);
    }
}

/// One CA for every CSR of the process: making a CA costs far more than a CSR.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Arc<Pki>> = OnceLock::new();
    PKI.get_or_init(|| Pki::in_memory(Duration::from_secs(3600)).expect("a CA"))
}

/// Certificate signing requests as nodes send them (enrollment and rotation):
/// nothing panics, and whatever is signed is a certificate for the node the
/// bastion named, never for a name the CSR asked for.
pub fn csr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pem_to_der(text);
    let _ = node_cert_info(data);
    if let Ok(issued) = pki().sign_node_csr(text, "node-under-test") {
        let der = pem_to_der(&issued.cert_pem).expect("we wrote it");
        let info = node_cert_info(&der).expect("we wrote it");
        assert_eq!(info.node_id, "node-under-test");
    }
}

fn one_line(s: &str) {
    assert!(!s.contains(['\n', '\r', '\0']), "{s:?}");
}

/// The keys-socket protocol and the files the keys helper reads (grants.json,
/// link.json, break-glass.json): nothing panics, and no input can make the
/// helper print more than one line per grant, or a line carrying anything but
/// the options Postern writes and one key.
pub fn keys_helper(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            let _ = serde_json::from_slice::<KeysQuery>(rest);
        }
        1 => {
            if let Ok(a) = serde_json::from_slice::<KeysAnswer>(rest) {
                for g in &a.grants {
                    for login in ["root", "deploy"] {
                        if let Some(line) = ssh::authorized_keys_line(g, login, 1_700_000_000_000) {
                            one_line(&line);
                        }
                    }
                }
                for k in &a.break_glass {
                    if let Some(line) = ssh::break_glass_line(k) {
                        one_line(&line);
                    }
                }
            }
        }
        2 => {
            if let Ok(f) = serde_json::from_slice::<GrantsFile>(rest) {
                for g in &f.grants {
                    if let Some(line) = ssh::authorized_keys_line(g, "root", i64::MAX) {
                        one_line(&line);
                    }
                    let _ = g.allows_login("root");
                    let _ = g.is_live(0);
                }
            }
        }
        3 => {
            if let Ok(l) = serde_json::from_slice::<LinkState>(rest) {
                let _ = l.unreachable_since_agent_silent();
            }
        }
        4 => {
            let _ = serde_json::from_slice::<BreakGlassFile>(rest);
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if ssh::check_key_text(s) {
                    one_line(s);
                }
                let _ = ssh::check_fingerprint(s);
                if let Some(line) = ssh::break_glass_line(s) {
                    one_line(&line);
                }
            }
            if rest.len() >= 8 {
                let ms = i64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                if let Some(t) = ssh::expiry_time(ms) {
                    one_line(&t);
                }
            }
        }
    }
}

/// The signer: the key of `api/src/kube_keys/signed/tests.rs` whose `ssh-keygen`
/// signature is in the seed `signed` (its private key is not anywhere).
const KUBE_SIGNER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIBdgJ9ee8rkVhmglxTL0oi8buJDzGkYeJGV/KsLI9gV admin";
/// SHA-256 of the one document KUBE_SIGNER signed.
const KUBE_SIGNED_DOC_SHA256: &str =
    "8c2c9ea3af9aed32460bcda4b73cc7292e6e5c754cfbea7f734b52accb7e5efe";
/// 2029-06-01T00:00:00Z: the signed document (not-after 2030) is valid then.
const KUBE_NOW_MS: i64 = 1_874_966_400_000;

/// The Kubernetes Node annotations (`postern.dev/authorized-keys` and its
/// signature `postern.dev/authorized-keys-sig`), which anyone who may update the
/// Node or its status writes: nothing panics, the bounds hold, nothing but the one
/// document the signer key signed (the seed `signed`) is ever accepted, every
/// accepted key is well formed, and every printed line is one line with one key
/// and only the options Postern writes.
pub fn kube_annotation(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 1 {
        // The cache file as the keys helper reads it.
        if let Ok(f) = serde_json::from_slice::<KubeKeysFile>(rest) {
            for k in &f.keys {
                if let Some(line) = kube_keys::authorized_keys_line(k, "root", 1_700_000_000_000) {
                    assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
                    assert!(line.starts_with("restrict,pty"), "{line:?}");
                }
            }
        }
        return;
    }
    if which % 4 == 2 {
        // The document, a NUL, the signature.
        let (doc, sig) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let Ok(doc) = std::str::from_utf8(doc) else {
            return;
        };
        let Ok(sig) = sig.map(std::str::from_utf8).transpose() else {
            return;
        };
        let Ok(signers) = kube_keys::signed::Signers::parse(KUBE_SIGNER) else {
            panic!("the signer key parses");
        };
        let cx = kube_keys::signed::Context {
            node_name: "worker-3",
            signers: &signers,
            now_ms: KUBE_NOW_MS,
            floor: None,
        };
        let out = kube_keys::signed::evaluate(Some(doc), sig, &cx);
        if let Some(a) = &out.accepted {
            assert_eq!(
                a.sha256, KUBE_SIGNED_DOC_SHA256,
                "accepted a document nobody signed: {doc:?}"
            );
        } else {
            assert!(out.parsed.keys.is_empty());
        }
        assert!(out.parsed.keys.len() <= MAX_KEYS);
        for r in &out.parsed.rejected {
            assert!(
                r.reason.len() < 300 && !r.reason.contains(['\n', '\r']),
                "{r:?}"
            );
        }
        for k in &out.parsed.keys {
            assert!(k.is_well_formed(), "{k:?}");
            assert!(k.expires_at_ms.is_some(), "capped at not-after: {k:?}");
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let p = kube_keys::parse_annotation(text);
    assert!(p.keys.len() <= MAX_KEYS);
    assert!(p.rejected.len() <= MAX_REJECTED);
    for k in &p.keys {
        assert!(k.is_well_formed(), "{k:?}");
        for login in ["root", "deploy"] {
            if let Some(line) = kube_keys::authorized_keys_line(k, login, 0) {
                assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
                let words: Vec<&str> = line.split(' ').collect();
                assert_eq!(words.len(), 4, "options, algorithm, key, comment: {line:?}");
                assert_eq!(format!("{} {}", words[1], words[2]), k.public_key);
            }
        }
    }
}

/// What a Kubernetes client sends the bastion's Kubernetes door: the API path
/// read for the audit log, the TLS server name that names an edge, header names
/// and `Connection` lists checked before anything crosses a hop, and Kubernetes
/// groups. Nothing panics, what is kept is bounded and free of control
/// characters, and no credential or identity header is ever forwardable.
pub fn kube_request(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (method, rest) = s.split_once(' ').unwrap_or(("GET", s));
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let i = kube::request_info(method, path, query);
    for part in [
        &i.namespace,
        &i.name,
        &i.resource,
        &i.subresource,
        &i.api_group,
        &i.path,
    ] {
        assert!(part.chars().count() <= 253);
        assert!(!part.chars().any(char::is_control));
    }
    assert!(i.verb.chars().count() <= 32);
    let named = kube::connection_named(s.split('\n'));
    assert!(named.len() <= 16);
    let lower = s.to_ascii_lowercase();
    if lower == "authorization"
        || lower.starts_with("impersonate-")
        || lower.starts_with("postern-")
    {
        assert!(!kube::forwardable(&lower, &named));
    }
    if kube::check_group(s).is_ok() {
        assert!(!s.starts_with("system:") && s.len() <= kube::MAX_GROUP_LEN);
        assert!(http::HeaderValue::from_str(s).is_ok());
    }
}

/// Label selectors as users write them to pick nodes by their labels: nothing
/// panics, a refusal points inside the input, an accepted selector prints a
/// canonical form that parses back to the same selector and prints the same
/// again, and matching it against labels never panics.
pub fn label_selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Selector::parse(text) {
        Ok(s) => {
            let canonical = s.to_string();
            assert!(canonical.len() <= MAX_SELECTOR_BYTES, "{canonical:?}");
            let again = Selector::parse(&canonical).expect("the canonical form parses");
            assert_eq!(again, s, "{text:?} printed {canonical:?}");
            assert_eq!(again.to_string(), canonical);
            let labels: Labels = [("role", "db"), ("zone", "a"), ("in", ""), ("x.io/k", "b")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let _ = s.matches(&labels);
            let _ = s.matches(&Labels::new());
        }
        Err(e) => {
            assert!(e.position() <= text.len().max(MAX_SELECTOR_BYTES), "{e}");
        }
    }
}

/// The agent's bounded capture of command output, fed any bytes in any chunks:
/// the total and hash cover everything, output that fits is kept byte for byte,
/// UTF-8 text stays UTF-8 after the cuts, and what is kept stays near the budget.
pub fn output_capture(data: &[u8]) {
    let Some((head, input)) = data.split_at_checked(3) else {
        return;
    };
    let keep = usize::from(u16::from_le_bytes([head[0], head[1]])) % 4096 + 2;
    let chunk = usize::from(head[2]) + 1;
    let mut c = Capture::new(keep);
    for part in input.chunks(chunk) {
        c.push(part);
    }
    let o = c.finish();
    assert_eq!(o.total_bytes, input.len() as u64);
    assert_eq!(
        o.sha256,
        hex::encode(ring::digest::digest(&ring::digest::SHA256, input))
    );
    if !o.truncated {
        assert_eq!(o.data, input);
    } else {
        assert!(
            o.data.len() <= keep + 200,
            "kept {} of a {keep} budget",
            o.data.len()
        );
    }
    if std::str::from_utf8(input).is_ok() {
        assert!(
            std::str::from_utf8(&o.data).is_ok(),
            "UTF-8 output lost its encoding"
        );
    }
}

fn check_peer_text(s: &str) {
    for max in [0, 1, 3, 64, 256] {
        let t = validate::peer_text(s, max);
        assert!(t.len() <= max.max(3), "peer_text over budget");
        assert!(!t.contains('\0'));
        let l = validate::peer_line(s, max);
        assert!(!l.contains(['\n', '\r', '\0']));
    }
}

/// REST bodies and query strings as the API reads them, and the validation that
/// follows: no input may panic, and what parses obeys its invariants.
pub fn rest_bodies(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<cmdexec::ExecuteRequest>(rest) {
                let _ = validate::range(
                    "timeout",
                    r.timeout.unwrap_or(60),
                    cmdexec::TIMEOUT_MIN_SECS,
                    cmdexec::TIMEOUT_MAX_SECS,
                );
                for h in r.target.iter().flatten() {
                    let _ = validate::hostname(h);
                }
            }
        }
        1 => {
            let _ = serde_json::from_slice::<admin::CreateProject>(rest);
        }
        2 => {
            let _ = serde_json::from_slice::<admin::CreateEdge>(rest);
        }
        3 => {
            let _ = serde_json::from_slice::<admin::CreateUser>(rest);
        }
        4 => {
            if let Ok(b) = serde_json::from_slice::<admin::RoleBinding>(rest) {
                for l in &b.logins {
                    let _ = validate::login(l);
                }
            }
        }
        5 => {
            let _ = serde_json::from_slice::<admin::CreateToken>(rest);
        }
        6 => {
            let _ = serde_json::from_slice::<admin::CreateEnrollmentToken>(rest);
        }
        7 => {
            let _ = serde_json::from_slice::<ssh::AddSshKey>(rest);
        }
        8 => {
            if let Ok(q) = serde_urlencoded::from_bytes::<admin::PageQuery>(rest)
                && let Ok((limit, offset)) = q.bounds()
            {
                assert!((1..=admin::PAGE_LIMIT_MAX).contains(&limit) && offset >= 0);
            }
        }
        9 => {
            if let Ok(q) = serde_urlencoded::from_bytes::<cmdexec::NodePageQuery>(rest)
                && let Ok((limit, offset)) = q.bounds()
            {
                assert!((1..=cmdexec::NODE_LIMIT_MAX).contains(&limit) && offset >= 0);
            }
        }
        10 => {
            // Output bytes round-trip through the API's encoding.
            let (text, enc) = cmdexec::encode_output(rest.to_vec());
            assert_eq!(cmdexec::decode_output(&text, enc).as_deref(), Some(rest));
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                check_peer_text(s);
                let _ = validate::name("user", s);
                let _ = validate::hostname(s);
                let _ = validate::login(s);
            }
        }
    }
}

/// What strangers send to sign in, and what an identity provider or a client
/// hands the bastion: ID tokens, TOTP and recovery codes, session and
/// invitation tokens, SSH certificates, the sign-in bodies. Nothing panics,
/// and nothing made of random bytes is ever accepted as a signed token or a
/// certificate of the bastion's user CA.
pub fn identity(data: &[u8]) {
    use postern_bastion::identity::{oidc, recovery, sso, totp};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 8 {
        0 => {
            let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","alg":"ES256",
                "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
            assert!(
                oidc::verify(&text, jwks, "https://idp.example", "postern", "n", "groups").is_err(),
                "an ID token nobody signed was accepted"
            );
        }
        1 => {
            let secret = b"12345678901234567890";
            if let Ok(Some(_)) = totp::check(secret, &text, 1_800_000_000) {
                assert!(text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()));
            }
        }
        2 => {
            let h = recovery::hash(&text);
            assert_eq!(h.len(), 64);
            let _ = recovery::looks_like(&text);
        }
        3 => {
            for prefix in ["pss", "pst", "piv"] {
                if let Some((id, secret)) = postern_bastion::secrets::parse_token(prefix, &text) {
                    assert!(id.len() == 24 && secret.len() <= 64);
                }
            }
        }
        4 => {
            let ca = user_ca();
            let now = 1_800_000_000;
            for cert in [
                ssh_key::Certificate::from_openssh(&text).ok(),
                ssh_key::Certificate::from_bytes(rest).ok(),
            ]
            .into_iter()
            .flatten()
            {
                assert!(
                    ca.check(&cert, "ann", now).is_err(),
                    "a certificate the user CA never signed was accepted"
                );
            }
        }
        5 => {
            parses::<postern_api::identity::Login>(rest);
            parses::<postern_api::identity::AcceptInvitation>(rest);
            parses::<postern_api::identity::PutOidcProvider>(rest);
            parses::<postern_api::identity::Collect>(rest);
            parses::<postern_api::identity::StartDevice>(rest);
            parses::<postern_api::identity::OrgPolicy>(rest);
        }
        6 => {
            let who = oidc::Asserted {
                subject: text.to_string(),
                email: Some(text.to_string()),
                email_verified: Some(true),
                preferred_username: Some(text.to_string()),
                groups: vec![],
                amr: vec![],
                acr: None,
            };
            if let Some(n) = sso::user_name_for(&who) {
                assert!(validate::name("user", &n).is_ok(), "{n:?}");
            }
        }
        _ => {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(rest) {
                h.insert("x-forwarded-for", v);
            }
            let peer: std::net::IpAddr = "127.0.0.1".parse().expect("an address");
            let got = postern_bastion::http::client_ip(&h, Some(peer), &["127.0.0.1".into()]);
            assert!(got.is_some());
        }
    }
}

fn user_ca() -> &'static postern_bastion::pki::ssh_user_ca::UserCa {
    static CA: OnceLock<postern_bastion::pki::ssh_user_ca::UserCa> = OnceLock::new();
    CA.get_or_init(|| postern_bastion::pki::ssh_user_ca::UserCa::generate().expect("a CA"))
}
