//! `postern-swarm`: the agent-swarm benchmark. Build in release and run, e.g.
//! `cargo build --release --workspace --bins && target/release/postern-swarm --agents 10000 --restart`.

use std::time::Duration;

use clap::Parser;
use postern_tests::swarm::{SwarmOpts, run};

#[derive(Parser)]
#[command(about = "Connect a swarm of real agents to one bastion and measure it")]
struct Args {
    /// Agent counts to run, one swarm each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    agents: Vec<usize>,
    /// Also restart the bastion and time the reconnection.
    #[arg(long)]
    restart: bool,
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Node counts for the cmdexec fan-out (`hostname`), e.g. 1,100,1000,10000.
    #[arg(long, value_delimiter = ',')]
    fanout: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    fanout_runs: usize,
    /// Also run one fan-out to every node with a paused live reader (events).
    #[arg(long)]
    live: bool,
    /// With every agent connected, watch the bastion's CPU this long before
    /// the fan-outs (0: not measured).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Also time `ansible all -m command -a hostname` on this many hosts over real sshd.
    #[arg(long)]
    ansible_hosts: Option<usize>,
}

#[tokio::main]
async fn main() {
    postern_tests::init_bench_logs();
    let args = Args::parse();
    if let Some(hosts) = args.ansible_hosts {
        let r = postern_tests::ansible::baseline(hosts, args.fanout_runs.clamp(1, 3));
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    }
    for n in args.agents {
        let report = run(&SwarmOpts {
            agents: n,
            enroll_concurrency: args.enroll_concurrency,
            restart: args.restart,
            backoff_cap: args.backoff_cap,
            fanout: args.fanout.clone(),
            fanout_runs: args.fanout_runs,
            live: args.live,
            idle: args.idle,
        })
        .await;
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
}
