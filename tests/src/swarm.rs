//! The agent swarm: many real agents in one process, each with its own key,
//! certificate and TLS connection (the agent library, not a fake), against one
//! real bastion process. Used by the benchmark binary and by a small CI test.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use std::sync::Arc;

use postern_agent::exec::Executor;
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
    /// Node counts for the cmdexec fan-out measurement (`hostname` on each).
    pub fanout: Vec<usize>,
    pub fanout_runs: usize,
    /// Also run one fan-out to every node with a paused live reader.
    pub live: bool,
    /// How long to watch the bastion's CPU with every agent connected and
    /// nothing asked of it (zero: not measured).
    pub idle: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutReport {
    pub nodes: usize,
    /// POST to every result stored, per run.
    pub runs_secs: Vec<f64>,
    pub median_secs: f64,
    /// Bastion CPU time (user + system) per run, median.
    pub bastion_cpu_secs: f64,
    /// Bastion CPU per node, µs (median run).
    pub bastion_cpu_us_per_node: f64,
    /// POST to the last node's command started (the agents' own start times),
    /// per run, median.
    pub dispatch_secs: f64,
    pub bastion_peak_rss_kib: u64,
    /// Node results other than `succeeded`, over all runs (with one example error).
    pub failed_nodes: i64,
    pub example_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub agents: usize,
    pub enroll_secs: f64,
    pub connect_secs: f64,
    /// From the start of the connections to every channel's first contact
    /// done (versions, labels, spools read): until then the bastion is busy.
    pub settled_secs: f64,
    pub bastion_rss_before_kib: u64,
    pub bastion_rss_connected_kib: u64,
    pub bastion_kib_per_agent: f64,
    /// The same at the end of the idle watch (`idle_secs` later): what the
    /// connection storm freed has been returned by then.
    pub bastion_kib_per_agent_idle_end: Option<f64>,
    /// The allocator's figures per agent (a bastion that shows them on
    /// `/metrics`), three seconds after the fleet settled and at the end of
    /// the idle watch.
    pub heap_per_agent: Option<HeapKib>,
    pub heap_per_agent_idle_end: Option<HeapKib>,
    /// Bastion CPU while every agent sat idle for `idle_secs`, per agent per
    /// minute (µs).
    pub idle_secs: f64,
    pub idle_cpu_us_per_agent_minute: Option<f64>,
    /// Channels parked at the end of the idle watch (a bastion that parks).
    pub parked_idle_end: Option<u64>,
    pub restart_reconnect_secs: Option<f64>,
    pub bastion_kib_per_agent_after_restart: Option<f64>,
    pub agents_gave_up: usize,
    pub fanout: Vec<FanoutReport>,
    pub live: Option<LiveReport>,
}

/// A fan-out to every node with one live reader that reads the first event,
/// pauses until the execution has finished, then reads everything.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveReport {
    pub nodes: usize,
    /// Events the reader received, and how many a complete stream has
    /// (each node's start, output and end, and the execution's end).
    pub events: usize,
    pub events_expected: usize,
    pub lagged_events: usize,
    /// Bastion memory before the run, and its peak while the reader was paused.
    pub bastion_rss_before_kib: u64,
    pub bastion_peak_rss_paused_kib: u64,
    /// The same fan-out's peak without a reader (the last plain run), to compare.
    pub bastion_peak_rss_without_reader_kib: Option<u64>,
    /// Time to read the whole stream once the reader resumed.
    pub read_secs: f64,
}

/// The bastion allocator's figures in KiB (see `postern_heap_*` on `/metrics`):
/// what live objects asked for, the pages holding them, what it keeps resident.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HeapKib {
    pub allocated: f64,
    pub active: f64,
    pub resident: f64,
}

impl HeapKib {
    /// The allocator's figures now; `None` from a build that does not show them.
    pub async fn read(bastion: &Bastion) -> Option<HeapKib> {
        let text = bastion.metrics_text().await;
        let get = |name: &str| crate::metric_in::<f64>(&text, name);
        Some(HeapKib {
            allocated: get("postern_heap_allocated_bytes")? / 1024.0,
            active: get("postern_heap_active_bytes")? / 1024.0,
            resident: get("postern_heap_resident_bytes")? / 1024.0,
        })
    }

    /// What `self` holds beyond `before`, per one of `n`.
    pub fn per(self, before: HeapKib, n: usize) -> HeapKib {
        let n = n.max(1) as f64;
        HeapKib {
            allocated: (self.allocated - before.allocated) / n,
            active: (self.active - before.active) / n,
            resident: (self.resident - before.resident) / n,
        }
    }
}

