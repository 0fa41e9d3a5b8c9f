//! `postern recordings` (list, show, verify, rm, policy) and `postern play`.
//!
//! `play` streams the cast: the first frame shows as soon as its segment
//! arrives, whatever the recording's size, and memory stays bounded by the
//! longest line. `verify` recomputes the segments' SHA-256 chain from the cast
//! as served and compares its head with the one the session's final audit
//! entry holds: an edit of any stored byte shows.

use std::io::Write;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::BodyExt;
use postern_api::admin::{AuditQuery, Role};
use postern_api::recordings::{
    LabelRule, RecordingLevel, RecordingPolicy, RecordingQuery, RecordingView, chain,
};

use crate::output::{json, safe, table};
use crate::{CliError, Ctx};

/// The longest cast line `play` accepts (the bastion writes far shorter).
const LINE_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct RecordingsArgs {
    #[command(subcommand)]
    action: Option<RecordingsCmd>,
    /// Only this user's sessions
    #[arg(long)]
    user: Option<String>,
    /// Only sessions on this node (hostname)
    #[arg(long)]
    node: Option<String>,
    /// Only this project's sessions
    #[arg(long, short)]
    project: Option<String>,
    /// terminate (recorded by the bastion) or relay (ssh -J: not recorded)
    #[arg(long, value_parser = ["terminate", "relay"])]
    mode: Option<String>,
    /// Only sessions started at or after this time (RFC 3339)
    #[arg(long)]
    since: Option<String>,
    /// Only sessions started before this time (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    /// Sessions to show, 1 to 100
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100))]
    limit: i64,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RecordingsCmd {
    /// One recording's metadata
    Show { id: String },
    /// Check a recording against the audit log: every segment's hash, the chain, and its head
    Verify { id: String },
    /// Delete a recording (org admins; audited)
    Rm { id: String },
    /// A project's recording policy; with flags, set it
    Policy(PolicyArgs),
    /// How many days the org keeps recordings after a session ends (0: until
    /// deleted); with a number, set it (org admins; every deletion is audited)
    Retention {
        #[arg(value_parser = clap::value_parser!(i64).range(0..=postern_api::recordings::RETENTION_DAYS_MAX))]
        days: Option<i64>,
    },
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// The project
    project: String,
    /// The level for everyone: off, best_effort or strict
    #[arg(long, value_parser = level)]
    default: Option<RecordingLevel>,
    /// A role's level, ROLE=LEVEL (e.g. project_member=strict; repeat for several)
    #[arg(long = "role", value_parser = role_level)]
    roles: Vec<(Role, RecordingLevel)>,
    /// Nodes matching a label selector, SELECTOR=LEVEL (e.g. 'tier=payments=strict')
    #[arg(long = "label", value_parser = label_level)]
    labels: Vec<LabelRule>,
}

fn level(s: &str) -> Result<RecordingLevel, String> {
    RecordingLevel::parse(s)
        .ok_or_else(|| format!("{s:?} is not a level: off, best_effort or strict"))
}

fn role_level(s: &str) -> Result<(Role, RecordingLevel), String> {
    let (r, l) = s.split_once('=').ok_or("write ROLE=LEVEL")?;
    let role: Role = serde_json::from_value(serde_json::Value::String(r.into())).map_err(|_| {
        format!("{r:?} is not a role: org_admin, project_admin, project_member or read_only")
    })?;
    Ok((role, level(l)?))
}

fn label_level(s: &str) -> Result<LabelRule, String> {
    let (sel, l) = s.rsplit_once('=').ok_or("write SELECTOR=LEVEL")?;
    Ok(LabelRule {
        selector: sel.to_string(),
        level: level(l)?,
    })
}

pub async fn recordings(ctx: &Ctx, a: RecordingsArgs) -> Result<(), CliError> {
    match a.action {
        None => list(ctx, &a).await,
        Some(RecordingsCmd::Show { id }) => {
            let r = ctx.client.recording(&id).await?;
            if a.json {
                return json(&r);
            }
            print_list(&[r]);
            Ok(())
        }
        Some(RecordingsCmd::Verify { id }) => verify(ctx, &id).await,
        Some(RecordingsCmd::Rm { id }) => {
            ctx.client.delete_recording(&id).await?;
            eprintln!("recording {id} deleted");
            Ok(())
        }
        Some(RecordingsCmd::Policy(p)) => policy(ctx, p, a.json).await,
        Some(RecordingsCmd::Retention { days }) => {
            let r = match days {
                Some(d) => ctx.client.set_recording_retention(d).await?,
                None => ctx.client.recording_retention().await?,
            };
            match r.days {
                0 => println!("recordings are kept until an org admin deletes them"),
                d => println!(
                    "recordings are deleted {d} day{} after their session ended (each deletion is in the audit log)",
                    if d == 1 { "" } else { "s" }
                ),
            }
            Ok(())
        }
    }
}

