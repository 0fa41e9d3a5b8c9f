//! Recording `kubectl exec` and `attach`: the bytes after the protocol switch
//! are read as the client and the API server speak them, without changing a
//! byte, and what the container shows goes to a recording as an SSH session's
//! does (policy, strict, chain, replay).
//!
//! Two wires, both read incrementally (a frame of any length costs no memory
//! beyond the piece at hand):
//! - WebSocket (`channel.k8s.io` in its versions, and the `base64` ones): read
//!   as the kubelet's and API server's `wsstream` reads it, frame by frame:
//!   every data frame (a continuation too, and any opcode but close, ping and
//!   pong) starts with its channel: 1 stdout and 2 stderr are output, 3 the
//!   status at the end (a marker), and from the client 0 stdin (input, when the
//!   policy records it) and 4 a resize. Reading the way the far end reads is
//!   what keeps a client from framing input so that the recorder and the pod
//!   see different things.
//! - SPDY/3.1 (kubectl before 1.30, and any that falls back): every data frame
//!   the server sends is output, whatever stream it is on, so no choice of
//!   stream order by the client hides output. Which client stream is stdin or
//!   a resize is in compressed headers this reader does not inflate, so for
//!   SPDY neither input nor resizes are recorded; a marker says so.
//!
//! Nothing here trusts the peer: lengths are only skipped or counted, never
//! allocated, and a resize message is read only up to a few hundred bytes.

use base64::Engine as _;

/// The protocol spoken after the switch, from the answer's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    WebSocket { base64: bool },
    Spdy,
}

impl Wire {
    /// `upgrade`: the switched-to protocol; `subprotocol`: the WebSocket
    /// subprotocol the server chose.
    ///
    /// `None` for a WebSocket subprotocol that is not Kubernetes' channel
    /// protocol (nothing else is known to carry a session); none at all is
    /// the binary channel protocol.
    pub fn of(upgrade: &str, subprotocol: Option<&str>) -> Option<Wire> {
        if upgrade.eq_ignore_ascii_case("websocket") {
            // None or empty: the first, binary `channel.k8s.io`, as the
            // kubelet speaks it when no subprotocol was agreed.
            let p = subprotocol.map(str::trim).unwrap_or_default();
            if p.is_empty() {
                return Some(Wire::WebSocket { base64: false });
            }
            let known = KNOWN_SUBPROTOCOLS.contains(&p);
            known.then(|| Wire::WebSocket {
                base64: p.split('.').any(|part| part == "base64"),
            })
        } else if upgrade.to_ascii_lowercase().starts_with("spdy/") {
            Some(Wire::Spdy)
        } else {
            None
        }
    }
}

/// The WebSocket subprotocols the kubelet and the API server speak for exec,
/// attach and port-forward.
pub const KNOWN_SUBPROTOCOLS: [&str; 8] = [
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "v2.channel.k8s.io",
    "v3.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v5.channel.k8s.io",
    "portforward.k8s.io",
];

/// What a piece of the stream meant to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Output(Vec<u8>),
    Input(Vec<u8>),
    Resize(u32, u32),
    /// The status on the error channel (bounded text).
    Status(String),
    /// Something the reader could not read (said in the recording).
    Unreadable(&'static str),
}

/// The channel of a frame whose rest is skipped.
const SKIPPED: u8 = 255;

/// Longest resize or status message read; the rest is skipped.
const SMALL_MESSAGE: usize = 512;

/// Reads one direction of the stream.
#[derive(Debug)]
pub struct Reader {
    wire: Wire,
    /// From the client (masked WebSocket frames; SPDY's client streams).
    from_client: bool,
    /// Header bytes of the frame being read.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// WebSocket: the mask key and where in it the payload is.
    mask: Option<[u8; 4]>,
    mask_at: usize,
    /// The frame is a control frame (ping, pong, close): skipped.
    control: bool,
    /// The channel of the message in progress, once its first byte came.
    channel: Option<u8>,
    /// The message's first payload byte is still to come.
    at_message_start: bool,
    /// base64 text not yet decoded (less than four characters).
    carry: Vec<u8>,
    /// A resize or status message being gathered.
    small: Vec<u8>,
}

impl Reader {
    pub fn new(wire: Wire, from_client: bool) -> Reader {
        Reader {
            wire,
            from_client,
            head: Vec::with_capacity(14),
            left: 0,
            mask: None,
            mask_at: 0,
            control: false,
            channel: None,
            at_message_start: true,
            carry: Vec::new(),
            small: Vec::new(),
        }
    }

