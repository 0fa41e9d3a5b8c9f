//! `postern-ssh-bench`: SSH through Postern against a stock OpenSSH jump host and
//! a direct connection, in one run. Build in release and run, e.g.
//! `cargo build --release --workspace --bins && target/release/postern-ssh-bench`.

use clap::Parser;
use postern_tests::ssh_bench::{BenchOpts, run};

#[derive(Parser)]
#[command(about = "Throughput, set-up time and keys-helper latency of SSH through Postern")]
struct Args {
    /// Bytes per transfer.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Transfers per path and direction (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `ssh … true` runs per path.
    #[arg(long, default_value_t = 20)]
    setup_runs: usize,
    /// `ssh … true` sessions started at once per path (0: skip).
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Keys helper (and `cat`) invocations.
    #[arg(long, default_value_t = 1000)]
    helper_runs: usize,
    /// Paths to measure (the OpenSSH jump host is the baseline for the ratios).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,openssh-jump,openssh-jump-gcm,postern"
    )]
    paths: Vec<String>,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let report = run(&BenchOpts {
        bytes: a.bytes,
        runs: a.runs,
        setup_runs: a.setup_runs,
        helper_runs: a.helper_runs,
        parallel: a.parallel,
        paths: a.paths,
    })
    .await;
    let base = report
        .paths
        .iter()
        .find(|p| p.path == "openssh-jump")
        .cloned();
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if let Some(base) = base {
        for p in &report.paths {
            println!(
                "{:>13}: upload {:7.1} MB/s ({:.2}x OpenSSH jump), download {:7.1} MB/s ({:.2}x), set-up p50 {:.3} s ({:.2}x)",
                p.path,
                p.upload_mb_s,
                p.upload_mb_s / base.upload_mb_s,
                p.download_mb_s,
                p.download_mb_s / base.download_mb_s,
                p.setup_p50_s,
                p.setup_p50_s / base.setup_p50_s,
            );
            if report.parallel > 0 {
                println!(
                    "{:>13}  {} sessions at once: all done in {:.2} s ({:.2}x)",
                    "",
                    report.parallel,
                    p.parallel_wall_s,
                    p.parallel_wall_s / base.parallel_wall_s,
                );
            }
        }
    }
    let h = &report.helper;
    println!(
        "postern-keys: p50 {:.2} ms, p99 {:.2} ms; cat authorized_keys: p50 {:.2} ms, p99 {:.2} ms ({} runs)",
        h.helper_p50_ms, h.helper_p99_ms, h.cat_p50_ms, h.cat_p99_ms, h.runs
    );
}