async fn list(ctx: &Ctx, a: &RecordingsArgs) -> Result<(), CliError> {
    let page = ctx
        .client
        .recordings(&RecordingQuery {
            limit: Some(a.limit),
            offset: None,
            user: a.user.clone(),
            node: a.node.clone(),
            project: a.project.clone(),
            mode: a.mode.clone(),
            since: a.since.clone(),
            until: a.until.clone(),
        })
        .await?;
    if a.json {
        return json(&page);
    }
    print_list(&page.recordings);
    if page.total > page.recordings.len() as i64 {
        eprintln!(
            "{} of {} sessions; narrow with --user, --node, --since",
            page.recordings.len(),
            page.total
        );
    }
    Ok(())
}

fn print_list(rs: &[RecordingView]) {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            let what = match r.kind.as_str() {
                "jump" => "ssh -J".to_string(),
                k if r.command.is_empty() => k.to_string(),
                k => format!("{k}: {}", r.command.chars().take(40).collect::<String>()),
            };
            vec![
                r.id.clone(),
                r.started_at.clone(),
                r.user.clone(),
                format!(
                    "{}{}",
                    if r.login.is_empty() {
                        String::new()
                    } else {
                        format!("{}@", r.login)
                    },
                    r.node
                ),
                safe(&what),
                if r.mode == "relay" {
                    r.policy.clone()
                } else {
                    format!(
                        "{} ({}, {} bytes{})",
                        r.status,
                        r.policy,
                        r.cast_bytes,
                        if r.gaps > 0 {
                            format!(", {} gaps", r.gaps)
                        } else {
                            String::new()
                        }
                    )
                },
            ]
        })
        .collect();
    table(
        &["ID", "STARTED", "USER", "NODE", "SESSION", "RECORDING"],
        &rows,
    );
}

async fn policy(ctx: &Ctx, p: PolicyArgs, as_json: bool) -> Result<(), CliError> {
    let mut policy = ctx.client.recording_policy(&p.project).await?;
    if p.default.is_some() || !p.roles.is_empty() || !p.labels.is_empty() {
        if let Some(d) = p.default {
            policy.default = d;
        }
        for (r, l) in p.roles {
            policy.roles.insert(r, l);
        }
        for rule in p.labels {
            policy.labels.retain(|x| x.selector != rule.selector);
            policy.labels.push(rule);
        }
        policy = ctx.client.set_recording_policy(&p.project, &policy).await?;
    }
    if as_json {
        return json(&policy);
    }
    print_policy(&policy);
    Ok(())
}

fn print_policy(p: &RecordingPolicy) {
    let mut rows = vec![vec!["default".to_string(), p.default.as_str().to_string()]];
    for (r, l) in &p.roles {
        rows.push(vec![format!("role {r}"), l.as_str().to_string()]);
    }
    for l in &p.labels {
        rows.push(vec![
            format!("label {}", l.selector),
            l.level.as_str().to_string(),
        ]);
    }
    table(&["APPLIES TO", "LEVEL"], &rows);
}

