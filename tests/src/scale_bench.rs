//! The scale benchmark: more agents than one process may hold, across two
//! bastion replicas on PostgreSQL, in one run.
//!
//! One process may open 20,000 files here, so neither one bastion nor one
//! swarm process can hold 20,000 agents: the agents run in child processes of
//! this benchmark (`agents` mode, at most `per_process` each), and agent `i`
//! lists replica `i % 2` first. Measured:
//!
//! 1. Connection: from starting the agents until every one is connected, and
//!    until every first contact is done; memory per agent on each replica.
//! 2. A fan-out of `hostname` to every node posted to replica 1 (half the
//!    calls routed through replica 2), with the CPU of both replicas.
//! 3. `kill -9` of replica 2 and a restart on the same addresses once its
//!    lease has run out: its agents fail over to replica 1 until that holds
//!    `max_agent_connections` (16,000 by default, under the file limit), the
//!    rest wait for replica 2 again. Timed from the kill until every agent is
//!    connected again, and whether any gave up.
//! 4. The same fan-out again, on the fleet as the restart left it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use postern_agent::JoinRequest;
use serde::Serialize;
use serde_json::json;

use crate::swarm::{FanoutReport, Running, enroll_all, fanout_on, rss_kib, store_reader};
use crate::{Bastion, eventually};

#[derive(Debug, Clone)]
pub struct ScaleBenchOpts {
    pub agents: usize,
    /// Agents per child process (each holds one socket per agent).
    pub per_process: usize,
    pub enroll_concurrency: usize,
    pub fanout_runs: usize,
    pub backoff_cap: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaFigures {
    pub agents: u64,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub kib_per_agent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub agents: usize,
    pub agent_processes: usize,
    pub enroll_secs: f64,
    /// From starting the agents until every one is connected.
    pub connect_secs: f64,
    /// … and until every first contact is done.
    pub settled_secs: f64,
    pub replicas: Vec<ReplicaFigures>,
    pub fanout: FanoutReport,
    /// Bastion CPU per node-execution, both replicas, microseconds.
    pub cpu_us_per_node: f64,
    /// Agents replica 2 held when it was killed.
    pub agents_moved: u64,
    /// From the kill until every agent is connected again (the replica
    /// restarted meanwhile).
    pub back_secs: f64,
    /// Agents on each replica once all were back.
    pub after_restart: Vec<u64>,
    pub fanout_after_restart: FanoutReport,
    pub agents_gave_up: usize,
}

/// One child process running a slice of the swarm; closing its stdin stops it.
struct Part {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `ready` once enrolled, then `gave-up N` on stop.
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Part {
    fn spawn(args: &[String]) -> Part {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
        let mut child = Command::new(exe)
            .arg("agents")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the agents' process: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        Part {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line the child prints (blocking: called on a blocking thread).
    fn line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(l)) => l,
            other => panic!("the agents' process ended early: {other:?}"),
        }
    }

