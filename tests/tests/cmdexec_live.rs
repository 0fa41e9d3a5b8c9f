//! cmdexec's second generation end to end, with a real bastion, real agents and
//! real `/bin/sh`: live output as server-sent events, cancel, rate control
//! checked on the nodes, label selectors, and Idempotency-Key.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use postern_tests::sse::{self, Sse, output_of};
use postern_tests::{
    Bastion, BastionOpts, EXECUTE, eventually, exec_node, http, http_with, pid_alive,
};
use serde_json::{Value, json};

const EXECUTION: &str = "/cmdexec/v1/projects/web/edges/eu-1/execution";

fn kinds_of<'a>(events: &'a [Sse], host: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.data["hostname"] == host)
        .map(|e| e.event.as_str())
        .collect()
}

async fn events(b: &Bastion, exec_id: &str, last: Option<&str>) -> sse::SseReader {
    sse::open(
        b.api,
        &format!("{EXECUTION}/{exec_id}/events"),
        &b.token,
        last,
    )
    .await
    .unwrap()
}

/// A command that records, on the node, how many commands of the probe in
/// `dir` run at once (a counter under `flock`, one line in `dir/peaks` per
/// start), holding for `hold`.
fn concurrency_probe(dir: &Path, hold: &str) -> String {
    let d = dir.display();
    format!(
        "flock {d}/lock sh -c 'n=$(cat {d}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n; echo $n >> {d}/peaks'; \
         sleep {hold}; flock {d}/lock sh -c 'n=$(cat {d}/n); echo $((n-1)) > {d}/n'"
    )
}

