//! Live output and the agent's side: the events of an execution's stream,
//! what cancel answers, the lines of the agent's exec stream, and the
//! messages the bastion and the agent exchange for an exec.

use super::*;

/// Which output stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Largest chunk of output in one event (and one line of the agent's stream).
pub const STREAM_CHUNK: usize = 16 * 1024;
/// Most output streamed live per node and stream: past it the stream says
/// `output_truncated` and the result keeps the head and the tail as always.
pub const LIVE_BYTES_MAX: usize = 256 * 1024;

/// One event of an execution's live stream (`GET …/execution/{id}/events`): the
/// `data` of a server-sent event whose `event:` is the same name as `event` here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command was sent to the node.
    NodeStarted { hostname: String, at: String },
    /// A chunk of output, in order; `offset` counts the stream's bytes before it.
    Output {
        hostname: String,
        stream: OutputStream,
        offset: u64,
        /// The chunk's bytes; see `encoding`.
        data: String,
        encoding: OutputEncoding,
    },
    /// Live output of this stream stops here (see [`LIVE_BYTES_MAX`]); the node's
    /// result keeps the head and the tail.
    OutputTruncated {
        hostname: String,
        stream: OutputStream,
        offset: u64,
    },
    /// The node's final state, as the execution shows it.
    NodeFinished {
        hostname: String,
        status: NodeExecStatus,
        exit_code: Option<i32>,
        error: Option<String>,
        at: String,
    },
    /// Every node is settled; the stream ends after this event.
    ExecutionFinished {
        status: String,
        node_counts: NodeCounts,
        at: String,
    },
    /// Not stored: this reader fell more than a page behind the newest events and
    /// is catching up from the store. Nothing was lost.
    Lagged { message: String },
}

impl ExecEvent {
    pub fn name(&self) -> &'static str {
        match self {
            ExecEvent::NodeStarted { .. } => "node_started",
            ExecEvent::Output { .. } => "output",
            ExecEvent::OutputTruncated { .. } => "output_truncated",
            ExecEvent::NodeFinished { .. } => "node_finished",
            ExecEvent::ExecutionFinished { .. } => "execution_finished",
            ExecEvent::Lagged { .. } => "lagged",
        }
    }
}

/// One server-sent event of an execution's stream, as its fields arrive on the
/// wire (`id:`, `event:`, `data:` lines): `data` is an [`ExecEvent`] as JSON,
/// whose `event` is the same as this `event`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecEventFrame {
    /// What to send as Last-Event-ID to resume after this event; absent on
    /// `lagged`, which is not stored.
    #[serde(default)]
    pub id: Option<String>,
    /// `node_started`, `output`, `output_truncated`, `node_finished`,
    /// `execution_finished` or `lagged`.
    pub event: String,
    /// The event as JSON (see ExecEvent).
    pub data: String,
}

/// What `POST …/execution/{id}/cancel` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    pub exec_id: String,
    /// `cancelling` when it was still running (nodes not started never start,
    /// running ones are stopped), `finished` when it had already ended (nothing
    /// changed).
    pub state: String,
}

// --- agent side --------------------------------------------------------------

/// One line of the agent's exec stream (`POST /v1/exec?stream=1`, `GET
/// /v1/exec/{id}/stream`), newline-delimited JSON: output as the command writes
/// it, then the result, which ends the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum AgentStreamLine {
    Out {
        stream: OutputStream,
        offset: u64,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Live output of `stream` stops at `offset`.
    Cut {
        stream: OutputStream,
        offset: u64,
    },
    Result(AgentExecResult),
}

/// Query of the agent's exec stream: where each stream's live output resumes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFrom {
    #[serde(default)]
    pub stdout: u64,
    #[serde(default)]
    pub stderr: u64,
}

/// How long a cancelled command has between SIGTERM and SIGKILL.
pub const CANCEL_GRACE_SECS: u64 = 5;

/// `POST /v1/exec`: run once for this exec ID, then answer with the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentExec {
    pub exec_id: String,
    /// Shell command (`/bin/sh -c`) or, for `Base64`, a whole script (run under the
    /// program its `#!` line names, else `/bin/sh`).
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
