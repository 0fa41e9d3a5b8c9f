//! Keys from Kubernetes Node objects (`postern-agent run --kube-node-keys`): the
//! annotation's syntax and its strict parser, the `authorized_keys` line such a key
//! becomes, the agent's cache file, and the report the bastion polls. The
//! annotation is used only when signed by a key the cluster admin holds: see
//! [`signed`], which checks the signature and the header lines before any key
//! line is read.
//!
//! After its header, the annotation [`ANNOTATION`] holds one key per line:
//!
//! ```text
//! # comments and blank lines are skipped
//! expires=2026-12-01T00:00:00Z logins=root,deploy ssh-ed25519 AAAA… alice@laptop
//! ssh-ed25519 AAAA… oncall            (no options: any login, no expiry)
//! ```
//!
//! Options come first, each at most once: `expires=` an RFC 3339 UTC time written
//! exactly `YYYY-MM-DDTHH:MM:SSZ`, and `logins=` a comma-separated list of unix
//! logins (absent: any login, as an org admin's grant). Then the key, held to the
//! same rules as users' registered keys ([`crate::pubkey::parse_user_key`]), and an
//! optional comment. Anything else (an unknown option, a second `expires=`, a key
//! of a refused algorithm, a key twice) rejects that line alone, with its number
//! and reason; a rejected line is never printed. The whole annotation is bounded
//! ([`MAX_ANNOTATION_BYTES`], [`MAX_LINES`], [`MAX_LINE_BYTES`], [`MAX_KEYS`]): one
//! too large is refused whole, so it grants nothing.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ssh::check_key_text;
use crate::validate;

pub mod signed;

/// The Node annotation the agent reads.
pub const ANNOTATION: &str = "postern.dev/authorized-keys";
/// Agent route: `GET ?after=VERSION&wait=SECS`, answered with a [`KubeKeysReport`]
/// once the agent's version differs from `after` or the wait runs out.
pub const ROUTE: &str = "/v1/kube-keys";
/// The longest wait a poll may ask for; the bastion's call timeout is above it.
pub const MAX_WAIT_SECS: u64 = 60;
/// Largest annotation accepted (Kubernetes allows 256 KiB for all annotations).
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// Most lines (comments and blank ones included).
pub const MAX_LINES: usize = 1_000;
/// Longest line: the longest key plus options and a comment.
pub const MAX_LINE_BYTES: usize = crate::ssh::MAX_PUBLIC_KEY_LEN + 512;
/// Most keys; lines beyond are rejected.
pub const MAX_KEYS: usize = 100;
/// Most logins one line may name.
pub const MAX_LOGINS: usize = 32;
/// Most rejected lines reported (the first ones).
pub const MAX_REJECTED: usize = 100;
/// The comment a printed line carries, so sshd's log says where the key came from.
pub const LINE_COMMENT: &str = "postern:kube-node-annotation";

/// One key from the annotation, as the agent holds, caches and serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeKey {
    /// `<algorithm> <base64>`, canonical, without the comment.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it (and sshd's `%f`).
    pub fingerprint: String,
    pub algorithm: String,
    /// Unix logins the key may use; empty means any login.
    pub logins: Vec<String>,
    /// Unix ms; `None`: no expiry.
    pub expires_at_ms: Option<i64>,
    /// The key's comment, without control characters, at most 200 characters.
    pub comment: String,
    /// The line number in the annotation (from 1).
    pub line: usize,
}

impl KubeKey {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|t| t > now_ms)
    }

    pub fn allows_login(&self, login: &str) -> bool {
        self.logins.is_empty() || self.logins.iter().any(|l| l == login)
    }

    /// Every field re-checked, for keys read back from a file or a peer.
    pub fn is_well_formed(&self) -> bool {
        check_key_text(&self.public_key)
            && crate::ssh::check_fingerprint(&self.fingerprint)
            && self.logins.len() <= MAX_LOGINS
            && self.logins.iter().all(|l| validate::login(l).is_ok())
            && self.algorithm.len() <= 64
            && self.comment.chars().count() <= 200
            && !self.comment.chars().any(char::is_control)
    }
}

