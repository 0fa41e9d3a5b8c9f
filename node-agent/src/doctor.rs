//! `postern-agent doctor`: checks a node the way sshd and the bastion will
//! judge it, and says what to fix. A node whose keys helper sshd refuses gives
//! its users only "Permission denied (publickey)", while the bastion sees a
//! session start: this is where an operator finds out why.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_rustls::TlsConnector;

use crate::identity::Identity;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, and when not ok, what to do.
    pub detail: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub data_dir: PathBuf,
    /// The sshd binary, and the configuration it is asked about (its default
    /// when `None`).
    pub sshd: PathBuf,
    pub sshd_config: Option<PathBuf>,
    pub timeout: Duration,
}

/// Runs every check; the first failing one says what to fix first.
pub async fn run(o: &DoctorOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    let identity = match Identity::load(&o.data_dir) {
        Ok(id) => {
            checks.push(Check::ok(
                "identity",
                format!(
                    "node {} ({}), enrolled with {}",
                    id.meta.hostname, id.meta.node_id, id.meta.controller
                ),
            ));
            Some(id)
        }
        Err(e) => {
            checks.push(Check::fail(
                "identity",
                format!(
                    "{e}; enroll this node with the join command its bastion printed (postern-agent join …)"
                ),
            ));
            None
        }
    };
    if let Some(id) = &identity {
        checks.extend(bastion(id, o.timeout).await);
    }
    match sshd_keys_command(o).await {
        Ok((command, user)) => {
            checks.extend(keys_command(&command, user.as_deref(), &o.data_dir));
        }
        Err(e) => checks.push(Check::fail("sshd", e)),
    }
    checks.push(keys_socket(&o.data_dir));
    checks
}

/// Each bastion the node may reach: a TLS handshake with the node's own
/// certificate, verified against the bastion's CA both ways. It offers the
/// enrollment protocol, so the bastion closes it at once and the running
/// agent's channel is left alone.
async fn bastion(id: &Identity, timeout: Duration) -> Vec<Check> {
    let controllers = match id.meta.controllers() {
        Ok(c) => c,
        Err(e) => return vec![Check::fail("bastion", format!("agent.json: {e}"))],
    };
    let mut out = Vec::new();
    for c in controllers {
        let r = async {
            let mut cfg = (*crate::tls::channel_config(&id.ca_pem, &id.credentials())
                .map_err(|e| e.to_string())?)
            .clone();
            cfg.alpn_protocols = vec![postern_api::agent::ALPN_ENROLL.to_vec()];
            let tcp = c.connect_tcp(timeout).await?;
            let name = c.server_name()?;
            tokio::time::timeout(
                timeout,
                TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp),
            )
            .await
            .map_err(|_| "the TLS handshake timed out".to_string())?
            .map_err(|e| format!("the TLS handshake failed: {e}"))?;
            Ok::<(), String>(())
        }
        .await;
        out.push(match r {
            Ok(()) => Check::ok("bastion", format!("{}: reachable, certificates accepted both ways", c.url)),
            Err(e) => Check::fail(
                "bastion",
                format!(
                    "{}: {e}; check the network path to it (outbound TCP), and that this node is not disabled or its certificate expired (re-enroll)",
                    c.url
                ),
            ),
        });
    }
    out
}

/// sshd's effective AuthorizedKeysCommand and its user, from `sshd -T`.
async fn sshd_keys_command(o: &DoctorOptions) -> Result<(String, Option<String>), String> {
    let mut cmd = tokio::process::Command::new(&o.sshd);
    // One that outlives its timeout is killed, not left behind.
    cmd.arg("-T").kill_on_drop(true);
    if let Some(c) = &o.sshd_config {
        cmd.arg("-f").arg(c);
    }
    let out = tokio::time::timeout(o.timeout, cmd.output())
        .await
        .map_err(|_| format!("{} -T did not answer", o.sshd.display()))?
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); install openssh-server, or pass --sshd",
                o.sshd.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} -T refused its configuration (run the doctor as root): {}",
            o.sshd.display(),
            postern_api::validate::peer_text(String::from_utf8_lossy(&out.stderr).trim(), 500)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            k.eq_ignore_ascii_case(key).then(|| v.trim().to_string())
        })
    };
    let command = value("authorizedkeyscommand").unwrap_or_else(|| "none".into());
    Ok((command, value("authorizedkeyscommanduser")))
}

