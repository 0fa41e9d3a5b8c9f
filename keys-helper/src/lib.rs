//! `postern-keys`, sshd's `AuthorizedKeysCommand`: prints one `authorized_keys` line
//! per live grant for the login sshd asks about.
//!
//! It asks the agent's unix socket first, with a short deadline (sshd has no
//! timeout of its own for the helper), and falls back to the agent's grants file
//! when the agent does not answer. Every line is built by
//! `postern_api::ssh::authorized_keys_line`, which never prints an expired grant
//! and re-checks every field. Output is assembled completely before anything is
//! printed: sshd discards the output of a helper that fails, and a half-printed
//! answer must never be taken for a whole one.
//!
//! With `--kube-node-keys`, the agent also serves the keys listed in the node's
//! Kubernetes Node object (when signed by a cluster admin's key), and caches them
//! in `kube-keys.json` for this fallback; they are printed by
//! `postern_api::kube_keys::authorized_keys_line`, with the same checks and never
//! once expired. A cache written before signatures were required is not read.
//!
//! Synchronous on purpose: no runtime to start, so an answer takes about a
//! millisecond.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postern_api::kube_keys::KubeKeysFile;
use postern_api::ssh::{
    BreakGlassFile, Grant, GrantsFile, KeysAnswer, KeysQuery, LinkState, authorized_keys_line,
    break_glass_line, files,
};
use thiserror::Error;

/// How long to wait for the agent before reading the file instead.
pub const AGENT_TIMEOUT: Duration = Duration::from_millis(300);
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum HelperError {
    #[error("login {0:?} is not a valid unix login")]
    Login(String),
    #[error("the agent did not answer: {0}")]
    Agent(String),
    #[error("cannot read {0}: {1}")]
    File(String, String),
}

#[derive(Debug, Clone)]
pub struct Query {
    pub data_dir: PathBuf,
    pub login: String,
    /// sshd's `%f`, when given: only grants for that key.
    pub fingerprint: Option<String>,
    pub now_ms: i64,
}

/// Where the answer came from, for the log line on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Agent,
    File,
}

#[derive(Debug)]
pub struct Answer {
    pub lines: Vec<String>,
    pub source: Source,
    pub break_glass: usize,
    /// Why the agent was not used, when it was not.
    pub agent_error: Option<String>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ask_agent(q: &Query, timeout: Duration) -> Result<KeysAnswer, HelperError> {
    let fail = |e: std::io::Error| HelperError::Agent(e.to_string());
    let mut s = UnixStream::connect(q.data_dir.join(files::SOCKET)).map_err(fail)?;
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    s.set_write_timeout(Some(timeout)).map_err(fail)?;
    let mut req = serde_json::to_vec(&KeysQuery {
        login: q.login.clone(),
        fingerprint: q.fingerprint.clone(),
    })
    .map_err(|e| HelperError::Agent(e.to_string()))?;
    req.push(b'\n');
    s.write_all(&req).map_err(fail)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, MAX_ANSWER))
        .read_line(&mut line)
        .map_err(fail)?;
    serde_json::from_str(line.trim()).map_err(|e| HelperError::Agent(format!("bad answer: {e}")))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, HelperError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| HelperError::File(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HelperError::File(path.display().to_string(), e.to_string())),
    }
}

/// The answer from the files, for when the agent is silent: live grants, and the
/// break-glass keys once the bastion has been unreachable beyond their grace.
fn from_files(q: &Query) -> Result<KeysAnswer, HelperError> {
    let grants: GrantsFile = read_json(&q.data_dir.join(files::GRANTS))?.unwrap_or_default();
    let grants: Vec<Grant> = grants
        .grants
        .into_iter()
        .filter(|g| q.fingerprint.as_deref().is_none_or(|f| f == g.fingerprint))
        .collect();
    let mut break_glass = Vec::new();
    let bg: Option<BreakGlassFile> = read_json(&q.data_dir.join(files::BREAK_GLASS))?;
    if let Some(bg) = bg {
        let link: Option<LinkState> = read_json(&q.data_dir.join(files::LINK))?;
        // No link record at all: the agent never ran here; count from nothing.
        if let Some(link) = link {
            let down_for = q.now_ms - link.unreachable_since_agent_silent();
            if down_for > (bg.grace_secs as i64).saturating_mul(1000) {
                break_glass = bg.keys;
            }
        }
    }
    // The agent's cache of keys from its Kubernetes Node object: kept exactly for
    // when the agent (or the API server) is down. Without `signed` it was written
    // by an agent that did not check signatures, so anyone who could update the
    // Node's status may have put keys in it: none of them is printed.
    let kube: KubeKeysFile = read_json(&q.data_dir.join(files::KUBE_KEYS))?.unwrap_or_default();
    let kube_keys = if kube.signed.is_some() {
        kube.keys
            .into_iter()
            .filter(|k| q.fingerprint.as_deref().is_none_or(|f| f == k.fingerprint))
            .collect()
    } else {
        Vec::new()
    };
    Ok(KeysAnswer {
        grants,
        break_glass,
        kube_keys,
    })
}