/// A line of the annotation that grants nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectedLine {
    /// The line number in the annotation (from 1; 0 for the annotation as a whole).
    pub line: usize,
    pub reason: String,
}

/// The annotation, parsed: its valid keys (expired ones included; the caller
/// drops them by time) and its rejected lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub keys: Vec<KubeKey>,
    pub rejected: Vec<RejectedLine>,
}

/// Parses key lines. Never fails as a whole except on the bounds; each bad line
/// is rejected on its own.
///
/// This is the grammar alone: it says nothing about who wrote the text. The agent
/// reads a Node's annotation only through [`signed::evaluate`], which calls this
/// on the lines after a verified header.
pub fn parse_annotation(text: &str) -> Parsed {
    parse_lines(text, 0)
}

/// [`parse_annotation`] of the lines after the first `skip` (a signed document's
/// header), numbered as lines of the whole text so a number found in a log or in
/// sshd's `line=N` points at the annotation's own line. The bounds count the
/// whole text.
pub(crate) fn parse_lines(text: &str, skip: usize) -> Parsed {
    let mut out = Parsed::default();
    let reject_all = |reason: String| Parsed {
        keys: Vec::new(),
        rejected: vec![RejectedLine { line: 0, reason }],
    };
    if text.len() > MAX_ANNOTATION_BYTES {
        return reject_all(format!(
            "the annotation has {} bytes, more than {MAX_ANNOTATION_BYTES}: nothing in it is used",
            text.len()
        ));
    }
    if text.lines().count() > MAX_LINES {
        return reject_all(format!(
            "the annotation has more than {MAX_LINES} lines: nothing in it is used"
        ));
    }
    for (i, raw) in text.lines().enumerate().skip(skip) {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let result = if raw.len() > MAX_LINE_BYTES {
            Err(format!("longer than {MAX_LINE_BYTES} bytes"))
        } else if out.keys.len() >= MAX_KEYS {
            Err(format!("more than {MAX_KEYS} keys"))
        } else {
            parse_line(line, n).and_then(|k| {
                if out.keys.iter().any(|o| o.fingerprint == k.fingerprint) {
                    Err(format!("{} is already on an earlier line", k.fingerprint))
                } else {
                    Ok(k)
                }
            })
        };
        match result {
            Ok(k) => out.keys.push(k),
            Err(reason) if out.rejected.len() < MAX_REJECTED => {
                out.rejected.push(RejectedLine { line: n, reason })
            }
            Err(_) => {}
        }
    }
    out
}

/// One non-blank, non-comment line (already trimmed).
pub fn parse_line(line: &str, n: usize) -> Result<KubeKey, String> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("contains control characters".into());
    }
    let mut rest = line;
    let mut expires: Option<i64> = None;
    let mut logins: Option<Vec<String>> = None;
    loop {
        let word = rest.split([' ', '\t']).next().unwrap_or_default();
        let Some((name, value)) = word.split_once('=') else {
            break;
        };
        match name {
            "expires" if expires.is_none() => expires = Some(parse_utc(value)?),
            "logins" if logins.is_none() => logins = Some(parse_logins(value)?),
            "expires" | "logins" => return Err(format!("{name}= given twice")),
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!(
                    "unknown option {shown:?} (expected expires=, logins=, then the key)"
                ));
            }
        }
        rest = rest[word.len()..].trim_start();
    }
    if rest.is_empty() {
        return Err("no key after the options".into());
    }
    let k = crate::pubkey::parse_user_key(rest).map_err(|e| e.to_string())?;
    Ok(KubeKey {
        public_key: k.public_key,
        fingerprint: k.fingerprint,
        algorithm: k.algorithm,
        logins: logins.unwrap_or_default(),
        expires_at_ms: expires,
        comment: k.comment,
        line: n,
    })
}

