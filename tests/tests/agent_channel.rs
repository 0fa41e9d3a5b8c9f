//! The agent channel through the real binaries and real TLS: cut-off of deleted
//! and disabled nodes, recovery after a bastion restart, rotation without a drop,
//! hostile clients on the agent port, and the audit chain on disk.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_agent::identity::Credentials;
use postern_tests::{AgentProc, Bastion, BastionOpts, connect_from, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn deleted_and_disabled_nodes_are_cut_off_within_a_second() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("doomed").await;
    let _c = b.agent("paused").await;
    let _keep = b.agent("bystander").await;

    let (s, _) = b
        .delete("/api/v1/projects/web/edges/eu-1/nodes/doomed")
        .await;
    assert_eq!(s, 204);
    let (s, v) = b
        .post(
            "/api/v1/projects/web/edges/eu-1/nodes/paused/disable",
            json!({}),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("disabled")));
    let t0 = Instant::now();
    eventually(Duration::from_secs(1), "both channels closed", || async {
        b.metric("postern_agents_connected").await == 1
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The agents keep trying and keep being refused; the bystander is untouched.
    let refused = b.metric("postern_agent_refused_total").await;
    eventually(Duration::from_secs(10), "reconnects refused", || async {
        b.metric("postern_agent_refused_total").await >= refused + 2
    })
    .await;
    assert!(b.reachable("bystander").await);
    assert!(!b.reachable("paused").await);
    assert!(b.node("doomed").await.is_none());
    // Re-enabled, the paused node comes back by itself.
    let (s, _) = b
        .post(
            "/api/v1/projects/web/edges/eu-1/nodes/paused/enable",
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    eventually(Duration::from_secs(10), "paused back", || {
        b.reachable("paused")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_come_back_after_the_bastion_restarts() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let agent = b.agent("phoenix").await;
    let _other = b.agent("witness").await;
    let before = b.node("phoenix").await.unwrap();
    b.restart().await;
    // The stop says how many channels it closed (it said 0 while two were up).
    let log: String = {
        // Drop ANSI colour codes: `agents\x1b[0m\x1b[2m=\x1b[0m2`.
        let raw = b.log();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let drained = log
        .lines()
        .find(|l| l.contains("agent channels drained"))
        .unwrap_or_else(|| panic!("no drain line in {log}"));
    assert!(drained.contains("agents=2"), "{drained}");
    eventually(
        Duration::from_secs(20),
        "phoenix back after restart",
        || b.reachable("phoenix"),
    )
    .await;
    let after = b.node("phoenix").await.unwrap();
    assert_eq!(before["id"], after["id"], "same node, same identity");
    // Graceful shutdown told the agent (GOAWAY / close), it did not wait for keep-alives.
    assert!(
        agent.log().contains("channel to the bastion closed") || agent.log().contains("failed"),
        "{}",
        agent.log()
    );
    assert!(agent.log().matches("channel to the bastion up").count() >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_without_dropping_the_channel() {
    let b = Bastion::start(BastionOpts {
        node_cert_ttl: "9s".into(),
        rotation_check: "500ms".into(),
        ..BastionOpts::default()
    })
    .await;
    let mut agent = b.agent("rot").await;
    let first = b.node("rot").await.unwrap()["cert_serial"].clone();
    let cert_path = agent.data_dir.join("node.crt");
    let key_path = agent.data_dir.join("node.key");
    let (cert0, key0) = (
        std::fs::read(&cert_path).unwrap(),
        std::fs::read(&key_path).unwrap(),
    );
    eventually(Duration::from_secs(15), "rotation", || async {
        b.node("rot").await.unwrap()["cert_serial"] != first
    })
    .await;
    // Same connection throughout: one handshake, still reachable.
    assert_eq!(b.metric("postern_agent_handshakes_total").await, 1);
    assert!(b.reachable("rot").await);
    assert!(b.metric("postern_cert_rotations_total").await >= 1);
    // A new key was made on the node and stored.
    assert_ne!(std::fs::read(&cert_path).unwrap(), cert0);
    assert_ne!(std::fs::read(&key_path).unwrap(), key0);
    // The first certificate has expired by now; the agent reconnects with the new one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.stop();
    eventually(Duration::from_secs(2), "rot gone", || async {
        !b.reachable("rot").await
    })
    .await;
    let _again = AgentProc::run(&agent.data_dir);
    eventually(
        Duration::from_secs(10),
        "rot back with rotated cert",
        || b.reachable("rot"),
    )
    .await;
    let (_, audit) = b.get("/api/v1/audit?limit=100").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "cert.rotate")
    );
}

/// Reads until EOF or error; true if the peer closed within `limit`.
async fn closed_within(mut s: impl AsyncReadExt + Unpin, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

fn rogue_credentials() -> Credentials {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        "01a00000-0000-7000-8000-000000000000",
    );
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let _ = ca_cert;
    Credentials {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_on_the_agent_port_are_closed_without_harm() {
    let b = Bastion::start(BastionOpts::default()).await;
    let agent = b.agent("steady").await;
    let ca_pem = std::fs::read_to_string(agent.data_dir.join("ca.crt")).unwrap();
    let handshakes = b.metric("postern_agent_handshakes_total").await;
    let limit = Duration::from_secs(5);

    // Random bytes.
    let mut s = TcpStream::connect(b.agent).await.unwrap();
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = s.write_all(&noise).await;
    assert!(closed_within(s, limit).await, "random bytes not closed");

    // Plain TCP that connects and says nothing but EOF.
    let mut s = TcpStream::connect(b.agent).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_within(s, limit).await);

    // A plaintext HTTP/1 client.
    let mut s = TcpStream::connect(b.agent).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: bastion\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(s, limit).await, "plaintext HTTP/1 not closed");

    // A client certificate from another CA.
    let cfg = postern_agent::tls::channel_config(&ca_pem, &rogue_credentials()).unwrap();
    let tcp = TcpStream::connect(b.agent).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    match tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    {
        Err(_) => {}
        Ok(tls) => assert!(
            closed_within(tls, limit).await,
            "foreign client certificate not closed"
        ),
    }

    // A valid node certificate, but HTTP/1.1 instead of the channel protocol.
    let creds = Credentials {
        key_pem: std::fs::read_to_string(agent.data_dir.join("node.key")).unwrap(),
        cert_pem: std::fs::read_to_string(agent.data_dir.join("node.crt")).unwrap(),
    };
    let mut cfg = (*postern_agent::tls::channel_config(&ca_pem, &creds).unwrap()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(b.agent).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
    {
        let _ = tls
            .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert!(
            closed_within(tls, limit).await,
            "HTTP/1 with a node cert not closed"
        );
    }

    // Without a certificate, only enrollment is served.
    let (status, body) = enroll_port_get(&b, &ca_pem).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("only POST /agent/v1/enroll"));

    // None of it disturbed the agent that was already there.
    assert!(b.reachable("steady").await);
    assert_eq!(b.metric("postern_agent_handshakes_total").await, handshakes);
    assert!(b.metric("postern_agent_handshake_failures_total").await >= 2);
    assert!(
        agent.log().matches("channel to the bastion up").count() == 1,
        "{}",
        agent.log()
    );
}

/// GET / over server-authenticated TLS on the agent port (as an enrolling agent would).
async fn enroll_port_get(b: &Bastion, ca_pem: &str) -> (u16, String) {
    let mut tls = b.enrollment_tls(ca_pem).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_do_not_delay_other_agents() {
    // A handshake deadline far longer than the test: if handshakes ran in the
    // accept loop, the stalled clients would block everyone for 100 times the
    // ClientHello deadline (3 s).
    let b = Bastion::start(BastionOpts {
        handshake_timeout: "60s".into(),
        ..BastionOpts::default()
    })
    .await;
    let dir = b.enroll("punctual").await;
    let mut stallers = Vec::new();
    for i in 0..100 {
        // From four addresses other than the agent's, each within its share
        // of handshakes per source (see the next test for one address).
        let from = format!("127.0.0.{}", 2 + i % 4);
        let mut s = connect_from(&from, b.agent).await;
        // Half a TLS record header, or nothing at all.
        if i % 2 == 0 {
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        }
        stallers.push(s);
    }
    let t0 = Instant::now();
    let _agent = AgentProc::run(&dir);
    eventually(
        Duration::from_secs(5),
        "punctual connects despite 100 stalled peers",
        || b.reachable("punctual"),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    // And a fresh enrollment goes through too.
    let _late = b.enroll("latecomer").await;
    drop(stallers);
}

/// One address holding idle connections keeps no agent out: it holds at most
/// its handshakes per source, each until the ClientHello deadline (3 s,
/// though the handshake deadline here is 60 s), and agents from another
/// address connect meanwhile. Connected agents do not count against their
/// address: three share one whose handshake limit is two. On the code as
/// reviewed, one address re-opening idle connections filled the port (one
/// global pool, places taken before TLS) and no agent got in.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_holding_idle_connections_keeps_no_agent_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let b = Bastion::start(BastionOpts {
        handshake_timeout: "60s".into(),
        extra_args: [
            "--max-agent-connections",
            "40",
            "--agent-handshakes-per-source",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        ..BastionOpts::default()
    })
    .await;
    let hosts = ["first", "second", "third"];
    let mut dirs = Vec::new();
    for h in hosts {
        dirs.push(b.enroll(h).await);
    }

    // 60 connections from 127.0.0.2 that say nothing, each opened again as
    // soon as the bastion closes it: more than the whole port.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..60 {
        let stop = stop.clone();
        let to = b.agent;
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = connect_from("127.0.0.2", to).await;
                closed_within(s, Duration::from_secs(10)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    eventually(
        Duration::from_secs(10),
        "the flood is refused beyond its address's share",
        || async { b.metric("postern_agent_connections_rejected_total").await >= 50 },
    )
    .await;

    let agents: Vec<AgentProc> = dirs.iter().map(|d| AgentProc::run(d)).collect();
    for h in hosts {
        eventually(
            Duration::from_secs(20),
            &format!("{h} connects during the flood"),
            || b.reachable(h),
        )
        .await;
    }

    // An idle connection from a third address is closed at the ClientHello
    // deadline, not at the end of the handshake's.
    let idle = connect_from("127.0.0.3", b.agent).await;
    let t0 = Instant::now();
    assert!(
        closed_within(idle, Duration::from_secs(8)).await,
        "an idle connection was not closed"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "closed at once, not at the ClientHello deadline: {:?}",
        t0.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.abort();
    }
    // Still there once the flood is over.
    for h in hosts {
        assert!(b.reachable(h).await, "{h}");
    }
    drop(agents);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_detects_an_edited_or_removed_entry() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("audited").await;
    b.stop();
    let verify = || {
        std::process::Command::new(postern_tests::bin("postern-bastion"))
            .args(["audit", "verify", "--data-dir"])
            .arg(b.data_dir())
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));

    // The wrong store (an empty PostgreSQL schema, as when --database-url is
    // forgotten on one side) never passes as intact.
    let empty = postern_tests::postgres_url();
    let wrong = std::process::Command::new(postern_tests::bin("postern-bastion"))
        .args(["audit", "verify", "--data-dir"])
        .arg(b.data_dir())
        .args(["--database-url", &empty])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(
        err.contains("AUDIT LOG EMPTY")
            && !String::from_utf8_lossy(&wrong.stdout).contains("intact"),
        "{err}"
    );
    // And the SQLite store left beside it is pointed out.
    assert!(err.contains("unused SQLite store"), "{err}");

    let export = std::process::Command::new(postern_tests::bin("postern-bastion"))
        .args(["audit", "export", "--data-dir"])
        .arg(b.data_dir())
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "node.enroll" && l["targets"][0] == "audited")
    );

    let store = postern_bastion::store::Store::open_sqlite(&b.data_dir())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET source_ip = '10.9.9.9' WHERE seq = 2")
        .execute(store.pool())
        .await
        .unwrap();
    let bad = verify();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("entry 2: its hash does not match"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(store.pool())
        .await
        .unwrap();
    let bad = verify();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing"));
    store.close().await;
}

/// Enrollment has its own small pool: a flood of enrollments that stall holds
/// that pool and no more, the ones beyond it are told 503 at once, and a node
/// reconnecting meanwhile gets its channel. On the code as it landed, the
/// stalled enrollments held the agent port's permits and shut the node out.
#[tokio::test(flavor = "multi_thread")]
async fn an_enrollment_flood_does_not_shut_out_reconnecting_agents() {
    let b = Bastion::start(BastionOpts {
        extra_args: ["--max-agent-connections", "20", "--max-enrollments", "4"]
            .map(String::from)
            .to_vec(),
        ..BastionOpts::default()
    })
    .await;
    let dir = b.enroll("returning").await;
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();

    // 30 enrollments that stall after their handshake (some may find the port
    // full while the others are being answered: that is the port's own limit).
    let mut flood = Vec::new();
    for _ in 0..30 {
        if let Ok(tls) = b.enrollment_tls(&ca_pem).await {
            flood.push(tls);
        }
    }
    assert!(
        flood.len() >= 20,
        "only {} handshakes completed",
        flood.len()
    );
    // Each sends half a request; those beyond the pool hear why, and are closed.
    for tls in flood.iter_mut() {
        let _ = tls
            .write_all(b"POST /agent/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
            .await;
    }
    let mut busy = 0;
    for tls in flood.iter_mut() {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), tls.read_to_end(&mut out)).await;
        if String::from_utf8_lossy(&out).starts_with("HTTP/1.1 503") {
            busy += 1;
        }
    }
    assert_eq!(busy, flood.len() - 4, "all but the pool's 4 are told 503");
    assert_eq!(
        b.metric("postern_enrollments_rejected_total").await,
        busy as u64
    );

    // A node coming back meanwhile gets its channel.
    let _agent = AgentProc::run(&dir);
    eventually(
        Duration::from_secs(15),
        "the returning node is reachable",
        || async { b.reachable("returning").await },
    )
    .await;
    drop(flood);
}

/// The agent comes back from kill -9 at any moment of a rotation: certificates
/// rotate every few seconds while the agent is killed again and again at random
/// points, and each time it starts with a key and certificate that belong
/// together (the swap file finishes a cut-short rotation), reconnects, and a
/// command sent meanwhile runs once.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_a_loop_during_rotation_leaves_a_working_identity() {
    let b = Bastion::start(BastionOpts {
        node_cert_ttl: "3s".into(),
        rotation_check: "200ms".into(),
        ..BastionOpts::default()
    })
    .await;
    let dir = b.enroll("phoenix").await;
    let rotations_before = b.metric("postern_cert_rotations_total").await;
    for round in 0..12u64 {
        let mut agent = AgentProc::run(&dir);
        eventually(Duration::from_secs(20), "phoenix reachable", || {
            b.reachable("phoenix")
        })
        .await;
        // Somewhere in the next rotation (due every 2 s), or between two.
        let pause = 300 + (round * 997) % 2000;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        agent.kill();
        assert!(
            postern_agent::identity::Identity::load(&dir).is_ok(),
            "round {round}: the identity does not load after kill -9"
        );
    }
    assert!(
        b.metric("postern_cert_rotations_total").await > rotations_before + 3,
        "the loop did not cross rotations"
    );
    let _agent = AgentProc::run(&dir);
    eventually(Duration::from_secs(20), "phoenix back", || {
        b.reachable("phoenix")
    })
    .await;
    let marker = b.dir.path().join("phoenix-ran");
    let (s, r) = b
        .post(
            "/cmdexec/v1/projects/web/edges/eu-1/execute/",
            json!({"target": ["phoenix"], "target_type": "node",
                   "command": format!("echo ran >> {}", marker.display())}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let path = format!(
        "/cmdexec/v1/projects/web/edges/eu-1/execution/{}/",
        r["exec_id"].as_str().unwrap()
    );
    eventually(Duration::from_secs(15), "the command's result", || async {
        b.get(&path).await.1["status"] == "succeeded"
    })
    .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
}

/// Runs `echo word` on `host` and answers its output.
async fn echo(b: &Bastion, host: &str, word: &str) -> String {
    let r = b
        .execute(
            json!({"target": [host], "target_type": "node", "command": format!("echo {word}")}),
        )
        .await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    let n = postern_tests::exec_node(&done, host);
    assert_eq!(n["status"], "succeeded", "{n}");
    n["stdout"].as_str().unwrap().to_string()
}

/// An idle channel gives up its HTTP/2 connection and keeps its TLS session
/// (pinged both ways while parked); the next call wakes it on the same
/// session, and commands run as before. An agent killed while parked is
/// found by the parked channel's pings.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_channel_parks_and_the_next_call_wakes_it() {
    let quick = ["--keepalive-interval", "1s", "--keepalive-timeout", "2s"];
    let mut extra: Vec<String> = quick.iter().map(|s| s.to_string()).collect();
    extra.extend(["--agent-park-after".to_string(), "1s".to_string()]);
    let b = Bastion::start(BastionOpts {
        extra_args: extra,
        ..BastionOpts::default()
    })
    .await;
    let mut agent = b.agent_with("idle", &quick).await;
    assert_eq!(echo(&b, "idle", "one").await, "one\n");

    for round in 1..=2u64 {
        eventually(Duration::from_secs(15), "the channel parked", || async {
            b.metric("postern_agents_parked").await == 1
                && b.metric("postern_agent_parks_total").await == round
        })
        .await;
        // Parked through several pings each way: still the same channel.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(b.metric("postern_agents_parked").await, 1);
        assert!(b.reachable("idle").await);
        let word = format!("woken{round}");
        assert_eq!(echo(&b, "idle", &word).await, format!("{word}\n"));
        assert_eq!(b.metric("postern_agent_wakes_total").await, round);
    }
    assert_eq!(
        b.metric("postern_agent_handshakes_total").await,
        1,
        "the channel was redialled instead of woken"
    );

    // A second node, parked, is disabled: its channel is cut at once, as a
    // live one is.
    let _other = b.agent_with("cut", &quick).await;
    eventually(Duration::from_secs(15), "both parked", || async {
        b.metric("postern_agents_parked").await == 2
    })
    .await;
    let (s, v) = b
        .post(
            "/api/v1/projects/web/edges/eu-1/nodes/cut/disable",
            json!({}),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("disabled")));
    eventually(Duration::from_secs(1), "the parked channel cut", || async {
        b.metric("postern_agents_connected").await == 1
    })
    .await;
    assert_eq!(b.metric("postern_agents_parked").await, 1);
    agent.kill();
    eventually(
        Duration::from_secs(10),
        "a dead parked agent found",
        || async { !b.reachable("idle").await },
    )
    .await;
    assert_eq!(b.metric("postern_agents_parked").await, 0);
}

/// An agent that offers only the plain channel (as agents before parking
/// did, or `--no-park`) is served on it and never parked.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_the_framed_channel_is_served_and_never_parked() {
    let b = Bastion::start(BastionOpts {
        extra_args: vec!["--agent-park-after".into(), "1s".into()],
        ..BastionOpts::default()
    })
    .await;
    let _agent = b.agent_with("plain", &["--no-park"]).await;
    assert_eq!(echo(&b, "plain", "one").await, "one\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.metric("postern_agent_parks_total").await, 0);
    assert_eq!(echo(&b, "plain", "two").await, "two\n");
    assert_eq!(b.metric("postern_agent_handshakes_total").await, 1);
}

/// A node with a valid certificate that speaks the framed channel out of
/// turn (a control chunk where HTTP/2 was due, a kind that does not exist,
/// garbage inside a DATA chunk) has its channel closed; nothing else moves.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_speaking_the_framed_channel_out_of_turn_is_closed() {
    let b = Bastion::start(BastionOpts::default()).await;
    let agent = b.agent("steady").await;
    let ca_pem = std::fs::read_to_string(agent.data_dir.join("ca.crt")).unwrap();
    let dir = b.enroll("hostile").await;
    let creds = Credentials {
        key_pem: std::fs::read_to_string(dir.join("node.key")).unwrap(),
        cert_pem: std::fs::read_to_string(dir.join("node.crt")).unwrap(),
    };
    let cfg = postern_agent::tls::channel_config(&ca_pem, &creds).unwrap();
    let cases: [&[u8]; 4] = [
        // PARK, which only the bastion sends.
        &[1, 0, 0, 0],
        // A kind that does not exist.
        &[9, 0, 0, 0],
        // A control chunk with a length.
        &[4, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        // The longest DATA chunk, holding no HTTP/2.
        &[
            0, 0xff, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ];
    for bytes in cases {
        let tcp = TcpStream::connect(b.agent).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(postern_channel::ALPN));
        tls.write_all(bytes).await.unwrap();
        assert!(
            closed_within(tls, Duration::from_secs(5)).await,
            "{bytes:?} was not closed"
        );
    }
    eventually(Duration::from_secs(5), "hostile unreachable", || async {
        !b.reachable("hostile").await
    })
    .await;
    assert!(b.reachable("steady").await);
    assert_eq!(echo(&b, "steady", "still").await, "still\n");
}