/// The head the audit log holds for a recording: the session's final entry
/// names it. `None` when the caller may not read the audit log.
async fn audited_head(ctx: &Ctx, r: &RecordingView) -> Result<Option<(i64, String)>, CliError> {
    let mut q = AuditQuery {
        action: Some("ssh.session.end".into()),
        actor: Some(r.user.clone()),
        since: Some(r.started_at.clone()),
        limit: Some(100),
        offset: Some(0),
        ..Default::default()
    };
    loop {
        let page = match ctx.client.audit(&q).await {
            Ok(p) => p,
            Err(postern_client::ClientError::Api { status: 403, .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for e in &page.entries {
            let rec = &e.detail["detail"]["recording"];
            let rec = if rec.is_null() {
                &e.detail["recording"]
            } else {
                rec
            };
            if rec["id"] == r.id.as_str()
                && let Some(h) = rec["last_hash"].as_str()
            {
                return Ok(Some((e.seq, h.to_string())));
            }
        }
        let next = q.offset.unwrap_or(0) + page.entries.len() as i64;
        if page.entries.is_empty() || next >= page.total {
            return Err(CliError::VerifyFailed(format!(
                "no audit entry ends recording {}: it is still live, or its end was never audited",
                r.id
            )));
        }
        q.offset = Some(next);
    }
}

async fn verify(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let r = ctx.client.recording(id).await?;
    if r.mode == "relay" {
        return Err(CliError::Usage(format!(
            "session {id} went through ssh -J: it was not recorded, so there is nothing to verify"
        )));
    }
    let segs = ctx.client.recording_segments(id).await?;
    let (head, against) = match audited_head(ctx, &r).await? {
        Some((seq, h)) => (h, format!("the audit log (entry {seq})")),
        None => {
            eprintln!(
                "note: only org admins read the audit log; checking against the bastion's own record instead"
            );
            (r.last_hash.clone(), "the bastion's record".to_string())
        }
    };
    let mut body = ctx.client.recording_cast(id, 0).await?;
    let mut buf = BytesMut::new();
    let mut prev = r.id.clone();
    let mut total = 0i64;
    for s in &segs.segments {
        if s.offset != total {
            return Err(CliError::VerifyFailed(format!(
                "segment {} does not start where the one before ends",
                s.seq
            )));
        }
        while (buf.len() as i64) < s.length {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => {
                    return Err(CliError::Usage(format!("the cast stopped arriving: {e}")));
                }
                None => {
                    return Err(CliError::VerifyFailed(format!(
                        "the cast ends inside segment {}",
                        s.seq
                    )));
                }
            }
        }
        let lines = buf.split_to(s.length as usize);
        let h = chain(&prev, &lines);
        if h != s.sha256 {
            return Err(CliError::VerifyFailed(format!(
                "recording {id} was changed: segment {} (bytes {}..{}) does not hash to what was recorded",
                s.seq,
                s.offset,
                s.offset + s.length
            )));
        }
        prev = h;
        total += s.length;
    }
    if prev != head {
        return Err(CliError::VerifyFailed(format!(
            "recording {id} was changed: its chain ends in {prev}, {against} holds {head}"
        )));
    }
    crate::outln!(
        "recording {id}: {} segments, {total} bytes, chain intact; its head matches {against}",
        segs.segments.len()
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// The output as text, escape sequences removed (greppable)
    Text,
    /// The asciicast v2 file as stored (asciinema play plays it)
    Cast,
}

#[derive(Debug, Args)]
pub struct PlayArgs {
    /// The recording's id (postern recordings lists them)
    id: String,
    /// Playback speed (2 = twice as fast)
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Longest pause shown, in seconds
    #[arg(long, default_value_t = 2.0)]
    idle_cap: f64,
    /// Start this many seconds in (from the segment that holds that moment)
    #[arg(long, default_value_t = 0.0)]
    from: f64,
    /// Print instead of playing: text or cast (default when stdout is not a terminal: text)
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Watch a session as it happens (org and project admins): what it showed
    /// so far at once, then its output as it comes, until it ends
    #[arg(long, short = 'f', conflicts_with = "from")]
    follow: bool,
}

pub async fn play(ctx: &Ctx, a: PlayArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    // Written so that NaN fails too.
    let sane = a.speed > 0.0 && a.speed <= 1000.0 && a.idle_cap >= 0.0 && a.from >= 0.0;
    if !sane {
        return Err(CliError::Usage(
            "--speed must be in (0, 1000], --idle-cap and --from at least 0".into(),
        ));
    }
    let format = a
        .format
        .or_else(|| (!std::io::stdout().is_terminal()).then_some(Format::Text));
    let mut from_byte = 0u64;
    if a.from > 0.0 {
        let segs = ctx.client.recording_segments(&a.id).await?;
        let at = (a.from * 1000.0) as i64;
        if let Some(s) = segs
            .segments
            .iter()
            .rev()
            .find(|s| s.at_ms <= at && s.seq > 0)
        {
            from_byte = s.offset as u64;
        }
    }
    let mut body = if a.follow {
        ctx.client.recording_live(&a.id).await?
    } else {
        ctx.client.recording_cast(&a.id, from_byte).await?
    };
    if let Some(Format::Cast) = format {
        let mut out = std::io::stdout().lock();
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| CliError::Usage(format!("the cast stopped arriving: {e}")))?;
            if let Ok(d) = f.into_data() {
                out.write_all(&d).map_err(write_err)?;
                if a.follow {
                    out.flush().map_err(write_err)?;
                }
            }
        }
        return out.flush().map_err(write_err);
    }
    let mut buf = BytesMut::new();
    let mut last_t: Option<f64> = None;
    let mut text = Stripper::default();
    let mut out = std::io::stdout().lock();
    loop {
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(nl + 1);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let Some([t, code, data]) = v
                .as_array()
                .map(|a| a.as_slice())
                .and_then(|s| <&[_; 3]>::try_from(s).ok())
            else {
                continue; // the header
            };
            let (Some(t), Some(code), Some(data)) = (t.as_f64(), code.as_str(), data.as_str())
            else {
                continue;
            };
            match (code, format) {
                ("o", Some(Format::Text)) => {
                    out.write_all(text.strip(data).as_bytes())
                        .map_err(write_err)?;
                }
                // Following: shown as it arrives, the pace is the session's.
                ("o", _) if a.follow => out.write_all(data.as_bytes()).map_err(write_err)?,
                ("o", _) => {
                    if t >= a.from {
                        let wait =
                            last_t.map_or(0.0, |l| ((t - l) / a.speed).clamp(0.0, a.idle_cap));
                        if wait > 0.0 {
                            out.flush().map_err(write_err)?;
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                                _ = tokio::signal::ctrl_c() => return Err(CliError::Interrupted),
                            }
                        }
                        last_t = Some(t);
                    }
                    out.write_all(data.as_bytes()).map_err(write_err)?;
                }
                ("m", _) => eprintln!("[postern {t:.1}s] {}", safe(data)),
                _ => {}
            }
        }
        if buf.len() > LINE_MAX {
            return Err(CliError::Usage(
                "the cast holds a line longer than any Postern writes; is it a cast?".into(),
            ));
        }
        if a.follow {
            out.flush().map_err(write_err)?;
        }
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(mut d) = f.into_data() {
                    buf.extend_from_slice(&d.copy_to_bytes(d.remaining()));
                }
            }
            Some(Err(e)) => return Err(CliError::Usage(format!("the cast stopped arriving: {e}"))),
            None => break,
        }
    }
    out.flush().map_err(write_err)
}

