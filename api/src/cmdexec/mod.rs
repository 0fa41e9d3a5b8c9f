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
    /// The edge's nodes whose labels match `selector`, resolved at submit.
    Selector,
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
    /// For `target_type: selector`: a Kubernetes label selector over the nodes'
    /// labels, such as `role=db,zone in (a,b),!canary`.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub selector: Option<String>,
    /// Nodes running the command at once: a count (`"10"`) or a percentage of
    /// the targets (`"25%"`, at least one node). Default: all at once.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{1,9}%?$", example = "25%")]
    pub max_concurrency: Option<RateValue>,
    /// Failed nodes (failed, timed out, lost) tolerated before the nodes not yet
    /// started are skipped: a count (`"0"` stops at the first failure) or a
    /// percentage of the targets. Default: no limit.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{1,9}%?$", example = "0")]
    pub max_errors: Option<RateValue>,
}

/// A rate as sent: a JSON string or a whole number, parsed by [`Rate::parse`]
/// so that a bad one is refused with a message that names its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RateValue(pub String);

impl<'de> Deserialize<'de> for RateValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(RateValue(s)),
            serde_json::Value::Number(n) => Ok(RateValue(n.to_string())),
            other => Err(D::Error::custom(format!(
                "expected a count or a percentage such as \"10\" or \"25%\", got {other}"
            ))),
        }
    }
}

/// `max_concurrency` or `max_errors`: a count of nodes or a percentage of the
/// execution's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Count(u64),
    Percent(u8),
}

impl Rate {
    /// Parses `field`'s value; `min_count` is the least count allowed (1 for
    /// concurrency, 0 for errors). Percentages run from `min_count` to 100.
    pub fn parse(field: &'static str, v: &RateValue, min_count: u64) -> Result<Rate, RateError> {
        let s = v.0.trim();
        let bad = |why: &str| RateError {
            field,
            message: format!(
                "{why}; use a count such as \"10\" or a percentage of the targets such as \"25%\""
            ),
        };
        let (digits, percent) = match s.strip_suffix('%') {
            Some(d) => (d, true),
            None => (s, false),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!(
                "{:?} is not a whole number",
                crate::validate::peer_text(&v.0, 40)
            )));
        }
        if digits.len() > 9 {
            return Err(bad("a count is at most 999999999"));
        }
        let n: u64 = digits.parse().map_err(|_| bad("not a number"))?;
        if n < min_count {
            return Err(bad(&format!("must be at least {min_count}, got {n}")));
        }
        if percent {
            if n > 100 {
                return Err(bad(&format!("a percentage is at most 100%, got {n}%")));
            }
            return Ok(Rate::Percent(n as u8));
        }
        Ok(Rate::Count(n))
    }

    /// The count for `targets` nodes. Percentages of concurrency round up (10%
    /// of 5 nodes runs one at a time, not none); of errors, down (10% of 5
    /// nodes tolerates none).
    pub fn of(self, targets: u64, round_up: bool) -> u64 {
        match self {
            Rate::Count(n) => n,
            Rate::Percent(p) => {
                let x = targets.saturating_mul(u64::from(p));
                if round_up { x.div_ceil(100) } else { x / 100 }
            }
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Count(n) => write!(f, "{n}"),
            Rate::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct RateError {
    pub field: &'static str,
    pub message: String,
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
    /// The selector as understood (canonical form), for `target_type: selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Nodes at once, as resolved against the targets; absent means all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    /// Failures tolerated, as resolved; absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<i64>,
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
    /// Stopped by a cancel: never started, or its process group was killed.
    Cancelled,
    /// Not started because `max_errors` was exceeded.
    Skipped,
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
            NodeExecStatus::Cancelled => "cancelled",
            NodeExecStatus::Skipped => "skipped",
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
            NodeExecStatus::Cancelled,
            NodeExecStatus::Skipped,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, NodeExecStatus::Pending | NodeExecStatus::Running)
    }

    /// A run that went wrong, as `max_errors` counts it. Nodes never tried
    /// (unreachable, not approved, cancelled, skipped) do not count.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            NodeExecStatus::Failed | NodeExecStatus::TimedOut | NodeExecStatus::Lost
        )
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
    /// `pending`, `running`, `succeeded` (every node), `cancelled` (finished after
    /// a cancel), or `failed` (finished, some did not succeed).
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
    /// The selector, for `target_type: selector`; rate control as resolved; when
    /// a cancel was asked for. Absent when not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<String>,
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
    #[serde(default)]
    pub cancelled: i64,
    #[serde(default)]
    pub skipped: i64,
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
            NodeExecStatus::Cancelled => &mut self.cancelled,
            NodeExecStatus::Skipped => &mut self.skipped,
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
            self.cancelled,
            self.skipped,
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
        } else if self.cancelled > 0 {
            "cancelled"
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
    /// The selector, for `target_type: selector`; rate control as resolved; when
    /// a cancel was asked for. Absent when not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub executions: Vec<ExecutionSummary>,
}

mod live;

pub use live::*;

#[cfg(test)]
mod tests;
