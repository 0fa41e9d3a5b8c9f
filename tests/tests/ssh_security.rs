//! The SSH front door against what other bastions' advisories taught: every
//! channel and request type is authorized or refused (never passed through), an
//! offered key authorizes nothing until it signs, strict key exchange (Terrapin)
//! is advertised, and clients that stall before authenticating are bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text, write_config};
use postern_tests::swarm::rss_kib;
use postern_tests::{Bastion, BastionOpts, connect_from, eventually};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn only_jumps_are_served_everything_else_is_refused_and_audited() {
    let b = Bastion::start(BastionOpts::default()).await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &[]))).await;

    // session / exec / shell on the bastion itself.
    let err = alice.refused(&["bastion", "id"]);
    assert!(
        err.contains("a session on the bastion needs a node"),
        "{err}"
    );
    // subsystem (sftp to the bastion) needs a session: refused the same way.
    let out = run_with_timeout(
        Command::new("sftp")
            .arg("-F")
            .arg(&alice.config)
            .args(["-b", "/dev/null", "bastion"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "sftp to the bastion must fail");
    // agent forwarding rides on a session: refused with it.
    alice.refused(&["-A", "-o", "ForwardAgent=yes", "bastion", "true"]);
    // Remote forwarding (-R) on the bastion.
    let err = alice.refused(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:9",
        "bastion",
    ]);
    assert!(err.contains("remote port forwarding failed"), "{err}");
    // Local forwarding to a unix socket (direct-streamlocal).
    let local = postern_tests::free_port();
    let mut fwd = Command::new("ssh")
        .arg("-F")
        .arg(&alice.config)
        .args(["-N", "-L"])
        .arg(format!("127.0.0.1:{local}:/run/sshd.pid"))
        .arg("bastion")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", local)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.read_to_end(&mut got);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert!(got.is_empty(), "nothing may come through a refused channel");
    // Local forwarding to anything but a node's port 22.
    alice.refused(&["-W", "127.0.0.1:22", "bastion"]);

    eventually(Duration::from_secs(10), "refusals audited", || async {
        let refused = b.audit("ssh.refused").await;
        let seen = |what: &str| {
            refused
                .iter()
                .any(|e| e["detail"]["request"].as_str().unwrap().starts_with(what))
        };
        seen("session") && seen("tcpip-forward") && seen("direct-streamlocal")
    })
    .await;
    let refused = b.audit("ssh.refused").await;
    assert!(
        refused
            .iter()
            .all(|e| e["actor"] == "alice" && e["outcome"] == "denied")
    );
    assert!(b.metric("postern_ssh_sessions_total").await == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_offered_but_never_signed_authorizes_nothing() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &[]))).await;
    // A client that holds alice's public key, not her private key: OpenSSH offers
    // the public key, the bastion says "sign", and the client cannot.
    let dir = b.dir.path().join("pub-only");
    std::fs::create_dir_all(&dir).unwrap();
    let id = dir.join("id_ed25519");
    std::fs::copy(alice.key.with_extension("pub"), id.with_extension("pub")).unwrap();
    let cfg = dir.join("ssh_config");
    write_config(&cfg, b.ssh.port(), "alice", &id, &dir.join("known_hosts"));
    let out = run_with_timeout(
        Command::new("ssh").arg("-F").arg(&cfg).args([
            "-v",
            "-J",
            "bastion",
            "root@node-a",
            "true",
        ]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Server accepts key"),
        "the key was offered and accepted for signing: {err}"
    );
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    // Nothing was granted or relayed, and the attempt is on record.
    let grants =
        std::fs::read_to_string(node.agent.data_dir.join("grants.json")).unwrap_or_default();
    assert!(
        !grants.contains("alice"),
        "no grant for an unproven key: {grants}"
    );
    assert_eq!(b.metric("postern_ssh_sessions_total").await, 0);
    eventually(Duration::from_secs(10), "failed login audited", || async {
        b.audit("ssh.auth")
            .await
            .iter()
            .any(|e| e["actor"] == "alice")
    })
    .await;
}

