//! `postern audit`: the audit log with the API's filters, newest first, or
//! `--follow` to print new entries as they are written (oldest first).

use std::time::Duration;

use clap::Args;
use postern_api::admin::{AuditEntry, AuditQuery};

use crate::output::{json, safe, table};
use crate::{CliError, Ctx};

/// How often `--follow` asks.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this action, or a prefix ending in * (e.g. 'cmdexec.*')
    #[arg(long)]
    action: Option<String>,
    /// Only what this user did
    #[arg(long)]
    actor: Option<String>,
    /// Only this outcome (ok, denied, failed, rejected, not_found, error)
    #[arg(long)]
    outcome: Option<String>,
    /// Only entries at or after this time (RFC 3339, e.g. 2026-11-30T12:00:00Z)
    #[arg(long)]
    since: Option<String>,
    /// Only entries before this time (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    /// Entries to show, 1 to 100
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100))]
    limit: i64,
    /// Keep printing new entries as they are written (Ctrl-C to stop)
    #[arg(short, long, conflicts_with = "until")]
    follow: bool,
    /// JSON (with --follow: one entry per line)
    #[arg(long)]
    json: bool,
}

pub async fn audit(ctx: &Ctx, a: AuditArgs) -> Result<(), CliError> {
    let mut f = AuditQuery {
        action: a.action.clone(),
        actor: a.actor.clone(),
        outcome: a.outcome.clone(),
        since: a.since.clone(),
        until: a.until.clone(),
        limit: Some(a.limit),
        offset: None,
    };
    let page = ctx.client.audit(&f).await?;
    if !a.follow {
        if a.json {
            return json(&page);
        }
        print_table(&page.entries);
        if page.total > page.entries.len() as i64 {
            eprintln!(
                "{} of {} entries; narrow with --action, --actor, --outcome, --since",
                page.entries.len(),
                page.total
            );
        }
        return Ok(());
    }
    let me = ctx.client.whoami().await?.name;
    let mut last_seq = page.entries.iter().map(|e| e.seq).max().unwrap_or(0);
    let mut entries = page.entries;
    entries.reverse();
    for e in &entries {
        line(e, a.json, &me);
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        // Pages newest first: walk back until what was already shown.
        let mut fresh: Vec<AuditEntry> = Vec::new();
        let mut offset = 0;
        f.limit = Some(100);
        'pages: loop {
            f.offset = Some(offset);
            let page = match ctx.client.audit(&f).await {
                Ok(p) => p,
                Err(e) if e.status().is_none() || e.status() == Some(503) => {
                    eprintln!("{e}; retrying");
                    break 'pages;
                }
                Err(e) => return Err(e.into()),
            };
            let n = page.entries.len() as i64;
            for e in page.entries {
                if e.seq <= last_seq {
                    break 'pages;
                }
                fresh.push(e);
            }
            // A burst larger than this is shown from its newest 10,000.
            if n < 100 || fresh.len() >= 10_000 {
                break;
            }
            offset += n;
        }
        if let Some(max) = fresh.iter().map(|e| e.seq).max() {
            last_seq = max;
        }
        fresh.reverse();
        for e in &fresh {
            line(e, a.json, &me);
        }
    }
}

/// The follower's own polling is audited too: not shown, or it would echo
/// itself forever.
fn own_poll(e: &AuditEntry, me: &str) -> bool {
    e.actor.as_deref() == Some(me) && e.action == "api GET /api/v1/audit"
}

fn line(e: &AuditEntry, as_json: bool, me: &str) {
    if own_poll(e, me) {
        return;
    }
    if as_json {
        if let Ok(s) = serde_json::to_string(e) {
            crate::outln!("{}", crate::output::json_safe(&s));
        }
        return;
    }
    crate::outln!(
        "{}  {}  {}  {}  {}",
        safe(&e.at),
        safe(e.actor.as_deref().unwrap_or("-")),
        safe(&e.action),
        safe(&e.outcome),
        targets(e)
    );
}

fn targets(e: &AuditEntry) -> String {
    let mut t: Vec<String> = e.targets.iter().take(5).map(|s| safe(s)).collect();
    if e.targets.len() > 5 {
        t.push(format!("+{}", e.targets.len() - 5));
    }
    if let Some(x) = &e.exec_id {
        t.push(format!("exec {}", safe(x)));
    }
    t.join(",")
}

fn print_table(entries: &[AuditEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.actor.clone().unwrap_or_else(|| "-".into()),
                e.action.clone(),
                e.outcome.clone(),
                e.source_ip.clone().unwrap_or_else(|| "-".into()),
                targets(e),
            ]
        })
        .collect();
    table(
        &["AT", "ACTOR", "ACTION", "OUTCOME", "SOURCE", "TARGETS"],
        &rows,
    );
}