fn write_err(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    CliError::Usage(format!("cannot write the output: {e}"))
}

/// Removes terminal escape sequences (CSI, OSC, and two-byte ones) and carriage
/// returns from output, across pieces: what is left reads like a log.
#[derive(Debug, Default)]
struct Stripper {
    state: u8,
}

impl Stripper {
    fn strip(&mut self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match (self.state, c) {
                (0, '\x1b') => self.state = 1,
                (0, '\r') => {}
                (0, c) if c.is_control() && c != '\n' && c != '\t' => {}
                (0, c) => out.push(c),
                (1, '[') => self.state = 2,
                (1, ']') => self.state = 3,
                (1, _) => self.state = 0,
                // CSI ends with a byte in @..~
                (2, c) if ('@'..='~').contains(&c) => self.state = 0,
                (2, _) => {}
                // OSC ends with BEL or ESC \
                (3, '\x07') => self.state = 0,
                (3, '\x1b') => self.state = 4,
                (3, _) => {}
                (4, _) => self.state = 0,
                _ => self.state = 0,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_what_a_terminal_shows_without_its_escapes() {
        let mut s = Stripper::default();
        assert_eq!(s.strip("\x1b[1;32mok\x1b[0m\r\n"), "ok\n");
        // A sequence cut between two pieces.
        assert_eq!(s.strip("a\x1b["), "a");
        assert_eq!(s.strip("0mb"), "b");
        assert_eq!(s.strip("\x1b]0;title\x07c"), "c");
    }

    #[test]
    fn policy_flags_read_as_written() {
        assert_eq!(
            role_level("project_member=strict").unwrap(),
            (Role::ProjectMember, RecordingLevel::Strict)
        );
        assert!(role_level("boss=strict").is_err());
        let l = label_level("tier=payments=strict").unwrap();
        assert_eq!(l.selector, "tier=payments");
        assert!(label_level("tier=payments=loud").is_err());
    }
}
