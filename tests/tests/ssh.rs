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

    // ssh -L: a local port forwarded by the node's sshd to a service on the node.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
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
        b.audit("ssh.session").await.len() >= n
    })
    .await;
    b.audit("ssh.session").await
}
