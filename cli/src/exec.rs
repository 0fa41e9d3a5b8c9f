//! `postern exec`: submit, then follow the execution's live events, showing
//! each node's output as it arrives (prefixed by its hostname, or grouped by
//! identical output as `clush -b` does), a progress bar on a terminal, and a
//! summary. Ctrl-C cancels the execution on the nodes.
//!
//! A dropped event stream is resumed after the last event seen
//! (`Last-Event-ID`), so nothing is shown twice or lost. Once the command is
//! submitted, losing the live view for good is its own outcome (exit 3, with
//! the command that follows the execution), never "the request failed" (2):
//! a wrapper that retries failed requests must not run the command again.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use postern_api::cmdexec::{
    ContentType, ExecEvent, ExecuteRequest, MAX_COMMAND_BYTES, NodeCounts, NodeExecStatus,
    OutputStream, RateValue, TargetType, decode_output,
};
use postern_client::ClientError;

use crate::output::{
    bold, dim, green, paint, red, safe, seconds, stderr_color, stdout_color, yellow,
};
use crate::{CliError, Ctx, Scope};

/// How long to keep trying to resume a broken stream.
const RESUME_FOR: Duration = Duration::from_secs(120);
/// A partial line longer than this is shown as it is.
const MAX_LINE: usize = 64 * 1024;
/// Partial lines held in all: beyond, every one is shown as it is, so many
/// nodes (or a server inventing them) cannot grow memory without bound.
const MAX_PARTIAL_TOTAL: usize = 8 * 1024 * 1024;
/// Output kept per node for `--group`, and in all.
const GROUP_NODE_BYTES: usize = 256 * 1024;
const GROUP_TOTAL_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    scope: Scope,
    /// Nodes by hostname, comma-separated (or repeated)
    #[arg(
        short = 'n',
        long = "nodes",
        value_delimiter = ',',
        value_name = "HOST,…"
    )]
    nodes: Vec<String>,
    /// Every node of the edge
    #[arg(long, conflicts_with_all = ["nodes", "selector"])]
    cluster: bool,
    /// Nodes whose labels match a selector, e.g. 'role=db,zone in (a,b)'
    #[arg(short = 'l', long, conflicts_with = "nodes", value_name = "SELECTOR")]
    selector: Option<String>,
    /// Seconds each node may run it, 1 to 3600 (default 60)
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3600), value_name = "SECONDS")]
    timeout: Option<i64>,
    /// Run this file as one program on each node (its #! line is honoured)
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Nodes running it at once: a count or a percentage ("10", "25%")
    #[arg(long, value_name = "N|N%")]
    max_concurrency: Option<String>,
    /// Failed nodes tolerated before the rest are skipped ("0": stop at the first)
    #[arg(long, value_name = "N|N%")]
    max_errors: Option<String>,
    /// Show each group of nodes with identical output once, as clush -b does
    #[arg(short = 'b', long)]
    group: bool,
    /// The events as JSON lines (for scripts), instead of text
    #[arg(long, conflicts_with = "group")]
    json: bool,
    /// A key that makes a retried submit run the command once
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// The command and its arguments (joined by spaces and run by the node's
    /// shell, as ssh does), after --
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<(), CliError> {
    let req = request(&a)?;
    let (project, edge) = ctx.scope(&a.scope).await?;
    // Registered before the submit, so a Ctrl-C during it cancels what it
    // started instead of leaving it running unseen.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::Usage(format!("cannot watch for Ctrl-C: {e}")))?;
    let started = Instant::now();
    let submitted = ctx
        .client
        .execute(&project, &edge, &req, a.idempotency_key.as_deref())
        .await?;
    // The id names the execution in messages and paths: shown safely, and
    // only ever sent back as one path segment.
    let exec_id = safe(&submitted.exec_id);
    let total = submitted.target_nodes.len()
        + submitted.unreachable_nodes.len()
        + submitted.unapproved_nodes.len();
    let mut view = View::new(&a, total as u64, &exec_id);
    let mut last_id: Option<String> = None;
    let mut cancelled = false;
    let mut broken_since: Option<Instant> = None;
    let finished = 'follow: loop {
        let stream = tokio::select! {
            s = ctx.client.events(&project, &edge, &submitted.exec_id, last_id.as_deref()) => s,
            _ = sigint.recv() => {
                cancel(ctx, (&project, &edge, &submitted.exec_id), &view, &mut sigint, &mut cancelled).await?;
                continue;
            }
        };
        let mut stream = match stream {
            Ok(Some(s)) => {
                broken_since = None;
                s
            }
            // Nothing after the last event seen: the execution is over.
            Ok(None) => break None,
            Err(e) if resumable(&e) => {
                let since = *broken_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RESUME_FOR {
                    return Err(view_lost(&exec_id, (&project, &edge), &e));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(view_lost(&exec_id, (&project, &edge), &e)),
        };
        loop {
            // The stream times itself out when even its keep-alives stop.
            let next = tokio::select! {
                n = stream.next() => n,
                _ = sigint.recv() => {
                    cancel(ctx, (&project, &edge, &submitted.exec_id), &view, &mut sigint, &mut cancelled).await?;
                    continue;
                }
            };
            match next {
                Some(Ok(ev)) => {
                    // A server that replays what was already shown (ignoring
                    // Last-Event-ID) is not shown twice.
                    if !newer(ev.id.as_deref(), last_id.as_deref()) {
                        continue;
                    }
                    if ev.id.is_some() {
                        last_id = ev.id.clone();
                    }
                    if let Some(counts) = view.event(&ev.event) {
                        break 'follow Some(counts);
                    }
                }
                // Ended, broke or went silent before the end: resume.
                None | Some(Err(_)) => {
                    let since = *broken_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RESUME_FOR {
                        return Err(view_lost(
                            &exec_id,
                            (&project, &edge),
                            &"its event stream kept breaking",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'follow;
                }
            }
        }
    };
    let counts = match finished {
        Some(c) => c,
        None => {
            ctx.client
                .execution(&project, &edge, &submitted.exec_id, 0, 1)
                .await
                .map_err(|e| view_lost(&exec_id, (&project, &edge), &e))?
                .node_counts
        }
    };
    view.finish(&counts, started.elapsed());
    if cancelled {
        return Err(CliError::Interrupted);
    }
    if counts.succeeded as u64 == view.total && view.total > 0 {
        Ok(())
    } else {
        Err(CliError::NodesFailed(String::new()))
    }
}

/// Whether event `id` comes after `last`: ids are the store's, increasing;
/// one that is not a number is taken as new.
fn newer(id: Option<&str>, last: Option<&str>) -> bool {
    match (
        id.and_then(|i| i.parse::<u64>().ok()),
        last.and_then(|l| l.parse::<u64>().ok()),
    ) {
        (Some(i), Some(l)) => i > l,
        _ => true,
    }
}

/// The command was submitted, and runs, but cannot be followed here: say
/// so, and how to follow it, with an exit status of its own (3).
fn view_lost(
    exec_id: &str,
    (project, edge): (&str, &str),
    why: &dyn std::fmt::Display,
) -> CliError {
    CliError::LiveViewLost(format!(
        "submitted as {exec_id}, live view lost: follow it with postern show {exec_id} -p {} -e {} ({why})",
        safe(project),
        safe(edge)
    ))
}

/// Errors worth another try: the bastion unreachable for a moment, or busy.
fn resumable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. } | ClientError::Timeout { .. }
    ) || matches!(e.status(), Some(429 | 502 | 503 | 504))
}

/// On Ctrl-C: the first asks the bastion to cancel, a second (then or while
/// the request hangs) stops waiting.
async fn cancel(
    ctx: &Ctx,
    (project, edge, exec_id): (&str, &str, &str),
    view: &View,
    sigint: &mut tokio::signal::unix::Signal,
    cancelled: &mut bool,
) -> Result<(), CliError> {
    if *cancelled {
        return Err(CliError::Interrupted);
    }
    *cancelled = true;
    view.note("cancelling: nodes not started never start, running ones are stopped (Ctrl-C again to stop waiting)");
    tokio::select! {
        r = ctx.client.cancel(project, edge, exec_id) => {
            if let Err(e) = r {
                view.note(&format!("could not cancel: {e}"));
            }
            Ok(())
        }
        _ = sigint.recv() => Err(CliError::Interrupted),
    }
}

fn request(a: &ExecArgs) -> Result<ExecuteRequest, CliError> {
    let (command, content_type) = match (&a.script, a.command.is_empty()) {
        (Some(_), false) => {
            return Err(CliError::Usage(
                "give a command after -- or --script FILE, not both".into(),
            ));
        }
        (Some(f), true) => {
            let bytes = crate::config::read_limited(f, MAX_COMMAND_BYTES, "the script")?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(CliError::Usage(format!(
                    "the script {} is empty",
                    f.display()
                )));
            }
            (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                ContentType::Base64,
            )
        }
        (None, true) => {
            return Err(CliError::Usage(
                "what should run? give it after --, e.g. postern exec --cluster -- uptime, or --script FILE".into(),
            ));
        }
        (None, false) => (a.command.join(" "), ContentType::String),
    };
    let (target_type, target) = match (a.cluster, &a.selector, a.nodes.is_empty()) {
        (true, _, _) => (TargetType::Cluster, None),
        (false, Some(_), _) => (TargetType::Selector, None),
        (false, None, false) => (TargetType::Node, Some(a.nodes.clone())),
        (false, None, true) => {
            return Err(CliError::Usage(
                "on which nodes? give -n HOST,HOST, --cluster (every node of the edge) or -l SELECTOR".into(),
            ));
        }
    };
    Ok(ExecuteRequest {
        target,
        target_type,
        command,
        content_type,
        timeout: a.timeout,
        selector: a.selector.clone(),
        max_concurrency: a.max_concurrency.clone().map(RateValue),
        max_errors: a.max_errors.clone().map(RateValue),
    })
}

