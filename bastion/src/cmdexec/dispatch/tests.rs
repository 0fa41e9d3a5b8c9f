//! Tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::follow::*;
use super::*;
use postern_api::cmdexec::Output;

fn exec(created_at: i64) -> ExecutionRow {
    ExecutionRow {
        id: "e".into(),
        org_id: "o".into(),
        project_id: "p".into(),
        project_name: "p".into(),
        edge_id: "e".into(),
        edge_name: "e".into(),
        username: "u".into(),
        source_ip: None,
        command: "true".into(),
        content_type: "string".into(),
        target_type: "node".into(),
        target: None,
        timeout_secs: 60,
        created_at,
        finished_at: None,
        max_concurrency: None,
        max_errors: None,
        selector: None,
        cancel_requested_at: None,
    }
}

fn answer(started: i64, finished: Option<i64>) -> AgentExecResult {
    AgentExecResult {
        exec_id: "e".into(),
        status: NodeExecStatus::Succeeded,
        exit_code: Some(0),
        stdout: Output {
            sha256: "not hex".into(),
            ..Output::default()
        },
        stderr: Output::default(),
        error: Some(format!("bad\0{}", "x".repeat(100_000))),
        started_at_ms: started,
        finished_at_ms: finished,
    }
}

/// An agent's times, error text and hashes are peer input: times land in the
/// bastion's own window (submit .. now), text is bounded and NUL-free.
#[test]
fn agent_results_are_clamped_to_the_bastions_clock() {
    let created = now_ms() - 10_000;
    for (s, f) in [
        (i64::MIN, Some(i64::MAX)),
        (i64::MAX, None),
        (0, Some(-1)),
        (created + 1, Some(created + 2)),
    ] {
        let r = from_agent(&exec(created), "n", "h", answer(s, f));
        let (started, finished) = (r.started_at.unwrap(), r.finished_at.unwrap());
        let now = now_ms();
        assert!(
            created <= started && started <= finished && finished <= now,
            "{s} {f:?}: {started} {finished}"
        );
        let e = r.error.unwrap();
        assert!(e.len() <= MAX_ERROR_TEXT && !e.contains('\0'));
        assert_eq!(r.stdout_sha256, None);
    }
    let r = from_agent(
        &exec(created),
        "n",
        "h",
        answer(created + 1, Some(created + 2)),
    );
    assert_eq!(
        (r.started_at, r.finished_at),
        (Some(created + 1), Some(created + 2))
    );
}

/// A refusal's text may quote the agent (serde's "unknown variant …" holds
/// what it sent): it is bounded and NUL-free like any peer text, or one
/// agent's answer could fail its row on PostgreSQL for ever (the review's F3).
#[test]
fn settled_errors_are_bounded_and_printable() {
    let nasty = format!("unknown variant `bad\0\x1b[2J{}`", "x".repeat(100_000));
    let r = settled(&exec(0), "n", "h", NodeExecStatus::Failed, nasty.clone());
    let e = r.error.unwrap();
    assert!(
        e.len() <= MAX_ERROR_TEXT && !e.contains(['\0', '\x1b']),
        "{}",
        e.len()
    );
    let mut big = ResultRow::new("e", "n", "h", NodeExecStatus::Failed);
    big.error = Some(nasty);
    let e = without_output(big, "refused").error.unwrap();
    assert!(e.len() <= MAX_ERROR_TEXT && !e.contains('\0'));
}

/// The bytes of a run of output events, checking that each starts where
/// the one before it ended.
fn reassemble(events: &[ExecEvent], stream: OutputStream) -> Vec<u8> {
    let mut got = Vec::new();
    for e in events {
        if let ExecEvent::Output {
            stream: s,
            offset,
            data,
            encoding,
            ..
        } = e
            && *s == stream
        {
            assert_eq!(*offset, got.len() as u64);
            got.extend(postern_api::cmdexec::decode_output(data, *encoding).unwrap());
        }
    }
    got
}

/// The review's finding 7: an agent that sends 20,000 one-byte chunks gets
/// two stored events (16 KiB and the rest), with every byte in order.
#[test]
fn one_byte_chunks_are_stored_as_few_events() {
    let mut offsets = LiveOffsets::default();
    let mut g = Gather::new(&mut offsets, "h");
    let now = tokio::time::Instant::now();
    let want: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut events = Vec::new();
    for (i, b) in want.iter().enumerate() {
        events.extend(g.out(OutputStream::Stdout, i as u64, vec![*b], now));
        // Queued only when a whole chunk was gathered (or when due).
        assert_eq!(g.due(), g.pending.as_ref().map(|_| now + GATHER));
    }
    events.extend(g.flush());
    assert_eq!(events.len(), 2, "{}", events.len());
    assert_eq!(reassemble(&events, OutputStream::Stdout), want);
    assert_eq!(offsets.stdout, 20_000);
    assert_eq!(offsets.events, 2);
}

