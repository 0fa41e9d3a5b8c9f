//! The agent swarm: many real agents in one process, each with its own key,
//! certificate and TLS connection (the agent library, not a fake), against one
//! real bastion process. Used by the benchmark binary and by a small CI test.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use postern_agent::{Agent, AgentOptions, JoinRequest};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{Bastion, BastionOpts, eventually};

#[derive(Debug, Clone)]
pub struct SwarmOpts {
    pub agents: usize,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    pub restart: bool,
    pub backoff_cap: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub agents: usize,
    pub enroll_secs: f64,
    pub connect_secs: f64,
    pub bastion_rss_before_kib: u64,
    pub bastion_rss_connected_kib: u64,
    pub bastion_kib_per_agent: f64,
    pub restart_reconnect_secs: Option<f64>,
    pub bastion_kib_per_agent_after_restart: Option<f64>,
    pub agents_gave_up: usize,
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the swarm and returns what was measured.
pub async fn run(opts: &SwarmOpts) -> Report {
    let mut bastion = Bastion::start(BastionOpts::default()).await;
    let n = opts.agents;
    let token = bastion
        .enrollment(json!({"max_uses": n, "auto_approve": true, "ttl_seconds": 86_400}))
        .await;
    let join = |i: usize| JoinRequest {
        controller: format!("https://{}", bastion.agent),
        token: token["token"].as_str().unwrap_or_default().to_string(),
        ca_hash: token["ca_hash"].as_str().unwrap_or_default().to_string(),
        hostname: format!("swarm-{i:05}"),
        data_dir: None,
    };

    let t0 = Instant::now();
    let identities: Vec<_> = stream::iter(0..n)
        .map(|i| {
            let req = join(i);
            async move {
                postern_agent::join(&req)
                    .await
                    .unwrap_or_else(|e| panic!("enroll {i}: {e}"))
            }
        })
        .buffer_unordered(opts.enroll_concurrency)
        .collect()
        .await;
    let enroll_secs = t0.elapsed().as_secs_f64();

    let pid = bastion.pid().unwrap_or(0);
    // Let the enrollment burst settle before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);

    let shutdown = CancellationToken::new();
    let options = AgentOptions {
        backoff_cap: opts.backoff_cap,
        ..AgentOptions::default()
    };
    let agents: Vec<Agent> = identities
        .into_iter()
        .map(|id| Agent::new(id, options.clone()))
        .collect();
    let t1 = Instant::now();
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| {
            let a = a.clone();
            let s = shutdown.clone();
            tokio::spawn(async move { a.run(s).await })
        })
        .collect();
    let all_connected = || async { bastion.metric("postern_agents_connected").await == n as u64 };
    eventually(
        Duration::from_secs(600),
        "all agents connected",
        all_connected,
    )
    .await;
    let connect_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_connected = rss_kib(pid);
    let per_agent = (rss_connected.saturating_sub(rss_before)) as f64 / n as f64;

    let (mut restart_secs, mut per_agent_after) = (None, None);
    if opts.restart {
        bastion.stop();
        let t2 = Instant::now();
        bastion.restart().await;
        let ready_after = t2.elapsed();
        let rss_fresh = rss_kib(bastion.pid().unwrap_or(0));
        let t3 = Instant::now();
        eventually(
            Duration::from_secs(600),
            "all agents back after restart",
            || async { bastion.metric("postern_agents_connected").await == n as u64 },
        )
        .await;
        restart_secs = Some(t3.elapsed().as_secs_f64());
        tracing::info!(?ready_after, "bastion ready after restart");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(bastion.pid().unwrap_or(0));
        per_agent_after = Some(rss.saturating_sub(rss_fresh) as f64 / n as f64);
    }
    let gave_up = tasks.iter().filter(|t| t.is_finished()).count();
    let connected_agents = agents
        .iter()
        .filter(|a| a.status.connected.load(Ordering::Relaxed))
        .count();
    tracing::info!(connected_agents, "swarm done");
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    Report {
        agents: n,
        enroll_secs,
        connect_secs,
        bastion_rss_before_kib: rss_before,
        bastion_rss_connected_kib: rss_connected,
        bastion_kib_per_agent: per_agent,
        restart_reconnect_secs: restart_secs,
        bastion_kib_per_agent_after_restart: per_agent_after,
        agents_gave_up: gave_up,
    }
}
