//! cmdexec end to end: real bastion, real agents, real `/bin/sh`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use postern_tests::{
    Bastion, BastionOpts, EXECUTE as EXEC, eventually, exec_node, pid_alive, postgres_url,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_stderr_scripts_and_clusters() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let _c = b.agent("beta").await;
    b.enroll("gamma").await; // enrolled, approved, never connected

    // Exit codes and stderr, per node.
    let r = b.execute(json!({"target": ["alpha", "beta"], "target_type": "node",
        "command": "echo out-$(cat /proc/sys/kernel/hostname >/dev/null; echo ok); echo err >&2; exit 3"})).await;
    assert_eq!(r["target_nodes"], json!(["alpha", "beta"]));
    assert_eq!(r["username"], "admin");
    assert_eq!(r["timeout"], 60);
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(15))
        .await;
    assert_eq!(done["status"], "failed");
    for h in ["alpha", "beta"] {
        let n = exec_node(&done, h);
        assert_eq!(
            (n["status"].as_str(), n["exit_code"].as_i64()),
            (Some("failed"), Some(3)),
            "{n}"
        );
        assert_eq!(n["stdout"], "out-ok\n");
        assert_eq!(n["stderr"], "err\n");
        assert!(n["started_at"].is_string() && n["finished_at"].is_string());
    }

    // A whole script, base64, run as one program.
    let script = "#!/bin/sh\nset -e\nf() { echo \"in function $1\"; }\nf one\nfor i in 1 2 3; do printf %s $i; done\necho\n";
    let b64 = base64_encode(script.as_bytes());
    let r = b.execute(json!({"target": ["alpha"], "target_type": "node", "command": b64, "content_type": "base64"})).await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(15))
        .await;
    let n = exec_node(&done, "alpha");
    assert_eq!(
        (n["status"].as_str(), n["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(n["stdout"], "in function one\n123\n");

    // The whole cluster: connected nodes run, the absent one is settled at once.
    let r = b
        .execute(json!({"target_type": "cluster", "command": "true"}))
        .await;
    assert_eq!(r["target_nodes"], json!(["alpha", "beta"]));
    assert_eq!(r["unreachable_nodes"], json!(["gamma"]));
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(15))
        .await;
    assert_eq!(exec_node(&done, "gamma")["status"], "unreachable");
    assert_eq!(exec_node(&done, "alpha")["status"], "succeeded");

    // Audit: the request and the responses. The responses entry is appended just
    // after the last result is stored, so it may trail the status by a moment.
    let of_this = |entries: Vec<Value>| entries.into_iter().find(|e| e["exec_id"] == r["exec_id"]);
    let exec = of_this(b.audit("cmdexec.execute").await).unwrap();
    assert_eq!(exec["actor"], "admin");
    assert_eq!(exec["source_ip"], "127.0.0.1");
    assert_eq!(exec["detail"]["command"], "true");
    eventually(
        Duration::from_secs(5),
        "the cmdexec.result audit entry",
        || async { of_this(b.audit("cmdexec.result").await).is_some() },
    )
    .await;
    let result = of_this(b.audit("cmdexec.result").await).unwrap();
    assert_eq!(result["detail"]["responses"].as_array().unwrap().len(), 3);
}

/// Output is bytes. On PostgreSQL (which refuses NUL in text), one node whose
/// output holds a NUL and bytes that are not UTF-8 must not fail the other nodes'
/// results written in the same batch, nor lose its own: every result is stored,
/// the execution finishes, the agents drop their spools, and the binary output
/// comes back byte for byte (base64, as `stdout_encoding` says).
#[tokio::test(flavor = "multi_thread")]
async fn binary_output_round_trips_and_fails_no_neighbour_on_postgres() {
    let b = Bastion::start(BastionOpts {
        database_url: Some(postgres_url()),
        ..BastionOpts::default()
    })
    .await;
    let agents = [
        b.agent("alpha").await,
        b.agent("beta").await,
        b.agent("gamma").await,
    ];
    let r = b
        .execute(json!({"target_type": "cluster",
        "command": "printf 'a\\000b\\377\\376'; printf 'err\\000' >&2"}))
        .await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for h in ["alpha", "beta", "gamma"] {
        let n = exec_node(&done, h);
        assert_eq!(n["stdout_encoding"], "base64", "{n}");
        assert_eq!(n["stdout"], base64_encode(b"a\0b\xff\xfe"), "{n}");
        assert_eq!(n["stderr_encoding"], "utf-8", "NUL is valid UTF-8: {n}");
        assert_eq!(n["stderr"], "err\u{0}");
        assert_eq!(n["stdout_bytes"], 5);
    }
    for a in &agents {
        let spool = a.data_dir.join("spool");
        eventually(Duration::from_secs(5), "spools emptied", || async {
            std::fs::read_dir(&spool)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .all(|e| !e.file_name().to_string_lossy().ends_with(".json"))
                })
                .unwrap_or(true)
        })
        .await;
    }
    let (s, h) = b.get("/cmdexec/v1/projects/web/history/").await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["executions"][0]["node_counts"]["succeeded"], 3, "{h}");
}

