//! The demo node's own sshd, so that the README's `ssh -J admin@127.0.0.1:2222
//! root@demo-node` works on a fresh machine: a private sshd on a loopback port
//! whose AuthorizedKeysCommand asks the demo agent (through this very binary's
//! `keys-helper`, the same code as `postern-keys`), started and stopped with
//! `dev`. The machine's own sshd and its configuration are never touched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const SSHD: &str = "/usr/sbin/sshd";

/// A running demo sshd; stopped when dropped.
#[derive(Debug)]
pub struct DemoSshd {
    child: Child,
    pub port: u16,
    /// The helper's root-owned copy (sshd's ownership rules), removed at the end.
    helper_dir: PathBuf,
}

impl Drop for DemoSshd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.helper_dir);
    }
}

/// Starts the demo node's sshd for the agent in `agent_dir`, or says why SSH to
/// the demo node is not available on this machine (and what to do).
pub async fn start(data_dir: &Path, agent_dir: &Path) -> Result<DemoSshd, String> {
    if !Path::new(SSHD).exists() {
        return Err(format!(
            "{SSHD} is not installed: install openssh-server (it is only run privately for the demo node; the machine's sshd is not touched)"
        ));
    }
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    if !root {
        return Err(
            "dev is not running as root: the demo node's sshd needs root to let you in as root@demo-node; run dev as root (or with sudo)"
                .into(),
        );
    }
    // Absolute: sshd re-executes itself for each connection from /, and
    // reads its configuration (and the helper its data directory) from there.
    let data_dir = std::path::absolute(data_dir).map_err(|e| e.to_string())?;
    let agent_dir = std::path::absolute(agent_dir).map_err(|e| e.to_string())?;
    let dir = data_dir.join("demo-sshd");
    crate::fsutil::private_dir(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    stop_leftover(&dir);
    let host_key = dir.join("host_key");
    if !host_key.exists() {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "demo-node", "-f"])
            .arg(&host_key)
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("ssh-keygen failed: install openssh-client".into());
        }
    }
    // sshd runs an AuthorizedKeysCommand only from a root-owned path no one
    // else may write, up to /; a build directory is rarely that.
    let helper_dir = PathBuf::from(format!("/run/postern-dev-{}", std::process::id()));
    let helper = helper_dir.join("postern-bastion");
    let install = || -> std::io::Result<()> {
        std::fs::create_dir_all(&helper_dir)?;
        std::fs::set_permissions(&helper_dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(std::env::current_exe()?, &helper)?;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755))
    };
    install().map_err(|e| {
        format!(
            "cannot install the keys helper in {}: {e}",
            helper_dir.display()
        )
    })?;
    let port = free_loopback_port().map_err(|e| format!("no free loopback port: {e}"))?;
    let config = dir.join("sshd_config");
    let log = dir.join("sshd.log");
    let text = format!(
        "# The demo node's sshd, written by postern-bastion dev at each start.\n\
         Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile none\n\
         AuthorizedKeysCommand {helper} keys-helper --data-dir {agent} %u %f\n\
         AuthorizedKeysCommandUser root\n\
         UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nAllowTcpForwarding local\nAllowAgentForwarding no\n\
         X11Forwarding no\nSubsystem sftp internal-sftp\n",
        key = host_key.display(),
        d = dir.display(),
        helper = helper.display(),
        agent = agent_dir.display(),
    );
    std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let _ = std::fs::remove_file(&log);
    // Privilege separation needs it; the system's sshd makes it too.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(SSHD)
        .args(["-D", "-f"])
        .arg(&config)
        .arg("-E")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {SSHD}: {e}"))?;
    let mut sshd = DemoSshd {
        child,
        port,
        helper_dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server listening on 127.0.0.1")
        {
            return Ok(sshd);
        }
        if let Ok(Some(status)) = sshd.child.try_wait() {
            let why = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "the demo node's sshd exited ({status}): {}",
                postern_api::validate::peer_text(why.trim(), 500)
            ));
        }
        if Instant::now() > deadline {
            return Err("the demo node's sshd did not start within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `dev` killed with SIGKILL leaves its sshd running and the helper's copy
/// in /run: the next start ends that sshd (only if it is ours, by its
/// configuration file) and removes copies whose `dev` is gone.
fn stop_leftover(dir: &Path) {
    let config = dir.join("sshd_config");
    if let Some(pid) = std::fs::read_to_string(dir.join("sshd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|&b| b == 0)
                .any(|arg| arg == config.as_os_str().as_encoded_bytes())
        });
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run") {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("postern-dev-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes `ssh_config` and `known_hosts` into `data_dir` so that
/// `ssh -F <data_dir>/ssh_config demo-node` reaches the demo node through the
/// bastion with both host keys known in advance: no trust on first use.
pub fn write_client_files(
    data_dir: &Path,
    bastion: std::net::SocketAddr,
    bastion_key: &str,
    identity: Option<&Path>,
) -> Result<PathBuf, String> {
    let dir = std::path::absolute(data_dir).map_err(|e| e.to_string())?;
    let node_key = std::fs::read_to_string(dir.join("demo-sshd").join("host_key.pub"))
        .map_err(|e| format!("cannot read the demo node's host key: {e}"))?;
    let node_key: String = node_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let known = dir.join("known_hosts");
    let host = match bastion.port() {
        22 => bastion.ip().to_string(),
        p => format!("[{}]:{p}", bastion.ip()),
    };
    std::fs::write(
        &known,
        format!("{host} {bastion_key}\ndemo-node {node_key}\n"),
    )
    .map_err(|e| format!("cannot write {}: {e}", known.display()))?;
    let identity = identity
        .map(|p| format!("  IdentityFile {}\n  IdentitiesOnly yes\n", p.display()))
        .unwrap_or_default();
    let config = dir.join("ssh_config");
    let text = format!(
        "# Written by postern-bastion dev: ssh -F {config} demo-node\n\
         Host postern-dev\n  HostName {ip}\n  Port {port}\n  User admin\n\
         Host demo-node\n  User root\n  ProxyJump postern-dev\n\
         Host *\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n{identity}",
        config = config.display(),
        ip = bastion.ip(),
        port = bastion.port(),
        known = known.display(),
    );
    std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

/// The public key of whoever runs `dev` (their sudo user's, under sudo):
/// the first of ed25519, ecdsa and rsa found in their `~/.ssh`.
pub fn users_public_key() -> Option<(PathBuf, String)> {
    let home = match std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty() && u != "root")
    {
        Some(user) => PathBuf::from("/home").join(user),
        None => PathBuf::from(std::env::var_os("HOME")?),
    };
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|f| home.join(".ssh").join(f))
        .find_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let line = text.lines().next()?.trim().to_string();
            Some((p, line))
        })
}