/// Reads one SSH binary packet's payload (unencrypted, before NEWKEYS).
fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let len = u32::from_be_bytes(len) as usize;
    assert!(len < 64 * 1024, "packet length {len}");
    let mut packet = vec![0u8; len];
    s.read_exact(&mut packet).unwrap();
    let padding = packet[0] as usize;
    packet[1..len - padding].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_key_exchange_is_advertised() {
    let b = Bastion::start(BastionOpts::default()).await;
    let mut s = TcpStream::connect(b.ssh).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"SSH-2.0-postern-test\r\n").unwrap();
    // The server's identification line.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    assert!(line.starts_with(b"SSH-2.0-"), "{}", text(&line));
    let kexinit = read_packet(&mut s);
    assert_eq!(kexinit[0], 20, "SSH_MSG_KEXINIT");
    let n = u32::from_be_bytes(kexinit[17..21].try_into().unwrap()) as usize;
    let kex = text(&kexinit[21..21 + n]);
    assert!(
        kex.split(',').any(|a| a == "kex-strict-s-v00@openssh.com"),
        "strict kex not advertised: {kex}"
    );
}

/// Reads until the bastion closes the connection; a read timeout fails the test.
fn assert_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed by the bastion: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_trickling_and_garbage_clients_are_bounded() {
    // No early drop: this test is about deadlines and memory, and a user's
    // chance under random early drop is another's.
    let b = Bastion::start(BastionOpts {
        ssh_auth_timeout: "3s".into(),
        extra_args: vec!["--ssh-max-startups".into(), "256".into()],
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &[]))).await;
    let pid = b.pid().unwrap();
    let before = rss_kib(pid);

    // 200 clients that connect and then send nothing or a trickle, from
    // several sources (per-source limits are another test's subject).
    let mut stalled = Vec::new();
    for i in 0..200 {
        let from = format!("127.0.1.{}", i % 10 + 1);
        let mut s = connect_from(&from, b.ssh).await.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        if i % 2 == 0 {
            s.write_all(b"SSH-2.0-trick").unwrap();
        }
        stalled.push(s);
    }
    // Garbage: random bytes where an SSH client would speak.
    let mut junk = TcpStream::connect(b.ssh).unwrap();
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = junk.write_all(&noise);

    // Meanwhile a real user gets through.
    let out = alice.jump("root", "node-a", "echo through");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "through");
    let during = rss_kib(pid);
    eprintln!("bastion RSS: {before} KiB before, {during} KiB with 200 stalled clients");
    assert!(
        during.saturating_sub(before) < 32 * 1024,
        "200 stalled clients cost {} KiB",
        during - before
    );

    // Every stalled client is cut once the authentication deadline passes.
    for s in stalled.iter_mut().chain(std::iter::once(&mut junk)) {
        assert_closed(s);
    }
    // And the front door still works.
    let out = alice.jump("root", "node-a", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Sockets that connect and say nothing, all from one source: they take that
/// source's places (sshd's PerSourceMaxStartups) and no more, so a user from
/// anywhere else gets in at once; each is closed when the identification
/// deadline passes, long before the authentication timeout. On the code as it
/// landed, 256 such sockets locked everyone out for 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn idle_sockets_from_one_source_lock_nobody_out() {
    let b = Bastion::start(BastionOpts {
        ssh_auth_timeout: "60s".into(),
        extra_args: vec!["--ssh-banner-timeout".into(), "2s".into()],
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &[]))).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        let s = connect_from("127.0.0.9", b.ssh).await.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        idle.push(s);
    }
    let started = std::time::Instant::now();
    let out = alice.jump("root", "node-a", "echo through");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "through");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the jump waited {:?}",
        started.elapsed()
    );
    assert!(b.metric("postern_ssh_dropped_per_source_total").await >= 300 - 32);
    // All of them closed by the 2 s identification deadline (the read timeout
    // in assert_closed is 15 s; the authentication timeout is 60 s).
    let t = std::time::Instant::now();
    for s in &mut idle {
        assert_closed(s);
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        t.elapsed()
    );
}

