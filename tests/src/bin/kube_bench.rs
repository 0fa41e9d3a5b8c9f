//! `postern-kube-bench`: kubectl's traffic through the bastion's Kubernetes door
//! against the same real API server reached directly, in one run. Build in release
//! and run: `cargo build --release --workspace --bins && target/release/postern-kube-bench`.
//! Needs the API server `scripts/kube-apiserver` builds.

use std::time::Duration;

use clap::Parser;
use postern_tests::kube_bench::{KubeBenchOpts, run};

#[derive(Parser)]
#[command(
    about = "Measure kubectl-style requests through the bastion against the API server directly"
)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    latency_requests: usize,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    rate_for: Duration,
    #[arg(long, default_value_t = 50)]
    watch_events: usize,
}

#[tokio::main]
async fn main() {
    postern_tests::init_bench_logs();
    let a = Args::parse();
    let report = run(&KubeBenchOpts {
        latency_requests: a.latency_requests,
        connections: a.connections,
        rate_for: a.rate_for,
        watch_events: a.watch_events,
    })
    .await;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