/// CPU seconds (user + system) the process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of /proc/PID/stat (utime, stime), 0-based 11 and 12 after the name.
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// The bastion's database, for the benchmark's own queries. Opened without
/// migrations: a baseline build run beside this one keeps the schema it made.
pub async fn store_reader(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("the bastion's database at {url}: {e}"))
}

/// Runs `hostname` on the first `nodes` swarm nodes, `runs` times; each run is timed
/// from the POST to the moment no result of it is pending or running in the store.
async fn fanout(bastion: &Bastion, nodes: usize, total: usize, runs: usize) -> FanoutReport {
    let pid = bastion.pid().unwrap_or(0);
    let store = store_reader(&bastion.sqlite_url()).await;
    let r = fanout_on(bastion, &store, &[pid], nodes, total, runs).await;
    store.close().await;
    r
}

/// [`fanout`] posted to `bastion`, watched in `store`; CPU is summed over
/// `pids` (every replica taking part) and peak memory is the largest of them.
pub async fn fanout_on(
    bastion: &Bastion,
    store: &sqlx::AnyPool,
    pids: &[u32],
    nodes: usize,
    total: usize,
    runs: usize,
) -> FanoutReport {
    let cpu = || pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let body = if nodes >= total {
        json!({"target_type": "cluster", "command": "hostname"})
    } else {
        let target: Vec<String> = (0..nodes).map(|i| format!("swarm-{i:05}")).collect();
        json!({"target_type": "node", "target": target, "command": "hostname"})
    };
    let (mut times, mut cpus, mut peak, mut failed_nodes, mut example_error) =
        (vec![], vec![], 0, 0, None);
    let mut dispatches = vec![];
    for _ in 0..runs {
        let cpu0 = cpu();
        let t = Instant::now();
        let posted_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let (s, v) = bastion
            .post("/cmdexec/v1/projects/web/edges/eu-1/execute/", body.clone())
            .await;
        assert_eq!(s, 202, "{v}");
        let exec_id = v["exec_id"].as_str().unwrap_or_default().to_string();
        // Until the execution is finished: every result stored and every
        // agent told to release its spooled copy.
        loop {
            let open: (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM executions WHERE id = $1 AND finished_at IS NULL",
            )
            .bind(&exec_id)
            .fetch_one(store)
            .await
            .unwrap_or((1,));
            peak = pids.iter().map(|p| rss_kib(*p)).fold(peak, u64::max);
            if open.0 == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "fan-out to {nodes} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(t.elapsed().as_secs_f64());
        cpus.push(cpu() - cpu0);
        let last_start: (Option<i64>,) =
            sqlx::query_as("SELECT MAX(started_at) FROM exec_results WHERE exec_id = $1")
                .bind(&exec_id)
                .fetch_one(store)
                .await
                .unwrap_or((None,));
        dispatches.push(
            last_start
                .0
                .map_or(f64::NAN, |s| (s - posted_ms) as f64 / 1000.0),
        );
        let failed: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM exec_results WHERE exec_id = $1 AND status <> 'succeeded'",
        )
        .bind(&exec_id)
        .fetch_one(store)
        .await
        .unwrap_or_else(|e| panic!("counting the failed nodes: {e}"));
        failed_nodes += failed.0;
        if failed.0 > 0 && example_error.is_none() {
            let e: Option<(Option<String>,)> =
                sqlx::query_as("SELECT error FROM exec_results WHERE exec_id = $1 AND status <> 'succeeded' LIMIT 1")
                    .bind(&exec_id)
                    .fetch_optional(store)
                    .await
                    .unwrap_or(None);
            example_error = e.and_then(|e| e.0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    FanoutReport {
        nodes,
        median_secs: median(&times),
        runs_secs: times,
        bastion_cpu_secs: median(&cpus),
        bastion_cpu_us_per_node: median(&cpus) * 1e6 / nodes.max(1) as f64,
        dispatch_secs: median(&dispatches),
        bastion_peak_rss_kib: peak,
        failed_nodes,
        example_error,
    }
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

/// Enrolls `n` swarm nodes through the real join, `concurrency` at once;
/// `join(i)` says how node `i` joins.
pub async fn enroll_all(
    n: usize,
    concurrency: usize,
    join: impl Fn(usize) -> JoinRequest,
) -> Vec<Arc<postern_agent::Identity>> {
    stream::iter(0..n)
        .map(|i| {
            let req = join(i);
            async move {
                postern_agent::join(&req)
                    .await
                    .unwrap_or_else(|e| panic!("enroll {i}: {e}"))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// A swarm's agents, each running its channel in its own task.
pub struct Running {
    pub agents: Vec<Agent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Running {
    pub fn start(identities: Vec<Arc<postern_agent::Identity>>, backoff_cap: Duration) -> Running {
        let shutdown = CancellationToken::new();
        let options = AgentOptions {
            backoff_cap,
            ..AgentOptions::default()
        };
        // The swarm's "nodes" share one process and its 20,000 file descriptors:
        // one shared limit on running commands stands in for each node's own.
        let slots = Arc::new(tokio::sync::Semaphore::new(1_500));
        let agents: Vec<Agent> = identities
            .into_iter()
            .map(|id| {
                Agent::with_executor(
                    id,
                    options.clone(),
                    Executor::with_slots(None, slots.clone()),
                )
            })
            .collect();
        let tasks = agents
            .iter()
            .map(|a| {
                let a = a.clone();
                let s = shutdown.clone();
                tokio::spawn(async move { a.run(s).await })
            })
            .collect();
        Running {
            agents,
            tasks,
            shutdown,
        }
    }

    /// Agents whose channel loop ended on its own (gave up).
    pub fn gave_up(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    pub fn connected(&self) -> usize {
        self.agents
            .iter()
            .filter(|a| a.status.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Stops every agent, waiting up to 10 s for each.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// A profiler run over one phase of the swarm (`idle`, `fanout-N`): the
/// command in `POSTERN_SWARM_PROFILE`, with `{pid}` the bastion's and
/// `{phase}` the phase's name, started as the phase starts and stopped with
/// SIGINT as it ends (as `perf record -p` expects).
pub struct Profiler(Option<std::process::Child>);

impl Profiler {
    pub fn start(pid: u32, phase: &str) -> Profiler {
        let Ok(cmd) = std::env::var("POSTERN_SWARM_PROFILE") else {
            return Profiler(None);
        };
        let cmd = cmd
            .replace("{pid}", &pid.to_string())
            .replace("{phase}", phase);
        tracing::info!(%cmd, "profiling");
        // exec: the signal goes to the profiler, not to a shell around it.
        let child = std::process::Command::new("sh")
            .args(["-c", &format!("exec {cmd}")])
            .spawn()
            .ok();
        // perf needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_secs(1));
        Profiler(child)
    }

    pub fn stop(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// Waits until every connected agent's first contact is done, so what is
/// measured next is the bastion at rest, not catching up. A bastion without
/// the counter (a baseline build) is given a fixed minute instead.
async fn settled(bastion: &Bastion, n: usize) {
    let text = bastion.metrics_text().await;
    if !text.contains("postern_agent_first_contacts_total") {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    eventually(Duration::from_secs(600), "first contacts done", || async {
        bastion.metric("postern_agent_first_contacts_total").await >= n as u64
    })
    .await;
}

/// Runs the swarm and returns what was measured.
pub async fn run(opts: &SwarmOpts) -> Report {
    // One address for the whole fleet (see `one_address_fleet`), and a live
    // reader that pauses for the whole fan-out on purpose (what a paused
    // reader costs), longer than a client that reads nothing is otherwise kept.
    let mut extra_args = crate::one_address_fleet();
    extra_args.extend(["--exec-stream-stall".into(), "600s".into()]);
    let mut bastion = Bastion::start(BastionOpts {
        extra_args,
        ..BastionOpts::default()
    })
    .await;
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
    let identities = enroll_all(n, opts.enroll_concurrency, join).await;
    let enroll_secs = t0.elapsed().as_secs_f64();

    let pid = bastion.pid().unwrap_or(0);
    // Let the enrollment burst settle before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);
    let heap_before = HeapKib::read(&bastion).await;
    // A profiler to attach now, before any agent connects (heaptrack -p,
    // perf record -p): `{pid}` is the bastion's. It runs beside the swarm.
    let _attached = std::env::var("POSTERN_SWARM_ATTACH").ok().map(|cmd| {
        let cmd = cmd.replace("{pid}", &pid.to_string());
        tracing::info!(%cmd, "attaching");
        let child = std::process::Command::new("sh").args(["-c", &cmd]).spawn();
        std::thread::sleep(Duration::from_secs(10));
        child
    });

    let t1 = Instant::now();
    let swarm = Running::start(identities, opts.backoff_cap);
    let all_connected = || async { bastion.metric("postern_agents_connected").await == n as u64 };
    eventually(
        Duration::from_secs(600),
        "all agents connected",
        all_connected,
    )
    .await;
    let connect_secs = t1.elapsed().as_secs_f64();
    settled(&bastion, n).await;
    let settled_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_connected = rss_kib(pid);
    let per_agent = (rss_connected.saturating_sub(rss_before)) as f64 / n as f64;
    let heap_per = |now: Option<HeapKib>| Some(now?.per(heap_before?, n));
    let heap_per_agent = heap_per(HeapKib::read(&bastion).await);
    let (mut idle_cpu, mut per_agent_idle_end, mut heap_per_agent_idle_end) = (None, None, None);
    let mut parked_idle_end = None;
    if !opts.idle.is_zero() {
        let profiler = Profiler::start(pid, "idle");
        let c0 = cpu_secs(pid);
        tokio::time::sleep(opts.idle).await;
        let used = cpu_secs(pid) - c0;
        profiler.stop();
        idle_cpu = Some(used * 1e6 / n as f64 / (opts.idle.as_secs_f64() / 60.0));
        per_agent_idle_end = Some(rss_kib(pid).saturating_sub(rss_before) as f64 / n as f64);
        heap_per_agent_idle_end = heap_per(HeapKib::read(&bastion).await);
        parked_idle_end = crate::metric_in(&bastion.metrics_text().await, "postern_agents_parked");
    }

    let mut fanouts = Vec::new();
    for &size in &opts.fanout {
        if size <= n {
            let profiler = Profiler::start(pid, &format!("fanout-{size}"));
            fanouts.push(fanout(&bastion, size, n, opts.fanout_runs).await);
            profiler.stop();
        }
    }

    let live = if opts.live {
        let without = fanouts
            .iter()
            .find(|f| f.nodes >= n)
            .map(|f| f.bastion_peak_rss_kib);
        Some(live_fanout(&bastion, n, without).await)
    } else {
        None
    };

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
        settled(&bastion, n).await;
        tracing::info!(?ready_after, "bastion ready after restart");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(bastion.pid().unwrap_or(0));
        per_agent_after = Some(rss.saturating_sub(rss_fresh) as f64 / n as f64);
    }
    let gave_up = swarm.gave_up();
    tracing::info!(connected_agents = swarm.connected(), "swarm done");
    swarm.stop().await;
    Report {
        agents: n,
        enroll_secs,
        connect_secs,
        settled_secs,
        bastion_rss_before_kib: rss_before,
        bastion_rss_connected_kib: rss_connected,
        bastion_kib_per_agent: per_agent,
        bastion_kib_per_agent_idle_end: per_agent_idle_end,
        heap_per_agent,
        heap_per_agent_idle_end,
        idle_secs: opts.idle.as_secs_f64(),
        idle_cpu_us_per_agent_minute: idle_cpu,
        parked_idle_end,
        restart_reconnect_secs: restart_secs,
        bastion_kib_per_agent_after_restart: per_agent_after,
        agents_gave_up: gave_up,
        fanout: fanouts,
        live,
    }
}

async fn live_fanout(bastion: &Bastion, n: usize, without: Option<u64>) -> LiveReport {
    let pid = bastion.pid().unwrap_or(0);
    let store = store_reader(&bastion.sqlite_url()).await;
    let rss_before = rss_kib(pid);
    let (s, v) = bastion
        .post(
            "/cmdexec/v1/projects/web/edges/eu-1/execute/",
            json!({"target_type": "cluster", "command": "hostname"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let exec_id = v["exec_id"].as_str().unwrap_or_default().to_string();
    let path = format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{exec_id}/events");
    let mut reader =
        crate::sse::open_with(bastion.api, &path, &bastion.token, None, Some(16 * 1024))
            .await
            .unwrap_or_else(|e| panic!("events: {e:?}"));
    let first = reader.next(Duration::from_secs(60)).await;
    let mut peak = rss_kib(pid);
    loop {
        let open: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM executions WHERE id = $1 AND finished_at IS NULL")
                .bind(&exec_id)
                .fetch_one(&store)
                .await
                .unwrap_or((1,));
        peak = peak.max(rss_kib(pid));
        if open.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let mut events: Vec<crate::sse::Sse> = first.into_iter().collect();
    events.extend(reader.all(Duration::from_secs(600)).await);
    let read_secs = t.elapsed().as_secs_f64();
    store.close().await;
    let lagged = events.iter().filter(|e| e.event == "lagged").count();
    LiveReport {
        nodes: n,
        events: events.len() - lagged,
        events_expected: 3 * n + 1,
        lagged_events: lagged,
        bastion_rss_before_kib: rss_before,
        bastion_peak_rss_paused_kib: peak,
        bastion_peak_rss_without_reader_kib: without,
        read_secs,
    }
}
