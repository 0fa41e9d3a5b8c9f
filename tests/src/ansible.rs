//! The baseline users would otherwise pick: `ansible all -m command -a hostname`
//! (default forks) over real OpenSSH. Every inventory host points at one real sshd
//! on loopback, with SSH connection sharing off, so each host costs what a distinct
//! machine would: its own SSH connection, authentication and Python run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

#[derive(Debug, Clone, serde::Serialize)]
pub struct AnsibleReport {
    pub ansible_hosts: usize,
    pub runs_secs: Vec<f64>,
    pub median_secs: f64,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ssh-keygen failed (is openssh-client installed?)");
}

/// Starts sshd, writes an inventory of `hosts` hosts, and times the ad-hoc command.
pub fn baseline(hosts: usize, runs: usize) -> AnsibleReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
    let port = free_port();
    let cfg = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nMaxStartups 200:30:400\nMaxSessions 200\nLogLevel ERROR\n",
        d = d.display()
    );
    std::fs::write(d.join("sshd_config"), cfg).expect("sshd_config");
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start /usr/sbin/sshd (is openssh-server installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut inv = String::from("[all]\n");
    for i in 0..hosts {
        inv.push_str(&format!(
            "host{i:03} ansible_host=127.0.0.1 ansible_port={port} ansible_user=root ansible_ssh_private_key_file={}/client_key\n",
            d.display()
        ));
    }
    std::fs::write(d.join("inventory"), inv).expect("inventory");
    std::fs::write(
        d.join("ansible.cfg"),
        "[defaults]\nhost_key_checking = False\ninterpreter_python = auto_silent\n\n[ssh_connection]\n\
         ssh_args = -o ControlMaster=no -o ControlPath=none -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no\n",
    )
    .expect("ansible.cfg");
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new("ansible")
            .args(["all", "-i"])
            .arg(d.join("inventory"))
            .args(["-m", "command", "-a", "hostname"])
            .env("ANSIBLE_CONFIG", d.join("ansible.cfg"))
            .env("ANSIBLE_LOCAL_TEMP", d.join("tmp"))
            .output()
            .expect("cannot run ansible (is it installed?)");
        let secs = t.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "ansible failed: {}",
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(2000)
                .collect::<String>()
        );
        times.push(secs);
    }
    let _ = sshd.kill();
    let _ = sshd.wait();
    AnsibleReport {
        ansible_hosts: hosts,
        median_secs: crate::swarm::median(&times),
        runs_secs: times,
    }
}