    /// Reads `data`, the next bytes of this direction, into what it means.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Seen>) {
        while !data.is_empty() {
            if self.left == 0 && !self.header_done(&mut data) {
                return;
            }
            if self.left == 0 {
                // A frame with no payload: its end may end a message.
                self.frame_end(out);
                continue;
            }
            let n = (self.left.min(data.len() as u64)) as usize;
            let (piece, rest) = data.split_at(n);
            data = rest;
            self.left -= n as u64;
            self.payload(piece, out);
            if self.left == 0 {
                self.frame_end(out);
            }
        }
    }

    /// Gathers a frame's header; `false` when `data` ended inside it.
    fn header_done(&mut self, data: &mut &[u8]) -> bool {
        loop {
            let need = match self.wire {
                Wire::Spdy => 8,
                Wire::WebSocket { .. } => ws_header_len(&self.head),
            };
            if self.head.len() >= need {
                break;
            }
            let Some((&b, rest)) = data.split_first() else {
                return false;
            };
            self.head.push(b);
            *data = rest;
        }
        let h = std::mem::take(&mut self.head);
        match self.wire {
            Wire::Spdy => {
                self.control = h[0] & 0x80 != 0;
                self.left = u64::from(u32::from_be_bytes([0, h[5], h[6], h[7]]));
                self.channel = Some(0);
            }
            Wire::WebSocket { .. } => {
                let opcode = h[0] & 0x0f;
                // wsstream (x/net/websocket) treats only close, ping and pong
                // as control frames; every other opcode is data.
                self.control = matches!(opcode, 8..=10);
                let (len, at) = match h[1] & 0x7f {
                    126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
                    127 => (
                        u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                        10,
                    ),
                    n => (u64::from(n), 2),
                };
                self.mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
                self.mask_at = 0;
                self.left = len;
                // Each data frame, a continuation too, starts with its channel.
                if !self.control {
                    self.channel = None;
                    self.at_message_start = true;
                    self.carry.clear();
                    self.small.clear();
                }
            }
        }
        // SPDY's FIN, WebSocket's FIN: the message ends with this frame.
        self.head = h;
        true
    }

    fn payload(&mut self, piece: &[u8], out: &mut Vec<Seen>) {
        if self.control {
            return;
        }
        match self.wire {
            Wire::Spdy => {
                // Data frames only: from the server, every one is output.
                if !self.from_client {
                    push_output(out, piece);
                }
            }
            Wire::WebSocket { base64 } => {
                let mut bytes = piece.to_vec();
                if let Some(m) = self.mask {
                    for b in bytes.iter_mut() {
                        *b ^= m[self.mask_at % 4];
                        self.mask_at += 1;
                    }
                }
                let mut rest = &bytes[..];
                if self.at_message_start {
                    let Some((&c, r)) = rest.split_first() else {
                        return;
                    };
                    self.at_message_start = false;
                    self.channel = Some(if base64 { c.wrapping_sub(b'0') } else { c });
                    rest = r;
                }
                if base64 {
                    // As Go's decoder: only CR and LF are skipped.
                    self.carry
                        .extend(rest.iter().filter(|b| **b != b'\r' && **b != b'\n'));
                    let whole = self.carry.len() / 4 * 4;
                    let text: Vec<u8> = self.carry.drain(..whole).collect();
                    self.decode(&text, out);
                } else {
                    self.channel_bytes(rest, out);
                }
            }
        }
    }

    /// base64 text of the frame's channel; what does not decode is said
    /// once, and the rest of the frame is skipped.
    fn decode(&mut self, text: &[u8], out: &mut Vec<Seen>) {
        if self.channel == Some(SKIPPED) {
            return;
        }
        match LENIENT.decode(text) {
            Ok(decoded) => self.channel_bytes(&decoded, out),
            Err(_) => {
                self.channel = Some(SKIPPED);
                self.carry.clear();
                out.push(Seen::Unreadable(
                    "a base64 frame that does not decode (the rest of it is not recorded)",
                ));
            }
        }
    }

    fn channel_bytes(&mut self, bytes: &[u8], out: &mut Vec<Seen>) {
        if bytes.is_empty() {
            return;
        }
        match (self.from_client, self.channel) {
            (false, Some(1 | 2)) => push_output(out, bytes),
            (true, Some(0)) => out.push(Seen::Input(bytes.to_vec())),
            (false, Some(3)) | (true, Some(4)) => {
                let room = SMALL_MESSAGE.saturating_sub(self.small.len());
                self.small
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            _ => {}
        }
    }

    fn frame_end(&mut self, out: &mut Vec<Seen>) {
        let control = self.control;
        self.head.clear();
        self.control = false;
        if control || matches!(self.wire, Wire::Spdy) {
            return;
        }
        // The frame's last base64 characters (Go decodes a frame whole).
        if !self.carry.is_empty() {
            let text = std::mem::take(&mut self.carry);
            self.decode(&text, out);
        }
        let small = std::mem::take(&mut self.small);
        match (self.from_client, self.channel) {
            (true, Some(4)) => {
                if let Some((w, h)) = resize(&small) {
                    out.push(Seen::Resize(w, h));
                }
            }
            (false, Some(3)) if !small.is_empty() => {
                out.push(Seen::Status(String::from_utf8_lossy(&small).into_owned()));
            }
            _ => {}
        }
    }
}