fn parse_logins(value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for l in value.split(',') {
        validate::login(l).map_err(|e| format!("logins=: {e}"))?;
        if !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    if out.len() > MAX_LOGINS {
        return Err(format!("logins= names more than {MAX_LOGINS} logins"));
    }
    Ok(out)
}

/// `YYYY-MM-DDTHH:MM:SSZ` exactly (UTC), as unix ms. Nothing looser: an expiry
/// read differently by the writer and the agent would be a key that lives longer.
pub fn parse_utc(value: &str) -> Result<i64, String> {
    // At most 40 characters of the value are echoed: the reason reaches logs and
    // the bastion, and a line may be 8 KiB.
    let bad = || {
        let shown: String = value.chars().take(40).collect();
        format!("expires={shown:?} is not a UTC time written YYYY-MM-DDTHH:MM:SSZ")
    };
    let b = value.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        let s = &value[r];
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let month = time::Month::try_from(num(5..7)? as u8).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(num(0..4)? as i32, month, num(8..10)? as u8)
        .map_err(|_| bad())?;
    let t = time::Time::from_hms(num(11..13)? as u8, num(14..16)? as u8, num(17..19)? as u8)
        .map_err(|_| bad())?;
    let at = time::PrimitiveDateTime::new(date, t).assume_utc();
    Ok(at.unix_timestamp().saturating_mul(1000))
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The `authorized_keys` line for a live key and login, or `None` when the key
/// has expired, does not cover the login, or a field is malformed.
///
/// Like a break-glass key it has no `from=`: it exists for access that does not go
/// through the bastion (the node's sshd reached directly). `restrict` turns off
/// forwarding of every kind; a shell needs a pty. sshd enforces `expiry-time=`
/// itself, so even a stale cache cannot let a key in past its expiry.
pub fn authorized_keys_line(k: &KubeKey, login: &str, now_ms: i64) -> Option<String> {
    if !k.is_live(now_ms) || !k.allows_login(login) || !k.is_well_formed() {
        return None;
    }
    let expiry = match k.expires_at_ms {
        Some(ms) => format!(",expiry-time=\"{}\"", crate::ssh::expiry_time(ms)?),
        None => String::new(),
    };
    Some(format!(
        "restrict,pty{expiry} {} {LINE_COMMENT}:line={}",
        k.public_key, k.line
    ))
}

/// The agent's cache of the keys it learned (`kube-keys.json`, 0600): what it
/// serves, and what the keys helper reads when the agent is down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeKeysFile {
    pub node_name: String,
    pub keys: Vec<KubeKey>,
    pub rejected: Vec<RejectedLine>,
    /// When the agent last read the Node object (unix ms).
    pub observed_at_ms: i64,
    /// The last signed document accepted for this Node. It stays when a later
    /// annotation is refused or removed, so that an older document cannot be put
    /// back (see [`signed::SignedDoc`]). `None` in a cache written before
    /// signatures were required: the keys of such a cache are never used.
    #[serde(default)]
    pub signed: Option<signed::SignedDoc>,
}

/// A key learned from Kubernetes, as the bastion shows it on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeNodeKey {
    pub fingerprint: String,
    pub algorithm: String,
    /// Unix logins it may use; empty: any.
    pub logins: Vec<String>,
    /// RFC 3339; absent: no expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    pub comment: String,
}

impl KubeNodeKey {
    pub fn of(k: &KubeKey) -> KubeNodeKey {
        KubeNodeKey {
            fingerprint: k.fingerprint.clone(),
            algorithm: k.algorithm.clone(),
            logins: k.logins.clone(),
            expires_at: k.expires_at_ms.and_then(format_utc),
            comment: k.comment.clone(),
        }
    }
}

/// `GET /v1/kube-keys`: the live keys and the rejected lines, at a version that
/// changes whenever either does (and only then).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeKeysReport {
    pub version: u64,
    pub keys: Vec<KubeNodeKey>,
    pub rejected: Vec<RejectedLine>,
}

/// What the bastion keeps and shows on a node (`kube_keys` of the node view).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeKubeKeys {
    /// Keys from the node's Kubernetes Node object that may log in to its sshd
    /// directly (not through the bastion).
    pub keys: Vec<KubeNodeKey>,
    /// Lines of the annotation that were refused, and why.
    pub rejected: Vec<RejectedLine>,
    /// When the agent's report last changed what the bastion holds (RFC 3339).
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[cfg(test)]
mod tests;