/// Answers one sshd query. Errors only when neither the agent nor the files can
/// be read; the caller then prints nothing (deny).
pub fn answer(q: &Query, agent_timeout: Duration) -> Result<Answer, HelperError> {
    postern_api::validate::login(&q.login).map_err(|_| HelperError::Login(q.login.clone()))?;
    let (raw, source, agent_error) = match ask_agent(q, agent_timeout) {
        Ok(a) => (a, Source::Agent, None),
        Err(e) => (from_files(q)?, Source::File, Some(e.to_string())),
    };
    let mut lines: Vec<String> = raw
        .grants
        .iter()
        .filter_map(|g| authorized_keys_line(g, &q.login, q.now_ms))
        .collect();
    let bg: Vec<String> = raw
        .break_glass
        .iter()
        .filter_map(|k| break_glass_line(k))
        .collect();
    let break_glass = bg.len();
    lines.extend(bg);
    lines.extend(
        raw.kube_keys
            .iter()
            .filter(|k| q.fingerprint.as_deref().is_none_or(|f| f == k.fingerprint))
            .filter_map(|k| postern_api::kube_keys::authorized_keys_line(k, &q.login, q.now_ms)),
    );
    Ok(Answer {
        lines,
        source,
        break_glass,
        agent_error,
    })
}

/// Appends a line to the data directory's break-glass log: every time those keys
/// are offered to sshd, there is a local record of when and for which login.
pub fn log_break_glass(data_dir: &Path, login: &str, count: usize, now_ms: i64) {
    let path = data_dir.join(files::BREAK_GLASS_LOG);
    let line = format!("{now_ms} break-glass keys offered to sshd: login={login} keys={count}\n");
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = r {
        eprintln!("postern-keys: cannot append to {}: {e}", path.display());
    }
}