/// base64 as Go's `StdEncoding` reads it: padding required, trailing bits need
/// not be zero. (Go drops a whole frame that does not decode; here the groups
/// before the bad one are already recorded, so a recording may show input a
/// pod never got, never the other way round.)
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
);

/// Output pieces in a row join (fewer, larger cast lines).
fn push_output(out: &mut Vec<Seen>, bytes: &[u8]) {
    if let Some(Seen::Output(last)) = out.last_mut() {
        last.extend_from_slice(bytes);
    } else {
        out.push(Seen::Output(bytes.to_vec()));
    }
}

/// A WebSocket frame header's length, as far as the bytes so far tell it.
fn ws_header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    match h[1] & 0x7f {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

/// `{"Width":120,"Height":40}`, as client-go's resize queue sends it.
fn resize(msg: &[u8]) -> Option<(u32, u32)> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u32,
        #[serde(rename = "Height")]
        height: u32,
    }
    let s: Size = serde_json::from_slice(msg).ok()?;
    (s.width > 0 && s.height > 0 && s.width <= 10_000 && s.height <= 10_000)
        .then_some((s.width, s.height))
}

/// The exec's command and container from its query (`command=sh&command=-c…`),
/// bounded.
pub fn exec_query(query: Option<&str>) -> (String, String) {
    let mut command: Vec<String> = Vec::new();
    let mut container = String::new();
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    for (k, v) in pairs {
        // No control characters (PostgreSQL refuses a NUL in text; a log or
        // a terminal should not get escapes from a query).
        let clean = |v: &str, max: usize| -> String {
            v.chars().filter(|c| !c.is_control()).take(max).collect()
        };
        match k.as_str() {
            "command" if command.len() < 64 => command.push(clean(&v, 1024)),
            "container" => container = clean(&v, 253),
            _ => {}
        }
    }
    let mut command = command.join(" ");
    if command.len() > 4096 {
        let mut end = 4096;
        while !command.is_char_boundary(end) {
            end -= 1;
        }
        command.truncate(end);
    }
    (command, container)
}

/// A kubectl exec or attach being recorded: its tape, and a reader per
/// direction once the API server has said which protocol it speaks.
pub(super) struct Session {
    pub tape: crate::recording::Tape,
    pub down: Option<Reader>,
    pub up: Option<Reader>,
    pub input: bool,
    strict: bool,
}

/// What the policy asks of an upgrade, decided before it is sent on.
pub(super) enum Plan {
    /// Not recorded: policy `off`, or a port-forward (forwarded bytes, as
    /// `ssh -L`'s, are not a terminal).
    No,
    Record {
        level: postern_api::recordings::RecordingLevel,
        input: bool,
        kind: &'static str,
    },
    /// It cannot be recorded as the policy requires: not opened.
    Refuse(String),
}

