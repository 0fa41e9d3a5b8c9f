//! The playbooks in `ansible-examples/`, unchanged, against three nodes behind a
//! real bastion: real `ansible-playbook`, real OpenSSH, real sshd with
//! `postern-keys`. Only the bastion's address and the key in `ssh_config` are
//! filled in, as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text};
use postern_tests::{Bastion, BastionOpts};

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible-examples")
}

fn playbook(b: &Bastion, dir: &Path, args: &[&str]) -> String {
    let out = run_with_timeout(
        Command::new("ansible-playbook")
            .args(args)
            .current_dir(dir)
            .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", dir.join("tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", dir.join("cp"))
            .env(
                "ANSIBLE_SSH_ARGS",
                "-F ssh_config -o ControlMaster=auto -o ControlPersist=60s -E /tmp/sshmaster.log",
            ),
        Duration::from_secs(300),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "ansible-playbook {args:?} failed:\n{stdout}\n{}\n--- the bastion's log ---\n{}",
        text(&out.stderr),
        b.log()
    );
    stdout
}

/// The recap line of `host`, e.g. `ok=3 changed=1 unreachable=0 failed=0 …`.
fn recap<'a>(out: &'a str, host: &str) -> &'a str {
    out.lines()
        .rev()
        .find(|l| l.starts_with(host) && l.contains("ok="))
        .unwrap_or_else(|| panic!("no recap for {host}:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ansible_examples_run_green_through_the_bastion() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start(&b, &helper, name).await);
    }
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;

    // A copy of the examples with the user's own values filled in.
    let dir = b.dir.path().join("ansible");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    for f in std::fs::read_dir(examples_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.join("ssh_config")).unwrap();
    let cfg = cfg
        .replace("bastion.example.com", "127.0.0.1")
        .replace("Port 2222", &format!("Port {}", b.ssh.port()))
        .replace("~/.ssh/id_ed25519", alice.key.to_str().unwrap());
    let cfg = format!(
        "{cfg}\nHost *\n    BatchMode yes\n    StrictHostKeyChecking accept-new\n    UserKnownHostsFile {}\n",
        dir.join("known_hosts").display()
    );
    std::fs::write(dir.join("ssh_config"), cfg).unwrap();
    // The example checks the bastion's host key strictly: known from the API
    // beforehand, as the README says.
    let (s, v) = b.get("/api/v1/ssh").await;
    assert_eq!(s, 200, "{v}");
    std::fs::write(
        dir.join("known_hosts"),
        format!("{}\n", v["known_hosts"].as_str().unwrap()),
    )
    .unwrap();

    let out = playbook(&b, &dir, &["facts.yml"]);
    for n in ["node-a", "node-b", "node-c"] {
        let r = recap(&out, n);
        assert!(r.contains("failed=0") && r.contains("unreachable=0"), "{r}");
        assert!(out.contains(&format!("\"msg\": \"{n}: ")), "{out}");
    }

    let demo = dir.join("managed");
    let demo_var = format!("demo_dir={}/{{{{ inventory_hostname }}}}", demo.display());
    let out = playbook(&b, &dir, &["files.yml", "-e", &demo_var]);
    for n in ["node-a", "node-b", "node-c"] {
        assert!(recap(&out, n).contains("changed=2"), "{}", recap(&out, n));
        let content = std::fs::read_to_string(demo.join(n).join("managed.conf")).unwrap();
        assert!(content.contains(&format!("node = {n}")), "{content}");
    }
    let out = playbook(&b, &dir, &["files.yml", "-e", &demo_var]);
    for n in ["node-a", "node-b", "node-c"] {
        assert!(
            recap(&out, n).contains("changed=0"),
            "second run: {}",
            recap(&out, n)
        );
    }

    let out = playbook(&b, &dir, &["fleet-command.yml"]);
    for n in ["node-a", "node-b", "node-c"] {
        assert!(recap(&out, n).contains("failed=0"), "{}", recap(&out, n));
        assert!(
            out.contains(&format!("\"msg\": \"{n}: ")) && out.contains("load average"),
            "{out}"
        );
    }

    // The same playbooks through the terminating mode, recorded: each node's
    // tasks are exec recordings under alice.
    let out = playbook(
        &b,
        &dir,
        &["-i", "inventory-recorded.ini", "fleet-command.yml"],
    );
    for n in ["node-a", "node-b", "node-c"] {
        assert!(recap(&out, n).contains("failed=0"), "{}", recap(&out, n));
        assert!(out.contains(&format!("\"msg\": \"{n}: ")), "{out}");
    }
    let (s, v) = b
        .get("/api/v1/recordings?mode=terminate&user=alice&limit=100")
        .await;
    assert_eq!(s, 200, "{v}");
    for n in ["node-a", "node-b", "node-c"] {
        assert!(
            v["recordings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["node"] == n && r["kind"] == "exec" && r["login"] == "root"),
            "no recording of the playbook on {n}: {v}"
        );
    }

    // Every node's sessions were audited under alice (they are still open:
    // ControlPersist keeps them warm, so look at their starts).
    let sessions = b.audit("ssh.session.start").await;
    for n in ["node-a", "node-b", "node-c"] {
        assert!(
            sessions
                .iter()
                .any(|s| s["actor"] == "alice" && s["detail"]["hostname"] == n),
            "no audited session on {n}"
        );
    }
}