/// What the `postern-keys` command does for sshd: prints the lines it could
/// build for `login` (none means deny), errors to stderr, which sshd logs.
/// Shared with `postern-bastion dev`'s demo node, whose sshd runs it from the
/// bastion's binary.
pub fn run(data_dir: std::path::PathBuf, login: String, fingerprint: Option<String>) {
    use std::io::Write;
    let q = Query {
        data_dir,
        login,
        fingerprint,
        now_ms: now_ms(),
    };
    match answer(&q, AGENT_TIMEOUT) {
        Ok(a) => {
            if let Some(e) = &a.agent_error {
                eprintln!("postern-keys: {e}; answered from the grants file");
            }
            if a.break_glass > 0 {
                log_break_glass(&q.data_dir, &q.login, a.break_glass, q.now_ms);
                eprintln!(
                    "postern-keys: bastion unreachable beyond the grace; offering {} break-glass key(s) for {}",
                    a.break_glass, q.login
                );
            }
            let mut out = String::new();
            for l in &a.lines {
                out.push_str(l);
                out.push('\n');
            }
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        }
        Err(e) => eprintln!("postern-keys: {e}; denying"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, fp: &str, logins: &[&str], expires_at_ms: i64) -> Grant {
        Grant {
            id: id.into(),
            user: "alice".into(),
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc6".into(),
            fingerprint: fp.into(),
            logins: logins.iter().map(|l| l.to_string()).collect(),
            expires_at_ms,
            forward_to: vec![],
            once: false,
        }
    }

    fn write(dir: &Path, name: &str, v: &impl serde::Serialize) {
        std::fs::write(dir.join(name), serde_json::to_vec(v).expect("json")).expect("write");
    }

    fn query(dir: &Path, login: &str, fp: Option<&str>, now_ms: i64) -> Query {
        Query {
            data_dir: dir.to_path_buf(),
            login: login.into(),
            fingerprint: fp.map(String::from),
            now_ms,
        }
    }

    #[test]
    fn without_an_agent_the_file_answers_and_expired_grants_are_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            files::GRANTS,
            &GrantsFile {
                grants: vec![
                    grant("live", "fp1", &["root"], 2_000),
                    grant("old", "fp2", &["root"], 999),
                    grant("other", "fp3", &["postgres"], 2_000),
                ],
            },
        );
        let a = answer(&query(dir.path(), "root", None, 1_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.source, Source::File);
        assert!(a.agent_error.is_some());
        assert_eq!(a.lines.len(), 1, "{:?}", a.lines);
        assert!(a.lines[0].ends_with("grant=live"));
        let a = answer(
            &query(dir.path(), "root", Some("fp2"), 1_000),
            AGENT_TIMEOUT,
        )
        .expect("answer");
        assert!(a.lines.is_empty(), "expired: {:?}", a.lines);
        let a = answer(&query(dir.path(), "root", None, 5_000), AGENT_TIMEOUT).expect("answer");
        assert!(a.lines.is_empty(), "all expired: {:?}", a.lines);
    }

    #[test]
    fn no_files_means_no_lines_and_bad_logins_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = answer(&query(dir.path(), "root", None, 1), AGENT_TIMEOUT).expect("answer");
        assert!(a.lines.is_empty());
        assert!(answer(&query(dir.path(), "ro ot", None, 1), AGENT_TIMEOUT).is_err());
        std::fs::write(dir.path().join(files::GRANTS), b"{not json").expect("write");
        assert!(answer(&query(dir.path(), "root", None, 1), AGENT_TIMEOUT).is_err());
    }

    #[test]
    fn kube_keys_are_read_from_their_cache_for_their_logins_until_they_expire() {
        use postern_api::kube_keys::signed::SignedDoc;
        use postern_api::kube_keys::{KubeKeysFile, parse_annotation};
        let dir = tempfile::tempdir().expect("tempdir");
        let parsed = parse_annotation(
            "expires=2030-01-02T03:04:05Z logins=root ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t a\n\
             ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxFQIxdYoqipACxlRQNotxR29dE4Ktqc45c9Vthw5ue b",
        );
        assert_eq!(parsed.keys.len(), 2);
        let fp = parsed.keys[0].fingerprint.clone();
        let mut file = KubeKeysFile {
            node_name: "n".into(),
            keys: parsed.keys,
            ..KubeKeysFile::default()
        };
        // A cache from before signatures were required: nothing from it.
        write(dir.path(), files::KUBE_KEYS, &file);
        let a = answer(&query(dir.path(), "root", None, 1_000), AGENT_TIMEOUT).expect("answer");
        assert!(a.lines.is_empty(), "unsigned cache: {:?}", a.lines);
        file.signed = Some(SignedDoc {
            signer: "SHA256:1sUhxhBabItmicnz8JFL/z1I3V1Kx1NDksZWVjhdfjA".into(),
            serial: 1,
            not_after_ms: 1_893_553_445_000,
            sha256: "0".repeat(64),
        });
        // A tampered entry in the cache is never printed.
        let mut bad = file.keys[1].clone();
        bad.public_key = "ssh-ed25519 AAAA\ncommand=\"sh\" ssh-ed25519 AAAA".into();
        file.keys.push(bad);
        write(dir.path(), files::KUBE_KEYS, &file);
        let a = answer(&query(dir.path(), "root", None, 1_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.source, Source::File);
        assert_eq!(a.lines.len(), 2, "{:?}", a.lines);
        assert!(
            a.lines
                .iter()
                .all(|l| l.contains("postern:kube-node-annotation"))
        );
        let a = answer(&query(dir.path(), "deploy", None, 1_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.lines.len(), 1, "the second key allows any login");
        let a =
            answer(&query(dir.path(), "root", Some(&fp), 1_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.lines.len(), 1, "%f narrows to that key");
        let a = answer(
            &query(dir.path(), "root", Some(&fp), 1_893_553_445_000),
            AGENT_TIMEOUT,
        )
        .expect("answer");
        assert!(a.lines.is_empty(), "expired: {:?}", a.lines);
    }

    #[test]
    fn break_glass_only_after_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            files::BREAK_GLASS,
            &BreakGlassFile {
                keys: vec!["ssh-ed25519 AAAAoncall".into()],
                grace_secs: 60,
            },
        );
        let link = |up: bool| LinkState {
            up,
            down_since_ms: 100_000,
            written_ms: 100_000,
        };
        write(dir.path(), files::LINK, &link(true));
        let a = answer(&query(dir.path(), "root", None, 130_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.break_glass, 0, "within the grace");
        let a = answer(&query(dir.path(), "root", None, 170_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.break_glass, 1, "agent silent since 100 s, 70 s ago");
        assert!(a.lines[0].ends_with("postern:break-glass"));
        write(dir.path(), files::LINK, &link(false));
        let a = answer(&query(dir.path(), "root", None, 170_000), AGENT_TIMEOUT).expect("answer");
        assert_eq!(a.break_glass, 1);
    }
}
