//! `postern-scale-bench`: more agents than one process may hold (20,000 by
//! default) across two replicas on PostgreSQL. Build in release and run
//! `target/release/postern-scale-bench`; PostgreSQL at
//! `POSTERN_TEST_DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test).

use std::time::Duration;

use clap::{Parser, Subcommand};
use postern_tests::scale_bench::{ScaleBenchOpts, agents_process, run};

#[derive(Parser)]
#[command(about = "Measure 20,000 agents across two bastion replicas")]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    agents: usize,
    /// Agents per child process (a process may open 20,000 files here).
    #[arg(long, default_value_t = 10_000)]
    per_process: usize,
    #[arg(long, global = true, default_value_t = 64)]
    enroll_concurrency: usize,
    #[arg(long, default_value_t = 3)]
    fanout_runs: usize,
    #[arg(long, global = true, default_value = "15s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Internal: one slice of the swarm, run by the benchmark itself.
    #[command(hide = true)]
    Agents {
        #[arg(long, value_delimiter = ',')]
        controllers: Vec<String>,
        #[arg(long)]
        token: String,
        #[arg(long)]
        ca_hash: String,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        count: usize,
    },
}

#[tokio::main]
async fn main() {
    postern_tests::init_bench_logs();
    let a = Args::parse();
    if let Some(Mode::Agents {
        controllers,
        token,
        ca_hash,
        from,
        count,
    }) = a.mode
    {
        agents_process(
            controllers,
            token,
            ca_hash,
            from,
            count,
            a.enroll_concurrency,
            a.backoff_cap,
        )
        .await;
        return;
    }
    let report = run(&ScaleBenchOpts {
        agents: a.agents,
        per_process: a.per_process,
        enroll_concurrency: a.enroll_concurrency,
        fanout_runs: a.fanout_runs,
        backoff_cap: a.backoff_cap,
    })
    .await;
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
}
