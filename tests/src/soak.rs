//! The soak benchmark: one bastion under mixed load for a long time (30 minutes
//! by default), sampled every minute: resident memory, open file descriptors,
//! threads and the bastion's own task count. After a warm-up the figures should
//! stay flat; growth beyond noise is a leak. Not run in CI (it is long); run
//! `postern-soak` from a release build.
//!
//! The load, all at once: cmdexec fan-outs over the swarm, SSH sessions through
//! the bastion to a real sshd opening and closing, agents of the swarm dropping
//! and coming back, nodes enrolled and deleted, and API reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_agent::exec::Executor;
use postern_agent::{Agent, AgentOptions, JoinRequest};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::ssh::{InstalledHelper, Node, SshUser};
use crate::swarm::rss_kib;
use crate::{Bastion, BastionOpts, eventually};

#[derive(Debug, Clone)]
pub struct SoakOpts {
    pub duration: Duration,
    pub agents: usize,
    pub sample_every: Duration,
    /// Samples before this are the warm-up, not judged.
    pub warmup: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub minute: f64,
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: u64,
    pub tasks: u64,
    pub agents_connected: u64,
    pub executions: u64,
    pub ssh_sessions: u64,
    pub flaps: u64,
    pub enrollments: u64,
    pub api_reads: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    /// Last sample against the first after warm-up, in percent.
    pub rss_growth_pct: f64,
    pub fds_growth: i64,
    pub tasks_growth: i64,
}