/// Alternating streams cannot be merged (events keep the agent's order),
/// so the cap bounds them: past it both streams end with
/// `output_truncated` and later output is not stored.
#[test]
fn output_events_per_node_are_capped() {
    let mut offsets = LiveOffsets::default();
    let mut g = Gather::new(&mut offsets, "h");
    let now = tokio::time::Instant::now();
    let mut events = Vec::new();
    for i in 0..20_000u64 {
        let stream = if i % 2 == 0 {
            OutputStream::Stdout
        } else {
            OutputStream::Stderr
        };
        events.extend(g.out(stream, i / 2, b"x".to_vec(), now));
    }
    events.extend(g.flush());
    events.extend(g.cut(OutputStream::Stdout, 10_000));
    let outputs = events
        .iter()
        .filter(|e| matches!(e, ExecEvent::Output { .. }))
        .count();
    assert_eq!(outputs, MAX_OUTPUT_EVENTS as usize);
    let cuts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::OutputTruncated { stream, offset, .. } => Some((*stream, *offset)),
            _ => None,
        })
        .collect();
    let half = u64::from(MAX_OUTPUT_EVENTS / 2);
    assert_eq!(
        cuts,
        vec![(OutputStream::Stdout, half), (OutputStream::Stderr, half)]
    );
    assert!(matches!(
        events.last(),
        Some(ExecEvent::OutputTruncated { .. })
    ));
    assert_eq!((offsets.stdout, offsets.stderr), (u64::MAX, u64::MAX));
}

/// Repeats and gaps are dropped, a chunk of the other stream or a cut
/// queues what was gathered first (the agent's order is kept), and what
/// was gathered but not queued is not counted: the next call asks for it
/// again.
#[test]
fn gathering_keeps_order_and_resumes_from_what_was_queued() {
    let mut offsets = LiveOffsets::default();
    let now = tokio::time::Instant::now();
    let mut g = Gather::new(&mut offsets, "h");
    let mut events = g.out(OutputStream::Stdout, 0, b"ab".to_vec(), now);
    events.extend(g.out(OutputStream::Stdout, 0, b"ab".to_vec(), now));
    events.extend(g.out(OutputStream::Stdout, 5, b"zz".to_vec(), now));
    events.extend(g.out(OutputStream::Stdout, 2, b"cd".to_vec(), now));
    assert!(events.is_empty());
    events.extend(g.out(OutputStream::Stderr, 0, b"e".to_vec(), now));
    events.extend(g.cut(OutputStream::Stdout, 4));
    events.extend(g.out(OutputStream::Stdout, 4, b"late".to_vec(), now));
    events.extend(g.out(OutputStream::Stderr, 1, b"f".to_vec(), now));
    drop(g);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(reassemble(&events[..1], OutputStream::Stdout), b"abcd");
    assert_eq!(reassemble(&events[1..2], OutputStream::Stderr), b"e");
    assert!(matches!(
        events[2],
        ExecEvent::OutputTruncated {
            stream: OutputStream::Stdout,
            offset: 4,
            ..
        }
    ));
    // "f" was gathered, never queued: stderr resumes at 1.
    assert_eq!((offsets.stdout, offsets.stderr), (u64::MAX, 1));

    // Larger chunks than STREAM_CHUNK are taken as they come, one event each.
    let mut offsets = LiveOffsets::default();
    let mut g = Gather::new(&mut offsets, "h");
    let big = vec![b'y'; STREAM_CHUNK + 1];
    let events = g.out(OutputStream::Stdout, 0, big.clone(), now);
    assert_eq!(reassemble(&events, OutputStream::Stdout), big);
    assert!(g.due().is_none());
}

#[test]
fn backoff_grows_and_stays_under_its_cap() {
    let cap = Duration::from_secs(30);
    for attempt in 0..100 {
        assert!(backoff(attempt, cap) <= cap);
    }
    assert!(backoff(1, cap) < Duration::from_secs(1));
    assert!(backoff(12, cap) >= Duration::from_secs(15));
}
