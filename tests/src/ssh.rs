//! Real OpenSSH on both ends: per-node `sshd` processes whose only source of keys
//! is `postern-keys`, users with real key pairs registered through the REST API,
//! and an `ssh_config` that makes the real `ssh`, `scp`, `sftp` and `ansible` jump
//! through the bastion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{AgentProc, Bastion, bin, free_port};

/// Makes an ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@postern", "-f"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ssh-keygen failed (is openssh-client installed?)");
}

/// sshd refuses an AuthorizedKeysCommand unless the binary and every directory
/// above it are root-owned and not group- or world-writable; the build directory
/// may live under /var/tmp (1777). So the helper is copied to a private place.
pub struct InstalledHelper {
    dir: PathBuf,
    pub path: PathBuf,
}

impl InstalledHelper {
    pub fn install() -> InstalledHelper {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!(
            "/run/postern-tests/{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for d in [dir.parent().unwrap(), dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = dir.join("postern-keys");
        std::fs::copy(bin("postern-keys"), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        InstalledHelper { dir, path }
    }
}

/// The installed helper's path, to run it the way sshd does.
pub fn helper_binary(h: &InstalledHelper) -> &Path {
    &h.path
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node's real sshd on 127.0.0.1:`port`, asking `postern-keys` for keys.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Sshd {
    pub fn start(dir: &Path, helper: &Path, agent_data_dir: &Path) -> Sshd {
        Sshd::start_in(None, dir, helper, agent_data_dir)
    }

    /// An sshd on 127.0.0.1 of the network namespace `ns` (or of this host).
    pub fn start_in(
        ns: Option<&crate::netns::Netns>,
        dir: &Path,
        helper: &Path,
        agent_data_dir: &Path,
    ) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        keygen(&dir.join("host_key"));
        let port = free_port();
        let log = dir.join("sshd.log");
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile none\n\
             AuthorizedKeysCommand {helper} --data-dir {agent} %u %f\n\
             AuthorizedKeysCommandUser root\n\
             UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowTcpForwarding local\nAllowStreamLocalForwarding no\nAllowAgentForwarding no\n\
             X11Forwarding no\nSubsystem sftp internal-sftp\nMaxStartups 100:30:200\nMaxSessions 50\n\
             LogLevel VERBOSE\n",
            d = dir.display(),
            helper = helper.display(),
            agent = agent_data_dir.display(),
        );
        std::fs::write(dir.join("sshd_config"), cfg).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let check = Command::new("/usr/sbin/sshd")
            .args(["-t", "-f"])
            .arg(dir.join("sshd_config"))
            .output()
            .expect("cannot run /usr/sbin/sshd (is openssh-server installed?)");
        assert!(
            check.status.success(),
            "sshd -t: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let sshd = Path::new("/usr/sbin/sshd");
        let mut cmd = match ns {
            Some(ns) => ns.command(sshd),
            None => Command::new(sshd),
        };
        let child = cmd
            .args(["-D", "-f"])
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(&log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Its log says when it listens (a connect from here would not reach
        // another namespace's loopback).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server listening on 127.0.0.1")
        {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { child, port, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: an enrolled agent relaying to its own sshd.
pub struct Node {
    pub name: String,
    pub agent: AgentProc,
    pub sshd: Sshd,
}

impl Node {
    pub async fn start(b: &Bastion, helper: &InstalledHelper, name: &str) -> Node {
        Node::start_with(b, helper, name, &[]).await
    }

    pub async fn start_with(
        b: &Bastion,
        helper: &InstalledHelper,
        name: &str,
        extra: &[&str],
    ) -> Node {
        let agent_dir = b.dir.path().join(name);
        let sshd = Sshd::start(
            &b.dir.path().join(format!("{name}-sshd")),
            &helper.path,
            &agent_dir,
        );
        let port = sshd.port.to_string();
        let mut args = vec!["--sshd-port", port.as_str()];
        args.extend_from_slice(extra);
        let agent = b.agent_with(name, &args).await;
        Node {
            name: name.to_string(),
            agent,
            sshd,
        }
    }
}

/// A Postern user with a key pair, and an ssh_config that jumps through the bastion.
pub struct SshUser {
    pub name: String,
    pub key: PathBuf,
    pub config: PathBuf,
}

impl SshUser {
    /// Creates `name` in the org, gives it `role` (on project `web` unless org_admin)
    /// with `logins`, registers a fresh key, and writes its ssh_config.
    pub async fn create(b: &Bastion, name: &str, role: Option<(&str, &[&str])>) -> SshUser {
        let (s, v) = b.post("/api/v1/users", json!({ "name": name })).await;
        assert_eq!(s, 201, "{v}");
        if let Some((role, logins)) = role {
            let body = if role == "org_admin" {
                json!({ "role": role, "logins": logins })
            } else {
                json!({ "role": role, "project": "web", "logins": logins })
            };
            let (s, v) = b.put(&format!("/api/v1/users/{name}/roles"), body).await;
            assert_eq!(s, 200, "{v}");
        }
        let u = SshUser::unregistered(b, name);
        let public = std::fs::read_to_string(u.key.with_extension("pub")).unwrap();
        let (s, v) = b
            .post(
                &format!("/api/v1/users/{name}/ssh-keys"),
                json!({ "public_key": public.trim() }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        u
    }

    /// A key and config for `name` without touching the bastion.
    pub fn unregistered(b: &Bastion, name: &str) -> SshUser {
        let dir = b
            .dir
            .path()
            .join(format!("user-{name}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id_ed25519");
        keygen(&key);
        let config = dir.join("ssh_config");
        write_config(&config, b.ssh.port(), name, &key, &dir.join("known_hosts"));
        SshUser {
            name: name.to_string(),
            key,
            config,
        }
    }

    /// An ssh_config like [`SshUser::config`] whose `bastion` is the SSH front
    /// door at `port` on 127.0.0.1 (another replica, a load balancer); same key
    /// and known_hosts. Answers its path.
    pub fn config_through(&self, port: u16) -> PathBuf {
        let path = self.config.with_file_name(format!("ssh_config_{port}"));
        write_config(
            &path,
            port,
            &self.name,
            &self.key,
            &self.config.with_file_name("known_hosts"),
        );
        path
    }

    /// `ssh -F config args…`, with a deadline.
    pub fn ssh(&self, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("ssh").arg("-F").arg(&self.config).args(args),
            Duration::from_secs(60),
        )
    }

    /// `ssh -J bastion login@node command`.
    pub fn jump(&self, login: &str, node: &str, command: &str) -> Output {
        self.ssh(&["-J", "bastion", &format!("{login}@{node}"), command])
    }

    /// `ssh -F config args…` that must fail; returns ssh's stderr, which carries
    /// the reason.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.ssh(args);
        assert!(
            !out.status.success(),
            "ssh {args:?} should have been refused"
        );
        text(&out.stderr)
    }

    /// A jump (`… login@node true`) that must be refused; returns ssh's stderr.
    pub fn jump_refused(&self, login: &str, node: &str) -> String {
        self.refused(&["-J", "bastion", &format!("{login}@{node}"), "true"])
    }
}

/// The client config: `bastion` is the front door; everything else jumps through it.
pub fn write_config(path: &Path, bastion_port: u16, user: &str, key: &Path, known_hosts: &Path) {
    let cfg = format!(
        "Host bastion\n  HostName 127.0.0.1\n  Port {bastion_port}\n  User {user}\n\n\
         Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n\
         StrictHostKeyChecking accept-new\n  UserKnownHostsFile {kh}\n  ConnectTimeout 15\n\
         LogLevel INFO\n  ForwardAgent no\n",
        key = key.display(),
        kh = known_hosts.display(),
    );
    std::fs::write(path, cfg).unwrap();
}

/// Runs a command, killing it after `timeout` (so a hung client fails the test
/// instead of hanging it). Its output is read as it comes, on a thread, so a
/// child writing more than a pipe holds (a completion script, say) cannot
/// stall on a full pipe.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            // A grandchild may still hold the pipes: wait for them a little only.
            let stderr = rx
                .recv_timeout(Duration::from_secs(5))
                .ok()
                .and_then(Result::ok)
                .map(|o| text(&o.stderr))
                .unwrap_or_default();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr: {stderr}");
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