#[derive(Debug, Default)]
struct Counters {
    executions: std::sync::atomic::AtomicU64,
    ssh_sessions: std::sync::atomic::AtomicU64,
    flaps: std::sync::atomic::AtomicU64,
    enrollments: std::sync::atomic::AtomicU64,
    api_reads: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

fn add(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One swarm agent that can be stopped and started again (a flap).
struct Flapper {
    agent: Agent,
    stop: CancellationToken,
}

impl Flapper {
    fn start(agent: Agent) -> Flapper {
        let stop = CancellationToken::new();
        let (a, s) = (agent.clone(), stop.clone());
        tokio::spawn(async move { a.run(s).await });
        Flapper { agent, stop }
    }

    fn flap(&mut self) {
        self.stop.cancel();
        *self = Flapper::start(self.agent.clone());
    }
}

pub async fn run(opts: &SoakOpts) -> SoakReport {
    let b = Arc::new(
        Bastion::start(BastionOpts {
            extra_args: crate::one_address_fleet(),
            ..BastionOpts::default()
        })
        .await,
    );
    let pid = b.pid().unwrap_or(0);
    let counters = Arc::new(Counters::default());

    // The swarm: real agents in this process.
    let token = b
        .enrollment(
            json!({"max_uses": opts.agents + 10_000, "auto_approve": true, "ttl_seconds": 86_400}),
        )
        .await;
    let join = |name: String| JoinRequest {
        controller: format!("https://{}", b.agent),
        token: token["token"].as_str().unwrap_or_default().to_string(),
        ca_hash: token["ca_hash"].as_str().unwrap_or_default().to_string(),
        hostname: name,
        data_dir: None,
    };
    let options = AgentOptions {
        backoff_cap: Duration::from_secs(2),
        ..AgentOptions::default()
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(512));
    let mut flappers = Vec::new();
    for i in 0..opts.agents {
        let id = postern_agent::join(&join(format!("soak-{i:04}")))
            .await
            .unwrap_or_else(|e| panic!("enroll {i}: {e}"));
        let agent = Agent::with_executor(
            id,
            options.clone(),
            Executor::with_slots(None, slots.clone()),
        );
        flappers.push(Flapper::start(agent));
    }
    let n = opts.agents as u64;
    eventually(Duration::from_secs(120), "the swarm connected", || async {
        b.metric("postern_agents_connected").await >= n
    })
    .await;

    // One real node with sshd, and a user who jumps to it.
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "soak-ssh").await;
    let user = Arc::new(SshUser::create(&b, "soaker", Some(("org_admin", &[]))).await);

    let stop = CancellationToken::new();
    let until = Instant::now() + opts.duration;
    let mut load = Vec::new();

    // Fan-outs over the whole edge, one after another.
    load.push(tokio::spawn({
        let (b, c, stop) = (b.clone(), counters.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                let (s, r) = b
                    .post(
                        "/cmdexec/v1/projects/web/edges/eu-1/execute/",
                        json!({"target_type": "cluster", "command": "echo soak", "timeout": 30}),
                    )
                    .await;
                if s != 202 {
                    add(&c.errors);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                add(&c.executions);
                let path = format!(
                    "/cmdexec/v1/projects/web/edges/eu-1/execution/{}/?node_limit=10",
                    r["exec_id"].as_str().unwrap_or_default()
                );
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(60) && !stop.is_cancelled() {
                    let (_, v) = b.get(&path).await;
                    if v["status"] != "running" && v["status"] != "pending" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }));
    // SSH sessions opening and closing.
    load.push(tokio::spawn({
        let (user, c, stop) = (user.clone(), counters.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                let u = user.clone();
                let out =
                    tokio::task::spawn_blocking(move || u.jump("root", "soak-ssh", "echo soak"))
                        .await;
                match out {
                    Ok(o) if o.status.success() => add(&c.ssh_sessions),
                    _ => add(&c.errors),
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }));
    // API reads.
    load.push(tokio::spawn({
        let (b, c, stop) = (b.clone(), counters.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                for path in [
                    "/api/v1/projects/web/edges/eu-1/nodes",
                    "/cmdexec/v1/projects/web/history/?limit=20",
                    "/api/v1/audit?limit=50",
                ] {
                    let (s, _) = b.get(path).await;
                    if s == 200 {
                        add(&c.api_reads);
                    } else {
                        add(&c.errors);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }));
    // Enrollment and deletion: a node joins, connects, and is deleted.
    load.push(tokio::spawn({
        let (b, c, stop) = (b.clone(), counters.clone(), stop.clone());
        let token = token.clone();
        let options = options.clone();
        async move {
            let mut i = 0u64;
            while !stop.is_cancelled() {
                i += 1;
                let name = format!("soak-new-{i:05}");
                let req = JoinRequest {
                    controller: format!("https://{}", b.agent),
                    token: token["token"].as_str().unwrap_or_default().to_string(),
                    ca_hash: token["ca_hash"].as_str().unwrap_or_default().to_string(),
                    hostname: name.clone(),
                    data_dir: None,
                };
                match postern_agent::join(&req).await {
                    Ok(id) => {
                        add(&c.enrollments);
                        let agent = Agent::with_executor(id, options.clone(), Executor::new(None));
                        let s = CancellationToken::new();
                        let task = tokio::spawn({
                            let s = s.clone();
                            async move { agent.run(s).await }
                        });
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let (st, _) = b
                            .delete(&format!("/api/v1/projects/web/edges/eu-1/nodes/{name}"))
                            .await;
                        if st != 204 {
                            add(&c.errors);
                        }
                        s.cancel();
                        let _ = task.await;
                    }
                    Err(_) => add(&c.errors),
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }));

    // Flapping, and sampling, from here.
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut next_sample = Instant::now();
    let mut next_flap = Instant::now() + Duration::from_secs(10);
    let mut flap_at = 0usize;
    while Instant::now() < until {
        if Instant::now() >= next_flap {
            // A tenth of the swarm drops and comes back.
            for _ in 0..(opts.agents / 10).max(1) {
                flappers[flap_at % opts.agents].flap();
                flap_at += 1;
                add(&counters.flaps);
            }
            next_flap += Duration::from_secs(10);
        }
        if Instant::now() >= next_sample {
            let s = Sample {
                minute: started.elapsed().as_secs_f64() / 60.0,
                rss_kib: rss_kib(pid),
                fds: fds(pid),
                threads: threads(pid),
                tasks: b.metric("postern_tasks").await,
                agents_connected: b.metric("postern_agents_connected").await,
                executions: get(&counters.executions),
                ssh_sessions: get(&counters.ssh_sessions),
                flaps: get(&counters.flaps),
                enrollments: get(&counters.enrollments),
                api_reads: get(&counters.api_reads),
                errors: get(&counters.errors),
            };
            println!("{}", serde_json::to_string(&s).unwrap_or_default());
            samples.push(s);
            next_sample += opts.sample_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    for t in load {
        let _ = tokio::time::timeout(Duration::from_secs(90), t).await;
    }
    for f in &flappers {
        f.stop.cancel();
    }
    let warm = opts.warmup.as_secs_f64() / 60.0;
    let first = samples
        .iter()
        .find(|s| s.minute >= warm)
        .or(samples.first())
        .cloned();
    let last = samples.last().cloned();
    let (rss_growth_pct, fds_growth, tasks_growth) = match (first, last) {
        (Some(f), Some(l)) => (
            (l.rss_kib as f64 - f.rss_kib as f64) * 100.0 / (f.rss_kib.max(1) as f64),
            l.fds as i64 - f.fds as i64,
            l.tasks as i64 - f.tasks as i64,
        ),
        _ => (0.0, 0, 0),
    };
    SoakReport {
        samples,
        rss_growth_pct,
        fds_growth,
        tasks_growth,
    }
}
