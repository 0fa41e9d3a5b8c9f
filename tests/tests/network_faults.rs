//! Network faults between an agent and the bastion, on a real link: the agent
//! (and its node's sshd) run in a network namespace of their own, joined to the
//! bastion's by a veth pair the test cuts and restores. A cut loses packets
//! without FIN or RST, as a pulled cable or a firewall does.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use postern_tests::netns::Netns;
use postern_tests::ssh::{InstalledHelper, SshUser, Sshd, text};
use postern_tests::{AgentProc, Bastion, BastionOpts, eventually};
use serde_json::json;

const EXEC: &str = "/cmdexec/v1/projects/web/edges/eu-1/execute/";

async fn bastion_for(ns: &Netns, keepalive: &str) -> Bastion {
    Bastion::start(BastionOpts {
        agent_ip: Some(ns.host_ip.clone()),
        extra_args: [
            "--keepalive-interval",
            keepalive,
            "--keepalive-timeout",
            keepalive,
        ]
        .map(String::from)
        .to_vec(),
        ..BastionOpts::default()
    })
    .await
}

/// A command is running when the link is cut. The dead link (no FIN, no RST) is
/// found within the keep-alive bound and the node shown unreachable; the command
/// finishes on the node meanwhile; once the link is back the result arrives, and
/// the command ran exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_link_is_detected_and_the_result_arrives_once_it_is_back() {
    let ns = Netns::new();
    let b = bastion_for(&ns, "1s").await;
    let dir = b.enroll("far").await;
    // (AgentProc sets --backoff-cap 2s: the agent is back soon after the link.)
    let _agent = AgentProc::run_in(
        &ns,
        &dir,
        &["--keepalive-interval", "1s", "--keepalive-timeout", "1s"],
    );
    eventually(Duration::from_secs(15), "far reachable", || {
        b.reachable("far")
    })
    .await;

    let marker = b.dir.path().join("ran");
    let command = format!("echo ran >> {}; sleep 5; echo finished", marker.display());
    let (s, r) = b
        .post(
            EXEC,
            json!({"target": ["far"], "target_type": "node", "command": command}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let id = r["exec_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "the command started", || async {
        marker.exists()
    })
    .await;

    ns.cut();
    let cut_at = Instant::now();
    eventually(Duration::from_secs(10), "the dead link noticed", || async {
        !b.reachable("far").await
    })
    .await;
    let noticed = cut_at.elapsed();
    // Keep-alive 1 s + 1 s on both sides; allow for the PING schedule and polling.
    assert!(
        noticed < Duration::from_secs(6),
        "noticed after {noticed:?}"
    );
    eprintln!("half-open channel noticed {noticed:?} after the cut");

    // The command finishes on the node while the link is down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let path = format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{id}/");
    let (_, v) = b.get(&path).await;
    assert_eq!(v["status"], "running", "no result can have arrived: {v}");

    ns.restore();
    eventually(
        Duration::from_secs(20),
        "the result after the link is back",
        || async {
            let (_, v) = b.get(&path).await;
            v["status"] != "running" && v["status"] != "pending"
        },
    )
    .await;
    let (_, done) = b.get(&path).await;
    let n = &done["nodes"][0];
    assert_eq!(n["status"], "succeeded", "{done}");
    assert_eq!(n["stdout"], "finished\n");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "ran\n",
        "ran exactly once"
    );
}

/// An SSH session through the bastion rides out a short cut of the agent's link:
/// TCP retransmits what was lost, and the keep-alive bound is longer than the cut.
#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_session_rides_out_a_short_cut() {
    let ns = Netns::new();
    let b = bastion_for(&ns, "5s").await;
    let helper = InstalledHelper::install();
    let dir = b.dir.path().join("far");
    let sshd = Sshd::start_in(
        Some(&ns),
        &b.dir.path().join("far-sshd"),
        &helper.path,
        &dir,
    );
    let enrolled = b.enroll("far").await;
    assert_eq!(enrolled, dir);
    let port = sshd.port.to_string();
    let _agent = AgentProc::run_in(
        &ns,
        &dir,
        &[
            "--sshd-port",
            &port,
            "--keepalive-interval",
            "5s",
            "--keepalive-timeout",
            "5s",
        ],
    );
    eventually(Duration::from_secs(15), "far reachable", || {
        b.reachable("far")
    })
    .await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &[]))).await;

    let session =
        std::thread::spawn(move || alice.jump("root", "far", "echo before; sleep 4; echo after"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ns.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ns.restore();
    let out = session.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before\nafter\n");
    assert!(b.reachable("far").await, "the channel survived the cut");
}