    fn stop(mut self) -> usize {
        drop(self.stdin.take());
        let gave_up = self
            .line()
            .strip_prefix("gave-up ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let _ = self.child.wait();
        gave_up
    }
}

/// The child's side: enroll `count` agents from `from`, say `ready`, run them
/// until stdin closes, then say how many gave up.
pub async fn agents_process(
    controllers: Vec<String>,
    token: String,
    ca_hash: String,
    from: usize,
    count: usize,
    enroll_concurrency: usize,
    backoff_cap: Duration,
) {
    let join = |k: usize| {
        let i = from + k;
        JoinRequest {
            controller: (0..controllers.len())
                .map(|j| controllers[(i + j) % controllers.len()].clone())
                .collect::<Vec<_>>()
                .join(","),
            token: token.clone(),
            ca_hash: ca_hash.clone(),
            hostname: format!("swarm-{i:05}"),
            data_dir: None,
        }
    };
    let identities = enroll_all(count, enroll_concurrency, join).await;
    let swarm = Running::start(identities, backoff_cap);
    println!("ready");
    let _ = std::io::stdout().flush();
    // The parent closes our stdin to stop us (or dies, which closes it too).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await;
    let gave_up = swarm.gave_up();
    swarm.stop().await;
    println!("gave-up {gave_up}");
    let _ = std::io::stdout().flush();
}

pub async fn run(opts: &ScaleBenchOpts) -> ScaleReport {
    let r1 = Bastion::start(crate::BastionOpts {
        extra_args: crate::one_address_fleet(),
        ..Bastion::replica_opts("r1")
    })
    .await;
    let mut r2 = Bastion::replica_of(&r1, "r2").await;
    let url = r1.opts.database_url.clone().unwrap_or_default();
    let store = store_reader(&url).await;
    let n = opts.agents;
    let token = r1
        .enrollment(json!({"max_uses": n, "auto_approve": true, "ttl_seconds": 86_400}))
        .await;
    let controllers = [&r1, &r2]
        .iter()
        .map(|b| format!("https://{}", b.agent))
        .collect::<Vec<_>>()
        .join(",");
    let pids: Vec<u32> = [&r1, &r2].iter().filter_map(|b| b.pid()).collect();
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // Every child enrolls its slice; each connects as soon as it has.
    let per = opts.per_process.max(1);
    let t0 = Instant::now();
    let mut parts: Vec<Part> = (0..n)
        .step_by(per)
        .map(|from| {
            Part::spawn(&[
                "--controllers".into(),
                controllers.clone(),
                "--token".into(),
                token["token"].as_str().unwrap_or_default().into(),
                "--ca-hash".into(),
                token["ca_hash"].as_str().unwrap_or_default().into(),
                "--from".into(),
                from.to_string(),
                "--count".into(),
                per.min(n - from).to_string(),
                "--enroll-concurrency".into(),
                opts.enroll_concurrency.to_string(),
                "--backoff-cap".into(),
                format!("{}s", opts.backoff_cap.as_secs().max(1)),
            ])
        })
        .collect();
    let ready = tokio::task::spawn_blocking(move || {
        for p in &mut parts {
            let l = p.line();
            assert_eq!(l, "ready", "the agents' process said {l:?}");
        }
        parts
    });
    // Enrolment and the first connections overlap across processes: the
    // connect time runs from the last process being ready.
    let parts = ready
        .await
        .unwrap_or_else(|e| panic!("waiting for the agents: {e}"));
    let enroll_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    eventually(Duration::from_secs(900), "all agents connected", || async {
        Bastion::metric_total(&[&r1, &r2], "postern_agents_connected").await == n as u64
    })
    .await;
    let connect_secs = t1.elapsed().as_secs_f64();
    eventually(Duration::from_secs(900), "first contacts done", || async {
        Bastion::metric_total(&[&r1, &r2], "postern_agent_first_contacts_total").await >= n as u64
    })
    .await;
    let settled_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut replicas = Vec::new();
    for (i, b) in [&r1, &r2].iter().enumerate() {
        let agents = b.metric("postern_agents_connected").await;
        let rss = rss_kib(pids[i]);
        replicas.push(ReplicaFigures {
            agents,
            rss_before_kib: rss_before[i],
            rss_connected_kib: rss,
            kib_per_agent: rss.saturating_sub(rss_before[i]) as f64 / agents.max(1) as f64,
        });
    }
    eprintln!("{replicas:?}");

    let fanout = fanout_on(&r1, &store, &pids, n, n, opts.fanout_runs).await;
    eprintln!("{fanout:?}");

    let agents_moved = r2.metric("postern_agents_connected").await;
    let killed = Instant::now();
    r2.kill();
    // A name whose heartbeat is fresh is refused to a new process (two under
    // one name would take each other's nodes): the restart waits for the
    // replica lease (5 s), as a service manager's restart delay would.
    tokio::time::sleep(Duration::from_secs(6)).await;
    r2.revive().await;
    eventually(
        Duration::from_secs(900),
        "every agent back after the kill",
        || async {
            Bastion::metric_total(&[&r1, &r2], "postern_agents_connected").await == n as u64
        },
    )
    .await;
    let back_secs = killed.elapsed().as_secs_f64();
    let after_restart = vec![
        r1.metric("postern_agents_connected").await,
        r2.metric("postern_agents_connected").await,
    ];
    eprintln!("back in {back_secs:.1}s: {after_restart:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids: Vec<u32> = [&r1, &r2].iter().filter_map(|b| b.pid()).collect();
    let fanout_after_restart = fanout_on(&r1, &store, &pids, n, n, opts.fanout_runs).await;
    eprintln!("{fanout_after_restart:?}");

    let agents_gave_up =
        tokio::task::spawn_blocking(move || parts.into_iter().map(Part::stop).sum::<usize>())
            .await
            .unwrap_or(0);
    store.close().await;
    ScaleReport {
        agents: n,
        agent_processes: n.div_ceil(per),
        enroll_secs,
        connect_secs,
        settled_secs,
        replicas,
        cpu_us_per_node: fanout.bastion_cpu_secs * 1e6 / n as f64,
        fanout,
        agents_moved,
        back_secs,
        after_restart,
        fanout_after_restart,
        agents_gave_up,
    }
}
