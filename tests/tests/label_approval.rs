//! An agent's labels through the real binaries: what it reports becomes its
//! node's only as an approval names it, whatever the node's state. The three
//! ways around that a security review reproduced, each with a real agent that
//! leaves and comes back with other labels: (a) its pending node approved
//! while it was away, (b) its node disabled and enabled again, (c) its labels
//! swapped between what the approver saw and the approval.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use postern_tests::{AgentProc, Bastion, BastionOpts, EXECUTE, eventually, run_join};
use serde_json::{Value, json};

const NODES: &str = "/api/v1/projects/web/edges/eu-1/nodes";

async fn node(b: &Bastion, host: &str) -> Value {
    let (s, v) = b.get(&format!("{NODES}/{host}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// What the node's agent reports, as an approver reads it: the change that
/// waits, or the approved labels when none does.
fn reported_labels(n: &Value) -> Value {
    if n["agent_labels_pending"].is_null() {
        n["agent_labels"].clone()
    } else {
        n["agent_labels_pending"].clone()
    }
}

/// Waits until `host`'s agent is connected and the bastion has its report of
/// `labels`, approved or waiting.
async fn reports(b: &Bastion, host: &str, labels: &Value) {
    eventually(
        Duration::from_secs(20),
        &format!("{host} connected, reporting {labels}"),
        || async {
            let n = node(b, host).await;
            n["reachable"] == true && reported_labels(&n) == *labels
        },
    )
    .await;
}

/// A selector on the node's own claim selects nothing.
async fn selects_nothing(b: &Bastion, selector: &str) {
    let (s, v) = b
        .post(
            EXECUTE,
            json!({"target_type": "selector", "selector": selector, "command": "true"}),
        )
        .await;
    assert_eq!(s, 400, "{selector} selected a node on its own claim: {v}");
}

/// (a) The node steps away after the approver looked; the approval (naming
/// what was seen) makes it `approved`, not `provisioned`; it comes back with
/// other labels. They wait.
#[tokio::test(flavor = "multi_thread")]
async fn labels_reported_after_an_approval_made_while_away_wait() {
    let b = Bastion::start(BastionOpts::default()).await;
    let t = b.enrollment(json!({})).await;
    let dir = b.dir.path().join("n4");
    let out = run_join(
        t["join_command"].as_str().unwrap(),
        &["--hostname", "n4", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = AgentProc::run_with(&dir, &["--label", "role=web"]);
    let web = json!({"role": "web"});
    reports(&b, "n4", &web).await;
    let n = node(&b, "n4").await;
    assert_eq!(n["state"], "pending", "{n}");
    let seen = reported_labels(&n);

    a.kill();
    eventually(Duration::from_secs(15), "n4 away", || async {
        !b.reachable("n4").await
    })
    .await;
    let (s, n) = b
        .post(&format!("{NODES}/n4/approve"), json!({ "labels": seen }))
        .await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["state"], "approved", "{n}");
    assert_eq!(n["labels"], web, "{n}");

    let _back = AgentProc::run_with(&dir, &["--label", "role=db"]);
    let db = json!({"role": "db"});
    reports(&b, "n4", &db).await;
    let n = node(&b, "n4").await;
    assert_eq!(n["state"], "provisioned", "{n}");
    assert_eq!(n["labels"], web, "taken without an approval: {n}");
    assert_eq!(n["agent_labels_pending"], db, "{n}");
    selects_nothing(&b, "role=db").await;
}

/// (b) Disabled, then enabled: the node is `approved` again, and what its
/// agent reports on its next connection waits.
#[tokio::test(flavor = "multi_thread")]
async fn labels_reported_after_disable_and_enable_wait() {
    let b = Bastion::start(BastionOpts::default()).await;
    // Auto-approved: the token is the approval of its first report.
    let mut a = b.agent_with("n2", &["--label", "role=web"]).await;
    let web = json!({"role": "web"});
    reports(&b, "n2", &web).await;
    assert_eq!(node(&b, "n2").await["labels"], web);

    a.kill();
    for step in ["disable", "enable"] {
        let (s, v) = b.post(&format!("{NODES}/n2/{step}"), json!({})).await;
        assert_eq!(s, 200, "{step}: {v}");
    }
    assert_eq!(node(&b, "n2").await["state"], "approved");
    let _back = AgentProc::run_with(
        &a.data_dir,
        &["--label", "role=db", "--label", "tier=payments"],
    );
    let claimed = json!({"role": "db", "tier": "payments"});
    reports(&b, "n2", &claimed).await;
    let n = node(&b, "n2").await;
    assert_eq!(n["labels"], web, "taken without an approval: {n}");
    assert_eq!(n["agent_labels_pending"], claimed, "{n}");
    selects_nothing(&b, "role=db").await;
}

/// (c) The approver saw one change; the node swapped it before the click.
/// The approval names what was seen, so it is refused, saying what the agent
/// reports now; approving that, named, takes it.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_takes_only_the_labels_the_approver_saw() {
    let b = Bastion::start(BastionOpts::default()).await;
    let mut a = b.agent_with("n2", &["--label", "role=db"]).await;
    let db = json!({"role": "db"});
    reports(&b, "n2", &db).await;
    a.kill();
    let mut second = AgentProc::run_with(&a.data_dir, &["--label", "role=web"]);
    reports(&b, "n2", &json!({"role": "web"})).await;
    let seen = reported_labels(&node(&b, "n2").await);

    second.kill();
    let _third = AgentProc::run_with(
        &a.data_dir,
        &["--label", "role=db", "--label", "tier=payments"],
    );
    let swapped = json!({"role": "db", "tier": "payments"});
    reports(&b, "n2", &swapped).await;
    let approve = format!("{NODES}/n2/approve");
    let (s, v) = b.post(&approve, json!({ "labels": seen })).await;
    assert_eq!(s, 409, "approved what the approver never saw: {v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("role=db,tier=payments"), "{m}");
    let n = node(&b, "n2").await;
    assert_eq!(n["labels"], db, "{n}");
    assert_eq!(n["agent_labels_pending"], swapped, "{n}");
    selects_nothing(&b, "tier=payments").await;

    let (s, n) = b.post(&approve, json!({ "labels": swapped })).await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["labels"], swapped, "{n}");
    let r = b
        .execute(json!({"target_type": "selector", "selector": "tier=payments", "command": "true"}))
        .await;
    assert_eq!(r["target_nodes"], json!(["n2"]), "approved");
}

/// The CLI never approves labels nobody looked at (review 4): without
/// `--label`, a script is refused with the exact command that approves what the
/// node reports, and that command approves exactly those labels; a node that
/// swapped its labels since then is refused (409) and nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_approves_only_labels_a_person_named() {
    let b = Bastion::start(BastionOpts::default()).await;
    let t = b.enrollment(json!({})).await;
    let dir = b.dir.path().join("n7");
    let out = run_join(
        t["join_command"].as_str().unwrap(),
        &["--hostname", "n7", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = AgentProc::run_with(&dir, &["--label", "role=web"]);
    reports(&b, "n7", &json!({"role": "web"})).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(postern_tests::bin("postern"))
            .args(args)
            .args(["-p", "web", "-e", "eu-1"])
            .env("POSTERN_URL", format!("http://{}", b.api))
            .env("POSTERN_TOKEN", &b.token)
            .env("POSTERN_CONFIG_DIR", b.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // Piped: refused, with the command to run.
    let out = cli(&["nodes", "approve", "n7"]);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("postern nodes approve n7 -p web -e eu-1 --label role=web"),
        "{e}"
    );
    assert_eq!(node(&b, "n7").await["state"], "pending");
    // The listing's hint is that same command.
    let out = cli(&["nodes"]);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(e.contains("--label role=web"), "{e}");
    // The node swaps its labels after the person looked: the command refuses.
    a.stop();
    let mut a = AgentProc::run_with(&dir, &["--label", "role=db"]);
    reports(&b, "n7", &json!({"role": "db"})).await;
    let out = cli(&["nodes", "approve", "n7", "--label", "role=web"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = node(&b, "n7").await;
    assert_eq!(n["state"], "pending", "{n}");
    selects_nothing(&b, "role=db").await;
    // Named as seen now: approved, exactly those.
    let out = cli(&["nodes", "approve", "n7", "--label", "role=db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = node(&b, "n7").await;
    assert_eq!(n["agent_labels"], json!({"role": "db"}), "{n}");
    a.stop();
}
