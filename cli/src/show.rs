//! `postern history`, `show` and `cancel`: what ran, and what came of it.

use clap::Args;
use postern_api::cmdexec::{ContentType, Execution, NodeResult, TargetType, decode_output};

use crate::exec::describe;
use crate::output::{ago, bold, dim, json, paint, safe, stdout_color, table, took};
use crate::{CliError, Ctx, ProjectOnly, Scope};

/// Nodes per page when showing an execution: every page is one bounded answer.
const NODE_PAGE: i64 = 100;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    project: ProjectOnly,
    /// Executions to show, 1 to 100
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100))]
    limit: i64,
    /// Skip the newest N
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    offset: i64,
    /// JSON, as the API answers it
    #[arg(long)]
    json: bool,
}

pub async fn history(ctx: &Ctx, a: HistoryArgs) -> Result<(), CliError> {
    let project = ctx.project_of(&a.project).await?;
    let h = ctx.client.history(&project, a.limit, a.offset).await?;
    if a.json {
        return json(&h);
    }
    let rows: Vec<Vec<String>> = h
        .executions
        .iter()
        .map(|e| {
            let c = &e.node_counts;
            vec![
                e.exec_id.clone(),
                ago(&e.created_at),
                e.username.clone(),
                e.edge_id.clone(),
                e.status.clone(),
                format!("{}/{}", c.succeeded, e.nodes_total),
                one_line(&command_text(&e.command, e.content_type), 60),
            ]
        })
        .collect();
    table(
        &[
            "EXEC ID", "WHEN", "USER", "EDGE", "STATUS", "OK/NODES", "COMMAND",
        ],
        &rows,
    );
    if h.total > a.offset + h.executions.len() as i64 {
        eprintln!(
            "{} of {}; older: --offset {}",
            h.executions.len(),
            h.total,
            a.offset + h.executions.len() as i64
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    exec_id: String,
    #[command(flatten)]
    scope: Scope,
    /// JSON of one page of nodes, as the API answers it (see --node-offset)
    #[arg(long)]
    json: bool,
    /// With --json: the first node of the page
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..), requires = "json")]
    node_offset: i64,
}

pub async fn show(ctx: &Ctx, a: ShowArgs) -> Result<(), CliError> {
    let (project, edge) = ctx.scope(&a.scope).await?;
    if a.json {
        let e = ctx
            .client
            .execution(&project, &edge, &a.exec_id, a.node_offset, NODE_PAGE)
            .await?;
        return json(&e);
    }
    let color = stdout_color();
    let mut offset = 0;
    loop {
        let e = ctx
            .client
            .execution(&project, &edge, &a.exec_id, offset, NODE_PAGE)
            .await?;
        if offset == 0 {
            header(&e, color);
        }
        for n in &e.nodes {
            node(n, color);
        }
        match e.next_node_offset {
            Some(next) if next > offset => offset = next,
            _ => break,
        }
    }
    Ok(())
}

fn header(e: &Execution, color: bool) {
    let c = &e.node_counts;
    crate::outln!(
        "{} {}  by {}  {}",
        paint(color, bold(), &format!("exec {}", safe(&e.exec_id))),
        paint(color, bold(), &safe(&e.status)),
        safe(&e.username),
        safe(&e.created_at)
    );
    let target = match e.target_type {
        TargetType::Cluster => "every node of the edge".to_string(),
        TargetType::Selector => format!("selector {}", safe(e.selector.as_deref().unwrap_or(""))),
        TargetType::Node => format!("{} node(s)", e.target.as_ref().map_or(0, Vec::len)),
    };
    crate::outln!(
        "  edge {}, {target}, timeout {} s",
        safe(&e.edge_id),
        e.timeout
    );
    if let Some(n) = e.max_concurrency {
        crate::outln!("  at most {n} node(s) at once");
    }
    if let Some(n) = e.max_errors {
        crate::outln!("  stops after {n} failure(s)");
    }
    if let Some(at) = &e.cancel_requested_at {
        crate::outln!("  cancel requested at {}", safe(at));
    }
    crate::outln!(
        "  command: {}",
        one_line(&command_text(&e.command, e.content_type), 200)
    );
    crate::outln!(
        "  {} node(s): {} succeeded, {} failed, {} timed out, {} unreachable, {} not approved, {} lost, {} cancelled, {} skipped, {} pending or running",
        e.nodes_total,
        c.succeeded,
        c.failed,
        c.timed_out,
        c.unreachable,
        c.not_approved,
        c.lost,
        c.cancelled,
        c.skipped,
        c.pending + c.running
    );
}

fn node(n: &NodeResult, color: bool) {
    let when = took(n.started_at.as_deref(), n.finished_at.as_deref())
        .map(|t| format!(" in {t}"))
        .unwrap_or_default();
    crate::outln!(
        "\n{}  {}{when}",
        paint(color, bold(), &safe(&n.hostname)),
        describe(n.status, n.exit_code, n.error.as_deref())
    );
    for (name, text, enc, truncated, total) in [
        (
            "stdout",
            &n.stdout,
            n.stdout_encoding,
            n.stdout_truncated,
            n.stdout_bytes,
        ),
        (
            "stderr",
            &n.stderr,
            n.stderr_encoding,
            n.stderr_truncated,
            n.stderr_bytes,
        ),
    ] {
        if text.is_empty() {
            continue;
        }
        let note = if truncated {
            format!(" ({total} bytes; the start and the end are kept)")
        } else {
            String::new()
        };
        crate::outln!("  {}", paint(color, dim(), &format!("{name}{note}:")));
        let bytes = decode_output(text, enc).unwrap_or_default();
        for line in String::from_utf8_lossy(&bytes).lines() {
            crate::outln!("    {}", safe(line));
        }
    }
}

/// The command as a person reads it: a script is shown by its first line.
fn command_text(command: &str, ct: ContentType) -> String {
    match ct {
        ContentType::String => command.to_string(),
        ContentType::Base64 => {
            use base64::Engine as _;
            let script = base64::engine::general_purpose::STANDARD
                .decode(command)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            format!(
                "(script) {}",
                script.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
            )
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = safe(&s.replace('\n', "; "));
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max - 1).collect::<String>())
    } else {
        flat
    }
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    exec_id: String,
    #[command(flatten)]
    scope: Scope,
}

pub async fn cancel(ctx: &Ctx, a: CancelArgs) -> Result<(), CliError> {
    let (project, edge) = ctx.scope(&a.scope).await?;
    let r = ctx.client.cancel(&project, &edge, &a.exec_id).await?;
    crate::outln!("exec {}: {}", safe(&r.exec_id), safe(&r.state));
    Ok(())
}
