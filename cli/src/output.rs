//! How results are shown: aligned tables for people, JSON for scripts, colour
//! only on a terminal (and never with NO_COLOR), and every string that came
//! from a node or the bastion stripped of control characters before it
//! reaches the terminal.

use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use crate::CliError;

/// Writes to stdout; when the reader has gone (`postern audit | head`), exits
/// at once with status 0 instead of panicking as `println!` does. Nothing
/// more can be shown, and the reader got what it asked for.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Any other failure (a full disk behind a redirect) must not pass
        // silently: the caller's output is incomplete.
        eprintln!("postern: cannot write the output: {e}");
        std::process::exit(2);
    }
}

/// `println!` for the CLI's results: see [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the CLI's results: see [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

pub fn color_on(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn stdout_color() -> bool {
    color_on(std::io::stdout().is_terminal())
}

pub fn stderr_color() -> bool {
    color_on(std::io::stderr().is_terminal())
}

pub fn paint(on: bool, style: Style, text: &str) -> String {
    if on {
        format!("{}{text}{}", style.render(), style.render_reset())
    } else {
        text.to_string()
    }
}

pub fn green() -> Style {
    Style::new().fg_color(Some(AnsiColor::Green.into()))
}
pub fn red() -> Style {
    Style::new().fg_color(Some(AnsiColor::Red.into()))
}
pub fn yellow() -> Style {
    Style::new().fg_color(Some(AnsiColor::Yellow.into()))
}
pub fn bold() -> Style {
    Style::new().bold()
}
pub fn dim() -> Style {
    Style::new().dimmed()
}

pub fn error_line(message: &str) -> String {
    format!(
        "{} {}",
        paint(stderr_color(), red().bold(), "error:"),
        message
    )
}

/// Characters a terminal acts on or that reorder what it shows: C0 and C1
/// controls (escape sequences above all) and Unicode's bidirectional
/// overrides and isolates.
fn hazardous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// A server's or node's text made safe for a terminal: hazardous characters
/// become `?`; tabs stay.
pub fn safe(s: &str) -> String {
    s.chars()
        .map(|c| if hazardous(c) && c != '\t' { '?' } else { c })
        .collect()
}

/// JSON text made safe for a terminal: serde_json escapes only C0 controls,
/// so the other hazardous characters are escaped here (`\uXXXX`, which any
/// JSON reader reads back as the same character; they only occur in strings).
pub fn json_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if hazardous(c) && !c.is_ascii() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?;
    crate::outln!("{}", json_safe(&text));
    Ok(())
}

/// Left-aligned columns, two spaces apart; the header in bold on a terminal.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let color = stdout_color();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let head = line(header.iter().map(|h| h.to_string()).collect());
    crate::outln!("{}", paint(color, bold(), head.trim_end()));
    for row in rows {
        crate::outln!("{}", line(row.iter().map(|c| safe(c)).collect()).trim_end());
    }
}

/// "12 s ago", "3 min ago", … from an RFC 3339 time; the time itself when it
/// cannot be read.
pub fn ago(rfc3339: &str) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return safe(rfc3339);
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds();
    match secs {
        s if s < 0 => "just now".into(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// A duration between two RFC 3339 times, e.g. "2.1 s".
pub fn took(from: Option<&str>, to: Option<&str>) -> Option<String> {
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    };
    let d = parse(to?)? - parse(from?)?;
    Some(seconds(d.as_seconds_f64()))
}

pub fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_peers_never_reach_the_terminal() {
        assert_eq!(safe("ok\x1b[2J\x07\tend\r"), "ok?[2J?\tend?");
        assert_eq!(safe("a\u{202E}b\u{9b}c"), "a?b?c");
        let v = serde_json::json!({"data": "x\u{9b}2J\u{202E}y\u{1b}"});
        let text = json_safe(&serde_json::to_string(&v).unwrap());
        assert_eq!(text, r#"{"data":"x\u009b2J\u202ey\u001b"}"#);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(2.14), "2.1 s");
        assert_eq!(seconds(125.0), "2m05s");
        assert_eq!(
            took(Some("2026-11-30T10:00:00Z"), Some("2026-11-30T10:00:01.5Z")).as_deref(),
            Some("1.5 s")
        );
        assert_eq!(took(None, Some("2026-11-30T10:00:00Z")), None);
        assert_eq!(ago("garbage\x1b"), "garbage?");
    }
}
