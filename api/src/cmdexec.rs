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
    /// The text (lossy UTF-8). When truncated: head, a marker line, tail.
    pub data: String,
    pub truncated: bool,
    /// How many bytes the command wrote in all.
    pub total_bytes: u64,
    /// SHA-256 (hex) of everything written, kept or not.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeResult {
    pub hostname: String,
    pub status: NodeExecStatus,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
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
    pub nodes: Vec<NodeResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub executions: Vec<Execution>,
}

// --- agent side --------------------------------------------------------------

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
