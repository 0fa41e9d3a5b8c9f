//! The SSH front door end to end, with real OpenSSH on both ends: `ssh -J`, scp,
//! sftp and `-L` through the bastion to nodes whose sshd asks `postern-keys`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text};
use postern_tests::{Bastion, BastionOpts, eventually};

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn jump_runs_commands_copies_files_and_forwards_ports() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;

    // A command.
    let out = alice.jump("root", "node-a", "echo jumped-$((40+2))");
    assert!(
        out.status.success(),
        "ssh -J failed: {}\nbastion log:\n{}\nsshd log:\n{}",
        text(&out.stderr),
        b.log(),
        node.sshd.log()
    );
    assert_eq!(text(&out.stdout).trim(), "jumped-42");
    // The qualified name works too, and so does ProxyCommand with -W.
    let out = alice.jump("root", "node-a.eu-1.web", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let proxy = format!(
        "ProxyCommand=ssh -F {} -W %h:%p bastion",
        alice.config.display()
    );
    let out = alice.ssh(&["-o", &proxy, "root@node-a", "echo via-proxycommand"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "via-proxycommand");

    // 100 MB through scp, up and back, byte-identical.
    let work = b.dir.path().join("scp");
    std::fs::create_dir_all(&work).unwrap();
    let src = work.join("payload");
    let status = Command::new("head")
        .args(["-c", "100000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let remote = work.join("on-node");
    let back = work.join("back");
    let cfg = alice.config.to_str().unwrap().to_string();
    let scp = |from: String, to: String| {
        run_with_timeout(
            Command::new("scp").args(["-q", "-F", &cfg, "-J", "bastion", &from, &to]),
            Duration::from_secs(120),
        )
    };
    let out = scp(
        src.display().to_string(),
        format!("root@node-a:{}", remote.display()),
    );
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    let out = scp(
        format!("root@node-a:{}", remote.display()),
        back.display().to_string(),
    );
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert_eq!(
        sha256(&src),
        sha256(&back),
        "scp round trip changed the bytes"
    );

    // sftp: put, list, get.
    let batch = work.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {src} {w}/sftp-up\nls -l {w}/sftp-up\nget {w}/sftp-up {w}/sftp-down\n",
            src = work.join("batch").display(),
            w = work.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new("sftp")
            .args(["-F", &cfg, "-J", "bastion", "-b"])
            .arg(&batch)
            .arg("root@node-a"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read(work.join("sftp-down")).unwrap(),
        std::fs::read(&batch).unwrap()
    );

    // ssh -L: a local port forwarded by the node's sshd to a service on the node,
    // once alice's role names it (forwarding is off by default).
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    let (st, v) = b
        .put(
            "/api/v1/users/alice/roles",
            serde_json::json!({"role": "project_member", "project": "web", "logins": ["root"],
                "forward_to": [format!("127.0.0.1:{echo_port}")]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = echo.accept() {
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    let local = postern_tests::free_port();
    let mut fwd = Command::new("ssh")
        .args([
            "-F",
            &cfg,
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-J",
            "bastion",
        ])
        .arg("-L")
        .arg(format!("127.0.0.1:{local}:127.0.0.1:{echo_port}"))
        .arg("root@node-a")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reply = [0u8; 5];
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hello").unwrap();
            ok = s.read_exact(&mut reply).is_ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert!(ok && &reply == b"hello", "ssh -L did not forward");

    // Every session is audited with user, node, logins, source and bytes.
    let sessions = eventually_sessions(&b, 6).await;
    let big = sessions
        .iter()
        .map(|e| e["detail"]["bytes_to_node"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(big > 100_000_000, "the scp upload is in the audit: {big}");
    let s = &sessions[0];
    assert_eq!(s["actor"], "alice");
    assert_eq!(s["source_ip"], "127.0.0.1");
    assert_eq!(s["project"], "web");
    assert_eq!(s["detail"]["hostname"], "node-a");
    assert_eq!(s["detail"]["logins"], serde_json::json!(["root"]));
    assert!(s["detail"]["started_at"].is_string() && s["detail"]["ended_at"].is_string());
}

async fn eventually_sessions(b: &Bastion, n: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(20), "sessions audited", || async {
        b.audit("ssh.session.end").await.len() >= n
    })
    .await;
    b.audit("ssh.session.end").await
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_say_why_and_are_audited() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _a = Node::start(&b, &helper, "node-a").await;
    let mut gone = Node::start(&b, &helper, "node-gone").await;
    // Another project the users below have no role in (given a node below).
    let (s, v) = b
        .post("/api/v1/projects", serde_json::json!({"name": "secret"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let carol = SshUser::create(&b, "carol", Some(("project_member", &["daemon"]))).await;
    let bob = SshUser::create(&b, "bob", None).await;
    // Someone with a key that is not alice's, trying to be alice.
    let mallory = SshUser::unregistered(&b, "alice");

    // An unregistered key: the bastion itself says no.
    let err = mallory.jump_refused("root", "node-a");
    assert!(err.contains("Permission denied (publickey)"), "{err}");

    // A user without a role in the node's project: the node does not exist for them.
    let err = bob.jump_refused("root", "node-a");
    assert!(
        err.contains("no node \"node-a\" in any project you have a role in"),
        "{err}"
    );

    // A login the role does not allow: the node's sshd gets no key for it.
    let err = carol.jump_refused("root", "node-a");
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    // ... while the login it does allow gets as far as the account (daemon has no shell).
    let out = run_with_timeout(
        Command::new(postern_tests::ssh::helper_binary(&helper))
            .args(["--data-dir"])
            .arg(b.dir.path().join("node-a"))
            .arg("daemon"),
        Duration::from_secs(5),
    );
    assert!(
        text(&out.stdout).contains("postern:user=carol:"),
        "carol's grant is for daemon: {}",
        text(&out.stdout)
    );

    // A node that is down.
    gone.agent.stop();
    eventually(Duration::from_secs(10), "node-gone unreachable", || async {
        !b.reachable("node-gone").await
    })
    .await;
    let err = alice.jump_refused("root", "node-gone");
    assert!(
        err.contains("node-gone is not connected to the bastion"),
        "{err}"
    );

    // A node that does not exist, and a port other than sshd's.
    let err = alice.jump_refused("root", "nope");
    assert!(err.contains("no node \"nope\""), "{err}");
    let err = alice.refused(&["-W", "node-a:80", "bastion"]);
    assert!(err.contains("only port 22"), "{err}");

    // A user of another project: dave's role is in `secret`, whose node `vault`
    // is as invisible to alice as node-a is to dave.
    b.create_edge("secret", "dc-1").await;
    b.enroll_at("secret", "dc-1", "vault", "vault").await;
    let dave = SshUser::create(&b, "dave", None).await;
    let (s, v) = b
        .put(
            "/api/v1/users/dave/roles",
            serde_json::json!({"role": "project_admin", "project": "secret", "logins": ["root"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (who, node) in [
        (&dave, "node-a"),
        (&dave, "node-a.eu-1.web"),
        (&alice, "vault"),
    ] {
        let err = who.jump_refused("root", node);
        assert!(err.contains(&format!("no node \"{node}\"")), "{err}");
    }

    // A hostname in two edges is ambiguous: the refusal lists the qualified names,
    // and either qualified name works.
    b.create_edge("web", "us-1").await;
    b.enroll_at("web", "us-1", "node-a", "node-a-us").await;
    let err = alice.jump_refused("root", "node-a");
    assert!(
        err.contains("\"node-a\" names 2 nodes; use one of: node-a.eu-1.web, node-a.us-1.web"),
        "{err}"
    );
    let out = alice.jump("root", "node-a.eu-1.web", "echo qualified");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "qualified");

    // Each refusal is audited with the reason the user saw.
    eventually(Duration::from_secs(10), "denials audited", || async {
        b.audit("ssh.connect").await.len() >= 8
    })
    .await;
    let denied = b.audit("ssh.connect").await;
    assert!(denied.iter().all(|e| e["outcome"] == "denied"));
    let denied_for = |actor: &str, reason: &str| {
        denied.iter().any(|e| {
            e["actor"] == actor && e["detail"]["reason"].as_str().unwrap().contains(reason)
        })
    };
    assert!(denied_for("bob", "no node"));
    assert!(
        denied
            .iter()
            .any(|e| e["actor"] == "alice" && e["project"] == "web")
    );
    assert!(denied_for("dave", "no node \"node-a\""));
    assert!(denied_for("alice", "names 2 nodes"));
    eventually(Duration::from_secs(10), "failed login audited", || async {
        b.audit("ssh.auth")
            .await
            .iter()
            .any(|e| e["actor"] == "alice" && e["outcome"] == "denied")
    })
    .await;
}

fn helper(helper: &InstalledHelper, data_dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let out = run_with_timeout(
        Command::new(postern_tests::ssh::helper_binary(helper))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args),
        Duration::from_secs(5),
    );
    assert!(out.status.success(), "the helper always exits 0");
    (text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn helper_serves_from_cache_offline_and_never_prints_expired_grants() {
    let mut b = Bastion::start(BastionOpts {
        ssh_grant_ttl: "10s".into(),
        ..BastionOpts::default()
    })
    .await;
    let h = InstalledHelper::install();
    let oncall = b.dir.path().join("oncall");
    postern_tests::ssh::keygen(&oncall);
    let keys = b.dir.path().join("break-glass.keys");
    std::fs::copy(oncall.with_extension("pub"), &keys).unwrap();
    let keys_arg = keys.to_str().unwrap().to_string();
    let mut node = Node::start_with(
        &b,
        &h,
        "node-a",
        &["--break-glass-keys", &keys_arg, "--break-glass-grace", "2s"],
    )
    .await;
    let dir = node.agent.data_dir.clone();
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let out = alice.jump("root", "node-a", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Online: the grant, restricted to the agent's loopback path, and no break-glass.
    let (lines, err) = helper(&h, &dir, &["root"]);
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("from=\"127.0.0.1,::1\""), "{lines}");
    assert!(lines.contains("expiry-time=\""), "{lines}");
    assert!(lines.contains("postern:user=alice:grant="), "{lines}");
    assert!(!err.contains("grants file"), "{err}");
    assert!(
        helper(&h, &dir, &["postgres"]).0.is_empty(),
        "other logins get nothing"
    );
    let fp = text(
        &Command::new("ssh-keygen")
            .arg("-lf")
            .arg(alice.key.with_extension("pub"))
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    assert_eq!(
        helper(&h, &dir, &["root", &fp]).0,
        lines,
        "%f narrows to that key"
    );
    assert!(helper(&h, &dir, &["root", "SHA256:other"]).0.is_empty());
    assert!(
        helper(&h, &dir, &["root\nx"]).0.is_empty(),
        "a bad login prints nothing"
    );

    // The bastion goes away: after the grace, the agent offers the break-glass key.
    b.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (lines, _) = helper(&h, &dir, &["root"]);
    assert!(lines.contains("postern:user=alice:"), "{lines}");
    assert!(lines.contains("postern:break-glass"), "{lines}");

    // The agent goes away too: the helper answers from the files.
    node.agent.stop();
    let (lines, err) = helper(&h, &dir, &["root"]);
    assert!(err.contains("answered from the grants file"), "{err}");
    assert!(lines.contains("postern:user=alice:"), "{lines}");
    assert!(lines.contains("postern:break-glass"), "{lines}");
    let log = std::fs::read_to_string(dir.join("break-glass.log")).unwrap();
    assert!(log.contains("login=root"), "{log}");

    // Once the grant's expiry passes, it is never printed again, offline or not.
    eventually(Duration::from_secs(15), "grant expired", || async {
        !helper(&h, &dir, &["root"])
            .0
            .contains("postern:user=alice:")
    })
    .await;
    let (lines, _) = helper(&h, &dir, &["root"]);
    assert_eq!(
        lines.lines().count(),
        1,
        "only break-glass is left: {lines}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_channels_do_not_block_others_on_the_same_connection_or_node() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    // All jumps share one SSH connection to the bastion (ControlMaster), so the
    // stalled channels and the live ones are multiplexed on it.
    let shared_cfg = b.dir.path().join("ssh_config_mux");
    std::fs::write(
        &shared_cfg,
        format!(
            "Host bastion\n  ControlMaster auto\n  ControlPath {}/mux-%C\n  ControlPersist 60\n\n{}",
            b.dir.path().display(),
            std::fs::read_to_string(&alice.config).unwrap()
        ),
    )
    .unwrap();
    let alice = SshUser {
        name: alice.name.clone(),
        key: alice.key.clone(),
        config: shared_cfg,
    };
    // Sessions whose remote command never reads stdin, while we keep writing: each
    // fills every buffer on its path (sshd, the agent's relay, its HTTP/2 stream).
    // OpenSSH's 2 MiB session window bounds what each one holds on the way.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(&alice.config)
            .args(["-J", "bastion", "root@node-a", "sleep 120"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            // Blocks for good once the path is full; ends when the child dies.
            for _ in 0..256 {
                if stdin.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        stalled.push(child);
    }
    // Give the stalled uploads time to fill their windows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..3 {
        let out = alice.jump("root", "node-a", &format!("echo still-{i}"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), format!("still-{i}"));
    }
    let out = alice.ssh(&["-O", "check", "bastion"]);
    assert!(
        out.status.success(),
        "the jumps shared one connection: {}",
        text(&out.stderr)
    );
    let _ = alice.ssh(&["-O", "exit", "bastion"]);
    for mut c in stalled {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `postern-agent doctor` on a real node: all checks pass against its real
/// sshd; a keys helper in a group-writable directory (which sshd would refuse,
/// leaving users with "Permission denied") and a stopped agent are each found
/// and explained, and the exit status says so.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_what_sshd_would_refuse() {
    use std::os::unix::fs::PermissionsExt;
    let b = Bastion::start(BastionOpts::default()).await;
    let h = InstalledHelper::install();
    let mut node = Node::start(&b, &h, "doc").await;
    let sshd_dir = b.dir.path().join("doc-sshd");
    let agent_dir = node.agent.data_dir.clone();
    let doctor = |config: &std::path::Path| {
        let out = Command::new(postern_tests::bin("postern-agent"))
            .arg("doctor")
            .arg("--data-dir")
            .arg(&agent_dir)
            .arg("--sshd-config")
            .arg(config)
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout))
    };
    let (code, report) = doctor(&sshd_dir.join("sshd_config"));
    assert_eq!(code, Some(0), "{report}");
    for check in ["identity", "bastion", "sshd", "keys helper", "keys socket"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check}: {report}"
        );
    }

    // The same helper, from a directory anyone may write: sshd would not run it.
    let bad_dir =
        std::path::PathBuf::from(format!("/run/postern-tests/doctor-{}", std::process::id()));
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::set_permissions(&bad_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bad_helper = bad_dir.join("postern-keys");
    std::fs::copy(&h.path, &bad_helper).unwrap();
    let config = std::fs::read_to_string(sshd_dir.join("sshd_config"))
        .unwrap()
        .replace(
            &h.path.display().to_string(),
            &bad_helper.display().to_string(),
        );
    let bad_config = sshd_dir.join("sshd_config.bad");
    std::fs::write(&bad_config, config).unwrap();
    let (code, report) = doctor(&bad_config);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("FAIL keys helper") && report.contains("writable by group or others"),
        "{report}"
    );

    // sshd not asking postern-keys at all: the fix is printed.
    let none = sshd_dir.join("sshd_config.none");
    let config = std::fs::read_to_string(sshd_dir.join("sshd_config")).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("AuthorizedKeysCommand"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&none, config).unwrap();
    let (code, report) = doctor(&none);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("AuthorizedKeysCommand /usr/bin/postern-keys --data-dir"),
        "{report}"
    );

    // The agent stopped: sshd's helper would get only the grants on file.
    node.agent.stop();
    let (code, report) = doctor(&sshd_dir.join("sshd_config"));
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("FAIL keys socket"), "{report}");
    let _ = std::fs::remove_dir_all(&bad_dir);
}

/// A node whose sshd would refuse its keys helper (here: in a directory anyone
/// may write) is refused at the jump with the reason, which the user's ssh
/// prints and the audit keeps, instead of a bare "Permission denied
/// (publickey)" after a session start. Once the helper is fixed, sessions work
/// again without restarting anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_keys_helper_sshd_would_refuse_is_named_in_the_refusal_and_the_audit() {
    use std::os::unix::fs::PermissionsExt;
    let b = Bastion::start(BastionOpts::default()).await;
    let h = InstalledHelper::install();
    let bad_dir =
        std::path::PathBuf::from(format!("/run/postern-tests/unsafe-{}", std::process::id()));
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::set_permissions(&bad_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let helper = bad_dir.join("postern-keys");
    std::fs::copy(&h.path, &helper).unwrap();
    let agent_dir = b.dir.path().join("unsafe");
    let sshd_dir = b.dir.path().join("unsafe-sshd");
    let sshd = postern_tests::ssh::Sshd::start(&sshd_dir, &helper, &agent_dir);
    let port = sshd.port.to_string();
    let config = sshd_dir.join("sshd_config");
    let _agent = b
        .agent_with(
            "unsafe",
            &[
                "--sshd-port",
                &port,
                "--sshd-config",
                config.to_str().unwrap(),
            ],
        )
        .await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &["root"]))).await;

    let refused = alice.jump_refused("root", "unsafe");
    assert!(
        refused.contains("will not run its keys helper")
            && refused.contains("writable by group or others")
            && refused.contains("postern-agent doctor"),
        "{refused}"
    );
    let denied = b.audit("ssh.connect").await;
    assert!(
        denied.iter().any(|e| e["outcome"] == "denied"
            && e["detail"]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("writable by group or others")),
        "{denied:?}"
    );
    assert!(
        b.audit("ssh.session.start").await.is_empty(),
        "no session was started"
    );

    // Fixed on the node: the next sessions go through.
    std::fs::set_permissions(&bad_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    eventually(
        Duration::from_secs(20),
        "a session once the helper is safe",
        || async { alice.jump("root", "unsafe", "true").status.success() },
    )
    .await;
    drop(sshd);
    let _ = std::fs::remove_dir_all(&bad_dir);
}
