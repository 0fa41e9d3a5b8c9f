//! The cmdexec bodies' tests, apart from them.
use super::*;

#[test]
fn any_output_round_trips_through_the_api_and_the_channel() {
    let cases: Vec<Vec<u8>> = vec![
        b"plain text\n".to_vec(),
        b"nul\0inside".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        "ünïcödé".as_bytes().to_vec(),
        (0..=255u8).collect(),
    ];
    for bytes in cases {
        let (text, enc) = encode_output(bytes.clone());
        assert_eq!(decode_output(&text, enc), Some(bytes.clone()));
        let o = Output {
            data: bytes.clone(),
            ..Output::default()
        };
        let wire = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Output>(&wire).unwrap().data, bytes);
    }
    assert_eq!(encode_output(b"ok".to_vec()).1, OutputEncoding::Utf8);
    assert_eq!(encode_output(vec![0xff]).1, OutputEncoding::Base64);
}

#[test]
fn a_full_result_fits_the_answer_limit() {
    for keep in [2, 1000, DEFAULT_KEEP_BYTES, MAX_KEEP_BYTES] {
        let o = Output {
            data: vec![1u8; keep + 200],
            truncated: true,
            total_bytes: u64::MAX,
            sha256: "f".repeat(64),
        };
        let r = AgentExecResult {
            exec_id: "x".repeat(64),
            status: NodeExecStatus::Failed,
            exit_code: Some(i32::MIN),
            stdout: o.clone(),
            stderr: o,
            error: Some("\u{1}".repeat(MAX_ERROR_TEXT)),
            started_at_ms: i64::MIN,
            finished_at_ms: Some(i64::MIN),
        };
        let n = serde_json::to_vec(&r).unwrap().len();
        assert!(n <= max_result_answer(keep), "{n} > limit for keep {keep}");
    }
}

/// The page budget counts what is sent, not the raw bytes: NUL output is
/// UTF-8 and goes out as `\u0000`, six bytes each.
#[test]
fn encoded_len_is_the_json_answers_length() {
    let cases: Vec<Vec<u8>> = vec![
        vec![0u8; 1000],
        b"plain \"quoted\" back\\slash\n\ttab\r".to_vec(),
        (0..=255u8).collect(),
        "ünïcödé €".as_bytes().to_vec(),
        vec![0xff; 10],
        vec![],
    ];
    for bytes in cases {
        let (text, _) = encode_output(bytes.clone());
        let sent = serde_json::to_string(&text).unwrap().len();
        assert_eq!(encoded_len(&bytes), sent, "{bytes:?}");
    }
}

#[test]
fn overall_status_from_counts() {
    let mut c = NodeCounts::default();
    c.add(NodeExecStatus::Pending, 2);
    assert_eq!(c.overall(), "pending");
    c.add(NodeExecStatus::Succeeded, 1);
    assert_eq!(c.overall(), "running");
    let mut c = NodeCounts::default();
    c.add(NodeExecStatus::Succeeded, 3);
    assert_eq!(c.overall(), "succeeded");
    c.add(NodeExecStatus::Unreachable, 1);
    assert_eq!(c.overall(), "failed");
}
