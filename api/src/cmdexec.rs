//! The cmdexec REST API's bodies and limits, and the agent-side exec messages.
//!
//! Requests refuse unknown fields. Limits are checked at the edge with messages
//! that name the field and the allowed range.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `timeout` bounds, in seconds, and its default.
pub const TIMEOUT_MIN_SECS: i64 = 1;
pub const TIMEOUT_MAX_SECS: i64 = 3_600;
pub const TIMEOUT_DEFAULT_SECS: i64 = 60;
/// Largest command or decoded script.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
/// Largest execute request body (a base64 script of `MAX_COMMAND_BYTES` plus JSON).
pub const MAX_EXECUTE_BODY: usize = 1_500_000;
/// Most hostnames in one `target`.
pub const MAX_TARGETS: usize = 10_000;
/// Output kept per stream by default (head and tail halves).
pub const DEFAULT_KEEP_BYTES: usize = 64 * 1024;
/// Most output kept per stream (`--exec-keep-bytes`): a result must fit the agent's
/// answer limit, [`max_result_answer`].
pub const MAX_KEEP_BYTES: usize = 1024 * 1024;
/// Nodes in one page of an execution, by default and at most.
pub const NODE_LIMIT_DEFAULT: i64 = 100;
pub const NODE_LIMIT_MAX: i64 = 1000;
/// Output (both streams and errors, all nodes, as encoded in the answer) in one
/// page of an execution: a page ends early, with `next_node_offset`, rather than
/// exceed it. Bounds an answer's memory whatever the fan-out, the output's bytes
/// and `--exec-keep-bytes`.
pub const PAGE_OUTPUT_BUDGET: usize = 8 * 1024 * 1024;
/// Longest command shown in a history summary (the execution has all of it).
pub const HISTORY_COMMAND_CHARS: usize = 4096;

/// How many bytes `bytes` take in a JSON answer once encoded as the API sends
/// them ([`encode_output`], then JSON string escaping): up to six per byte for
/// control characters, 4/3 for base64. What the page budget counts.
pub fn encoded_len(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(s) => json_string_len(s),
        Err(_) => bytes.len().div_ceil(3) * 4 + 2,
    }
}

/// The length of `s` as a JSON string, quotes included.
pub fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}
/// Longest error text kept from an agent.
pub const MAX_ERROR_TEXT: usize = 4096;

/// The largest answer the bastion reads for one exec result: both streams'
/// kept bytes in base64, the truncation markers, and the rest of the JSON.
pub fn max_result_answer(keep_bytes: usize) -> usize {
    let stream = keep_bytes.div_ceil(3) * 4 + 512;
    2 * stream + MAX_ERROR_TEXT * 6 + 64 * 1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    Node,
    Cluster,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    #[default]
    String,
    Base64,
}

impl ContentType {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::String => "string",
            ContentType::Base64 => "base64",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Hostnames of the edge's nodes; absent or null for `cluster`.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 10000)]
    pub target: Option<Vec<String>>,
    pub target_type: TargetType,
    /// A shell command, or with `content_type: base64` a whole script (up to 1 MiB decoded).
    #[schema(min_length = 1, pattern = "\\S")]
    pub command: String,
    #[serde(default)]
    pub content_type: ContentType,
    /// Seconds, 1 to 3600; default 60.
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout: Option<i64>,
}

/// What was decided at submit time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecuteResponse {
    pub exec_id: String,
    pub submitted_at: String,
    pub username: String,
    pub project_id: String,
    pub edge_id: String,
    pub timeout: i64,
    /// Nodes the command will run on.
    pub target_nodes: Vec<String>,
    pub unreachable_nodes: Vec<String>,
    pub unapproved_nodes: Vec<String>,
}

/// A node's state within an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeExecStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Unreachable,
    NotApproved,
    Lost,
}

impl NodeExecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeExecStatus::Pending => "pending",
            NodeExecStatus::Running => "running",
            NodeExecStatus::Succeeded => "succeeded",
            NodeExecStatus::Failed => "failed",
            NodeExecStatus::TimedOut => "timed_out",
            NodeExecStatus::Unreachable => "unreachable",
            NodeExecStatus::NotApproved => "not_approved",
            NodeExecStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<NodeExecStatus> {
        [
            NodeExecStatus::Pending,
            NodeExecStatus::Running,
            NodeExecStatus::Succeeded,
            NodeExecStatus::Failed,
            NodeExecStatus::TimedOut,
            NodeExecStatus::Unreachable,
            NodeExecStatus::NotApproved,
            NodeExecStatus::Lost,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, NodeExecStatus::Pending | NodeExecStatus::Running)
    }
}

/// One output stream as kept: the head and tail when it was too large.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The bytes as written (base64 on the channel, so any byte survives). When
    /// truncated: head, a marker line, tail; cuts fall on UTF-8 character
    /// boundaries when the output is UTF-8 text.
    #[serde(rename = "data_b64", with = "crate::b64")]
    pub data: Vec<u8>,
    pub truncated: bool,
    /// How many bytes the command wrote in all.
    pub total_bytes: u64,
    /// SHA-256 (hex) of everything written, kept or not.
    pub sha256: String,
}

/// How `stdout`/`stderr` carry the output's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum OutputEncoding {
    /// The bytes were valid UTF-8 and are the string as is.
    #[serde(rename = "utf-8")]
    Utf8,
    /// The bytes were not UTF-8 (binary output): standard base64, padded.
    #[serde(rename = "base64")]
    Base64,
}