/// The plan for an upgrade to `upgrade` (`SPDY/3.1`, `websocket`) offering
/// the WebSocket `subprotocols`, under the project's policy (by the user's
/// role; a pod has no node labels).
pub(super) async fn plan(
    door: &super::Door,
    auth: &super::proxy::Authorized,
    upgrade: &str,
    subprotocols: &[String],
) -> Plan {
    use postern_api::recordings::RecordingLevel;
    let i = &auth.info;
    let policy = match door.store.recording_policy(&auth.project.id).await {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the recording policy");
            return Plan::Refuse(
                "the project's recording policy cannot be read right now; retry shortly".into(),
            );
        }
    };
    let role = auth.principal.effective_role(&auth.project.id);
    let level = policy.level(role, &Default::default());
    if level == RecordingLevel::Off {
        return Plan::No;
    }
    let strict = level == RecordingLevel::Strict;
    let kind = match (i.resource.as_str(), i.subresource.as_str()) {
        ("pods", "exec") => "kube_exec",
        ("pods", "attach") => "kube_attach",
        ("pods", "portforward") => return Plan::No,
        // Another way to a shell (the kubelet's own exec through
        // `nodes/proxy`, a service's or an aggregated API's upgrade) is not
        // read here: where every session must be recorded, it is refused.
        _ if strict => {
            return Plan::Refuse(
                "this project records every session, and only kubectl exec, attach and port-forward upgrades can be; this one is refused".into(),
            );
        }
        _ => return Plan::No,
    };
    let readable = match Wire::of(upgrade, None) {
        Some(Wire::Spdy) => true,
        // Whichever of the offered subprotocols the server picks must be one
        // the reader knows.
        // None offered is the binary channel protocol; else the server may
        // pick any of them.
        _ if upgrade.eq_ignore_ascii_case("websocket") => subprotocols
            .iter()
            .all(|p| KNOWN_SUBPROTOCOLS.contains(&p.as_str())),
        _ => false,
    };
    if !readable {
        return if strict {
            Plan::Refuse(
                "this project records every session, and this protocol cannot be recorded; use kubectl (SPDY or WebSocket v4/v5.channel.k8s.io)".into(),
            )
        } else {
            Plan::No
        };
    }
    if strict && policy.input && upgrade.to_ascii_lowercase().starts_with("spdy/") {
        return Plan::Refuse(
            "this project records what is typed, which the bastion can read only over WebSocket: use kubectl 1.30 or later against an API server that speaks it".into(),
        );
    }
    Plan::Record {
        level,
        input: policy.input,
        kind,
    }
}

/// Starts the recording the plan asked for, before the upgrade is sent on,
/// so a strict session whose recording cannot be stored never reaches the
/// pod. `Err`: that refusal. `cut` ends the stream when a strict recording
/// fails later.
pub(super) async fn begin(
    door: &super::Door,
    auth: &super::proxy::Authorized,
    plan: &Plan,
    query: Option<&str>,
    cut: tokio_util::sync::CancellationToken,
) -> Result<Option<Session>, ()> {
    use postern_api::recordings::RecordingLevel;
    let Plan::Record { level, input, kind } = *plan else {
        return Ok(None);
    };
    let strict = level == RecordingLevel::Strict;
    let i = &auth.info;
    let (command, container) = exec_query(query);
    let (node_id, hostname) = auth
        .gateway
        .as_ref()
        .map(|g| (g.node_id.clone(), g.hostname.clone()))
        .unwrap_or_default();
    let meta = crate::recording::Meta {
        org_id: auth.principal.org_id.clone(),
        project_id: auth.project.id.clone(),
        node_id,
        hostname,
        user_id: auth.principal.user_id.clone(),
        user_name: auth.principal.user_name.clone(),
        login: container,
        kind,
        command,
        width: 80,
        height: 24,
        term: String::new(),
        pod: Some(format!("{}/{}", i.namespace, i.name)),
    };
    match door.recorder.start(meta, level, cut).await {
        Ok(tape) => Ok(Some(Session {
            tape,
            down: None,
            up: None,
            input,
            strict,
        })),
        Err(e) if strict => {
            tracing::warn!(error = %e, "a strict kubectl session cannot be recorded; refused");
            Err(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "a kubectl session goes unrecorded (best_effort)");
            Ok(None)
        }
    }
}

impl Session {
    /// The API server switched to `wire`: read it from now on. `false`: it
    /// cannot be read and the session must not go on (strict).
    pub async fn switched(&mut self, wire: Option<Wire>) -> bool {
        match wire {
            Some(w) => {
                if w == Wire::Spdy {
                    self.tape
                        .marker("kubectl over SPDY: output recorded; input and resizes are not")
                        .await;
                }
                self.down = Some(Reader::new(w, false));
                self.up = Some(Reader::new(w, true));
                true
            }
            None => {
                self.tape
                    .marker("the API server switched to a protocol the bastion cannot read: nothing more is recorded")
                    .await;
                !self.strict
            }
        }
    }
}