/// An echo service on the node's loopback: answers one 5-byte message.
fn echo_service() -> u16 {
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    port
}

/// `ssh -W host:port` to the node's sshd (a direct-tcpip channel, as `-L` opens):
/// whether the node forwards to that destination.
fn forwards_to(user: &SshUser, port: u16) -> bool {
    let out = run_with_timeout(
        Command::new("bash").arg("-c").arg(format!(
            "printf hello | ssh -F {} -J bastion -W 127.0.0.1:{port} root@node-a",
            user.config.display()
        )),
        Duration::from_secs(30),
    );
    out.status.success() && text(&out.stdout) == "hello"
}

/// Port forwarding is the role's choice. By default a grant allows none (the
/// review found every grant carried `port-forwarding`, so anyone with a login
/// could reach any service on the node, cloud metadata included, and listen with
/// `-R`); a role's `forward_to` allows `-L` to exactly those destinations, and
/// remote forwarding stays refused either way.
#[tokio::test(flavor = "multi_thread")]
async fn forwarding_is_the_roles_choice_and_never_remote() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let (allowed, other) = (echo_service(), echo_service());

    let out = alice.jump("root", "node-a", "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !forwards_to(&alice, allowed),
        "forwarding without a role that allows it"
    );
    let remote = |user: &SshUser| {
        let listen = postern_tests::free_port();
        alice_remote(user, listen)
    };
    assert!(!remote(&alice), "remote forwarding allowed by default");

    let (st, v) = b
        .put(
            "/api/v1/users/alice/roles",
            json!({"role": "project_member", "project": "web", "logins": ["root"],
                   "forward_to": [format!("127.0.0.1:{allowed}")]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["roles"][0]["forward_to"][0],
        format!("127.0.0.1:{allowed}")
    );
    assert!(forwards_to(&alice, allowed), "the role's destination");
    assert!(
        !forwards_to(&alice, other),
        "a destination the role does not name"
    );
    assert!(!remote(&alice), "remote forwarding with a forwarding role");
    // What the key options cannot forbid once forwarding is on, the node's
    // documented sshd settings do (AllowTcpForwarding local,
    // AllowStreamLocalForwarding no): the grant's own listen address, and a
    // unix socket.
    let sock = b.dir.path().join("r.sock");
    for spec in [
        "192.0.2.1:1:127.0.0.1:22".to_string(),
        format!("{}:127.0.0.1:22", sock.display()),
    ] {
        assert!(!remote_spec(&alice, &spec), "-R {spec} allowed");
    }
    assert!(!sock.exists());

    // A destination that is not host:port is refused, and changes nothing.
    for bad in ["127.0.0.1", "127.0.0.1:0", "h:1\",command=\"sh", "[::1]:22"] {
        let (st, v) = b
            .put(
                "/api/v1/users/alice/roles",
                json!({"role": "project_member", "project": "web", "logins": ["root"], "forward_to": [bad]}),
            )
            .await;
        assert_eq!(st, 400, "{bad}: {v}");
    }
    assert!(forwards_to(&alice, allowed));
}

/// `ssh -R` through the bastion: whether the node's sshd lets the user listen.
fn alice_remote(user: &SshUser, listen: u16) -> bool {
    remote_spec(user, &format!("127.0.0.1:{listen}:127.0.0.1:22"))
}

fn remote_spec(user: &SshUser, spec: &str) -> bool {
    let out = run_with_timeout(
        Command::new("ssh")
            .arg("-F")
            .arg(&user.config)
            .args([
                "-o",
                "ExitOnForwardFailure=yes",
                "-J",
                "bastion",
                "-R",
                spec,
            ])
            .args(["root@node-a", "true"]),
        Duration::from_secs(30),
    );
    out.status.success()
}