enum Mode {
    /// Each line as it comes, prefixed by its node.
    Lines,
    /// Each node's output kept, shown grouped at the end.
    Group,
    /// Events as JSON lines.
    Json,
}

/// What is on screen: the progress bar, the partial lines, the tallies.
struct View {
    mode: Mode,
    total: u64,
    exec_id: String,
    bar: Option<ProgressBar>,
    color_out: bool,
    color_err: bool,
    /// Partial lines by node and stream, and their bytes in all.
    partial: HashMap<(String, bool), Vec<u8>>,
    partial_bytes: usize,
    /// `--group`: each node's output, and the bytes kept in all.
    kept: BTreeMap<String, Vec<u8>>,
    kept_bytes: usize,
    not_kept: bool,
    failed: Vec<String>,
    done: u64,
}

impl View {
    fn new(a: &ExecArgs, total: u64, exec_id: &str) -> View {
        let mode = if a.json {
            Mode::Json
        } else if a.group {
            Mode::Group
        } else {
            Mode::Lines
        };
        let bar = (!a.json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} nodes {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        View {
            mode,
            total,
            exec_id: exec_id.to_string(),
            bar,
            color_out: stdout_color(),
            color_err: stderr_color(),
            partial: HashMap::new(),
            partial_bytes: 0,
            kept: BTreeMap::new(),
            kept_bytes: 0,
            not_kept: false,
            failed: Vec::new(),
            done: 0,
        }
    }

    /// Prints without tearing the progress bar.
    fn print(&self, to_stderr: bool, text: &str) {
        let write = || {
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{text}");
            }
        };
        match &self.bar {
            Some(b) => b.suspend(write),
            None => write(),
        }
    }

