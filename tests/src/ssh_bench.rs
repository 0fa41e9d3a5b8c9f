//! The SSH benchmark, side by side in one run: the same node sshd (keys from
//! `postern-keys`) reached directly, through a stock OpenSSH sshd used as the jump
//! host, and through Postern. Measures bulk throughput each way, session set-up
//! time, and the keys helper's latency per invocation against `cat` of a static
//! `authorized_keys` file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ssh::{InstalledHelper, Node, SshUser, keygen, run_with_timeout};
use crate::swarm::median;
use crate::{Bastion, BastionOpts, free_port};

#[derive(Debug, Clone, Serialize)]
pub struct PathFigures {
    pub path: String,
    /// MB/s (10^6 bytes), median of the runs.
    pub upload_mb_s: f64,
    pub download_mb_s: f64,
    /// Seconds for `ssh … true`, median and 90th percentile.
    pub setup_p50_s: f64,
    pub setup_p90_s: f64,
    /// Seconds until `SshBenchReport::parallel` sessions started at once were all
    /// done (0 when skipped).
    pub parallel_wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HelperFigures {
    pub runs: usize,
    pub helper_p50_ms: f64,
    pub helper_p99_ms: f64,
    pub cat_p50_ms: f64,
    pub cat_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SshBenchReport {
    pub bytes: u64,
    /// `ssh … true` started at once per path, as Ansible's forks do without
    /// connection sharing (0: skipped).
    pub parallel: usize,
    pub paths: Vec<PathFigures>,
    pub helper: HelperFigures,
}

#[derive(Debug, Clone)]
pub struct BenchOpts {
    pub bytes: u64,
    pub runs: usize,
    pub setup_runs: usize,
    pub helper_runs: usize,
    /// Sessions set up at once (0: skip).
    pub parallel: usize,
    /// Which of direct, openssh-jump, postern to measure.
    pub paths: Vec<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A stock sshd that only serves as a jump host, with the user's key in a file.
struct StockJump {
    child: std::process::Child,
    port: u16,
}

impl StockJump {
    /// `extra` is appended to sshd_config (e.g. a `Ciphers` line).
    fn start(dir: &Path, authorized: &Path, extra: &str) -> StockJump {
        std::fs::create_dir_all(dir).unwrap();
        keygen(&dir.join("host_key"));
        let port = free_port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
             MaxStartups 100:30:200\nLogLevel ERROR\n{extra}",
            d = dir.display(),
            auth = authorized.display()
        );
        std::fs::write(dir.join("sshd_config"), cfg).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start /usr/sbin/sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "stock sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        StockJump { child, port }
    }
}

impl Drop for StockJump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_cmd(config: &Path, route: &[String], remote: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(config).args(route).arg(remote);
    c
}

/// Seconds to push `bytes` through `route` (upload) or pull them (download).
fn transfer(config: &Path, route: &[String], bytes: u64, upload: bool) -> f64 {
    let start = Instant::now();
    let status = if upload {
        let mut child = ssh_cmd(config, route, "cat > /dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let chunk = vec![0u8; 1024 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut stdin, &chunk[..n]).unwrap();
            left -= n as u64;
        }
        drop(stdin);
        child.wait().unwrap()
    } else {
        let mut child = ssh_cmd(config, route, &format!("head -c {bytes} /dev/zero"))
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

fn setup_times(config: &Path, route: &[String], runs: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let out =
                run_with_timeout(&mut ssh_cmd(config, route, "true"), Duration::from_secs(30));
            assert!(
                out.status.success(),
                "ssh true over {route:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            start.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Starts `k` `ssh … true` at once; returns the seconds until all finished.
fn parallel_setup(config: &Path, route: &[String], k: usize) -> f64 {
    let start = Instant::now();
    let children: Vec<_> = (0..k)
        .map(|_| {
            ssh_cmd(config, route, "true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "parallel ssh true over {route:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    start.elapsed().as_secs_f64()
}

fn spawn_latencies(cmd: &mut Command, runs: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let out = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            let t = start.elapsed().as_secs_f64() * 1000.0;
            assert!(
                out.status.success() && !out.stdout.is_empty(),
                "no keys printed"
            );
            t
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Throughput each way, set-up times and (optionally) parallel set-up over one
/// route (`ssh -F config ROUTE… host`).
pub fn measure_path(name: &str, config: &Path, route: &[String], opts: &BenchOpts) -> PathFigures {
    setup_times(config, route, 1);
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..opts.runs {
        up.push(opts.bytes as f64 / 1e6 / transfer(config, route, opts.bytes, true));
        down.push(opts.bytes as f64 / 1e6 / transfer(config, route, opts.bytes, false));
    }
    let setup = setup_times(config, route, opts.setup_runs);
    let parallel_wall_s = if opts.parallel > 0 {
        parallel_setup(config, route, opts.parallel)
    } else {
        0.0
    };
    PathFigures {
        path: name.into(),
        upload_mb_s: median(&up),
        download_mb_s: median(&down),
        setup_p50_s: percentile(&setup, 0.5),
        setup_p90_s: percentile(&setup, 0.9),
        parallel_wall_s,
    }
}

pub async fn run(opts: &BenchOpts) -> SshBenchReport {
    let b = Bastion::start(BastionOpts {
        ssh_grant_ttl: "1h".into(),
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("org_admin", &[]))).await;
    let stock = StockJump::start(
        &b.dir.path().join("stock-jump"),
        &alice.key.with_extension("pub"),
        "",
    );
    // The same stock jump host restricted to the ciphers Postern offers, to show
    // how much of the difference is the cipher.
    let stock_gcm = StockJump::start(
        &b.dir.path().join("stock-jump-gcm"),
        &alice.key.with_extension("pub"),
        "Ciphers aes256-gcm@openssh.com,aes128-gcm@openssh.com\n",
    );
    let mut cfg = std::fs::read_to_string(&alice.config).unwrap();
    cfg = format!(
        "Host openssh-jump\n  HostName 127.0.0.1\n  Port {}\n  User root\n\n\
         Host openssh-jump-gcm\n  HostName 127.0.0.1\n  Port {}\n  User root\n\n\
         Host node-direct\n  HostName 127.0.0.1\n  Port {}\n  User root\n  HostKeyAlias node-a\n\n{cfg}",
        stock.port, stock_gcm.port, node.sshd.port
    );
    let config = b.dir.path().join("bench_ssh_config");
    std::fs::write(&config, cfg).unwrap();

    // The first Postern jump pushes the grant that the other two paths reuse, so
    // every path meets the same node sshd and the same helper.
    let postern: Vec<String> = vec!["-J".into(), "bastion".into(), "root@node-a".into()];
    let openssh: Vec<String> = vec![
        "-J".into(),
        "openssh-jump".into(),
        "-o".into(),
        "HostKeyAlias=node-a".into(),
        "-p".into(),
        node.sshd.port.to_string(),
        "root@127.0.0.1".into(),
    ];
    let mut openssh_gcm = openssh.clone();
    openssh_gcm[1] = "openssh-jump-gcm".into();
    let direct: Vec<String> = vec!["node-direct".into()];
    setup_times(&config, &postern, 1);

    let mut paths = Vec::new();
    for (name, route) in [
        ("direct", &direct),
        ("openssh-jump", &openssh),
        ("openssh-jump-gcm", &openssh_gcm),
        ("postern", &postern),
    ] {
        if !opts.paths.iter().any(|p| p == name) {
            continue;
        }
        let f = measure_path(name, &config, route, opts);
        eprintln!("{f:?}");
        paths.push(f);
    }

    let static_keys = b.dir.path().join("authorized_keys");
    std::fs::copy(alice.key.with_extension("pub"), &static_keys).unwrap();
    let fp_out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(alice.key.with_extension("pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp_out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let mut h = Command::new(&helper.path);
    h.arg("--data-dir")
        .arg(&node.agent.data_dir)
        .args(["root", &fp]);
    let helper_ms = spawn_latencies(&mut h, opts.helper_runs);
    let mut cat = Command::new("cat");
    cat.arg(&static_keys);
    let cat_ms = spawn_latencies(&mut cat, opts.helper_runs);
    SshBenchReport {
        bytes: opts.bytes,
        parallel: opts.parallel,
        paths,
        helper: HelperFigures {
            runs: opts.helper_runs,
            helper_p50_ms: percentile(&helper_ms, 0.5),
            helper_p99_ms: percentile(&helper_ms, 0.99),
            cat_p50_ms: percentile(&cat_ms, 0.5),
            cat_p99_ms: percentile(&cat_ms, 0.99),
        },
    }
}
