//! The recording benchmark, in one run beside its baselines: the same node sshd
//! reached by a relayed jump (`ssh -J`, the baseline), through the terminating
//! mode without recording (policy `off`) and with it (`best_effort`). Measures
//! bulk throughput each way and the bastion's CPU for it, the added echo
//! latency of one keystroke, bastion memory per recorded session, what a
//! typical interactive workload and bulk output cost in the store, and how soon
//! `postern play` shows the first frame of a large recording, from its start
//! and from its middle.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::ssh::{InstalledHelper, Node, SshUser};
use crate::swarm::{cpu_secs, median, rss_kib};
use crate::{Bastion, BastionOpts, bin};

#[derive(Debug, Clone, Serialize)]
pub struct ModeFigures {
    pub mode: String,
    pub upload_mb_s: f64,
    pub download_mb_s: f64,
    /// Bastion CPU seconds per GB moved (both directions together).
    pub bastion_cpu_s_per_gb: f64,
    /// One byte written, its echo read back (`cat` on the node), in ms.
    pub echo_p50_ms: f64,
    pub echo_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingBenchReport {
    pub bytes: u64,
    pub modes: Vec<ModeFigures>,
    /// Bastion RSS added per session, `sessions` at once printing a line every
    /// 50 ms: relayed, and terminated and recorded.
    pub sessions: usize,
    pub relay_rss_per_session_kib: f64,
    pub recorded_rss_per_session_kib: f64,
    /// The interactive workload: 60 commands, their output (bytes the client
    /// read), and what the store holds of it.
    pub interactive_output_bytes: u64,
    pub interactive_stored_bytes: i64,
    /// `seq 1 2000000`: output and stored bytes.
    pub bulk_output_bytes: u64,
    pub bulk_stored_bytes: i64,
    /// A large recording: its cast size, and seconds until `postern play
    /// --format text` printed its first byte, from the start and from its middle.
    pub large_cast_bytes: i64,
    pub play_first_frame_s: f64,
    pub play_seek_middle_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ssh(config: &std::path::Path, route: &[&str], remote: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(config).args(route).arg(remote);
    c
}

fn transfer(config: &std::path::Path, route: &[&str], bytes: u64, upload: bool) -> f64 {
    let start = Instant::now();
    let status = if upload {
        let mut child = ssh(config, route, "cat > /dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stdin.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        drop(stdin);
        child.wait().unwrap()
    } else {
        // Text a terminal could show (a recording of NUL bytes would measure
        // JSON's escapes, not the recorder).
        let mut child = ssh(
            config,
            route,
            &format!("yes postern-bulk-output | head -c {bytes}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut out = child.stdout.take().unwrap();
        let got = std::io::copy(&mut out, &mut std::io::sink()).unwrap();
        assert_eq!(got, bytes, "short download");
        child.wait().unwrap()
    };
    assert!(status.success(), "transfer over {route:?} failed");
    start.elapsed().as_secs_f64()
}

fn echo_latencies(config: &std::path::Path, route: &[&str], n: usize) -> Vec<f64> {
    let mut child = ssh(config, route, "cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut v = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..n + 20 {
        let t = Instant::now();
        stdin.write_all(b"k").unwrap();
        stdin.flush().unwrap();
        stdout.read_exact(&mut b).unwrap();
        if i >= 20 {
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(stdin);
    let _ = child.wait();
    v.sort_by(f64::total_cmp);
    v
}

async fn set_policy(b: &Bastion, level: &str) {
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({ "default": level }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// The newest terminated recording whose command contains `needle`, ended.
async fn recording(b: &Bastion, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = b.get("/api/v1/recordings?mode=terminate&limit=100").await;
        if let Some(r) = v["recordings"].as_array().and_then(|rs| {
            rs.iter()
                .find(|r| {
                    r["command"].as_str().unwrap_or("").contains(needle) && r["status"] == "ended"
                })
                .cloned()
        }) {
            return r;
        }
        assert!(Instant::now() < deadline, "no ended recording of {needle}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn run_output(config: &std::path::Path, route: &[&str], script: &str) -> u64 {
    let out = ssh(config, route, script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.len() as u64
}

/// Seconds until `postern play ARGS` printed its first byte.
fn first_byte(b: &Bastion, args: &[&str]) -> f64 {
    let start = Instant::now();
    let mut child = Command::new(bin("postern"))
        .args(args)
        .env("POSTERN_URL", format!("http://{}", b.api))
        .env("POSTERN_TOKEN", &b.token)
        .env("POSTERN_CONFIG_DIR", b.dir.path().join("cli"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    let n = out.read(&mut byte).unwrap();
    let t = start.elapsed().as_secs_f64();
    assert_eq!(n, 1, "postern play printed nothing");
    let _ = child.kill();
    let _ = child.wait();
    t
}

/// Bastion RSS added by `k` sessions over `route`, each printing a line every 50 ms.
async fn rss_per_session(b: &Bastion, config: &std::path::Path, route: &[&str], k: usize) -> f64 {
    let pid = b.pid().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let mut children: Vec<_> = (0..k)
        .map(|_| {
            ssh(
                config,
                route,
                "while :; do echo one-line-of-a-busy-terminal; sleep 0.05; done",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = rss_kib(pid);
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    (during.saturating_sub(before)) as f64 / k as f64
}

pub async fn run(bytes: u64, runs: usize, sessions: usize, large_mb: u64) -> RecordingBenchReport {
    let b = Bastion::start(BastionOpts {
        ssh_grant_ttl: "1h".into(),
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let config = alice.config.clone();
    let relay: &[&str] = &["-J", "bastion", "root@node-a"];
    let terminate: &[&str] = &["root+node-a@bastion"];
    let pid = b.pid().unwrap();

    // Memory first, before the transfers leave the allocator holding pages.
    set_policy(&b, "off").await;
    let relay_rss = rss_per_session(&b, &config, relay, sessions).await;
    set_policy(&b, "best_effort").await;
    let recorded_rss = rss_per_session(&b, &config, terminate, sessions).await;

    let mut modes = Vec::new();
    for (name, route, policy) in [
        ("relay", relay, "off"),
        ("terminate", terminate, "off"),
        ("terminate-recorded", terminate, "best_effort"),
    ] {
        set_policy(&b, policy).await;
        transfer(&config, route, 1 << 20, false);
        let cpu0 = cpu_secs(pid);
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            up.push(bytes as f64 / 1e6 / transfer(&config, route, bytes, true));
            down.push(bytes as f64 / 1e6 / transfer(&config, route, bytes, false));
        }
        let cpu = cpu_secs(pid) - cpu0;
        let echo = echo_latencies(&config, route, 1000);
        let f = ModeFigures {
            mode: name.into(),
            upload_mb_s: median(&up),
            download_mb_s: median(&down),
            bastion_cpu_s_per_gb: cpu / (2.0 * runs as f64 * bytes as f64 / 1e9),
            echo_p50_ms: percentile(&echo, 0.5),
            echo_p99_ms: percentile(&echo, 0.99),
        };
        eprintln!("{f:?}");
        modes.push(f);
    }

    // 60 commands of an admin's hour, about 2 MB of output, with pauses.
    let interactive = "for i in $(seq 1 60); do ls -l /usr/bin /usr/lib | head -c 33000; ps aux | head -20; sleep 0.2; done # interactive-workload";
    let interactive_out = run_output(&config, terminate, interactive);
    let interactive_rec = recording(&b, "interactive-workload").await;
    let bulk_out = run_output(&config, terminate, "seq 1 2000000 # bulk-workload");
    let bulk_rec = recording(&b, "bulk-workload").await;

    // A large recording, then play it from the start and from the middle.
    let large = format!(
        "head -c {} /dev/urandom | base64 # large-workload",
        large_mb * 750_000
    );
    run_output(&config, terminate, &large);
    let large_rec = recording(&b, "large-workload").await;
    let id = large_rec["id"].as_str().unwrap().to_string();
    let (_, segs) = b.get(&format!("/api/v1/recordings/{id}/segments")).await;
    let segs = segs["segments"].as_array().unwrap().clone();
    let middle_ms = segs[segs.len() / 2]["at_ms"].as_i64().unwrap();
    let from = format!("{:.3}", middle_ms as f64 / 1000.0);
    let first = first_byte(&b, &["play", &id, "--format", "text"]);
    let seek = first_byte(&b, &["play", &id, "--format", "text", "--from", &from]);

    RecordingBenchReport {
        bytes,
        modes,
        sessions,
        relay_rss_per_session_kib: relay_rss,
        recorded_rss_per_session_kib: recorded_rss,
        interactive_output_bytes: interactive_out,
        interactive_stored_bytes: interactive_rec["stored_bytes"].as_i64().unwrap_or(0),
        bulk_output_bytes: bulk_out,
        bulk_stored_bytes: bulk_rec["stored_bytes"].as_i64().unwrap_or(0),
        large_cast_bytes: large_rec["cast_bytes"].as_i64().unwrap_or(0),
        play_first_frame_s: first,
        play_seek_middle_s: seek,
    }
}