    fn note(&self, text: &str) {
        self.print(true, &paint(self.color_err, yellow(), text));
    }

    /// Shows one event; the node counts when it ends the execution.
    fn event(&mut self, ev: &ExecEvent) -> Option<NodeCounts> {
        if let Mode::Json = self.mode
            && let Ok(line) = serde_json::to_string(ev)
        {
            self.print(false, &crate::output::json_safe(&line));
        }
        match ev {
            ExecEvent::Output {
                hostname,
                stream,
                data,
                encoding,
                ..
            } => {
                let bytes = decode_output(data, *encoding).unwrap_or_default();
                let err = matches!(stream, OutputStream::Stderr);
                match self.mode {
                    Mode::Lines => self.lines(hostname, err, &bytes),
                    Mode::Group => self.keep(hostname, &bytes),
                    Mode::Json => {}
                }
            }
            ExecEvent::OutputTruncated {
                hostname, stream, ..
            } => {
                if !matches!(self.mode, Mode::Json) {
                    let which = match stream {
                        OutputStream::Stdout => "stdout",
                        OutputStream::Stderr => "stderr",
                    };
                    self.note(&format!(
                        "{}: live {which} stops here; the start and end are kept: postern show {}",
                        safe(hostname),
                        self.exec_id
                    ));
                }
            }
            ExecEvent::NodeFinished {
                hostname,
                status,
                exit_code,
                error,
                ..
            } => {
                self.flush(hostname);
                self.done += 1;
                if !matches!(status, NodeExecStatus::Succeeded) {
                    self.failed.push(hostname.clone());
                    if !matches!(self.mode, Mode::Json) {
                        let what = describe(*status, *exit_code, error.as_deref());
                        self.print(
                            true,
                            &format!(
                                "{}: {}",
                                paint(self.color_err, bold(), &safe(hostname)),
                                paint(self.color_err, red(), &what)
                            ),
                        );
                    }
                }
                if let Some(b) = &self.bar {
                    b.set_position(self.done);
                    if !self.failed.is_empty() {
                        b.set_message(format!("({} failed)", self.failed.len()));
                    }
                }
            }
            ExecEvent::ExecutionFinished { node_counts, .. } => {
                return Some(node_counts.clone());
            }
            ExecEvent::NodeStarted { .. } | ExecEvent::Lagged { .. } => {}
        }
        None
    }

