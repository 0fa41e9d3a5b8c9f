//! Access changes take effect on live SSH access at once, not when grants expire:
//! a narrowed or removed role ends the user's sessions into that project and takes
//! their grants back from its nodes; a deleted key closes the connections that
//! authenticated with it. Every channel is authorized afresh, so a long-lived
//! connection (ControlPersist) never keeps access the user has lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text};
use postern_tests::{Bastion, BastionOpts, eventually};
use serde_json::{Value, json};

/// Registers another key for an existing user; returns it and its key id.
async fn second_key(b: &Bastion, name: &str) -> (SshUser, String) {
    let u = SshUser::unregistered(b, name);
    let public = std::fs::read_to_string(u.key.with_extension("pub")).unwrap();
    let (s, v) = b
        .post(
            &format!("/api/v1/users/{name}/ssh-keys"),
            json!({ "public_key": public.trim() }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    (u, id)
}

/// A long-running session through the bastion, returned once it is logged in on
/// the node.
fn live_session(mut cmd: Command) -> Child {
    let mut child = cmd
        .args(["echo logged-in; exec sleep 300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    assert!(
        matches!(&line, Ok(l) if l.trim() == "logged-in"),
        "the session did not log in: {line:?}"
    );
    child
}

fn jump_cmd(u: &SshUser, login: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(&u.config)
        .args(["-J", "bastion", &format!("{login}@node-a")]);
    c
}

/// A ControlMaster connection to the bastion, and jumps multiplexed on it.
struct Master {
    child: Child,
    user: SshUser,
    sock: PathBuf,
}

impl Master {
    async fn start(u: &SshUser, sock: &Path) -> Master {
        let child = Command::new("ssh")
            .arg("-F")
            .arg(&u.config)
            .args(["-M", "-N", "-o", "ControlPersist=no", "-S"])
            .arg(sock)
            .arg("bastion")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let m = Master {
            child,
            user: SshUser {
                name: u.name.clone(),
                key: u.key.clone(),
                config: u.config.clone(),
            },
            sock: sock.to_path_buf(),
        };
        eventually(Duration::from_secs(15), "master up", || async { m.up() }).await;
        m
    }

    fn up(&self) -> bool {
        self.sock.exists()
            && run_with_timeout(
                Command::new("ssh")
                    .arg("-F")
                    .arg(&self.user.config)
                    .arg("-S")
                    .arg(&self.sock)
                    .args(["-O", "check", "bastion"]),
                Duration::from_secs(30),
            )
            .status
            .success()
    }

    /// `ssh login@node-a` through this connection.
    fn jump(&self, login: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(&self.user.config)
            .arg("-o")
            .arg(format!(
                "ProxyCommand=ssh -F {} -S {} -W %h:%p bastion",
                self.user.config.display(),
                self.sock.display()
            ))
            .arg(format!("{login}@node-a"));
        c
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exits_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The `authorized_keys` lines the node's helper prints for `login` right now.
fn granted(h: &InstalledHelper, data_dir: &Path, login: &str) -> String {
    let out = run_with_timeout(
        Command::new(postern_tests::ssh::helper_binary(h))
            .arg("--data-dir")
            .arg(data_dir)
            .arg(login),
        Duration::from_secs(5),
    );
    text(&out.stdout)
}

/// The `ssh` part of the audit entry of the newest API call whose route ends so.
async fn applied(b: &Bastion, route_suffix: &str) -> Value {
    let (s, v) = b.get("/api/v1/audit?limit=100").await;
    assert_eq!(s, 200, "{v}");
    let entry = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"].as_str().unwrap().ends_with(route_suffix))
        .cloned()
        .unwrap_or_else(|| panic!("no audit entry for {route_suffix}: {v}"));
    entry["detail"]["detail"]["ssh"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn access_changes_end_live_sessions_and_take_grants_back() {
    let b = Bastion::start(BastionOpts::default()).await;
    let h = InstalledHelper::install();
    let node = Node::start(&b, &h, "node-a").await;
    let dir = node.agent.data_dir.clone();
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root", "daemon"]))).await;
    let (alice2, key2_id) = second_key(&b, "alice").await;

    // Both of alice's keys have been granted root on the node; one session is live.
    let out = alice2.jump("root", "node-a", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut session = live_session(jump_cmd(&alice, "root"));
    assert_eq!(granted(&h, &dir, "root").lines().count(), 2);

    // Her role narrows to `daemon`: the live root session ends at once, and the
    // node stops printing either key for root.
    let (s, v) = b
        .put(
            "/api/v1/users/alice/roles",
            json!({ "role": "project_member", "project": "web", "logins": ["daemon"] }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ended = exits_within(&mut session, Duration::from_secs(15));
    assert!(ended.is_some(), "the live session outlived the role change");
    let ssh = applied(&b, "/users/{user}/roles").await;
    assert_eq!(ssh["ssh_cut"], 1, "{ssh}");
    assert_eq!(ssh["grants_revoked_on_nodes"], 1, "{ssh}");
    assert_eq!(granted(&h, &dir, "root"), "", "root grants taken back");

    // New jumps get the narrowed role, whichever key they use.
    for u in [&alice, &alice2] {
        // Refused for root now that the role has narrowed.
        let err = u.jump_refused("root", "node-a");
        assert!(err.contains("Permission denied (publickey)"), "{err}");
    }
    assert!(granted(&h, &dir, "daemon").contains("postern:user=alice:"));
    assert_eq!(granted(&h, &dir, "root"), "");

    // A key deleted while a ControlMaster connection holds it: the connection
    // closes, the node drops the key's grant, and the key no longer logs in.
    let (s, v) = b
        .put(
            "/api/v1/users/alice/roles",
            json!({ "role": "project_member", "project": "web", "logins": ["root"] }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sock = b.dir.path().join("alice2-master");
    let mut master = Master::start(&alice2, &sock).await;
    let mut on_master = live_session(master.jump("root"));
    let (s, v) = b
        .delete(&format!("/api/v1/users/alice/ssh-keys/{key2_id}"))
        .await;
    assert_eq!(s, 204, "{v}");
    assert!(
        exits_within(&mut master.child, Duration::from_secs(15)).is_some(),
        "the master connection outlived its key"
    );
    assert!(
        exits_within(&mut on_master, Duration::from_secs(15)).is_some(),
        "a session over the master outlived its key"
    );
    let ssh = applied(&b, "/ssh-keys/{key_id}").await;
    assert!(ssh["ssh_cut"].as_u64().unwrap() >= 1, "{ssh}");
    let fp2 = text(
        &Command::new("ssh-keygen")
            .arg("-lf")
            .arg(alice2.key.with_extension("pub"))
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    let out = run_with_timeout(
        Command::new(postern_tests::ssh::helper_binary(&h))
            .arg("--data-dir")
            .arg(&dir)
            .args(["root", &fp2]),
        Duration::from_secs(5),
    );
    assert_eq!(text(&out.stdout), "", "the deleted key's grant is gone");
    let out = alice2.jump("root", "node-a", "true");
    assert!(
        text(&out.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&out.stderr)
    );
    // Her other key is untouched.
    let out = alice.jump("root", "node-a", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Her role removed: her live session ends, and the node vanishes for her, on
    // new connections and on the connection she already holds.
    let sock = b.dir.path().join("alice-master");
    let master = Master::start(&alice, &sock).await;
    let mut session = live_session(master.jump("root"));
    let (s, v) = b.delete("/api/v1/users/alice/roles/web").await;
    assert_eq!(s, 204, "{v}");
    assert!(
        exits_within(&mut session, Duration::from_secs(15)).is_some(),
        "the live session outlived the role"
    );
    assert!(master.up(), "a role change cuts relays, not the connection");
    let gone = "no node \"node-a\" in any project you have a role in";
    let out = run_with_timeout(
        jump_cmd(&alice, "root").arg("true"),
        Duration::from_secs(60),
    );
    assert!(text(&out.stderr).contains(gone), "{}", text(&out.stderr));
    // OpenSSH's multiplexer does not pass the reason on; the audit has it.
    let out = run_with_timeout(master.jump("root").arg("true"), Duration::from_secs(60));
    assert!(!out.status.success(), "a new channel on the old connection");
    let denials = b.audit("ssh.connect").await;
    assert!(
        denials.len() >= 2
            && denials[..2]
                .iter()
                .all(|e| e["detail"]["reason"].as_str().unwrap().contains(gone)),
        "{denials:?}"
    );
    assert_eq!(granted(&h, &dir, "root"), "");
    // A user deleted: every connection of theirs closes.
    let carol = SshUser::create(&b, "carol", Some(("project_member", &["root"]))).await;
    let mut master = Master::start(&carol, &b.dir.path().join("carol-master")).await;
    let mut session = live_session(master.jump("root"));
    let (s, v) = b.delete("/api/v1/users/carol").await;
    assert_eq!(s, 204, "{v}");
    assert!(exits_within(&mut session, Duration::from_secs(15)).is_some());
    assert!(exits_within(&mut master.child, Duration::from_secs(15)).is_some());
    let ssh = applied(&b, "/users/{user}").await;
    assert_eq!(ssh["grants_revoked_on_nodes"], 1, "{ssh}");
    assert!(!granted(&h, &dir, "root").contains("postern:user=carol:"));

    // Each session that was cut is audited as such.
    eventually(Duration::from_secs(10), "cut sessions audited", || async {
        b.audit("ssh.session.end")
            .await
            .iter()
            .filter(|e| e["detail"]["end"] == "cut")
            .count()
            >= 4
    })
    .await;
}
