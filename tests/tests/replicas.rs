//! Several bastion replicas on one PostgreSQL: every replica reaches every node,
//! a killed replica loses nothing, access changes cut sessions on every replica,
//! and the peer port admits replicas only. Real processes on loopback ports.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text};
use postern_tests::{AgentProc, Bastion, BastionOpts, bin, eventually, free_port, run_join};
use serde_json::{Value, json};

/// Hostname → reachable, as one replica lists them.
async fn reachable_set(b: &Bastion) -> Vec<(String, bool)> {
    let (s, v) = b
        .get("/api/v1/projects/web/edges/eu-1/nodes?limit=1000")
        .await;
    assert_eq!(s, 200, "{v}");
    let mut out: Vec<(String, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap().to_string(),
                n["reachable"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

async fn all_reachable(bs: &[&Bastion], hosts: usize, within: Duration) {
    eventually(
        within,
        "every replica sees every node reachable",
        || async {
            for b in bs {
                let set = reachable_set(b).await;
                if set.len() != hosts || !set.iter().all(|(_, r)| *r) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Enrolls `host` through `via`'s API (so its join command names `via`'s agent
/// port first) with every replica's agent port as a controller.
fn join(via: &Bastion, token: &Value, host: &str, controllers: &str, dir: &Path) {
    let cmd = token["join_command"].as_str().unwrap();
    let own = format!("https://{}", via.agent);
    let cmd = cmd.replace(&own, controllers);
    let out = run_join(
        &cmd,
        &["--hostname", host, "--data-dir", dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A node whose commands may leave marks in `mark_dir` (`$MARK`).
fn agent_marked(dir: &Path, mark_dir: &Path) -> AgentProc {
    let mut cmd = Command::new(bin("postern-agent"));
    cmd.env("MARK", mark_dir);
    AgentProc::spawn(cmd, dir, &[])
}

fn controllers(bs: &[&Bastion], first: usize) -> String {
    (0..bs.len())
        .map(|i| format!("https://{}", bs[(first + i) % bs.len()].agent))
        .collect::<Vec<_>>()
        .join(",")
}

fn host_key(b: &Bastion) -> String {
    let out = Command::new("ssh-keyscan")
        .args([
            "-t",
            "ed25519",
            "-p",
            &b.ssh.port().to_string(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    let t = text(&out.stdout);
    t.split_whitespace().last().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_serve_one_fleet() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let r2 = Bastion::replica_of(&r1, "r2").await;
    let r3 = Bastion::replica_of(&r1, "r3").await;
    let rs = [&r1, &r2, &r3];

    // One SSH host key for the deployment, whichever replica answers.
    let k1 = host_key(&r1);
    assert!(!k1.is_empty());
    assert_eq!(k1, host_key(&r2));
    assert_eq!(k1, host_key(&r3));

    // 30 agents, 10 on each replica.
    let mut agents = Vec::new();
    for i in 0..30 {
        let via = rs[i % 3];
        let host = format!("n{i:02}");
        let dir = via.dir.path().join(&host);
        let t = via.enrollment(json!({"auto_approve": true})).await;
        join(via, &t, &host, &controllers(&rs, i % 3), &dir);
        agents.push(AgentProc::run_with(&dir, &[]));
    }
    all_reachable(&rs, 30, Duration::from_secs(30)).await;
    let lists: Vec<_> = futures_util::future::join_all(rs.iter().map(|b| reachable_set(b))).await;
    assert!(lists.windows(2).all(|w| w[0] == w[1]), "{lists:?}");

    // A cluster fan-out posted to r1 reaches all 30, two thirds through peers.
    let r = r1
        .execute(json!({"target_type": "cluster", "command": "echo ok"}))
        .await;
    assert_eq!(r["target_nodes"].as_array().unwrap().len(), 30, "{r}");
    let done = r1
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["node_counts"]["succeeded"], 30, "{done}");
    assert!(r1.metric("postern_routed_calls_out_total").await >= 20);
    assert!(r2.metric("postern_routed_calls_in_total").await >= 10);

    // ssh -J through r2 to a node held by r3, with its own sshd and postern-keys.
    let h = InstalledHelper::install();
    let node = Node::start(&r3, &h, "sshnode").await;
    all_reachable(&rs, 31, Duration::from_secs(15)).await;
    let u = SshUser::create(&r1, "alice", Some(("project_admin", &["root"]))).await;
    let via_r2 = u.config_through(r2.ssh.port());
    let ssh = |args: &[&str]| {
        run_with_timeout(
            Command::new("ssh").arg("-F").arg(&via_r2).args(args),
            Duration::from_secs(60),
        )
    };
    let out = ssh(&["-J", "bastion", "root@sshnode", "echo hello-from-$(whoami)"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello-from-root");

    // 50 MB through the peer hop, intact.
    let src = r2.dir.path().join("big.bin");
    let data: Vec<u8> = (0..50 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let dest = node.agent.data_dir.with_extension("copy");
    let out = run_with_timeout(
        Command::new("scp")
            .arg("-F")
            .arg(&via_r2)
            .args(["-q", "-J", "bastion"])
            .arg(&src)
            .arg(format!("root@sshnode:{}", dest.display())),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&dest).unwrap() == data, "the copy differs");
    drop(agents);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_loses_nothing_and_runs_nothing_twice() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let r2 = Bastion::replica_of(&r1, "r2").await;
    let mut r3 = Bastion::replica_of(&r1, "r3").await;
    let rs = [&r1, &r2, &r3];
    let marks = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for i in 0..9 {
        let via = rs[i % 3];
        let host = format!("k{i}");
        let dir = via.dir.path().join(&host);
        let t = via.enrollment(json!({"auto_approve": true})).await;
        join(via, &t, &host, &controllers(&rs, i % 3), &dir);
        let mark = marks.path().join(&host);
        std::fs::create_dir_all(&mark).unwrap();
        agents.push(agent_marked(&dir, &mark));
    }
    all_reachable(&rs, 9, Duration::from_secs(30)).await;
    assert_eq!(r3.metric("postern_agents_connected").await, 3);

    // One fan-out posted to r1 (routed through r3 for a third of the nodes), one
    // posted to r3 itself (to be taken over); each leaves one line per run.
    let cmd = |tag: &str| {
        json!({"target_type": "cluster", "timeout": 60,
        "command": format!("echo run >> \"$MARK/{tag}\"; sleep 5; echo done-{tag}")})
    };
    let a = r1.execute(cmd("a")).await;
    let b = r3.execute(cmd("b")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    r3.kill();

    // Every agent of r3 is back, on the others.
    eventually(
        Duration::from_secs(30),
        "r3's agents on r1 and r2",
        || async {
            r1.metric("postern_agents_connected").await
                + r2.metric("postern_agents_connected").await
                == 9
        },
    )
    .await;
    let back = killed.elapsed();
    eprintln!("r3's agents connected to the others {back:?} after the kill");
    let rest = [&r1, &r2];
    all_reachable(&rest, 9, Duration::from_secs(10)).await;

    for (posted, id) in [("r1", &a), ("r3", &b)] {
        let done = r1
            .finished(id["exec_id"].as_str().unwrap(), Duration::from_secs(90))
            .await;
        assert_eq!(
            done["node_counts"]["succeeded"], 9,
            "posted to {posted}: {done}"
        );
        for n in done["nodes"].as_array().unwrap() {
            assert_eq!(n["exit_code"], 0, "{n}");
        }
    }
    for i in 0..9 {
        for tag in ["a", "b"] {
            let runs = std::fs::read_to_string(marks.path().join(format!("k{i}/{tag}"))).unwrap();
            assert_eq!(
                runs.lines().count(),
                1,
                "k{i} ran {tag} {} times",
                runs.lines().count()
            );
        }
    }
    // Three replicas wrote one audit chain at once; it verifies whole.
    let out = Command::new(bin("postern-bastion"))
        .args(["audit", "verify", "--data-dir"])
        .arg(r1.data_dir())
        .args(["--database-url", r1.opts.database_url.as_deref().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("audit log intact"),
        "{}",
        text(&out.stdout)
    );
    drop(agents);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_deleted_on_one_replica_cuts_the_session_on_another() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let r2 = Bastion::replica_of(&r1, "r2").await;
    let h = InstalledHelper::install();
    let _node = Node::start(&r2, &h, "node-a").await;
    let u = SshUser::create(&r1, "bob", Some(("project_admin", &["root"]))).await;
    let via_r2 = u.config_through(r2.ssh.port());
    let mut session = Command::new("ssh")
        .arg("-F")
        .arg(&via_r2)
        .args(["-J", "bastion", "root@node-a", "echo up; sleep 120"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "session through r2 up", || async {
        r2.metric("postern_ssh_sessions_total").await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (s, keys) = r1.get("/api/v1/users/bob/ssh-keys").await;
    assert_eq!(s, 200, "{keys}");
    let id = keys[0]["id"].as_str().unwrap().to_string();
    let deleted = Instant::now();
    let (s, v) = r1.delete(&format!("/api/v1/users/bob/ssh-keys/{id}")).await;
    assert_eq!(s, 204, "{v}");
    loop {
        if session.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(3),
            "the session through r2 outlived the key deleted on r1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "session cut {:?} after the key was deleted on another replica",
        deleted.elapsed()
    );
    // r2 records what it cut, for the change r1 published (once it has cut).
    eventually(
        Duration::from_secs(10),
        "r2's access.applied entry",
        || async {
            r1.audit("access.applied").await.iter().any(|e| {
                e["actor"] == "replica:r2"
                    && e["detail"]["doors"]["ssh"]["ssh_cut"].as_u64() >= Some(1)
            })
        },
    )
    .await;
}

/// A TLS client with the given identity to the peer port; answers whether an
/// HTTP/2 request got any answer.
async fn peer_answers(
    peer: std::net::SocketAddr,
    roots_pem: &str,
    identity: Option<(&str, &str)>,
    alpn: &[u8],
) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(roots_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
    // The peer's name is the replica's; any name passes here since only the
    // client side is under test: accept r1's.
    let name = ServerName::try_from("r1.replica.postern.internal").unwrap();
    let Ok(tls) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://peer/v1/health")
        .header("postern-node", "nope")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_peer_port_admits_replicas_only() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let r2 = Bastion::replica_of(&r1, "r2").await;
    let a = r2.agent("held-by-r2").await;
    eventually(Duration::from_secs(10), "r1 sees r2's node", || {
        r1.reachable("held-by-r2")
    })
    .await;
    let ca = std::fs::read_to_string(a.data_dir.join("ca.crt")).unwrap();
    let cert = std::fs::read_to_string(a.data_dir.join("node.crt")).unwrap();
    let key = std::fs::read_to_string(a.data_dir.join("node.key")).unwrap();

    // One source holds 300 idle connections (stalled handshakes) and sends junk,
    // while the real peer traffic must go on.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        stalled.push(postern_tests::connect_from("127.0.0.9", r1.peer).await);
    }
    for junk in [
        &b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0],
        &[0u8; 4096],
    ] {
        let mut s = tokio::net::TcpStream::connect(r1.peer).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(junk).await;
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        // Either closed or a TLS alert; never an HTTP answer.
        if let Ok(Ok(n)) = n {
            assert!(!text(&buf[..n]).contains("HTTP"), "{:?}", &buf[..n]);
        }
    }
    // A node's certificate from the same CA is not a replica's.
    assert!(!peer_answers(r1.peer, &ca, Some((&cert, &key)), b"postern-peer/1").await);
    // No certificate at all.
    assert!(!peer_answers(r1.peer, &ca, None, b"postern-peer/1").await);
    // A certificate from another CA.
    let other = Bastion::start(BastionOpts::default()).await;
    let o = other.agent("stranger").await;
    let ocert = std::fs::read_to_string(o.data_dir.join("node.crt")).unwrap();
    let okey = std::fs::read_to_string(o.data_dir.join("node.key")).unwrap();
    assert!(!peer_answers(r1.peer, &ca, Some((&ocert, &okey)), b"postern-peer/1").await);
    assert!(r1.metric("postern_peer_refused_total").await >= 3);

    // Meanwhile (the stalled handshakes still open), r1 reaches r2's node at
    // once, and r2 reaches r1: a flood from one source takes no peer's place.
    let started = Instant::now();
    let r = r1
        .execute(json!({"target_type": "node", "target": ["held-by-r2"], "command": "echo routed"}))
        .await;
    let done = r1
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_need_postgres_and_say_when_the_database_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let serve = |extra: &[&str]| {
        let mut c = Command::new(bin("postern-bastion"));
        c.arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--agent-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--ssh-addr", &format!("127.0.0.1:{}", free_port())])
            .args(extra);
        c
    };
    // A replica on SQLite.
    let peer = format!("127.0.0.1:{}", free_port());
    let out = run_with_timeout(
        &mut serve(&["--replica-name", "r1", "--peer-addr", &peer]),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("replicas need PostgreSQL"),
        "{}",
        text(&out.stderr)
    );

    // A name that is not a DNS label.
    let url = postern_tests::postgres_url();
    let out = run_with_timeout(
        &mut serve(&[
            "--database-url",
            &url,
            "--replica-name",
            "Bad_Name",
            "--peer-addr",
            &peer,
        ]),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("replica name \"Bad_Name\" is not valid"),
        "{}",
        text(&out.stderr)
    );

    // A second bastion on a SQLite data directory in use.
    let mut first = serve(&[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = run_with_timeout(&mut serve(&[]), Duration::from_secs(20));
    let _ = first.kill();
    let _ = first.wait();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another bastion is running on the data directory"),
        "{}",
        text(&out.stderr)
    );

    // Two bastions on one SQLite file named by URL.
    let db = dir.path().join("named.db");
    let sqlite_url = format!("sqlite://{}?mode=rwc", db.display());
    let mut first = serve(&["--database-url", &sqlite_url])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = run_with_timeout(
        &mut serve(&["--database-url", &sqlite_url]),
        Duration::from_secs(20),
    );
    let _ = first.kill();
    let _ = first.wait();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another bastion is running"),
        "{}",
        text(&out.stderr)
    );

    // A database that does not answer.
    let url = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let out = run_with_timeout(
        &mut serve(&[
            "--database-url",
            &url,
            "--replica-name",
            "r1",
            "--peer-addr",
            &peer,
        ]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the database"), "{err}");

    // A replica that loses its database answers 503, then recovers.
    let url = postern_tests::postgres_url();
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = postern_tests::proxy::TcpProxy::start(pg).await;
    let via_proxy = url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let mut opts = Bastion::replica_opts("r1");
    opts.database_url = Some(via_proxy);
    let b = Bastion::start(opts).await;
    proxy.cut();
    eventually(Duration::from_secs(10), "readyz 503", || async {
        matches!(
            postern_tests::http(b.api, "GET", "/readyz", None, None).await,
            Ok((503, _))
        )
    })
    .await;
    let (s, v) = b.get("/api/v1/projects").await;
    assert_eq!(s, 503, "{v}");
    proxy.restore();
    eventually(Duration::from_secs(30), "readyz 200 again", || async {
        matches!(
            postern_tests::http(b.api, "GET", "/readyz", None, None).await,
            Ok((200, _))
        )
    })
    .await;
    let (s, v) = b.get("/api/v1/projects").await;
    assert_eq!(s, 200, "{v}");
}

/// A clean stop is not an outage: the stopping replica lets its executions go
/// at once (another finishes them without waiting for the lease), says it holds
/// no node any more, and claims no result it did not store.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_stops_cleanly_hands_over_at_once() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let mut r2 = Bastion::replica_of(&r1, "r2").await;
    let rs = [&r1, &r2];
    let marks = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for i in 0..4 {
        let via = rs[i % 2];
        let host = format!("s{i}");
        let dir = via.dir.path().join(&host);
        let t = via.enrollment(json!({"auto_approve": true})).await;
        join(via, &t, &host, &controllers(&rs, i % 2), &dir);
        let mark = marks.path().join(&host);
        std::fs::create_dir_all(&mark).unwrap();
        agents.push(agent_marked(&dir, &mark));
    }
    all_reachable(&rs, 4, Duration::from_secs(30)).await;
    let e = r2
        .execute(json!({"target_type": "cluster", "command": "echo run >> \"$MARK/c\"; sleep 3"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Instant::now();
    r2.stop();
    // Right after the stop, r1 does not count r2's nodes as reachable through
    // it: only those connected to r1 (agents of r2 may be arriving meanwhile).
    let held_before = r1.metric("postern_agents_connected").await;
    let (s, v) = r1.get("/api/v1/projects/web/edges/eu-1/nodes").await;
    assert_eq!(s, 200, "{v}");
    let held_after = r1.metric("postern_agents_connected").await;
    let reachable = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["reachable"] == true)
        .count() as u64;
    assert!(
        (held_before..=held_after).contains(&reachable),
        "{reachable} reachable, {held_before}..{held_after} held by r1: {v}"
    );

    let done = r1
        .finished(e["exec_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    let took = stopped.elapsed();
    assert_eq!(done["node_counts"]["succeeded"], 4, "{done}");
    // Taken over without waiting for the 15 s lease to run out.
    assert!(
        took < Duration::from_secs(14),
        "finished {took:?} after the stop"
    );
    for i in 0..4 {
        let runs = std::fs::read_to_string(marks.path().join(format!("s{i}/c"))).unwrap();
        assert_eq!(runs.lines().count(), 1, "s{i}");
    }
    let (s, v) = r1.get("/api/v1/audit?limit=100").await;
    assert_eq!(s, 200, "{v}");
    drop(agents);
}

/// HAProxy from Debian, TCP mode, in front of two replicas with the documented
/// configuration (deploy/haproxy/postern.cfg): agents join and connect through
/// it, SSH goes through it with one host key, and when a replica dies its agents
/// come back through the balancer to the other.
#[tokio::test(flavor = "multi_thread")]
async fn through_haproxy() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let mut r2 = Bastion::replica_of(&r1, "r2").await;
    let rs = [&r1, &r2];
    let (lb_agent, lb_ssh) = (free_port(), free_port());
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/haproxy/postern.cfg"
    ))
    .unwrap();
    let mut cfg = String::new();
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with("server bastion-a") {
            let ssh = t.ends_with("2222 check");
            for (i, b) in rs.iter().enumerate() {
                let addr = if ssh { b.ssh } else { b.agent };
                cfg.push_str(&format!("    server r{} {addr} check\n", i + 1));
            }
        } else if t.starts_with("server bastion-") {
        } else if t.starts_with("maxconn") {
            // The test machine's descriptor limit, not a fleet's.
            cfg.push_str("    maxconn 2000\n");
        } else if t == "bind :8443" {
            cfg.push_str(&format!("    bind 127.0.0.1:{lb_agent}\n"));
        } else if t == "bind :2222" {
            cfg.push_str(&format!("    bind 127.0.0.1:{lb_ssh}\n"));
        } else {
            cfg.push_str(line);
            cfg.push('\n');
        }
    }
    let cfg_path = r1.dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let haproxy = if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let mut lb = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("haproxy is needed (scripts/test installs it)");
    eventually(Duration::from_secs(10), "haproxy listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", lb_agent))
            .await
            .is_ok()
    })
    .await;
    // Let the balancer's first checks pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let lb_url = format!("https://127.0.0.1:{lb_agent}");
    let mut agents = Vec::new();
    for i in 0..6 {
        let host = format!("lb{i}");
        let dir = r1.dir.path().join(&host);
        let t = r1.enrollment(json!({"auto_approve": true})).await;
        join(&r1, &t, &host, &lb_url, &dir);
        agents.push(AgentProc::run_with(&dir, &[]));
    }
    all_reachable(&rs, 6, Duration::from_secs(30)).await;
    let (n1, n2) = (
        r1.metric("postern_agents_connected").await,
        r2.metric("postern_agents_connected").await,
    );
    assert_eq!(n1 + n2, 6);
    assert!(
        n1 >= 1 && n2 >= 1,
        "the balancer sent every agent to one replica: {n1} {n2}"
    );

    let r = r2
        .execute(json!({"target_type": "cluster", "command": "echo ok"}))
        .await;
    let done = r2
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["node_counts"]["succeeded"], 6, "{done}");

    // SSH through the balancer, whichever replica answers: one host key.
    let h = InstalledHelper::install();
    let _node = Node::start(&r1, &h, "lbnode").await;
    let u = SshUser::create(&r1, "carol", Some(("project_admin", &["root"]))).await;
    let via_lb = u.config_through(lb_ssh);
    for _ in 0..4 {
        let out = run_with_timeout(
            Command::new("ssh").arg("-F").arg(&via_lb).args([
                "-J",
                "bastion",
                "root@lbnode",
                "true",
            ]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(
        r1.metric("postern_ssh_sessions_total").await
            + r2.metric("postern_ssh_sessions_total").await
            >= 4
    );

    // r2 dies: its agents come back through the balancer, to r1.
    r2.kill();
    eventually(Duration::from_secs(40), "every agent on r1", || async {
        r1.metric("postern_agents_connected").await == 7
    })
    .await;
    all_reachable(&[&r1], 7, Duration::from_secs(10)).await;
    let _ = lb.kill();
    let _ = lb.wait();
    drop(agents);
}

/// An access change made while a replica's database (and so its listener) was
/// away is applied there once it is back: the change is a stored event, not
/// only a notification that was lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_access_change_missed_during_an_outage_is_applied_after_it() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let url = r1.opts.database_url.clone().unwrap();
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = postern_tests::proxy::TcpProxy::start(pg).await;
    let via_proxy = url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let r2 = Bastion::replica_with(&r1, "r2", Some(via_proxy)).await;
    let h = InstalledHelper::install();
    let _node = Node::start(&r2, &h, "node-o").await;
    let u = SshUser::create(&r1, "dave", Some(("project_admin", &["root"]))).await;
    let via_r2 = u.config_through(r2.ssh.port());
    let mut session = Command::new("ssh")
        .arg("-F")
        .arg(&via_r2)
        .args(["-J", "bastion", "root@node-o", "sleep 120"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "session through r2 up", || async {
        r2.metric("postern_ssh_sessions_total").await >= 1
    })
    .await;

    // r2 loses its database; meanwhile the key is deleted on r1.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, keys) = r1.get("/api/v1/users/dave/ssh-keys").await;
    assert_eq!(s, 200, "{keys}");
    let id = keys[0]["id"].as_str().unwrap().to_string();
    let (s, v) = r1
        .delete(&format!("/api/v1/users/dave/ssh-keys/{id}"))
        .await;
    assert_eq!(s, 204, "{v}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        session.try_wait().unwrap().is_none(),
        "cut before r2 could know"
    );

    // Back: r2 replays what it missed and cuts the session.
    proxy.restore();
    let back = Instant::now();
    loop {
        if session.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the session through r2 outlived a key deleted while r2 was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "session cut {:?} after r2's database came back",
        back.elapsed()
    );
}

/// An execution runs on the replica it was posted to, whichever replica holds
/// its nodes' channels; its live events can be read on any replica, and a
/// cancel posted to another replica stops it (the running replica finds the
/// request within a lease tick).
#[tokio::test(flavor = "multi_thread")]
async fn live_events_and_cancel_through_any_replica() {
    use postern_tests::sse;
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let r2 = Bastion::replica_of(&r1, "r2").await;
    let rs = [&r1, &r2];
    let mut agents = Vec::new();
    for host in ["on-r2-a", "on-r2-b"] {
        let dir = r2.dir.path().join(host);
        let t = r2.enrollment(json!({"auto_approve": true})).await;
        join(&r2, &t, host, &controllers(&rs, 1), &dir);
        agents.push(AgentProc::run_with(&dir, &[]));
    }
    all_reachable(&rs, 2, Duration::from_secs(30)).await;
    let r = r1
        .execute(json!({"target_type": "cluster", "command": "echo started; sleep 300"}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    let path = format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{exec_id}/events");
    let mut on_r2 = sse::open(r2.api, &path, &r2.token, None).await.unwrap();
    // Both nodes' first output, read on the replica that does not run it.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = on_r2.next(Duration::from_secs(20)).await.unwrap();
        if e.event == "output" {
            assert_eq!(e.data["data"], "started\n");
            seen.push(e.data["hostname"].as_str().unwrap().to_string());
        }
    }
    let (s, v) = r2
        .post(
            &format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{exec_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelling")), "{v}");
    let rest = on_r2.all(Duration::from_secs(30)).await;
    let end = rest.last().unwrap();
    assert_eq!(end.event, "execution_finished");
    assert_eq!(end.data["node_counts"]["cancelled"], 2, "{:?}", end.data);
    let done = r1.finished(&exec_id, Duration::from_secs(5)).await;
    assert_eq!(done["status"], "cancelled");
    drop(agents);
}