/// What the probe recorded: the count of commands running at each start.
fn peaks(dir: &Path) -> Vec<u32> {
    lines_in(dir, "peaks")
        .iter()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn lines_in(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A bot with this role (in its project) and an API token of its.
async fn user(b: &Bastion, name: &str, role: Value) -> String {
    let project = role["project"].as_str().unwrap().to_string();
    let (s, v) = b
        .post(
            &format!("/api/v1/projects/{project}/bots"),
            json!({"name": name, "role": role["role"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    b.post(
        &format!("/api/v1/users/{name}/tokens"),
        json!({"ttl_seconds": 3600}),
    )
    .await
    .1["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Output is seen while the command runs, each node's events in order; a late
/// reader gets the same events replayed, and a reader resuming with
/// Last-Event-ID gets exactly what followed.
#[tokio::test(flavor = "multi_thread")]
async fn live_output_in_order_late_readers_and_resume() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let _c = b.agent("beta").await;
    b.enroll("gamma").await; // never connected: settled at submit

    let r = b
        .execute(json!({"target_type": "cluster",
            "command": "echo one; echo warn >&2; sleep 2; printf 'bin\\377\\000'; echo two; exit 4"}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    let mut live = events(&b, &exec_id, None).await;
    let started = Instant::now();
    let all = live.all(Duration::from_secs(30)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the stream lasts as long as the run"
    );
    assert_eq!(all.last().unwrap().event, "execution_finished");
    assert_eq!(all.last().unwrap().data["status"], "failed");
    assert_eq!(all.last().unwrap().data["node_counts"]["unreachable"], 1);
    let ids: Vec<i64> = all.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    assert_eq!(kinds_of(&all, "gamma"), ["node_finished"]);
    for h in ["alpha", "beta"] {
        let kinds = kinds_of(&all, h);
        assert_eq!(kinds.first(), Some(&"node_started"), "{h}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"node_finished"), "{h}: {kinds:?}");
        assert_eq!(output_of(&all, h, "stdout"), b"one\nbin\xff\0two\n");
        assert_eq!(output_of(&all, h, "stderr"), b"warn\n");
        let finished = all
            .iter()
            .find(|e| e.event == "node_finished" && e.data["hostname"] == h)
            .unwrap();
        assert_eq!(finished.data["status"], "failed");
        assert_eq!(finished.data["exit_code"], 4);
        // Live: "one" reached the reader while the command still slept.
        let one = all
            .iter()
            .find(|e| {
                e.event == "output" && e.data["hostname"] == h && e.data["stream"] == "stdout"
            })
            .unwrap();
        assert!(
            finished.at.duration_since(one.at) >= Duration::from_secs(1),
            "{h}: the first output came {:?} before the end",
            finished.at.duration_since(one.at)
        );
    }

    // A late reader: everything replayed, the same events, then the end.
    let replay = events(&b, &exec_id, None)
        .await
        .all(Duration::from_secs(10))
        .await;
    let key = |v: &[Sse]| {
        v.iter()
            .map(|e| (e.id, e.event.clone(), e.data.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&replay), key(&all));
    // Resume after the third event: exactly the rest.
    let third = ids[2].to_string();
    let rest = events(&b, &exec_id, Some(&third))
        .await
        .all(Duration::from_secs(10))
        .await;
    assert_eq!(key(&rest), key(&all[3..]));
    // Resuming after the last event of a finished execution (what EventSource
    // does once the stream ends) is told there is no more: 204, not a hang.
    let last = ids.last().unwrap().to_string();
    let e = sse::open(
        b.api,
        &format!("{EXECUTION}/{exec_id}/events"),
        &b.token,
        Some(&last),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 204);
    // The execution's own view agrees, and the seed's paths are unchanged.
    let done = b.finished(&exec_id, Duration::from_secs(5)).await;
    assert_eq!(exec_node(&done, "alpha")["exit_code"], 4);

    // Bad Last-Event-ID, unknown execution, another project's reader.
    for bad in ["x", "-1", "1.5", "99999999999999999999"] {
        let e = sse::open(
            b.api,
            &format!("{EXECUTION}/{exec_id}/events"),
            &b.token,
            Some(bad),
        )
        .await
        .unwrap_err();
        assert_eq!(e.0, 400, "{bad}: {e:?}");
        assert!(
            e.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Last-Event-ID")
        );
    }
    let e = sse::open(b.api, &format!("{EXECUTION}/nope/events"), &b.token, None)
        .await
        .unwrap_err();
    assert_eq!(e.0, 404);
    assert_eq!(
        b.post("/api/v1/projects", json!({"name": "other"})).await.0,
        201
    );
    let outsider = user(
        &b,
        "olga",
        json!({"role": "project_admin", "project": "other"}),
    )
    .await;
    let e = sse::open(
        b.api,
        &format!("{EXECUTION}/{exec_id}/events"),
        &outsider,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 404, "another project's execution is not found: {e:?}");
}

/// A reader that does not read holds up nothing: the execution finishes, and
/// when the reader resumes it is told it lagged and gets every event, in order.
/// Each user has a bounded number of streams.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_reader_lags_loses_nothing_and_streams_are_bounded_per_user() {
    // 256 KiB of live output per stream and node, of control bytes (six bytes
    // each once escaped in JSON): some 12 MB of events, more than the sockets
    // between a paused reader and the bastion hold.
    let b = Bastion::start(BastionOpts {
        extra_args: vec!["--exec-keep-bytes".into(), "262144".into()],
        ..BastionOpts::default()
    })
    .await;
    let hosts = ["alpha", "beta", "gamma", "delta"];
    let mut agents = Vec::new();
    for h in hosts {
        agents.push(b.agent(h).await);
    }
    let r = b
        .execute(json!({"target_type": "cluster",
            "command": "i=0; while [ $i -lt 64 ]; do head -c 4096 /dev/zero | tr '\\0' '\\1'; head -c 4096 /dev/zero | tr '\\0' '\\2' >&2; i=$((i+1)); done"}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    let mut paused = sse::open_with(
        b.api,
        &format!("{EXECUTION}/{exec_id}/events"),
        &b.token,
        None,
        Some(16 * 1024),
    )
    .await
    .unwrap();
    // The first event, then nothing read while the nodes run to their end: they
    // are not held up by the reader.
    let first = paused.next(Duration::from_secs(10)).await.unwrap();
    let done = b.finished(&exec_id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded");
    let mut all = vec![first];
    all.extend(paused.all(Duration::from_secs(30)).await);
    assert!(all.iter().any(|e| e.event == "lagged"), "told it lagged");
    for h in hosts {
        assert_eq!(output_of(&all, h, "stdout"), vec![1u8; 256 * 1024], "{h}");
        assert_eq!(output_of(&all, h, "stderr"), vec![2u8; 256 * 1024], "{h}");
        assert_eq!(kinds_of(&all, h).last(), Some(&"node_finished"));
    }
    assert_eq!(all.last().unwrap().event, "execution_finished");

    // Streams per user are bounded: the ninth open one is refused with 429;
    // another user is not locked out.
    let long = b
        .execute(json!({"target": ["alpha"], "target_type": "node", "command": "sleep 20"}))
        .await;
    let long_id = long["exec_id"].as_str().unwrap();
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(events(&b, long_id, None).await);
    }
    let e = sse::open(
        b.api,
        &format!("{EXECUTION}/{long_id}/events"),
        &b.token,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 429, "{e:?}");
    let other = user(&b, "oscar", json!({"role": "read_only", "project": "web"})).await;
    let mut theirs = sse::open(
        b.api,
        &format!("{EXECUTION}/{long_id}/events"),
        &other,
        None,
    )
    .await
    .unwrap();
    // Access taken away ends what is open, not only what comes next.
    assert_eq!(b.delete("/api/v1/users/oscar").await.0, 204);
    let t = Instant::now();
    while theirs.next(Duration::from_secs(15)).await.is_some() {}
    assert!(t.elapsed() < Duration::from_secs(15), "the stream ended");
    drop(open);
    eventually(
        Duration::from_secs(5),
        "streams freed when closed",
        || async {
            sse::open(
                b.api,
                &format!("{EXECUTION}/{long_id}/events"),
                &b.token,
                None,
            )
            .await
            .is_ok()
        },
    )
    .await;
    let (s, v) = b
        .post(&format!("{EXECUTION}/{long_id}/cancel"), json!({}))
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelling")), "{v}");
}

/// Cancel mid-run kills the whole process group, a command that ignores
/// SIGTERM and its background child included; nodes waiting their turn never
/// start; a cancel after the end changes nothing. Audited; refused to readers.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_before_start_mid_run_and_after_finish() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let _c = b.agent("beta").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();

    // Mid-run, on both nodes: TERM is ignored, so KILL after the grace.
    let r = b
        .execute(json!({"target_type": "cluster",
            "command": format!("trap '' TERM; sleep 300 & echo $! > $(mktemp -p {d} pid.XXXXXX); echo running; wait")}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "both commands running", || async {
        std::fs::read_dir(dir.path()).unwrap().count() == 2
    })
    .await;
    let (s, v) = b
        .post(&format!("{EXECUTION}/{exec_id}/cancel"), json!({}))
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelling")), "{v}");
    let done = b.finished(&exec_id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "cancelled");
    for h in ["alpha", "beta"] {
        let n = exec_node(&done, h);
        assert_eq!(n["status"], "cancelled", "{n}");
        assert!(n["error"].as_str().unwrap().contains("SIGKILL"), "{n}");
        assert_eq!(n["stdout"], "running\n");
    }
    assert_eq!(done["node_counts"]["cancelled"], 2);
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let pid = std::fs::read_to_string(f.unwrap().path()).unwrap();
        eventually(
            Duration::from_secs(3),
            "the background child gone",
            || async { !pid_alive(&pid) },
        )
        .await;
    }
    let audited = b.audit("cmdexec.cancel").await;
    assert!(
        audited
            .iter()
            .any(|e| e["exec_id"] == exec_id.as_str() && e["actor"] == "admin")
    );
    // The stream says so too.
    let evs = events(&b, &exec_id, None)
        .await
        .all(Duration::from_secs(10))
        .await;
    assert_eq!(
        evs.iter()
            .filter(|e| e.event == "node_finished" && e.data["status"] == "cancelled")
            .count(),
        2
    );

    // Before start: one node at a time, so the second waits; cancel stops the
    // first (SIGTERM suffices for sleep) and the second never starts.
    let r = b
        .execute(json!({"target_type": "cluster", "max_concurrency": "1",
            "command": format!("echo ran >> {d}/ran; sleep 30")}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(10),
        "the first node running",
        || async { lines_in(dir.path(), "ran").len() == 1 },
    )
    .await;
    let (s, _) = b
        .post(&format!("{EXECUTION}/{exec_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200);
    let done = b.finished(&exec_id, Duration::from_secs(15)).await;
    let errors: Vec<&str> = done["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["error"].as_str().unwrap())
        .collect();
    assert!(
        errors.contains(&"cancelled before it started"),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("SIGTERM")), "{errors:?}");
    assert_eq!(
        lines_in(dir.path(), "ran").len(),
        1,
        "the second node never ran"
    );

    // After the end: nothing changes.
    let r = b
        .execute(json!({"target": ["alpha"], "target_type": "node", "command": "echo done"}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    let before = b.finished(&exec_id, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(5), "marked finished", || async {
        let (_, h) = b.get("/cmdexec/v1/projects/web/history/?limit=1").await;
        h["executions"][0]["finished_at"].is_string()
    })
    .await;
    let (s, v) = b
        .post(&format!("{EXECUTION}/{exec_id}/cancel"), json!({}))
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("finished")), "{v}");
    assert_eq!(
        b.finished(&exec_id, Duration::from_secs(5)).await["nodes"],
        before["nodes"]
    );

    // Who may not cancel, and what does not exist.
    let reader = user(&b, "rita", json!({"role": "read_only", "project": "web"})).await;
    let (s, _) = http(
        b.api,
        "POST",
        &format!("{EXECUTION}/{exec_id}/cancel"),
        Some(&reader),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    assert_eq!(
        b.post(&format!("{EXECUTION}/nope/cancel"), json!({}))
            .await
            .0,
        404
    );
}

/// `max_concurrency` is honoured where it matters, on the nodes (each command
/// records how many ran beside it); `max_errors` stops the rollout and the nodes
/// not started end as skipped.
#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_is_honoured_on_the_nodes_and_max_errors_stops_the_rollout() {
    let b = Bastion::start(BastionOpts::default()).await;
    let mut agents = Vec::new();
    for h in ["n1", "n2", "n3", "n4", "n5"] {
        agents.push(b.agent(h).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cmd = concurrency_probe(dir.path(), "0.7");
    let r = b
        .execute(json!({"target_type": "cluster", "max_concurrency": "40%", "command": cmd}))
        .await;
    assert_eq!(r["max_concurrency"], 2, "40% of 5, rounded up");
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "succeeded");
    let peaks = peaks(dir.path());
    assert_eq!(peaks.len(), 5);
    assert_eq!(
        peaks.iter().max(),
        Some(&2),
        "never more than two at once: {peaks:?}"
    );

    // max_errors 1, one at a time: the second failure stops it.
    let r = b
        .execute(
            json!({"target_type": "cluster", "max_concurrency": 1, "max_errors": "1",
            "command": format!("echo x >> {d}/tried; exit 1")}),
        )
        .await;
    assert_eq!(
        (r["max_concurrency"].as_i64(), r["max_errors"].as_i64()),
        (Some(1), Some(1))
    );
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(
        lines_in(dir.path(), "tried").len(),
        2,
        "ran on two nodes only"
    );
    assert_eq!(done["node_counts"]["failed"], 2);
    assert_eq!(done["node_counts"]["skipped"], 3);
    let skipped = done["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["status"] == "skipped")
        .unwrap();
    assert!(
        skipped["error"]
            .as_str()
            .unwrap()
            .contains("max_errors (1)"),
        "{skipped}"
    );

    // Defaults keep today's behaviour: all at once, no stop.
    let r = b
        .execute(json!({"target_type": "cluster", "command": "exit 1"}))
        .await;
    assert!(
        r.get("max_concurrency").is_none() && r.get("max_errors").is_none(),
        "{r}"
    );
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["node_counts"]["failed"], 5);
}

/// Nodes are picked by label: the agent's own (`--label`) and those a project
/// admin sets, which win on a key. Bad selectors and labels are refused with
/// where and why, and nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn selectors_pick_nodes_by_label() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b
        .agent_with("db-a", &["--label", "role=db", "--label", "zone=a"])
        .await;
    let _c = b
        .agent_with("db-b", &["--label", "role=db", "--label", "zone=b"])
        .await;
    let _d = b
        .agent_with(
            "db-c",
            &[
                "--label",
                "role=db",
                "--label",
                "zone=a",
                "--label",
                "canary=true",
            ],
        )
        .await;
    let _e = b.agent_with("web-1", &["--label", "role=web"]).await;
    let nodes = "/api/v1/projects/web/edges/eu-1/nodes";
    eventually(Duration::from_secs(10), "labels recorded", || async {
        let (_, n) = b.get(&format!("{nodes}/db-c")).await;
        n["labels"]["canary"] == "true"
    })
    .await;

    let r = b
        .execute(
            json!({"target_type": "selector", "selector": " role = db , zone in (b,a), !canary ",
            "command": "echo hi"}),
        )
        .await;
    assert_eq!(r["target_nodes"], json!(["db-a", "db-b"]));
    assert_eq!(r["selector"], "role=db,zone in (a,b),!canary");
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(15))
        .await;
    assert_eq!(done["nodes_total"], 2);
    assert_eq!(done["target_type"], "selector");

    // A project admin's label wins over the agent's on the same key.
    let (s, n) = b
        .put(
            &format!("{nodes}/web-1/labels"),
            json!({"labels": {"role": "db", "tier": "edge"}}),
        )
        .await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["labels"], json!({"role": "db", "tier": "edge"}));
    assert_eq!(n["agent_labels"], json!({"role": "web"}));
    let r = b
        .execute(json!({"target_type": "selector", "selector": "role notin (web),tier", "command": "true"}))
        .await;
    assert_eq!(r["target_nodes"], json!(["web-1"]));

    // Refused, with where and why; nothing runs.
    let (_, before) = b.get("/cmdexec/v1/projects/web/history/?limit=1").await;
    let refused = |body: Value| {
        let b = &b;
        async move {
            let (s, v) = b.post(EXECUTE, body.clone()).await;
            assert_eq!(s, 400, "{body}: {v}");
            v["error"]["message"].as_str().unwrap().to_string()
        }
    };
    let m = refused(
        json!({"target_type": "selector", "selector": "role=db,,zone=a", "command": "true"}),
    )
    .await;
    assert!(m.contains("position 8"), "{m}");
    let m = refused(json!({"target_type": "selector", "selector": "role > 3", "command": "true"}))
        .await;
    assert!(m.contains("position"), "{m}");
    let m =
        refused(json!({"target_type": "selector", "selector": "role=cache", "command": "true"}))
            .await;
    assert!(m.contains("matches no node"), "{m}");
    let m = refused(
        json!({"target_type": "selector", "selector": "a=b,".repeat(1200), "command": "true"}),
    )
    .await;
    assert!(m.contains("4096"), "{m}");
    refused(json!({"target_type": "selector", "command": "true"})).await;
    refused(json!({"target_type": "cluster", "selector": "role=db", "command": "true"})).await;
    refused(json!({"target_type": "selector", "selector": "role=db", "target": ["db-a"], "command": "true"})).await;
    let (_, after) = b.get("/cmdexec/v1/projects/web/history/?limit=1").await;
    assert_eq!(before["total"], after["total"], "nothing was run");
    let rejected = b
        .audit("api POST /cmdexec/v1/projects/{project}/edges/{edge}/execute/")
        .await;
    assert!(
        rejected
            .iter()
            .filter(|e| e["outcome"] == "rejected")
            .count()
            >= 7
    );

    // Labels that are not labels, too many, and a caller who may not set them.
    for bad in [
        json!({"labels": {"has space": "x"}}),
        json!({"labels": {"k": "v".repeat(64)}}),
        json!({"labels": {"-k": "v"}}),
        json!({"labels": (0..65).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
        json!({"labels": {"k": "v"}, "extra": 1}),
        json!({"labels": ["k"]}),
    ] {
        let (s, v) = b.put(&format!("{nodes}/db-a/labels"), bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    assert_eq!(
        b.put(&format!("{nodes}/nope/labels"), json!({"labels": {}}))
            .await
            .0,
        404
    );
    let reader = user(&b, "rudy", json!({"role": "read_only", "project": "web"})).await;
    let (s, _) = http(
        b.api,
        "PUT",
        &format!("{nodes}/db-a/labels"),
        Some(&reader),
        Some(json!({"labels": {}})),
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    let (_, n) = b.get(&format!("{nodes}/db-a")).await;
    assert_eq!(n["labels"], json!({"role": "db", "zone": "a"}), "unchanged");

    // A node that reports other labels once approved does not move itself into
    // a selector's targets: the change waits for a project admin's approval.
    let mut a = _a;
    a.kill();
    let _a2 = postern_tests::AgentProc::run_with(&a.data_dir, &["--label", "team=blue"]);
    eventually(Duration::from_secs(15), "the change held", || async {
        let (_, n) = b.get(&format!("{nodes}/db-a")).await;
        n["agent_labels_pending"] == json!({"team": "blue"})
    })
    .await;
    let (_, n) = b.get(&format!("{nodes}/db-a")).await;
    assert_eq!(n["labels"], json!({"role": "db", "zone": "a"}), "{n}");
    let mut held = false;
    for offset in (0..1000).step_by(100) {
        let (_, page) = b
            .get(&format!("/api/v1/audit?limit=100&offset={offset}"))
            .await;
        held |= page["entries"].as_array().unwrap().iter().any(|e| {
            e["action"] == "node.labels_held" && e["detail"]["reported"] == json!({"team": "blue"})
        });
    }
    assert!(held, "the held change is audited");
    let blue = json!({"target_type": "selector", "selector": "team=blue", "command": "true"});
    let (s, v) = b.post(EXECUTE, blue.clone()).await;
    assert_eq!(s, 400, "db-a's own claim is not used yet: {v}");
    // Approving names the labels approved: without them, nothing is taken.
    let (s, n) = b.post(&format!("{nodes}/db-a/approve"), json!({})).await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["labels"], json!({"role": "db", "zone": "a"}), "{n}");
    let (s, n) = b
        .post(
            &format!("{nodes}/db-a/approve"),
            json!({"labels": {"team": "blue"}}),
        )
        .await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["labels"], json!({"team": "blue"}));
    assert!(n["agent_labels_pending"].is_null(), "{n}");
    let r = b.execute(blue).await;
    assert_eq!(r["target_nodes"], json!(["db-a"]), "approved");
}

/// The same request with the same Idempotency-Key runs once and answers the
/// first execution; the key with another request is refused; bad keys too.
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_run_a_request_once() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"target": ["alpha"], "target_type": "node",
        "command": format!("echo x >> {}/ran", dir.path().display())});
    let post = |key: &'static str, body: Value| {
        let b = &b;
        async move {
            http_with(
                b.api,
                "POST",
                EXECUTE,
                Some(&b.token),
                &[("idempotency-key", key)],
                Some(("application/json", body.to_string().into())),
            )
            .await
            .unwrap()
        }
    };
    let (s1, h1, first) = post("deploy-42", body.clone()).await;
    assert_eq!(s1, 202, "{first}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, second) = post("deploy-42", body.clone()).await;
    assert_eq!(s2, 202, "{second}");
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(second["exec_id"], first["exec_id"]);
    assert_eq!(second["target_nodes"], first["target_nodes"]);
    b.finished(first["exec_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    let (_, _, third) = post("deploy-42", body.clone()).await;
    assert_eq!(third["exec_id"], first["exec_id"]);
    assert_eq!(lines_in(dir.path(), "ran").len(), 1, "ran once");

    // The same key for another request: refused, nothing runs.
    let mut other = body.clone();
    other["timeout"] = json!(30);
    let (s, _, v) = post("deploy-42", other).await;
    assert_eq!(s, 422, "{v}");
    // A new key runs again.
    let (s, _, v) = post("deploy-43", body.clone()).await;
    assert_eq!(s, 202);
    assert_ne!(v["exec_id"], first["exec_id"]);
    // Keys that are not keys.
    let long = "k".repeat(256);
    for bad in ["has space", "", long.as_str(), "tab\there"] {
        let (s, _, v) = http_with(
            b.api,
            "POST",
            EXECUTE,
            Some(&b.token),
            &[("idempotency-key", bad)],
            Some(("application/json", body.to_string().into())),
        )
        .await
        .unwrap();
        assert_eq!(s, 400, "{bad:?}: {v}");
    }
    b.finished(v["exec_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(lines_in(dir.path(), "ran").len(), 2);
}

/// Every bad form of the new inputs is refused with a 400 that names the
/// field, nothing runs, and the refusal is audited.
#[tokio::test(flavor = "multi_thread")]
async fn bad_rates_are_refused_and_nothing_runs() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!("echo x >> {}/ran", dir.path().display());
    for (field, v) in [
        ("max_concurrency", json!("0")),
        ("max_concurrency", json!(0)),
        ("max_concurrency", json!("-1")),
        ("max_concurrency", json!(-3)),
        ("max_concurrency", json!("101%")),
        ("max_concurrency", json!("0%")),
        ("max_concurrency", json!("ten")),
        ("max_concurrency", json!(1.5)),
        ("max_concurrency", json!("")),
        ("max_concurrency", json!("9999999999")),
        ("max_errors", json!("-1")),
        ("max_errors", json!("150%")),
        ("max_errors", json!("5%%")),
        ("max_errors", json!(true)),
        ("max_errors", json!({"n": 1})),
    ] {
        let mut body = json!({"target_type": "cluster", "command": cmd});
        body[field] = v.clone();
        let (s, r) = b.post(EXECUTE, body).await;
        assert_eq!(s, 400, "{field}={v}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(field),
            "{field}={v}: {r}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lines_in(dir.path(), "ran").is_empty(), "nothing ran");
    let (_, h) = b.get("/cmdexec/v1/projects/web/history/").await;
    assert_eq!(h["total"], 0);
    // Audited, and found with the audit's filters.
    let (s, page) = b
        .get("/api/v1/audit?action=api%20POST%20/cmdexec/*&outcome=rejected&actor=admin&since=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["total"], 15, "{page}");
    for bad in [
        "since=yesterday",
        "action=a*b*",
        "outcome=",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        "colour=red",
    ] {
        let (s, v) = b.get(&format!("/api/v1/audit?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
}

/// A cancel that could not reach the node (its link died without a word) is
/// sent again once the agent is back, and the command is stopped; it is not
/// left to run to its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_lost_on_a_dead_link_is_sent_again_after_the_reconnect() {
    let b = Bastion::start(BastionOpts::default()).await;
    let dir = b.enroll("far").await;
    let proxy = postern_tests::proxy::TcpProxy::start(b.agent).await;
    let meta = dir.join("agent.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    let text = text.replace(
        &format!("https://{}", b.agent),
        &format!("https://{}", proxy.addr),
    );
    std::fs::write(&meta, text).unwrap();
    let _a = postern_tests::AgentProc::run_with(
        &dir,
        &["--keepalive-interval", "1s", "--keepalive-timeout", "2s"],
    );
    eventually(Duration::from_secs(15), "far reachable", || {
        b.reachable("far")
    })
    .await;
    let r = b
        .execute(
            json!({"target": ["far"], "target_type": "node", "command": "echo started; sleep 60"}),
        )
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    let mut live = events(&b, &exec_id, None).await;
    while live.next(Duration::from_secs(10)).await.unwrap().event != "output" {}
    // The link goes silent; the cancel's first attempt cannot arrive.
    proxy.freeze();
    let (s, v) = b
        .post(&format!("{EXECUTION}/{exec_id}/cancel"), json!({}))
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelling")), "{v}");

    let done = b.finished(&exec_id, Duration::from_secs(45)).await;
    let n = exec_node(&done, "far");
    assert_eq!(n["status"], "cancelled", "{n}");
}

/// A bastion killed while a rollout waits for slots resumes it within the same
/// `max_concurrency`, checked on the nodes, and runs nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_holds_across_a_bastion_crash() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let mut agents = Vec::new();
    for h in ["n1", "n2", "n3", "n4", "n5"] {
        agents.push(b.agent(h).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let cmd = concurrency_probe(dir.path(), "3");
    let r = b
        .execute(json!({"target_type": "cluster", "max_concurrency": "2", "command": cmd}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "two nodes running", || async {
        lines_in(dir.path(), "peaks").len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.kill();
    b.restart().await;
    let done = b.finished(&exec_id, Duration::from_secs(60)).await;
    assert_eq!(done["node_counts"]["succeeded"], 5, "{done}");
    let peaks = peaks(dir.path());
    assert_eq!(peaks.len(), 5, "each node ran once: {peaks:?}");
    assert!(
        peaks.iter().all(|&p| p <= 2),
        "never more than two at once: {peaks:?}"
    );
}
