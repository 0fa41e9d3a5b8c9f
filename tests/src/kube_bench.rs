//! The Kubernetes door measured against the same API server reached directly,
//! with the same client, in one run: latency of a small GET (p50, p99), requests
//! per second at 16 concurrent HTTP/2 connections, small changes per second
//! (each written to the audit log before it is sent, fail closed), how long a
//! change takes to reach a watch, and the CPU the bastion and the gateway agent
//! spend per 1,000 requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};

use crate::kube::{client_tls, door, kubeconfig_ca};
use crate::swarm::cpu_secs;

#[derive(Debug, Clone)]
pub struct KubeBenchOpts {
    /// Sequential requests for the latency figures.
    pub latency_requests: usize,
    pub connections: usize,
    /// How long each requests-per-second run lasts.
    pub rate_for: Duration,
    /// Changes timed to their watch events.
    pub watch_events: usize,
}

/// Where a client sends its requests: the API server itself, or the door.
#[derive(Clone)]
struct Target {
    addr: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

impl Target {
    async fn connect(&self) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }

    fn get(&self, path: &str) -> http::Request<Full<Bytes>> {
        http::Request::get(format!("https://{}{path}", self.addr))
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }
}

async fn small_get(s: &mut SendRequest<Full<Bytes>>, t: &Target) {
    let resp = s
        .send_request(t.get("/api/v1/namespaces/default"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn latency(t: &Target, n: usize) -> (f64, f64) {
    let mut s = t.connect().await;
    for _ in 0..50 {
        small_get(&mut s, t).await;
    }
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        small_get(&mut s, t).await;
        took.push(start.elapsed());
    }
    took.sort();
    (percentile(&took, 0.5), percentile(&took, 0.99))
}

async fn rate(t: &Target, connections: usize, run_for: Duration) -> (f64, u64) {
    let mut tasks = Vec::new();
    let until = Instant::now() + run_for;
    for _ in 0..connections {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = t.connect().await;
            let mut n = 0u64;
            while Instant::now() < until {
                small_get(&mut s, &t).await;
                n += 1;
            }
            n
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    (total as f64 / start.elapsed().as_secs_f64(), total)
}

/// A ConfigMap of each connection's own, created for [`write_rate`].
struct Writer {
    s: SendRequest<Full<Bytes>>,
    name: String,
}

fn change(
    t: &Target,
    method: &str,
    path: &str,
    ctype: &str,
    body: String,
) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://{}{path}", t.addr))
        .header("authorization", format!("Bearer {}", t.token))
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn writers(t: &Target, connections: usize) -> Vec<Writer> {
    let tag = rand::random::<u32>();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = t.connect().await;
            let name = format!("bench-w-{tag}-{c}");
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
            let req = change(
                &t,
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                obj.to_string(),
            );
            let resp = s.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 201);
            resp.into_body().collect().await.unwrap();
            Writer { s, name }
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Small changes per second: each writer patches its ConfigMap again and
/// again (through the door, each change's fail-closed audit entry is
/// committed before it is sent); the ConfigMaps are deleted after.
async fn write_rate(t: &Target, writers: Vec<Writer>, run_for: Duration) -> (f64, u64) {
    let until = Instant::now() + run_for;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut w in writers {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/api/v1/namespaces/default/configmaps/{}", w.name);
            let mut n = 0u64;
            while Instant::now() < until {
                let body = json!({"data": {"n": n.to_string()}}).to_string();
                let req = change(&t, "PATCH", &path, "application/merge-patch+json", body);
                let resp = w.s.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                n += 1;
            }
            (n, w, path)
        }));
    }
    let mut total = 0;
    let mut done = Vec::new();
    for task in tasks {
        let (n, w, path) = task.await.unwrap();
        total += n;
        done.push((w, path));
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    for (mut w, path) in done {
        let resp =
            w.s.send_request(change(
                t,
                "DELETE",
                &path,
                "application/json",
                String::new(),
            ))
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
    }
    (rate, total)
}

/// Milliseconds from a change's request to its event on a watch through `t`.
async fn watch_delays(t: &Target, direct: &Target, events: usize) -> Vec<f64> {
    let mut w = t.connect().await;
    let req = http::Request::get(format!(
        "https://{}/api/v1/namespaces/default/configmaps?watch=true",
        t.addr
    ))
    .header("authorization", format!("Bearer {}", t.token))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = w.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut writer = direct.connect().await;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let tag = rand::random::<u32>();
    for i in 0..events {
        let name = format!("bench-{tag}-{i}");
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
        let req = http::Request::post(format!(
            "https://{}/api/v1/namespaces/default/configmaps",
            direct.addr
        ))
        .header("authorization", format!("Bearer {}", direct.token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(obj.to_string())))
        .unwrap();
        // Timed from the change's request: the event may arrive before its answer.
        let created = Instant::now();
        let resp = writer.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 201);
        resp.into_body().collect().await.unwrap();
        loop {
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let ev: Value = serde_json::from_slice(&line).unwrap_or_default();
                if ev["object"]["metadata"]["name"] == name.as_str() {
                    out.push(created.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("a watch event within 10 s")
                .unwrap()
                .unwrap();
            if let Ok(d) = frame.into_data() {
                buf.extend_from_slice(&d);
            }
        }
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(o: &KubeBenchOpts) -> Value {
    let (mut k, b, kube_addr, gateway) = door().await;
    let (code, cfg) = crate::http(b.api, "GET", "/api/v1/kubeconfig", Some(&b.token), None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let door = Target {
        addr: kube_addr,
        server_name: ServerName::try_from("eu-1.web.kube.postern").unwrap(),
        tls: client_tls(&kubeconfig_ca(cfg.as_str().unwrap()), b"h2"),
        token: b.token.clone(),
    };
    let direct = Target {
        addr: k.url().trim_start_matches("https://").to_string(),
        server_name: ServerName::try_from("127.0.0.1").unwrap(),
        tls: client_tls(k.ca_pem().as_bytes(), b"h2"),
        token: k.token("admin").await,
    };
    // The gateway's capability arrives with its channel.
    crate::eventually(Duration::from_secs(15), "the door answers", || async {
        let mut s = door.connect().await;
        let resp = s.send_request(door.get("/api/v1/namespaces/default")).await;
        resp.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let (direct_p50, direct_p99) = latency(&direct, o.latency_requests).await;
    let (door_p50, door_p99) = latency(&door, o.latency_requests).await;

    // Every process on the two cores, per request of each run: what the
    // door's rate is bound by.
    let (apiserver, etcd) = k.pids();
    let others = |door: Option<(u32, u32)>| {
        let mut pids = vec![
            ("client", Some(std::process::id())),
            ("apiserver", apiserver),
            ("etcd", etcd),
        ];
        if let Some((b, g)) = door {
            pids.extend([("bastion", Some(b)), ("gateway", Some(g))]);
        }
        pids.into_iter()
            .filter_map(|(n, p)| Some((n, p?)))
            .map(|(n, p)| (n, p, cpu_secs(p)))
            .collect::<Vec<_>>()
    };
    let per_request = |before: Vec<(&'static str, u32, f64)>, n: u64| {
        let mut m = serde_json::Map::new();
        for (name, pid, cpu) in before {
            m.insert(
                name.into(),
                json!((cpu_secs(pid) - cpu) / n.max(1) as f64 * 1000.0),
            );
        }
        Value::Object(m)
    };
    let before = others(None);
    let (direct_rps, direct_n) = rate(&direct, o.connections, o.rate_for).await;
    let direct_cpu = per_request(before, direct_n);
    let bastion_pid = b.pid().unwrap();
    let before = others(Some((bastion_pid, gateway.pid())));
    let (door_rps, door_n) = rate(&door, o.connections, o.rate_for).await;
    let door_cpu = per_request(before, door_n);
    let bastion_cpu = door_cpu["bastion"].as_f64().unwrap_or_default();
    let gateway_cpu = door_cpu["gateway"].as_f64().unwrap_or_default();

    let w = writers(&direct, o.connections).await;
    let before = others(None);
    let (direct_wps, direct_w) = write_rate(&direct, w, o.rate_for).await;
    let direct_write_cpu = per_request(before, direct_w);
    let w = writers(&door, o.connections).await;
    let commits = |m: &str| crate::metric_in::<f64>(m, "postern_audit_commits_total");
    let commits_before = commits(&b.metrics_text().await);
    let before = others(Some((bastion_pid, gateway.pid())));
    let (door_wps, door_w) = write_rate(&door, w, o.rate_for).await;
    let door_write_cpu = per_request(before, door_w);
    // From a bastion that counts its audit commits (an older one does not);
    // the deletes at the end are in it too (one per connection).
    let audit_commits = commits(&b.metrics_text().await)
        .zip(commits_before)
        .map(|(after, before)| (after - before) / door_w.max(1) as f64 * 1000.0);

    let mut direct_watch = watch_delays(&direct, &direct, o.watch_events).await;
    let mut door_watch = watch_delays(&door, &direct, o.watch_events).await;
    let (dw, bw) = (median(&mut direct_watch), median(&mut door_watch));
    let report = json!({
        "small_get_ms": {
            "direct": {"p50": direct_p50, "p99": direct_p99},
            "bastion": {"p50": door_p50, "p99": door_p99},
            "added_p50": door_p50 - direct_p50,
            "added_p99": door_p99 - direct_p99,
        },
        "requests_per_second": {
            "connections": o.connections,
            "direct": direct_rps,
            "bastion": door_rps,
            "ratio": door_rps / direct_rps,
        },
        "small_writes_per_second": {
            "connections": o.connections,
            "direct": direct_wps,
            "bastion": door_wps,
            "ratio": door_wps / direct_wps,
            "audit_commits_per_1000_writes": audit_commits,
        },
        "cpu_ms_per_small_write_by_process": { "direct": direct_write_cpu, "through_the_bastion": door_write_cpu },
        "watch_event_ms_median": { "direct": dw, "bastion": bw, "added": bw - dw },
        "cpu_seconds_per_1000_requests": { "bastion": bastion_cpu, "gateway": gateway_cpu },
        "cpu_seconds_per_1000_requests_by_process": { "direct": direct_cpu, "through_the_bastion": door_cpu },
    });
    k.stop();
    drop(gateway);
    drop(b);
    report
}
