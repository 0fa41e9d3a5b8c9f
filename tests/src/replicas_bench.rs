//! The replicas benchmark, in one run: three bastion replicas on PostgreSQL with
//! a swarm of real agents spread over them, against the same swarm on a single
//! replica.
//!
//! 1. SSH to one node's real sshd, through the replica holding the node (the
//!    direct one-replica path) and through another replica (one peer hop).
//! 2. A fan-out of `hostname` to every node posted to replica 1 (two thirds of
//!    the calls routed through peers), with the CPU of all three replicas.
//! 3. `kill -9` of replica 3: time until all its agents are connected to the
//!    others, the handshake rate meanwhile, and whether any agent gave up.
//! 4. Replica 2 stopped cleanly, so the whole swarm is on replica 1: the same
//!    fan-out again, the single-replica baseline.

use std::time::{Duration, Instant};

use postern_agent::JoinRequest;
use serde::Serialize;
use serde_json::json;

use crate::ssh::{InstalledHelper, Node, SshUser};
use crate::ssh_bench::{BenchOpts, PathFigures, measure_path};
use crate::swarm::{FanoutReport, Running, enroll_all, fanout_on, store_reader};
use crate::{Bastion, eventually};

#[derive(Debug, Clone)]
pub struct ReplicasBenchOpts {
    pub agents: usize,
    pub enroll_concurrency: usize,
    pub fanout_runs: usize,
    pub backoff_cap: Duration,
    pub ssh: BenchOpts,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillFigures {
    /// Agents the killed replica held.
    pub agents_moved: u64,
    /// From the kill until every agent is connected to a live replica.
    pub back_secs: f64,
    /// Agent handshakes on the surviving replicas per second over that time.
    pub handshakes_per_sec: f64,
    pub agents_gave_up: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicasReport {
    pub agents: usize,
    pub connect_secs: f64,
    pub ssh_direct: PathFigures,
    pub ssh_peer_hop: PathFigures,
    /// Peer hop ÷ direct, throughput (higher is better; aim ≥ 0.8).
    pub ssh_upload_ratio: f64,
    pub ssh_download_ratio: f64,
    /// Peer hop ÷ direct, `ssh … true` median set-up time (lower is better).
    pub ssh_setup_ratio: f64,
    pub routed_fanout: FanoutReport,
    pub single_fanout: FanoutReport,
    /// Routed ÷ single median fan-out time (aim ≤ 1.3).
    pub fanout_ratio: f64,
    /// Bastion CPU per node (all replicas taking part), milliseconds.
    pub routed_cpu_ms_per_node: f64,
    pub single_cpu_ms_per_node: f64,
    pub kill: KillFigures,
}

pub async fn run(opts: &ReplicasBenchOpts) -> ReplicasReport {
    // The others are started with r1's options.
    let r1 = Bastion::start(crate::BastionOpts {
        extra_args: crate::one_address_fleet(),
        ..Bastion::replica_opts("r1")
    })
    .await;
    let mut r2 = Bastion::replica_of(&r1, "r2").await;
    let mut r3 = Bastion::replica_of(&r1, "r3").await;
    let url = r1.opts.database_url.clone().unwrap_or_default();
    let store = store_reader(&url).await;
    let n = opts.agents;

    // The swarm: agent i lists replica i % 3 first, the others after it.
    let token = r1
        .enrollment(json!({"max_uses": n, "auto_approve": true, "ttl_seconds": 86_400}))
        .await;
    let urls: Vec<String> = [&r1, &r2, &r3]
        .iter()
        .map(|b| format!("https://{}", b.agent))
        .collect();
    let join = |i: usize| JoinRequest {
        controller: (0..3)
            .map(|k| urls[(i + k) % 3].clone())
            .collect::<Vec<_>>()
            .join(","),
        token: token["token"].as_str().unwrap_or_default().to_string(),
        ca_hash: token["ca_hash"].as_str().unwrap_or_default().to_string(),
        hostname: format!("swarm-{i:05}"),
        data_dir: None,
    };
    let identities = enroll_all(n, opts.enroll_concurrency, join).await;
    let t = Instant::now();
    let swarm = Running::start(identities, opts.backoff_cap);
    let all = [&r1, &r2, &r3];
    eventually(Duration::from_secs(600), "all agents connected", || async {
        Bastion::metric_total(&all, "postern_agents_connected").await == n as u64
    })
    .await;
    let connect_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. SSH: a node held by r1, reached through r1 and through r2.
    let h = InstalledHelper::install();
    let node = Node::start(&r1, &h, "sshnode").await;
    eventually(Duration::from_secs(30), "r2 sees the ssh node", || {
        r2.reachable("sshnode")
    })
    .await;
    let u = SshUser::create(&r1, "bench", Some(("project_admin", &["root"]))).await;
    let via_r2 = u.config_through(r2.ssh.port());
    let route: Vec<String> = vec!["-J".into(), "bastion".into(), "root@sshnode".into()];
    let ssh_direct = measure_path("one replica", &u.config, &route, &opts.ssh);
    eprintln!("{ssh_direct:?}");
    let ssh_peer_hop = measure_path("peer hop", &via_r2, &route, &opts.ssh);
    eprintln!("{ssh_peer_hop:?}");
    // The SSH node stays: a real agent process among the swarm's nodes.
    let nodes = n + 1;

    // 2. The routed fan-out, posted to r1.
    let pids: Vec<u32> = all.iter().filter_map(|b| b.pid()).collect();
    let routed_fanout = fanout_on(&r1, &store, &pids, nodes, nodes, opts.fanout_runs).await;
    eprintln!("{routed_fanout:?}");

    // 3. r3 dies.
    let moved = r3.metric("postern_agents_connected").await;
    let rest = [&r1, &r2];
    let hs0 = Bastion::metric_total(&rest, "postern_agent_handshakes_total").await;
    let killed = Instant::now();
    r3.kill();
    eventually(
        Duration::from_secs(300),
        "r3's agents on the others",
        || async { Bastion::metric_total(&rest, "postern_agents_connected").await == nodes as u64 },
    )
    .await;
    let back_secs = killed.elapsed().as_secs_f64();
    let hs = Bastion::metric_total(&rest, "postern_agent_handshakes_total")
        .await
        .saturating_sub(hs0);
    let kill = KillFigures {
        agents_moved: moved,
        back_secs,
        handshakes_per_sec: hs as f64 / back_secs.max(1e-3),
        agents_gave_up: swarm.gave_up(),
    };
    eprintln!("{kill:?}");

    // 4. Everything on r1: the single-replica baseline.
    r2.stop();
    eventually(
        Duration::from_secs(300),
        "the whole swarm on r1",
        || async { r1.metric("postern_agents_connected").await == nodes as u64 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let single_fanout = fanout_on(&r1, &store, &pids[..1], nodes, nodes, opts.fanout_runs).await;
    eprintln!("{single_fanout:?}");

    tracing::info!(connected_agents = swarm.connected(), "replicas bench done");
    swarm.stop().await;
    store.close().await;
    drop(node);
    let per_node = |f: &FanoutReport| f.bastion_cpu_secs * 1000.0 / nodes as f64;
    ReplicasReport {
        agents: n,
        connect_secs,
        ssh_upload_ratio: ssh_peer_hop.upload_mb_s / ssh_direct.upload_mb_s,
        ssh_download_ratio: ssh_peer_hop.download_mb_s / ssh_direct.download_mb_s,
        ssh_setup_ratio: ssh_peer_hop.setup_p50_s / ssh_direct.setup_p50_s,
        ssh_direct,
        ssh_peer_hop,
        fanout_ratio: routed_fanout.median_secs / single_fanout.median_secs,
        routed_cpu_ms_per_node: per_node(&routed_fanout),
        single_cpu_ms_per_node: per_node(&single_fanout),
        routed_fanout,
        single_fanout,
        kill,
    }
}