/// The sshd settings as the postern-agent package ships them, to link into
/// `/etc/ssh/sshd_config.d/` (opt-in: the package never edits sshd's files).
const DROP_IN: &str = "/usr/share/postern-agent/sshd_config.d/postern.conf";

/// The AuthorizedKeysCommand: that it is postern-keys for this data
/// directory, and that sshd will run it (its path and every directory above
/// it root-owned and writable by no one else, as sshd demands).
fn keys_command(command: &str, user: Option<&str>, data_dir: &Path) -> Vec<Check> {
    let snippet = format!(
        "AuthorizedKeysCommand /usr/bin/postern-keys --data-dir {} %u %f\nAuthorizedKeysCommandUser root",
        data_dir.display()
    );
    if command == "none" || command.is_empty() {
        // The shipped file names the default data directory only.
        let shipped = if data_dir == Path::new("/var/lib/postern-agent") {
            format!(
                "\n(the postern-agent package ships these: ln -s {DROP_IN} /etc/ssh/sshd_config.d/postern.conf)"
            )
        } else {
            String::new()
        };
        return vec![Check::fail(
            "sshd",
            format!(
                "sshd does not ask postern-keys for keys; add to its configuration:\n{snippet}{shipped}"
            ),
        )];
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    let mut out = Vec::new();
    let dir_arg = words
        .iter()
        .position(|w| *w == "--data-dir")
        .and_then(|i| words.get(i + 1))
        .copied();
    let ours = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    match dir_arg {
        Some(d) if Path::new(d) == ours || Path::new(d) == data_dir => out.push(Check::ok(
            "sshd",
            format!("AuthorizedKeysCommand {command} (as {})", user.unwrap_or("?")),
        )),
        Some(d) => out.push(Check::fail(
            "sshd",
            format!(
                "AuthorizedKeysCommand asks about --data-dir {d}, but this agent's is {}; make them the same",
                ours.display()
            ),
        )),
        None if words.first().is_some_and(|w| w.ends_with("postern-keys")) => out.push(Check::ok(
            "sshd",
            format!("AuthorizedKeysCommand {command} (default data directory)"),
        )),
        None => out.push(Check::fail(
            "sshd",
            format!("AuthorizedKeysCommand is {command:?}, not postern-keys; use:\n{snippet}"),
        )),
    }
    if !command.contains("%u") {
        out.push(Check::fail(
            "sshd",
            "AuthorizedKeysCommand must pass the login (%u) and the key's fingerprint (%f)",
        ));
    }
    if let Some(path) = words.first() {
        out.push(match safe_path(Path::new(path)) {
            Ok(()) => Check::ok(
                "keys helper",
                format!("{path}: root-owned and writable by root only, up to /"),
            ),
            Err(e) => Check::fail(
                "keys helper",
                format!("sshd will refuse to run it: {e}; install it root-owned, mode 0755, in a directory such as /usr/bin (where the postern-agent package puts it)"),
            ),
        });
    }
    out
}

/// What sshd will certainly refuse about this node's keys helper, for the SSH
/// relay to tell the user instead of a bare "Permission denied (publickey)":
/// only when sshd's effective AuthorizedKeysCommand is this agent's own
/// helper and sshd would not run it. Anything less certain (no `sshd -T`,
/// another command) says nothing, so a node is never refused on a guess.
pub async fn keys_helper_problem(o: &DoctorOptions) -> Option<String> {
    let (command, _) = sshd_keys_command(o).await.ok()?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let helper = *words.first()?;
    if !helper.ends_with("/postern-keys") {
        return None;
    }
    let dir_arg = words
        .iter()
        .position(|w| *w == "--data-dir")
        .and_then(|i| words.get(i + 1));
    let ours = std::path::absolute(&o.data_dir).unwrap_or_else(|_| o.data_dir.clone());
    if dir_arg.is_some_and(|d| Path::new(d) != ours && Path::new(d) != o.data_dir) {
        return None;
    }
    safe_path(Path::new(helper)).err().map(|e| {
        format!(
            "this node's sshd will not run its keys helper ({e}), so no key can log in; an admin runs postern-agent doctor on the node"
        )
    })
}

/// sshd's rule for an AuthorizedKeysCommand (its `safe_path`): an absolute
/// path to a regular file, which and whose every parent directory are owned by
/// root and not writable by group or others.
pub fn safe_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    // sshd judges the file a link points to, and that file's directories
    // (realpath), not the link's.
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = real.as_path();
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    let mut p = Some(path);
    while let Some(at) = p {
        let m = std::fs::metadata(at).map_err(|e| format!("{}: {e}", at.display()))?;
        if m.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root",
                at.display(),
                m.uid()
            ));
        }
        if m.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by group or others (mode {:o})",
                at.display(),
                m.permissions().mode() & 0o7777
            ));
        }
        p = at.parent();
    }
    Ok(())
}