/// The largest output the bastion may keep (1 MiB per stream), all control
/// bytes, still fits the channel's answer: escaped as JSON text it was six times
/// larger, so above ~87 KiB kept the result was refused and fetched again forever.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_kept_output_of_control_bytes_is_delivered() {
    let b = Bastion::start(BastionOpts {
        extra_args: vec!["--exec-keep-bytes".into(), "1048576".into()],
        ..BastionOpts::default()
    })
    .await;
    let _a = b.agent("alpha").await;
    let r = b.execute(json!({"target": ["alpha"], "target_type": "node",
        "command": "head -c 3000000 /dev/zero | tr '\\000' '\\001'; head -c 3000000 /dev/zero | tr '\\000' '\\002' >&2"})).await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    let n = exec_node(&done, "alpha");
    assert_eq!(n["status"], "succeeded", "{}", n["error"]);
    assert_eq!(
        (n["stdout_bytes"].as_u64(), n["stderr_bytes"].as_u64()),
        (Some(3_000_000), Some(3_000_000))
    );
    assert_eq!(n["stdout_truncated"], true);
    let kept = n["stdout"].as_str().unwrap();
    assert!(
        kept.len() > 1_000_000 && kept.starts_with('\u{1}'),
        "{} bytes kept",
        kept.len()
    );
    // An out-of-range setting is refused at start, not clamped silently.
    let out = std::process::Command::new(postern_tests::bin("postern-bastion"))
        .args(["serve", "--exec-keep-bytes", "2000000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exec-keep-bytes"));
}

