//! `postern-console-bench`: the web console's aims, measured in one run on
//! a bastion with a 10,000-node edge: the server's time and CPU for the
//! nodes page the console asks for (paged, searched, by label) beside the
//! whole list, and, in Debian's Chromium (`console/tests/bench.mjs`), the
//! first page from a cold cache, sign-in to the nodes page, and keystroke to
//! echo in the browser terminal. Needs root (a node's sshd), `npm ci` in
//! console/ and chromium, as scripts/test installs them. Build in release:
//! `cargo build --release --workspace --bins && target/release/postern-console-bench`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use postern_bastion::store::{NewNode, Store};
use postern_tests::ssh::{InstalledHelper, Node, run_with_timeout, text};
use postern_tests::swarm::{cpu_secs, median};
use postern_tests::{Bastion, BastionOpts};
use serde_json::json;

#[derive(Parser)]
#[command(about = "The web console's speed on a 10,000-node edge")]
struct Args {
    /// Nodes in the edge besides the real one.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Requests of each kind to the nodes endpoint.
    #[arg(long, default_value_t = 30)]
    requests: usize,
    /// Keystrokes typed into the browser terminal.
    #[arg(long, default_value_t = 300)]
    keys: usize,
}

fn p95(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() * 95 / 100).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    postern_tests::init_bench_logs();
    let a = Args::parse();
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let (password, code) = postern_tests::console::person(
        &b,
        "bench",
        &[
            json!({ "role": "org_admin" }),
            json!({ "role": "project_member", "project": "web", "logins": ["root"] }),
        ],
    )
    .await;

    // The edge's other nodes, written straight into the store (as enrolled
    // and approved, never connected): what the pages read is the same.
    let (_, edges) = b.get("/api/v1/projects/web/edges").await;
    let edge_id = edges
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "eu-1"))
        .and_then(|e| e["id"].as_str())
        .unwrap_or_else(|| panic!("edge eu-1 in {edges}"))
        .to_string();
    let token = b
        .enrollment(json!({ "auto_approve": true, "max_uses": 100_000 }))
        .await;
    let token_id = token["id"].as_str().unwrap_or_default().to_string();
    let store = Store::open_sqlite(&b.data_dir())
        .await
        .unwrap_or_else(|e| panic!("store: {e}"));
    let t = Instant::now();
    for i in 0..a.nodes {
        let id = format!("bench-{i:05}");
        let hostname = format!("swarm-{i:05}");
        store
            .enroll_node(
                &NewNode {
                    id: &id,
                    token_id: &token_id,
                    edge_id: &edge_id,
                    hostname: &hostname,
                    agent_version: "0.1.0",
                    auto_approve: true,
                    cert_serial: &id,
                    cert_expires_at: i64::MAX / 2,
                },
                0,
            )
            .await
            .unwrap_or_else(|e| panic!("enroll {hostname}: {e}"));
    }
    store.close().await;
    eprintln!(
        "seeded {} nodes in {:.1} s",
        a.nodes,
        t.elapsed().as_secs_f64()
    );

    // The server: wall time of one request as the client sees it, and the
    // bastion's CPU per request.
    let pid = b.pid().unwrap_or(0);
    let mut server = serde_json::Map::new();
    for (name, path) in [
        (
            "page",
            "/api/v1/projects/web/edges/eu-1/nodes?limit=50&offset=0",
        ),
        (
            "last_page",
            "/api/v1/projects/web/edges/eu-1/nodes?limit=50&offset=9950",
        ),
        (
            "search",
            "/api/v1/projects/web/edges/eu-1/nodes?q=swarm-0999&limit=50",
        ),
        (
            "label",
            "/api/v1/projects/web/edges/eu-1/nodes?label=role%3Dweb&limit=50",
        ),
        ("whole_list", "/api/v1/projects/web/edges/eu-1/nodes"),
    ] {
        let _ = b.get(path).await;
        let mut walls = vec![];
        let cpu0 = cpu_secs(pid);
        for _ in 0..a.requests {
            let t = Instant::now();
            let (s, _) = b.get(path).await;
            assert_eq!(s, 200, "{path}");
            walls.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let cpu_ms = (cpu_secs(pid) - cpu0) / a.requests as f64 * 1000.0;
        server.insert(
            name.into(),
            json!({ "wall_ms_median": (median(&walls) * 10.0).round() / 10.0,
                    "wall_ms_p95": (p95(&walls) * 10.0).round() / 10.0,
                    "bastion_cpu_ms": (cpu_ms * 10.0).round() / 10.0 }),
        );
    }

    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("../console");
    let out = run_with_timeout(
        Command::new("node")
            .arg(console.join("tests/bench.mjs"))
            .current_dir(&console)
            .env("URL", format!("http://{}", b.api))
            .env("NAME", "bench")
            .env("PASSWORD", password)
            .env("CODE", code)
            .env("NODE", "web/eu-1/node-a")
            .env("KEYS", a.keys.to_string()),
        Duration::from_secs(600),
    );
    let said = text(&out.stdout);
    if !out.status.success() {
        panic!("the browser part failed: {said}{}", text(&out.stderr));
    }
    let browser: serde_json::Value = said
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from bench.mjs: {said}"));
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({ "nodes": a.nodes, "server": server, "browser": browser })
        )
        .unwrap_or_default()
    );
}
