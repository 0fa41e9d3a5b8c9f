//! Enrollment through the real binaries: the join command as printed works, and
//! every refusal exits non-zero with a clear message and leaves no node record.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use postern_tests::{AgentProc, Bastion, BastionOpts, eventually, free_port, run_join};
use serde_json::json;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn join_command_as_printed_enrolls_and_runs() {
    let b = Bastion::start(BastionOpts::default()).await;
    let t = b.enrollment(json!({"auto_approve": true})).await;
    let dir = b.dir.path().join("agent-a");
    let out = run_join(
        t["join_command"].as_str().unwrap(),
        &["--hostname", "node-a", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled node-a"));
    // State is private: directory 0700, every file 0600.
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in ["agent.json", "node.key", "node.crt", "ca.crt"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let n = b.node("node-a").await.unwrap();
    assert_eq!(
        (n["state"].as_str(), n["reachable"].as_bool()),
        (Some("approved"), Some(false))
    );

    let _agent = AgentProc::run(&dir);
    eventually(Duration::from_secs(10), "node-a reachable", || {
        b.reachable("node-a")
    })
    .await;
    let n = b.node("node-a").await.unwrap();
    assert_eq!(n["state"], "provisioned");
    assert_eq!(n["agent_version"], env!("CARGO_PKG_VERSION"));

    // Joining again into the same directory is refused without touching it.
    let again = run_join(
        t["join_command"].as_str().unwrap(),
        &["--hostname", "node-a", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds an enrollment"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_nodes_wait_for_approval() {
    let b = Bastion::start(BastionOpts::default()).await;
    let t = b.enrollment(json!({})).await;
    let dir = b.dir.path().join("agent-p");
    let out = run_join(
        t["join_command"].as_str().unwrap(),
        &["--hostname", "node-p", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let _agent = AgentProc::run(&dir);
    eventually(Duration::from_secs(10), "node-p reachable", || {
        b.reachable("node-p")
    })
    .await;
    assert_eq!(b.node("node-p").await.unwrap()["state"], "pending");
    let (s, v) = b
        .post(
            "/api/v1/projects/web/edges/eu-1/nodes/node-p/approve",
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "provisioned");
}

/// A node cannot join under a name that reads as an IP address: `ssh
/// 10.20.30.40`, a user's `HostName 10.20.30.40` and the bastion's jumps
/// would reach it. Refused with a clear message, before the token is used.
#[tokio::test(flavor = "multi_thread")]
async fn names_that_read_as_ip_addresses_are_refused() {
    let b = Bastion::start(BastionOpts::default()).await;
    let t = b.enrollment(json!({"auto_approve": true})).await;
    let join = t["join_command"].as_str().unwrap();
    for name in ["10.20.30.40", "1234", "127.1", "0x7f.0.0.1"] {
        let dir = b.dir.path().join(format!("ip-{name}"));
        let out = run_join(
            join,
            &["--hostname", name, "--data-dir", dir.to_str().unwrap()],
        );
        assert!(!out.status.success(), "{name} joined");
        assert!(
            stderr(&out).contains("reads as an IP address"),
            "{name}: {}",
            stderr(&out)
        );
        assert!(b.node(name).await.is_none(), "{name}");
    }
    // The one use of the token is still there for a proper name.
    let dir = b.dir.path().join("named");
    let out = run_join(
        join,
        &[
            "--hostname",
            "node-10-20-30-40",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.node("node-10-20-30-40").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_expired_and_used_up_tokens_leave_no_node() {
    let b = Bastion::start(BastionOpts::default()).await;
    let good = b.enrollment(json!({"max_uses": 1})).await;
    let join = good["join_command"].as_str().unwrap().to_string();
    let dir = |n: &str| b.dir.path().join(n).to_str().unwrap().to_string();

    // Wrong token: same shape, wrong secret.
    let wrong = join.replace(
        good["token"].as_str().unwrap(),
        &format!("{}x", good["token"].as_str().unwrap()),
    );
    let out = run_join(&wrong, &["--hostname", "wrong", "--data-dir", &dir("w")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown or wrong token"),
        "{}",
        stderr(&out)
    );
    let out = run_join(
        &join.replace(good["token"].as_str().unwrap(), "not-a-token"),
        &["--hostname", "junk", "--data-dir", &dir("j")],
    );
    assert!(
        stderr(&out).contains("not a Postern enrollment token"),
        "{}",
        stderr(&out)
    );

    // Used up: the first use works, the second is refused.
    assert!(
        run_join(&join, &["--hostname", "first", "--data-dir", &dir("f")])
            .status
            .success()
    );
    let out = run_join(&join, &["--hostname", "second", "--data-dir", &dir("s")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("used as many times as allowed"),
        "{}",
        stderr(&out)
    );

    // Expired.
    let short = b.enrollment(json!({"ttl_seconds": 1})).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let out = run_join(
        short["join_command"].as_str().unwrap(),
        &["--hostname", "late", "--data-dir", &dir("l")],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    for h in ["wrong", "junk", "second", "late"] {
        assert!(b.node(h).await.is_none(), "{h} has a node record");
        assert!(!b.dir.path().join(h).join("agent.json").exists());
    }
    assert!(b.node("first").await.is_some());
    // The refusals are audited as denials.
    let (_, audit) = b.get("/api/v1/audit?limit=100").await;
    let denials = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "node.enroll" && e["outcome"] == "denied")
        .count();
    assert!(denials >= 2, "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_hash_and_unreachable_bastion_are_refused_by_the_agent() {
    let b = Bastion::start(BastionOpts::default()).await;
    let t = b.enrollment(json!({})).await;
    let join = t["join_command"].as_str().unwrap();
    let bogus = format!("sha256:{}", "ab".repeat(32));
    let out = run_join(
        &join.replace(t["ca_hash"].as_str().unwrap(), &bogus),
        &[
            "--hostname",
            "mitm",
            "--data-dir",
            "/tmp/never-used-postern",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match --ca-hash"),
        "{}",
        stderr(&out)
    );
    assert!(b.node("mitm").await.is_none());
    assert_eq!(b.enrollment(json!({})).await["max_uses"], 1);

    let out = run_join(
        &join.replace(t["ca_hash"].as_str().unwrap(), "sha256:zz"),
        &["--hostname", "x"],
    );
    assert!(stderr(&out).contains("64 hex digits"), "{}", stderr(&out));

    let dead = join.replace(&b.agent.to_string(), &format!("127.0.0.1:{}", free_port()));
    let out = run_join(
        &dead,
        &[
            "--hostname",
            "lonely",
            "--data-dir",
            b.dir.path().join("lonely").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the bastion"),
        "{}",
        stderr(&out)
    );
}