/// Output bytes as an API string: as is when they are UTF-8, else base64. Lossless
/// either way: decode with the encoding to get the exact bytes back.
pub fn encode_output(bytes: Vec<u8>) -> (String, OutputEncoding) {
    use base64::Engine as _;
    match String::from_utf8(bytes) {
        Ok(s) => (s, OutputEncoding::Utf8),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            OutputEncoding::Base64,
        ),
    }
}

/// The inverse of [`encode_output`].
pub fn decode_output(text: &str, encoding: OutputEncoding) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match encoding {
        OutputEncoding::Utf8 => Some(text.as_bytes().to_vec()),
        OutputEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeResult {
    pub hostname: String,
    pub status: NodeExecStatus,
    pub exit_code: Option<i32>,
    /// Standard output as kept; see `stdout_encoding`.
    pub stdout: String,
    pub stdout_encoding: OutputEncoding,
    pub stderr: String,
    pub stderr_encoding: OutputEncoding,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_sha256: Option<String>,
    pub stderr_sha256: Option<String>,
    /// Why the node did not succeed, when that is not in its output.
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Execution {
    pub exec_id: String,
    pub project_id: String,
    pub edge_id: String,
    pub command: String,
    pub content_type: ContentType,
    pub target_type: TargetType,
    pub target: Option<Vec<String>>,
    pub username: String,
    pub created_at: String,
    pub timeout: i64,
    /// `pending`, `running`, `succeeded` (every node), or `failed` (finished, some did not succeed).
    pub status: String,
    /// How many of the execution's nodes are in each state (all nodes, not just this page).
    pub node_counts: NodeCounts,
    /// All nodes of the execution.
    pub nodes_total: i64,
    pub node_offset: i64,
    pub node_limit: i64,
    /// Where the next page starts (`?node_offset=`), or null on the last page. A page
    /// may hold fewer than `node_limit` nodes when their output is large.
    pub next_node_offset: Option<i64>,
    /// This page of nodes, by hostname.
    pub nodes: Vec<NodeResult>,
}

/// Nodes per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeCounts {
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub timed_out: i64,
    pub unreachable: i64,
    pub not_approved: i64,
    pub lost: i64,
}

impl NodeCounts {
    pub fn add(&mut self, status: NodeExecStatus, n: i64) {
        let slot = match status {
            NodeExecStatus::Pending => &mut self.pending,
            NodeExecStatus::Running => &mut self.running,
            NodeExecStatus::Succeeded => &mut self.succeeded,
            NodeExecStatus::Failed => &mut self.failed,
            NodeExecStatus::TimedOut => &mut self.timed_out,
            NodeExecStatus::Unreachable => &mut self.unreachable,
            NodeExecStatus::NotApproved => &mut self.not_approved,
            NodeExecStatus::Lost => &mut self.lost,
        };
        *slot = slot.saturating_add(n);
    }

    pub fn total(&self) -> i64 {
        [
            self.pending,
            self.running,
            self.succeeded,
            self.failed,
            self.timed_out,
            self.unreachable,
            self.not_approved,
            self.lost,
        ]
        .iter()
        .fold(0i64, |a, b| a.saturating_add(*b))
    }

    /// The execution's overall status from its nodes' states.
    pub fn overall(&self) -> &'static str {
        if self.pending == self.total() {
            "pending"
        } else if self.pending + self.running > 0 {
            "running"
        } else if self.succeeded == self.total() {
            "succeeded"
        } else {
            "failed"
        }
    }
}

/// Query of `GET …/execution/{id}/`: which page of nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePageQuery {
    pub node_limit: Option<i64>,
    pub node_offset: Option<i64>,
}

impl NodePageQuery {
    /// `(limit, offset)` with defaults applied and bounds checked.
    pub fn bounds(&self) -> Result<(i64, i64), crate::ValidationError> {
        let limit = crate::validate::range(
            "node_limit",
            self.node_limit.unwrap_or(NODE_LIMIT_DEFAULT),
            1,
            NODE_LIMIT_MAX,
        )?;
        let offset =
            crate::validate::range("node_offset", self.node_offset.unwrap_or(0), 0, i64::MAX)?;
        Ok((limit, offset))
    }
}

/// One execution in the history: what ran, where, by whom, and how each node
/// ended, counted by state. Each node's output is in the execution itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionSummary {
    pub exec_id: String,
    pub project_id: String,
    pub edge_id: String,
    pub command: String,
    pub content_type: ContentType,
    pub target_type: TargetType,
    pub target: Option<Vec<String>>,
    pub username: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub timeout: i64,
    pub status: String,
    pub node_counts: NodeCounts,
    pub nodes_total: i64,
    /// True when `command` shows only its first 4096 characters (scripts can be
    /// a megabyte); the execution has all of it.
    pub command_truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub executions: Vec<ExecutionSummary>,
}

// --- agent side --------------------------------------------------------------

#[cfg(test)]
mod tests {
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
}

/// `POST /v1/exec`: run once for this exec ID, then answer with the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentExec {
    pub exec_id: String,
    /// Shell command (`/bin/sh -c`) or, for `Base64`, a whole script.
    pub command: String,
    pub content_type: ContentType,
    pub timeout_secs: u64,
    /// Bytes kept per stream (head and tail halves).
    pub keep_bytes: usize,
}

/// The agent's answer for an exec: its state, and the result once finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExecResult {
    pub exec_id: String,
    pub status: NodeExecStatus,
    pub exit_code: Option<i32>,
    pub stdout: Output,
    pub stderr: Output,
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}