    fn lines(&mut self, host: &str, err: bool, bytes: &[u8]) {
        let mut buf = self
            .partial
            .remove(&(host.to_string(), err))
            .unwrap_or_default();
        self.partial_bytes -= buf.len();
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            self.line(host, err, &buf[start..start + nl]);
            start += nl + 1;
        }
        let mut rest = buf.split_off(start);
        if rest.len() > MAX_LINE {
            self.line(host, err, &rest);
            rest.clear();
        }
        if !rest.is_empty() {
            self.partial_bytes += rest.len();
            self.partial.insert((host.to_string(), err), rest);
        }
        if self.partial_bytes > MAX_PARTIAL_TOTAL {
            let mut all: Vec<_> = self.partial.drain().collect();
            all.sort();
            for ((h, e), rest) in all {
                self.line(&h, e, &rest);
            }
            self.partial_bytes = 0;
        }
    }

    fn line(&self, host: &str, err: bool, bytes: &[u8]) {
        let color = if err { self.color_err } else { self.color_out };
        let text = safe(&String::from_utf8_lossy(bytes));
        self.print(
            err,
            &format!("{}: {text}", paint(color, dim().bold(), &safe(host))),
        );
    }

    /// The rest of a node's partial lines, when it ends.
    fn flush(&mut self, host: &str) {
        for err in [false, true] {
            if let Some(rest) = self.partial.remove(&(host.to_string(), err)) {
                self.partial_bytes -= rest.len();
                self.line(host, err, &rest);
            }
        }
    }

    fn keep(&mut self, host: &str, bytes: &[u8]) {
        let kept = self.kept.entry(host.to_string()).or_default();
        let room = GROUP_NODE_BYTES
            .saturating_sub(kept.len())
            .min(GROUP_TOTAL_BYTES.saturating_sub(self.kept_bytes));
        let take = bytes.len().min(room);
        kept.extend_from_slice(&bytes[..take]);
        self.kept_bytes += take;
        if take < bytes.len() {
            self.not_kept = true;
        }
    }

    fn finish(&mut self, counts: &NodeCounts, took: Duration) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Mode::Group = self.mode {
            self.print_groups();
        }
        if let Mode::Json = self.mode {
            return;
        }
        let mut parts = Vec::new();
        let mut add = |n: i64, what: &str, good: bool| {
            if n > 0 {
                let text = format!("{n} {what}");
                parts.push(if good {
                    paint(self.color_err, green(), &text)
                } else {
                    paint(self.color_err, red(), &text)
                });
            }
        };
        add(counts.succeeded, "succeeded", true);
        add(counts.failed, "failed", false);
        add(counts.timed_out, "timed out", false);
        add(counts.unreachable, "unreachable", false);
        add(counts.not_approved, "not approved", false);
        add(counts.lost, "lost", false);
        add(counts.cancelled, "cancelled", false);
        add(counts.skipped, "skipped", false);
        add(counts.pending + counts.running, "unfinished", false);
        let mut failed = self
            .failed
            .iter()
            .take(10)
            .map(|h| safe(h))
            .collect::<Vec<_>>()
            .join(", ");
        if self.failed.len() > 10 {
            failed.push_str(&format!(", and {} more", self.failed.len() - 10));
        }
        let failed = if failed.is_empty() {
            String::new()
        } else {
            format!(" (not succeeded: {failed})")
        };
        let nodes = if self.total == 1 { "node" } else { "nodes" };
        self.print(
            true,
            &format!(
                "{} {nodes}: {}{failed} in {}; exec {}",
                self.total,
                if parts.is_empty() {
                    "none ran".to_string()
                } else {
                    parts.join(", ")
                },
                seconds(took.as_secs_f64()),
                self.exec_id
            ),
        );
    }

    fn print_groups(&mut self) {
        let kept = std::mem::take(&mut self.kept);
        let mut groups: BTreeMap<&[u8], Vec<&str>> = BTreeMap::new();
        for (host, out) in &kept {
            groups.entry(out.as_slice()).or_default().push(host);
        }
        let mut groups: Vec<(&[u8], Vec<&str>)> = groups.into_iter().collect();
        // Biggest group first, as clush does.
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.1.cmp(&b.1)));
        for (out, hosts) in groups {
            let names = hosts.iter().map(|h| safe(h)).collect::<Vec<_>>().join(",");
            let head = format!("{names} ({})", hosts.len());
            let rule = "-".repeat(head.chars().count().min(79));
            self.print(false, &rule);
            self.print(false, &paint(self.color_out, bold(), &head));
            self.print(false, &rule);
            for line in String::from_utf8_lossy(out).lines() {
                self.print(false, &safe(line));
            }
        }
        if self.not_kept {
            self.note(&format!(
                "some output was longer than --group keeps ({} KiB per node, {} MiB in all); all of it: postern show {}",
                GROUP_NODE_BYTES / 1024,
                GROUP_TOTAL_BYTES / (1024 * 1024),
                self.exec_id
            ));
        }
    }
}

/// A node's end, in words.
pub fn describe(status: NodeExecStatus, exit_code: Option<i32>, error: Option<&str>) -> String {
    let base = match (status, exit_code) {
        (NodeExecStatus::Failed, Some(c)) => format!("failed (exit {c})"),
        (s, _) => status_word(s).to_string(),
    };
    match error {
        // The error often starts with the status already ("cancelled: …").
        Some(e)
            if !matches!(status, NodeExecStatus::Failed) && e.starts_with(status_word(status)) =>
        {
            safe(e)
        }
        Some(e) if !e.is_empty() => format!("{base}: {}", safe(e)),
        _ => base,
    }
}

pub fn status_word(s: NodeExecStatus) -> &'static str {
    match s {
        NodeExecStatus::Pending => "pending",
        NodeExecStatus::Running => "running",
        NodeExecStatus::Succeeded => "succeeded",
        NodeExecStatus::Failed => "failed",
        NodeExecStatus::TimedOut => "timed out",
        NodeExecStatus::Unreachable => "unreachable",
        NodeExecStatus::NotApproved => "not approved",
        NodeExecStatus::Lost => "lost",
        NodeExecStatus::Cancelled => "cancelled",
        NodeExecStatus::Skipped => "skipped",
    }
}
