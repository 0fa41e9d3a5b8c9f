//! `postern-replicas-bench`: three replicas against one, in one run. Build in
//! release and run, e.g. `cargo build --release --workspace --bins &&
//! target/release/postern-replicas-bench --agents 10000`. Needs PostgreSQL
//! (`POSTERN_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test).

use std::time::Duration;

use clap::Parser;
use postern_tests::replicas_bench::{ReplicasBenchOpts, run};
use postern_tests::ssh_bench::BenchOpts;

#[derive(Parser)]
#[command(
    about = "Measure three bastion replicas against one: fan-out, failover, SSH through a peer"
)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    #[arg(long, default_value_t = 3)]
    fanout_runs: usize,
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Bytes each way per SSH transfer run.
    #[arg(long, default_value_t = 1 << 30)]
    ssh_bytes: u64,
    #[arg(long, default_value_t = 3)]
    ssh_runs: usize,
    #[arg(long, default_value_t = 20)]
    setup_runs: usize,
}

#[tokio::main]
async fn main() {
    postern_tests::init_bench_logs();
    let a = Args::parse();
    let report = run(&ReplicasBenchOpts {
        agents: a.agents,
        enroll_concurrency: a.enroll_concurrency,
        fanout_runs: a.fanout_runs,
        backoff_cap: a.backoff_cap,
        ssh: BenchOpts {
            bytes: a.ssh_bytes,
            runs: a.ssh_runs,
            setup_runs: a.setup_runs,
            helper_runs: 0,
            parallel: 0,
            paths: Vec::new(),
        },
    })
    .await;
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
}