/// An execution's nodes come in pages, so one answer's memory is bounded
/// whatever the fan-out; every node is counted on every page.
#[tokio::test(flavor = "multi_thread")]
async fn execution_nodes_are_paged() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _agents = [
        b.agent("n1").await,
        b.agent("n2").await,
        b.agent("n3").await,
    ];
    let r = b
        .execute(json!({"target_type": "cluster", "command": "echo hi"}))
        .await;
    let id = r["exec_id"].as_str().unwrap();
    b.finished(id, Duration::from_secs(15)).await;
    let path = format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{id}/");
    let (s, p1) = b.get(&format!("{path}?node_limit=2")).await;
    assert_eq!(s, 200, "{p1}");
    let hosts = |v: &Value| -> Vec<String> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["hostname"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hosts(&p1), ["n1", "n2"]);
    assert_eq!(
        (p1["nodes_total"].as_i64(), p1["next_node_offset"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(p1["node_counts"]["succeeded"], 3);
    let (_, p2) = b.get(&format!("{path}?node_limit=2&node_offset=2")).await;
    assert_eq!(hosts(&p2), ["n3"]);
    assert!(p2["next_node_offset"].is_null());
    assert_eq!(p2["status"], "succeeded");
    for q in [
        "node_limit=0",
        "node_limit=1001",
        "node_offset=-1",
        "node_limit=x",
        "limit=5",
    ] {
        let (s, v) = b.get(&format!("{path}?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_the_whole_process_group() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let pidfile = b.dir.path().join("stubborn.pid");
    // A child that ignores SIGTERM, in the background, and a shell that waits for it.
    let cmd = format!(
        "sh -c 'trap \"\" TERM; exec sleep 300' & echo $! > {}; wait",
        pidfile.display()
    );
    let r = b
        .execute(json!({"target": ["alpha"], "target_type": "node", "command": cmd, "timeout": 2}))
        .await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    let n = exec_node(&done, "alpha");
    assert_eq!(n["status"], "timed_out", "{n}");
    assert!(n["error"].as_str().unwrap().contains("2s timeout"));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // SIGKILL is delivered asynchronously; give the kernel a moment to finish it.
    eventually(
        Duration::from_secs(3),
        "the SIGTERM-ignoring child is gone",
        || async { !pid_alive(&pid) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabytes_of_output_are_trimmed_with_bounded_memory() {
    let b = Bastion::start(BastionOpts::default()).await;
    let a = b.agent("chatty").await;
    let r = b.execute(json!({"target": ["chatty"], "target_type": "node",
        "command": "echo FIRST-LINE; head -c 50000000 /dev/zero | tr '\\000' x; echo; echo LAST-LINE >&1; echo oops >&2"})).await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    let n = exec_node(&done, "chatty");
    assert_eq!(n["status"], "succeeded", "{n}");
    assert_eq!(n["stdout_truncated"], true);
    let total = "FIRST-LINE\n".len() as u64 + 50_000_000 + 1 + "LAST-LINE\n".len() as u64;
    assert_eq!(n["stdout_bytes"].as_u64(), Some(total));
    let out = n["stdout"].as_str().unwrap();
    assert!(out.starts_with("FIRST-LINE\nxxx") && out.ends_with("xxx\nLAST-LINE\n"));
    assert!(out.len() < 70_000, "kept {} bytes", out.len());
    assert_eq!(n["stderr"], "oops\n");
    assert_eq!(n["stdout_sha256"].as_str().unwrap().len(), 64);
    // Neither side held the output: peak RSS stays far below 50 MB.
    let hwm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap()
    };
    assert!(hwm(a.pid()) < 40_000, "agent peak RSS {} KiB", hwm(a.pid()));
    assert!(
        hwm(b.pid().unwrap()) < 60_000,
        "bastion peak RSS {} KiB",
        hwm(b.pid().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_nothing_runs() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let marker = b.dir.path().join("ran");
    let cmd = format!("touch {}", marker.display());
    b.create_edge("web", "us-1").await;
    let cases = [
        (
            json!({"target": ["alpha", "ghost"], "target_type": "node", "command": cmd}),
            400,
            "ghost",
        ),
        (
            json!({"target": ["alpha"], "target_type": "cluster", "command": cmd}),
            400,
            "absent or null",
        ),
        (
            json!({"target_type": "node", "command": cmd}),
            400,
            "needs target",
        ),
        (
            json!({"target": [], "target_type": "node", "command": cmd}),
            400,
            "1 to",
        ),
        (
            json!({"target": ["alpha"], "target_type": "node", "command": cmd, "timeout": 0}),
            400,
            "timeout must be between 1 and 3600",
        ),
        (
            json!({"target": ["alpha"], "target_type": "node", "command": cmd, "timeout": 3601}),
            400,
            "timeout",
        ),
        (
            json!({"target": ["alpha"], "target_type": "node", "command": "%%%", "content_type": "base64"}),
            400,
            "not valid base64",
        ),
        (
            json!({"target": ["alpha"], "target_type": "node", "command": cmd, "colour": "red"}),
            400,
            "unknown field",
        ),
        (
            json!({"target": ["alpha"], "target_type": "everything", "command": cmd}),
            400,
            "unknown variant",
        ),
        (
            json!({"target": ["alpha"], "target_type": "node", "command": "  "}),
            400,
            "empty",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, v) = b.post(EXEC, body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    // A node of another edge is unknown in this one.
    let (s, v) = b
        .post(
            "/cmdexec/v1/projects/web/edges/us-1/execute",
            json!({"target": ["alpha"], "target_type": "node", "command": cmd}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // Oversized: more than the body limit.
    let huge = "x".repeat(1_600_000);
    let (s, v) = b
        .post(
            EXEC,
            json!({"target": ["alpha"], "target_type": "node", "command": huge}),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    // Malformed JSON, and a body that is not JSON at all.
    let malformed = Some((
        "application/json",
        bytes::Bytes::from_static(b"{\"target_type\": \"cluster\", \"command\": "),
    ));
    let (s, v) = postern_tests::http_raw(b.api, "POST", EXEC, Some(&b.token), malformed)
        .await
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"),
        "{v}"
    );
    let text = Some(("text/plain", bytes::Bytes::from_static(b"touch /tmp/pwned")));
    let (s, v) = postern_tests::http_raw(b.api, "POST", EXEC, Some(&b.token), text)
        .await
        .unwrap();
    assert_eq!(s, 415, "{v}");
    // A project of another org, an unknown edge, and an unknown execution.
    assert_eq!(
        b.post(
            "/cmdexec/v1/projects/nope/edges/eu-1/execute/",
            json!({"target_type": "cluster", "command": "true"})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        b.post(
            "/cmdexec/v1/projects/web/edges/nope/execute/",
            json!({"target_type": "cluster", "command": "true"})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        b.get(
            "/cmdexec/v1/projects/web/edges/eu-1/execution/01a00000-0000-7000-8000-000000000000/"
        )
        .await
        .0,
        404
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!marker.exists(), "a refused request ran its command");
    let (_, h) = b.get("/cmdexec/v1/projects/web/history/").await;
    assert_eq!(h["total"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_newest_first() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let mut ids = vec![];
    for i in 0..12 {
        let r = b
            .execute(
                json!({"target": ["alpha"], "target_type": "node", "command": format!("echo {i}")}),
            )
            .await;
        ids.push(r["exec_id"].as_str().unwrap().to_string());
    }
    b.finished(ids.last().unwrap(), Duration::from_secs(15))
        .await;
    let (s, h) = b.get("/cmdexec/v1/projects/web/history/").await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            h["total"].as_i64(),
            h["limit"].as_i64(),
            h["offset"].as_i64()
        ),
        (Some(12), Some(10), Some(0))
    );
    let got: Vec<&str> = h["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["exec_id"].as_str().unwrap())
        .collect();
    let newest: Vec<&str> = ids.iter().rev().take(10).map(String::as_str).collect();
    assert_eq!(got, newest);
    let (_, h) = b
        .get("/cmdexec/v1/projects/web/history?limit=5&offset=10")
        .await;
    let got: Vec<&str> = h["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["exec_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[1].as_str(), ids[0].as_str()]);
    // History lists summaries: every node counted by state, no output (that is
    // in the execution), so a page costs the same whatever the fan-out.
    let first = &h["executions"][0];
    assert_eq!(first["node_counts"]["succeeded"], 1, "{first}");
    assert_eq!(first["nodes_total"], 1);
    assert_eq!(first["status"], "succeeded");
    assert!(first.get("nodes").is_none(), "{first}");
    for q in ["limit=0", "limit=101", "offset=-1", "limit=x"] {
        assert_eq!(
            b.get(&format!("/cmdexec/v1/projects/web/history/?{q}"))
                .await
                .0,
            400,
            "{q}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_org_admins_execute_and_readers_see_their_projects_only() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let make_user = |name: &'static str, role: Value| {
        let b = &b;
        async move {
            // A bot: people sign in; tokens are for automation.
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
    };
    let padmin = make_user("pat", json!({"role": "project_admin", "project": "web"})).await;
    let body = json!({"target": ["alpha"], "target_type": "node", "command": "true"});
    let (s, v) = postern_tests::http(b.api, "POST", EXEC, Some(&padmin), Some(body.clone()))
        .await
        .unwrap();
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not execute")
    );
    // Reads follow project roles.
    assert_eq!(
        postern_tests::http(
            b.api,
            "GET",
            "/cmdexec/v1/projects/web/history/",
            Some(&padmin),
            None
        )
        .await
        .unwrap()
        .0,
        200
    );
    assert_eq!(
        b.post("/api/v1/projects", json!({"name": "other"})).await.0,
        201
    );
    assert_eq!(
        postern_tests::http(
            b.api,
            "GET",
            "/cmdexec/v1/projects/other/history/",
            Some(&padmin),
            None
        )
        .await
        .unwrap()
        .0,
        404
    );
    // Another org's admin cannot see this org's project at all, and vice versa.
    let out = std::process::Command::new(postern_tests::bin("postern-bastion"))
        .args(["init", "--org", "globex", "--admin", "eve", "--data-dir"])
        .arg(b.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eve = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (s, v) = postern_tests::http(b.api, "POST", EXEC, Some(&eve), Some(body.clone()))
        .await
        .unwrap();
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("project \"web\" not found")
    );
    assert_eq!(
        postern_tests::http(
            b.api,
            "GET",
            "/cmdexec/v1/projects/web/history/",
            Some(&eve),
            None
        )
        .await
        .unwrap()
        .0,
        404
    );
    assert_eq!(
        postern_tests::http(
            b.api,
            "POST",
            "/api/v1/projects",
            Some(&eve),
            Some(json!({"name": "secret"}))
        )
        .await
        .unwrap()
        .0,
        201
    );
    assert_eq!(b.get("/cmdexec/v1/projects/secret/history/").await.0, 404);
    // The denial is audited.
    let (_, audit) = b.get("/api/v1/audit?limit=20").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "pat" && e["outcome"] == "denied")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_produced_while_the_bastion_is_down_arrives_after_restart() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let counter = b.dir.path().join("runs");
    let cmd = format!("sleep 2; echo run >> {}; echo done", counter.display());
    let r = b
        .execute(json!({"target": ["alpha"], "target_type": "node", "command": cmd, "timeout": 30}))
        .await;
    let exec_id = r["exec_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.stop();
    // The command finishes while no bastion is there.
    eventually(Duration::from_secs(10), "command ran", || async {
        counter.exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.restart().await;
    let done = b.finished(&exec_id, Duration::from_secs(30)).await;
    let n = exec_node(&done, "alpha");
    assert_eq!(
        (n["status"].as_str(), n["stdout"].as_str()),
        (Some("succeeded"), Some("done\n")),
        "{n}"
    );
    // And it ran exactly once.
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
    // The agent was told to drop its spooled copy.
    let spool = b.dir.path().join("alpha").join("spool");
    eventually(Duration::from_secs(5), "spool emptied", || async {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
                    == 0
            })
            .unwrap_or(true)
    })
    .await;
}

/// The review's finding 8: a node sent its command just before its bastion
/// died, whose "started" write was lost with it, comes back as pending. It is
/// settled "not started" only once its agent said it never had the command:
/// here the command ran, in one execution past its timeout and in the other
/// past a max_errors stop, and both results are collected, each run once.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_pending_node_whose_command_ran_is_followed_not_settled_as_unstarted() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let _c = b.agent("beta").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let submitted = std::time::Instant::now();
    // Its timeout (5 s) has passed by the time the bastion is back.
    let late = b
        .execute(
            json!({"target": ["alpha"], "target_type": "node", "timeout": 5,
            "command": format!("echo x >> {d}/late; sleep 3; echo late-done")}),
        )
        .await;
    // The first node to run it fails at once, the other runs on: the rollout
    // has stopped (max_errors 0) when the bastion is back.
    let stop = b
        .execute(json!({"target": ["alpha", "beta"], "target_type": "node", "timeout": 60,
            "max_errors": 0,
            "command": format!("mkdir {d}/first 2>/dev/null && exit 1; echo x >> {d}/stop; sleep 3; echo stop-done")}))
        .await;
    let (late_id, stop_id) = (
        late["exec_id"].as_str().unwrap().to_string(),
        stop["exec_id"].as_str().unwrap().to_string(),
    );
    let stop_path =
        format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{stop_id}/?node_limit=10");
    eventually(
        Duration::from_secs(10),
        "both commands running, the failure stored",
        || async {
            let (_, v) = b.get(&stop_path).await;
            dir.path().join("late").exists()
                && dir.path().join("stop").exists()
                && v["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n["status"] == "failed"))
        },
    )
    .await;
    b.kill();

    // What a crash between sending and the "started" commit leaves: the
    // nodes still pending.
    let store = postern_bastion::store::Store::open_sqlite(&b.data_dir())
        .await
        .unwrap();
    let reset = sqlx::query(
        "UPDATE exec_results SET status = 'pending', started_at = NULL WHERE status = 'running'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(reset.rows_affected(), 2, "both commands were running");
    store.pool().close().await;
    drop(store);
    // Past the late one's timeout, both commands done on their nodes.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(submitted.elapsed())).await;
    b.restart().await;

    let done = b.finished(&late_id, Duration::from_secs(30)).await;
    let n = exec_node(&done, "alpha");
    assert_eq!(
        (n["status"].as_str(), n["stdout"].as_str()),
        (Some("succeeded"), Some("late-done\n")),
        "{n}"
    );
    let done = b.finished(&stop_id, Duration::from_secs(30)).await;
    assert_eq!(done["node_counts"]["failed"], 1, "{done}");
    assert_eq!(done["node_counts"]["succeeded"], 1, "{done}");
    assert_eq!(done["node_counts"]["skipped"], 0, "{done}");
    let ran_on = done["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["status"] == "succeeded")
        .unwrap();
    assert_eq!(ran_on["stdout"], "stop-done\n", "{ran_on}");
    // Each ran once: nothing was sent again.
    for f in ["late", "stop"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(f)).unwrap(),
            "x\n",
            "{f}"
        );
    }
}

/// A bastion that stopped between its last node's result and marking the
/// execution finished (a crash, a shutdown, a failed write): at its next start
/// the execution is finished and its stream ended, not left running with
/// nothing to resume.
#[tokio::test(flavor = "multi_thread")]
async fn an_execution_settled_but_not_finished_is_finished_at_the_next_start() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("alpha").await;
    let r = b
        .execute(json!({"target": ["alpha"], "target_type": "node", "command": "echo hi"}))
        .await;
    let id = r["exec_id"].as_str().unwrap().to_string();
    let pool = postern_tests::swarm::store_reader(&b.sqlite_url()).await;
    let finished = |pool: sqlx::AnyPool| {
        let id = id.clone();
        async move {
            let (at, ends): (Option<i64>, i64) = sqlx::query_as(
                "SELECT finished_at, (SELECT COUNT(*) FROM exec_events
                   WHERE exec_id = $1 AND kind = 'execution_finished')
                 FROM executions WHERE id = $1",
            )
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
            (at.is_some(), ends)
        }
    };
    eventually(Duration::from_secs(15), "the execution finished", || {
        let f = finished(pool.clone());
        async move { f.await == (true, 1) }
    })
    .await;
    b.kill();

    // What a stop just before the finish leaves: every result stored, the
    // execution open, no event ending its stream.
    sqlx::query("UPDATE executions SET finished_at = NULL WHERE id = $1")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM exec_events WHERE exec_id = $1 AND kind = 'execution_finished'")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(finished(pool.clone()).await, (false, 0));
    b.restart().await;

    eventually(
        Duration::from_secs(15),
        "finished at the next start, its stream ended once",
        || {
            let f = finished(pool.clone());
            async move { f.await == (true, 1) }
        },
    )
    .await;
    let (_, v) = b
        .get(&format!(
            "/cmdexec/v1/projects/web/edges/eu-1/execution/{id}/"
        ))
        .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_command_ends_as_lost() {
    let b = Bastion::start(BastionOpts {
        exec_lost_grace: "2s".into(),
        ..BastionOpts::default()
    })
    .await;
    let mut a = b.agent("doomed").await;
    let _other = b.agent("fine").await;
    let r = b.execute(json!({"target": ["doomed", "fine"], "target_type": "node", "command": "sleep 4; echo hi", "timeout": 60})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    let n = exec_node(&done, "doomed");
    assert_eq!(n["status"], "lost", "{n}");
    assert!(n["error"].as_str().unwrap().contains("did not come back"));
    assert_eq!(exec_node(&done, "fine")["status"], "succeeded");
}

/// A command outlives an agent killed with -9: nobody is left to enforce its
/// timeout. At its next start the agent ends what is left of it (the process
/// group it noted, if its leader is still that process) and reports it lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_left_by_a_killed_agent_is_ended_at_its_next_start() {
    let b = Bastion::start(BastionOpts {
        exec_lost_grace: "60s".into(),
        ..BastionOpts::default()
    })
    .await;
    let mut a = b.agent("alpha").await;
    let pidfile = b.dir.path().join("orphan.pid");
    let r = b
        .execute(
            json!({"target": ["alpha"], "target_type": "node", "timeout": 600,
        "command": format!("echo $$ > {}; exec sleep 300", pidfile.display())}),
        )
        .await;
    eventually(Duration::from_secs(10), "the command started", || async {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // The agent notes the command's process group just after it starts; under
    // load the command can write its pid first. A kill -9 before the note
    // leaves the command running (reported lost): wait for the note.
    let note = a
        .data_dir
        .join("spool")
        .join(format!("{}.pgid", r["exec_id"].as_str().unwrap()));
    eventually(
        Duration::from_secs(10),
        "the process group noted",
        || async { note.exists() },
    )
    .await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pid_alive(&pid),
        "the command outlived the agent, as commands do"
    );

    let _back = postern_tests::AgentProc::run(&a.data_dir);
    eventually(Duration::from_secs(10), "the orphan ended", || async {
        !pid_alive(&pid)
    })
    .await;
    let done = b
        .finished(r["exec_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    let n = exec_node(&done, "alpha");
    assert_eq!(n["status"], "lost", "{n}");
    assert!(n["error"].as_str().unwrap().contains("killed"), "{n}");
}

/// A stored result the agent still holds (its DELETE was lost to a restart or a
/// cut link) is released when the channel next comes up; a result the bastion
/// has not stored stays with the agent.
#[tokio::test(flavor = "multi_thread")]
async fn results_left_in_an_agents_spool_are_released_on_reconnect() {
    let b = Bastion::start(BastionOpts::default()).await;
    let mut a = b.agent("alpha").await;
    let r = b
        .execute(json!({"target": ["alpha"], "target_type": "node", "command": "echo hi"}))
        .await;
    let id = r["exec_id"].as_str().unwrap().to_string();
    b.finished(&id, Duration::from_secs(15)).await;
    let spool = a.data_dir.join("spool");
    let file = spool.join(format!("{id}.json"));
    eventually(Duration::from_secs(5), "the spool released", || async {
        !file.exists()
    })
    .await;
    a.stop();

    // The state a DELETE lost in flight leaves: the stored result still spooled.
    let held = |exec_id: &str| {
        json!({"exec_id": exec_id, "status": "succeeded", "exit_code": 0,
            "stdout": {"data_b64": "aGkK", "truncated": false, "total_bytes": 3, "sha256": ""},
            "stderr": {"data_b64": "", "truncated": false, "total_bytes": 0, "sha256": ""},
            "error": null, "started_at_ms": 1, "finished_at_ms": 2})
        .to_string()
    };
    std::fs::write(&file, held(&id)).unwrap();
    let unknown = spool.join("0000-not-stored.json");
    std::fs::write(&unknown, held("0000-not-stored")).unwrap();

    let _back = postern_tests::AgentProc::run(&a.data_dir);
    eventually(
        Duration::from_secs(15),
        "the stored result released",
        || async { !file.exists() },
    )
    .await;
    assert!(
        unknown.exists(),
        "a result the bastion never stored was dropped"
    );
}