/// What the server sent, read by `down` before it goes to the client.
pub(super) async fn from_server(tape: &crate::recording::Tape, down: &mut Reader, data: &[u8]) {
    let mut seen = Vec::new();
    down.feed(data, &mut seen);
    for s in seen {
        match s {
            Seen::Output(o) => tape.output(&o).await,
            Seen::Status(st) => tape.marker(&format!("status: {st}")).await,
            Seen::Unreadable(what) => tape.marker(what).await,
            Seen::Input(_) | Seen::Resize(..) => {}
        }
    }
}

/// What the client sent, read by `up` before it goes to the server; typed
/// input only when the policy records it.
pub(super) async fn from_client(
    tape: &crate::recording::Tape,
    up: &mut Reader,
    input: bool,
    data: &[u8],
) {
    let mut seen = Vec::new();
    up.feed(data, &mut seen);
    for s in seen {
        match s {
            Seen::Input(i) if input => tape.input(&i).await,
            Seen::Resize(w, h) => tape.resize(w, h).await,
            Seen::Unreadable(what) => tape.marker(what).await,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut p = payload.to_vec();
        if let Some(k) = mask {
            f.extend_from_slice(&k);
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        f.extend_from_slice(&p);
        f
    }

    /// Fed one byte at a time and all at once: the same reading.
    fn read(wire: Wire, from_client: bool, bytes: &[u8]) -> Vec<Seen> {
        let mut whole = Vec::new();
        Reader::new(wire, from_client).feed(bytes, &mut whole);
        let mut r = Reader::new(wire, from_client);
        let mut bytewise = Vec::new();
        for b in bytes {
            r.feed(std::slice::from_ref(b), &mut bytewise);
        }
        let join = |v: Vec<Seen>| {
            let mut out = Vec::new();
            for s in v {
                match (s, out.last_mut()) {
                    (Seen::Output(o), _) => push_output(&mut out, &o),
                    (Seen::Input(i), Some(Seen::Input(last))) => last.extend(i),
                    (other, _) => out.push(other),
                }
            }
            out
        };
        let (whole, bytewise) = (join(whole), join(bytewise));
        assert_eq!(whole, bytewise);
        whole
    }

    #[test]
    fn websocket_channels_are_read_from_both_sides() {
        let ws = Wire::WebSocket { base64: false };
        let mut down = ws_frame(true, 2, b"\x01hello ", None);
        down.extend(ws_frame(true, 9, b"ping", None));
        down.extend(ws_frame(true, 2, b"\x02oops", None));
        // Each frame, a continuation too, starts with its channel.
        down.extend(ws_frame(false, 2, b"\x01big-", None));
        let mut big = vec![1u8];
        big.extend(vec![b'x'; 70_000]);
        down.extend(ws_frame(true, 0, &big, None));
        down.extend(ws_frame(true, 2, b"\x03{\"status\":\"Success\"}", None));
        let seen = read(ws, false, &down);
        let mut want = b"hello oopsbig-".to_vec();
        want.extend(vec![b'x'; 70_000]);
        assert_eq!(
            seen,
            vec![
                Seen::Output(want),
                Seen::Status("{\"status\":\"Success\"}".into())
            ]
        );
        let k = Some([1, 2, 3, 4]);
        let mut up = ws_frame(true, 2, b"\x00ls -l\n", k);
        up.extend(ws_frame(true, 2, b"\x04{\"Width\":120,\"Height\":40}", k));
        up.extend(ws_frame(true, 2, b"\x04{\"Width\":0,\"Height\":40}", k));
        up.extend(ws_frame(true, 2, b"\x04not json", k));
        assert_eq!(
            read(ws, true, &up),
            vec![Seen::Input(b"ls -l\n".to_vec()), Seen::Resize(120, 40)]
        );
    }

    /// Framed as x/net/websocket reads it (the kubelet's and the API server's
    /// wsstream): a continuation's first byte is its channel, and opcodes
    /// other than close, ping and pong are data. A client that frames its
    /// input otherwise still has it recorded as the pod reads it.
    #[test]
    fn frames_are_read_as_the_pod_side_reads_them() {
        let ws = Wire::WebSocket { base64: false };
        let k = Some([7, 7, 7, 7]);
        let mut up = ws_frame(false, 2, b"\x04", k);
        up.extend(ws_frame(true, 0, b"\x00rm -rf /\n", k));
        up.extend(ws_frame(true, 0xb, b"\x00id\n", k));
        up.extend(ws_frame(true, 9, b"\x00ping", k));
        assert_eq!(
            read(ws, true, &up),
            vec![Seen::Input(b"rm -rf /\nid\n".to_vec())]
        );
    }

    #[test]
    fn subprotocols_are_known_or_none() {
        let of = |p| Wire::of("websocket", Some(p));
        assert_eq!(
            of("v4.channel.k8s.io"),
            Some(Wire::WebSocket { base64: false })
        );
        assert_eq!(
            of("base64.channel.k8s.io"),
            Some(Wire::WebSocket { base64: true })
        );
        assert_eq!(
            of("v4.base64.channel.k8s.io"),
            Some(Wire::WebSocket { base64: true })
        );
        assert_eq!(of("chat"), None);
        assert_eq!(
            Wire::of("websocket", None),
            Some(Wire::WebSocket { base64: false })
        );
        assert_eq!(of(""), Some(Wire::WebSocket { base64: false }));
        assert_eq!(Wire::of("SPDY/3.1", None), Some(Wire::Spdy));
        assert_eq!(Wire::of("h2c", None), None);
    }

    #[test]
    fn base64_channels_are_decoded() {
        let ws = Wire::WebSocket { base64: true };
        let mut down = ws_frame(true, 1, b"1aGVsbG8g", None); // "hello "
        down.extend(ws_frame(false, 1, b"2d29y", None)); // "wor", on stderr
        down.extend(ws_frame(true, 0, b"1bGQ=", None)); // "ld"
        // Trailing bits that are not zero, as Go's decoder allows.
        down.extend(ws_frame(true, 1, b"1Ch==", None)); // "\n"
        assert_eq!(
            read(ws, false, &down),
            vec![Seen::Output(b"hello world\n".to_vec())]
        );
        assert_eq!(
            read(ws, false, &ws_frame(true, 1, b"1!!!!", None)),
            vec![Seen::Unreadable(
                "a base64 frame that does not decode (the rest of it is not recorded)"
            )]
        );
    }

    #[test]
    fn spdy_data_from_the_server_is_output_whatever_its_stream() {
        let frame = |stream: u32, data: &[u8]| {
            let mut f = stream.to_be_bytes().to_vec();
            f.push(0);
            f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(data);
            f
        };
        // A SYN_REPLY (control) frame, skipped whatever it holds.
        let mut down = vec![0x80, 3, 0, 2, 0, 0, 0, 4, 0, 0, 0, 1];
        down.extend(frame(3, b"out "));
        down.extend(frame(7, b"err"));
        assert_eq!(
            read(Wire::Spdy, false, &down),
            vec![Seen::Output(b"out err".to_vec())]
        );
        assert_eq!(read(Wire::Spdy, true, &frame(1, b"stdin")), vec![]);
    }

    #[test]
    fn garbage_and_huge_lengths_cost_nothing() {
        // A header claiming 2^63 bytes: counted down, never allocated.
        let mut r = Reader::new(Wire::WebSocket { base64: false }, false);
        let mut out = Vec::new();
        r.feed(
            &[0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            &mut out,
        );
        r.feed(&[0u8; 1 << 16], &mut out);
        assert!(matches!(out.as_slice(), [Seen::Output(o)] if o.len() == 1 << 16));
        let mut r = Reader::new(Wire::Spdy, false);
        r.feed(&[0xff; 4096], &mut Vec::new());
        // A resize message that never ends holds at most SMALL_MESSAGE bytes.
        let mut r = Reader::new(Wire::WebSocket { base64: false }, true);
        let mut out = Vec::new();
        r.feed(&ws_frame(false, 2, b"\x04", None), &mut out);
        for _ in 0..100 {
            r.feed(&ws_frame(false, 0, &[b'9'; 1000], None), &mut out);
        }
        assert!(r.small.len() <= SMALL_MESSAGE);
    }

    #[test]
    fn the_exec_query_is_read_and_bounded() {
        let (c, k) = exec_query(Some(
            "command=sh&command=-c&command=echo%20hi&container=app&stdin=true",
        ));
        assert_eq!((c.as_str(), k.as_str()), ("sh -c echo hi", "app"));
        let long = format!("command={}", "é".repeat(5000));
        assert!(exec_query(Some(&long)).0.len() <= 4096);
        assert_eq!(exec_query(None), (String::new(), String::new()));
        let (c, k) = exec_query(Some("command=sh%00&container=%00%1b%5B2J"));
        assert_eq!((c.as_str(), k.as_str()), ("sh", "[2J"));
    }
}