/// What sshd's helper will get: the agent's answer on its keys socket (or
/// only the grants file, when the agent is down).
fn keys_socket(data_dir: &Path) -> Check {
    let q = postern_keys::Query {
        data_dir: data_dir.to_path_buf(),
        login: "root".into(),
        fingerprint: None,
        now_ms: postern_keys::now_ms(),
    };
    match postern_keys::answer(&q, postern_keys::AGENT_TIMEOUT) {
        Ok(a) => match a.agent_error {
            None => Check::ok(
                "keys socket",
                format!("the agent answers (keys for root now: {})", a.lines.len()),
            ),
            Some(e) => Check::fail(
                "keys socket",
                format!(
                    "{e}; start the agent ({}); until then sshd gets only the grants on file",
                    start_hint(data_dir)
                ),
            ),
        },
        Err(e) => Check::fail(
            "keys socket",
            format!("{e}; start the agent ({})", start_hint(data_dir)),
        ),
    }
}

/// How to start the agent here: with systemd when it runs (PID 1), else by
/// hand on this data directory.
fn start_hint(data_dir: &Path) -> String {
    if Path::new("/run/systemd/system").is_dir() {
        "systemctl start postern-agent".into()
    } else {
        format!(
            "systemd is not running: postern-agent run --data-dir {} --sshd-port PORT-OF-SSHD",
            data_dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_sshd_would_refuse_are_refused() {
        // /bin/sh and its parents are root's on any test machine.
        assert_eq!(safe_path(Path::new("/bin/sh")), Ok(()));
        assert!(safe_path(Path::new("sh")).unwrap_err().contains("absolute"));
        assert!(
            safe_path(Path::new("/bin"))
                .unwrap_err()
                .contains("regular file")
        );
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("postern-keys");
        std::fs::write(&helper, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(safe_path(&helper).unwrap_err().contains("not executable"));
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = safe_path(&helper).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");

        // Links are judged by where they point, as sshd's realpath does: a
        // link kept anywhere to a safe helper is fine, a link kept anywhere
        // safe to a helper in an unsafe place is not.
        let links = tempfile::tempdir().unwrap();
        let to_safe = links.path().join("to-sh");
        std::os::unix::fs::symlink("/bin/sh", &to_safe).unwrap();
        assert_eq!(safe_path(&to_safe), Ok(()));
        let to_unsafe = links.path().join("to-helper");
        std::os::unix::fs::symlink(&helper, &to_unsafe).unwrap();
        let e = safe_path(&to_unsafe).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
    }

    #[test]
    fn the_keys_command_must_be_ours_for_this_data_dir() {
        let d = Path::new("/var/lib/postern-agent");
        let c = keys_command("none", None, d);
        assert!(!c[0].ok && c[0].detail.contains("AuthorizedKeysCommand /usr/bin/postern-keys --data-dir /var/lib/postern-agent %u %f"));
        let c = keys_command("/bin/sh --data-dir /elsewhere %u %f", Some("root"), d);
        assert!(!c[0].ok && c[0].detail.contains("/elsewhere"), "{c:?}");
        let c = keys_command(
            "/bin/sh --data-dir /var/lib/postern-agent %u %f",
            Some("root"),
            d,
        );
        assert!(c.iter().all(|c| c.ok), "{c:?}");
        let c = keys_command("/usr/bin/other %u", Some("root"), d);
        assert!(!c[0].ok);
    }
}
