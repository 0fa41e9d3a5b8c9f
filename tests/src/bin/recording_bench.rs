//! `postern-recording-bench`: the terminating mode and session recording beside
//! the relayed jump, in one run. Build in release and run, e.g.
//! `cargo build --release --workspace --bins && target/release/postern-recording-bench`.

use clap::Parser;
use postern_tests::recording_bench::run;

#[derive(Parser)]
#[command(about = "Throughput, CPU, echo latency, memory and storage of recorded SSH sessions")]
struct Args {
    /// Bytes per transfer.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Transfers per mode and direction (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sessions at once for the memory figure.
    #[arg(long, default_value_t = 32)]
    sessions: usize,
    /// Size of the large recording to play, in MB of output.
    #[arg(long, default_value_t = 100)]
    large_mb: u64,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let r = run(a.bytes, a.runs, a.sessions, a.large_mb).await;
    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    if let Some(base) = r.modes.iter().find(|m| m.mode == "relay").cloned() {
        for m in &r.modes {
            println!(
                "{:>19}: upload {:7.1} MB/s ({:.2}x relay), download {:7.1} MB/s ({:.2}x), bastion CPU {:.2} s/GB ({:.2}x), echo p99 {:.2} ms (+{:.2} ms)",
                m.mode,
                m.upload_mb_s,
                m.upload_mb_s / base.upload_mb_s,
                m.download_mb_s,
                m.download_mb_s / base.download_mb_s,
                m.bastion_cpu_s_per_gb,
                m.bastion_cpu_s_per_gb / base.bastion_cpu_s_per_gb,
                m.echo_p99_ms,
                m.echo_p99_ms - base.echo_p99_ms,
            );
        }
    }
    println!(
        "memory per session: relay {:.0} KiB, recorded {:.0} KiB; interactive: {} bytes out, {} stored ({:.1}%); seq 1 2000000: {} out, {} stored ({:.1}%); play a {} byte cast: first frame {:.3} s, from its middle {:.3} s",
        r.relay_rss_per_session_kib,
        r.recorded_rss_per_session_kib,
        r.interactive_output_bytes,
        r.interactive_stored_bytes,
        100.0 * r.interactive_stored_bytes as f64 / r.interactive_output_bytes.max(1) as f64,
        r.bulk_output_bytes,
        r.bulk_stored_bytes,
        100.0 * r.bulk_stored_bytes as f64 / r.bulk_output_bytes.max(1) as f64,
        r.large_cast_bytes,
        r.play_first_frame_s,
        r.play_seek_middle_s,
    );
}
