//! `postern-soak`: one bastion under mixed load for a long time, sampled every
//! minute (RSS, fds, threads, tasks). Build in release and run, e.g.
//! `cargo build --release --workspace --bins && target/release/postern-soak --minutes 30`.
//! Prints one JSON line per sample, then a summary line.

use std::time::Duration;

use clap::Parser;
use postern_tests::soak::{SoakOpts, run};

#[derive(Parser)]
#[command(about = "Soak one bastion under mixed load and watch it for leaks")]
struct Args {
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Agents in the swarm (in this process).
    #[arg(long, default_value_t = 200)]
    agents: usize,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[tokio::main]
async fn main() {
    postern_tests::init_bench_logs();
    let a = Args::parse();
    let report = run(&SoakOpts {
        duration: Duration::from_secs(a.minutes * 60),
        agents: a.agents,
        sample_every: a.sample_every,
        warmup: a.warmup,
    })
    .await;
    println!(
        "{}",
        serde_json::json!({
            "rss_growth_pct": report.rss_growth_pct,
            "fds_growth": report.fds_growth,
            "tasks_growth": report.tasks_growth,
            "samples": report.samples.len(),
        })
    );
}
