//! End-to-end test support: the real `postern-bastion` and `postern-agent`
//! binaries on ephemeral loopback ports, a small HTTP client for the REST API, and
//! `eventually` polling instead of sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub mod ansible;
pub mod console;
pub mod fuzz_bodies;
pub mod kube;
pub mod kube_bench;
pub mod netns;
pub mod oidc;
pub mod proxy;
pub mod recording_bench;
pub mod replicas_bench;
pub mod scale_bench;
pub mod soak;
pub mod sse;
pub mod ssh;
pub mod ssh_bench;
pub mod swarm;

/// One node's entry in an execution's answer, by hostname.
pub fn exec_node<'a>(exec: &'a Value, host: &str) -> &'a Value {
    exec["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == host)
        .unwrap()
}

/// Running or sleeping; a zombie (killed, not yet reaped by its new parent) is not.
pub fn pid_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
        .flatten()
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// The cmdexec execute route of project `web`, edge `eu-1` (every test bastion's).
pub const EXECUTE: &str = "/cmdexec/v1/projects/web/edges/eu-1/execute/";

/// A binary built from this workspace, next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does)",
        path.display()
    );
    path
}

/// A fresh, empty schema on the PostgreSQL every test machine and CI has (see
/// `scripts/test`), as a URL for `--database-url`. Fails, never skips, when
/// PostgreSQL is missing: CI must run the tests that need it.
pub fn postgres_url() -> String {
    let base = std::env::var("POSTERN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("e2e_{}_{}", std::process::id(), free_port());
    let out = Command::new("psql")
        .args([base.as_str(), "-qc", &format!("CREATE SCHEMA {schema}")])
        .output()
        .unwrap_or_else(|e| panic!("psql is needed for PostgreSQL tests: {e}"));
    assert!(
        out.status.success(),
        "cannot create a schema at {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// `serve` flags for a swarm of agents in this process: they stand for a fleet
/// of hosts but all dial from one loopback address, where the agent port's
/// limit of handshakes per source address would measure a NAT, not the bastion.
pub fn one_address_fleet() -> Vec<String> {
    vec!["--agent-handshakes-per-source".into(), "1000000".into()]
}

/// A TCP connection to `to` from the loopback address `from` (e.g. 127.0.0.9):
/// another client, as far as the bastion's per-source limits can tell.
pub async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Runs SQL with `psql` against a database URL (such as [`postgres_url`]'s).
pub fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .unwrap_or_else(|e| panic!("psql is needed for PostgreSQL tests: {e}"));
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Logs for the benchmark binaries: errors only, on stderr (stdout carries their
/// JSON reports), unless `POSTERN_LOG` says otherwise.
pub fn init_bench_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The TOTP code of the next 30-second step for the base32 secret in
/// `secret_file` (as `postern invitation accept --totp-secret-file` wrote
/// it): the enrolment spent the current step's code, and a code is taken once.
pub fn next_totp_code(secret_file: &Path) -> String {
    let text = std::fs::read_to_string(secret_file).expect("the TOTP secret file");
    let secret = totp_rs::Secret::try_from_base32(text.trim())
        .expect("a base32 TOTP secret")
        .to_vec();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    postern_bastion::identity::totp::code_at(&secret, now + 30).expect("a TOTP code")
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// Chosen below the kernel's ephemeral range (32768 and up on Linux), from which
/// every outgoing connection takes its local port: a bastion that a test stops
/// and starts again on the same ports would otherwise find one taken by some
/// other test's client in between.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread the processes of one run (nextest runs each test in its own).
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = 32_000 - 10_000;
    let seed = (std::process::id() as u16).wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (seed.wrapping_add(n.wrapping_mul(101))) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes; panics with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Options for a bastion under test.
#[derive(Debug, Clone)]
pub struct BastionOpts {
    pub node_cert_ttl: String,
    pub rotation_check: String,
    pub handshake_timeout: String,
    pub exec_lost_grace: String,
    pub database_url: Option<String>,
    pub ssh_auth_timeout: String,
    pub ssh_grant_ttl: String,
    /// More flags for `serve`.
    pub extra_args: Vec<String>,
    /// The address the agent port listens on (default 127.0.0.1), e.g. the host
    /// end of a test network namespace's veth.
    pub agent_ip: Option<String>,
    /// Run as replica NAME of a deployment on `database_url` (PostgreSQL).
    pub replica_name: Option<String>,
}

impl Default for BastionOpts {
    fn default() -> Self {
        BastionOpts {
            node_cert_ttl: "24h".into(),
            rotation_check: "30s".into(),
            handshake_timeout: "10s".into(),
            exec_lost_grace: "120s".into(),
            database_url: None,
            ssh_auth_timeout: "30s".into(),
            ssh_grant_ttl: "5m".into(),
            extra_args: Vec::new(),
            agent_ip: None,
            replica_name: None,
        }
    }
}

/// A running `postern-bastion serve` with an org admin token and a project `web`
/// with edge `eu-1`.
pub struct Bastion {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub api: SocketAddr,
    pub agent: SocketAddr,
    /// The SSH front door.
    pub ssh: SocketAddr,
    /// The peer port (replicas only).
    pub peer: SocketAddr,
    pub token: String,
    pub opts: BastionOpts,
    log: PathBuf,
}

/// The bastion binary to run: this build's, unless a benchmark runs another
/// build beside it (today's against a baseline, in one run).
fn bastion_exe() -> PathBuf {
    match std::env::var_os("POSTERN_BASTION_BIN") {
        Some(p) => {
            // Said once: a stray export would otherwise test another build
            // without a word.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "running the bastion at {} (POSTERN_BASTION_BIN)",
                    std::path::Path::new(&p).display()
                );
            });
            PathBuf::from(p)
        }
        None => bin("postern-bastion"),
    }
}

impl Bastion {
    pub async fn start(opts: BastionOpts) -> Bastion {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, hex_key()).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // The build that serves also initializes: another build's migrations
        // would be refused by it.
        let mut init = Command::new(bastion_exe());
        init.args(["init", "--data-dir"])
            .arg(dir.path().join("data"));
        if let Some(u) = &opts.database_url {
            init.args(["--database-url", u]);
        }
        let out = init.output().unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mut b = Bastion {
            child: None,
            api: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            agent: format!(
                "{}:{}",
                opts.agent_ip.as_deref().unwrap_or("127.0.0.1"),
                free_port()
            )
            .parse()
            .unwrap(),
            ssh: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            peer: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            log: dir.path().join("bastion.log"),
            dir,
            token,
            opts,
        };
        b.spawn().await;
        let (s, v) = b
            .post("/api/v1/projects", serde_json::json!({"name": "web"}))
            .await;
        assert_eq!(s, 201, "{v}");
        b.create_edge("web", "eu-1").await;
        b
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The URL of this bastion's embedded SQLite database.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.data_dir().join("postern.db").display())
    }

    /// Options for replica `name` of a new deployment on a fresh PostgreSQL schema.
    pub fn replica_opts(name: &str) -> BastionOpts {
        BastionOpts {
            database_url: Some(postgres_url()),
            replica_name: Some(name.into()),
            ..BastionOpts::default()
        }
    }

    /// Replica `name` of `first`'s deployment: the same database, master key and
    /// admin token, its own ports and data directory.
    pub async fn replica_of(first: &Bastion, name: &str) -> Bastion {
        Bastion::replica_with(first, name, None).await
    }

    /// [`Bastion::replica_of`] reaching the database at `database_url` (the same
    /// database, e.g. through a proxy the test can cut).
    pub async fn replica_with(
        first: &Bastion,
        name: &str,
        database_url: Option<String>,
    ) -> Bastion {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            first.dir.path().join("master.key"),
            dir.path().join("master.key"),
        )
        .unwrap();
        let mut opts = first.opts.clone();
        opts.replica_name = Some(name.into());
        if database_url.is_some() {
            opts.database_url = database_url;
        }
        let ip = opts.agent_ip.as_deref().unwrap_or("127.0.0.1").to_string();
        let mut b = Bastion {
            child: None,
            api: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            agent: format!("{ip}:{}", free_port()).parse().unwrap(),
            ssh: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            peer: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            log: dir.path().join("bastion.log"),
            dir,
            token: first.token.clone(),
            opts,
        };
        b.spawn().await;
        b
    }

    /// SIGKILL: the replica dies without a word to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bastion_exe());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--master-key-file")
            .arg(self.dir.path().join("master.key"))
            .args([
                "--api-addr",
                &self.api.to_string(),
                "--agent-addr",
                &self.agent.to_string(),
                "--ssh-addr",
                &self.ssh.to_string(),
            ])
            .args(["--ssh-auth-timeout", &self.opts.ssh_auth_timeout])
            .args(["--ssh-grant-ttl", &self.opts.ssh_grant_ttl])
            .args(["--node-cert-ttl", &self.opts.node_cert_ttl])
            .args(["--rotation-check", &self.opts.rotation_check])
            .args(["--handshake-timeout", &self.opts.handshake_timeout])
            .args(["--exec-lost-grace", &self.opts.exec_lost_grace])
            .args(&self.opts.extra_args)
            .env("POSTERN_LOG", "info,postern_bastion=debug")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(u) = &self.opts.database_url {
            cmd.args(["--database-url", u]);
        }
        if let Some(name) = &self.opts.replica_name {
            cmd.args([
                "--replica-name",
                name,
                "--peer-addr",
                &self.peer.to_string(),
            ]);
        }
        self.child = Some(cmd.spawn().unwrap());
        let api = self.api;
        let log = self.log.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http(api, "GET", "/readyz", None, None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bastion did not become ready; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(&mut c);
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Starts a killed or stopped bastion again on the same addresses and data.
    pub async fn revive(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        http(self.api, "GET", path, Some(&self.token), None)
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        http(self.api, "POST", path, Some(&self.token), Some(body))
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        http(self.api, "PUT", path, Some(&self.token), Some(body))
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        http(self.api, "DELETE", path, Some(&self.token), None)
            .await
            .unwrap()
    }

    /// Creates edge `name` in `project`.
    pub async fn create_edge(&self, project: &str, name: &str) {
        let (s, v) = self
            .post(
                &format!("/api/v1/projects/{project}/edges"),
                serde_json::json!({ "name": name }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }

    /// A fresh enrollment token for web/eu-1; returns the API's answer.
    /// Server-authenticated TLS to the agent port with the enrollment
    /// protocol (ALPN http/1.1), as an enrolling agent or the install script
    /// opens it, trusting `ca_pem` only; used as is, a client that stalls
    /// after its handshake.
    pub async fn enrollment_tls(
        &self,
        ca_pem: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.enrollment_tls_from(ca_pem, None).await
    }

    /// [`Bastion::enrollment_tls`] from the loopback address `from` (e.g.
    /// 127.0.0.9): another client, as far as per-source limits can tell.
    pub async fn enrollment_tls_from(
        &self,
        ca_pem: &str,
        from: Option<&str>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(std::io::Error::other)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).map_err(std::io::Error::other)?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(postern_agent::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![postern_api::agent::ALPN_ENROLL.to_vec()];
        let tcp = match from {
            Some(from) => connect_from(from, self.agent).await,
            None => tokio::net::TcpStream::connect(self.agent).await?,
        };
        let name =
            rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
    }

    pub async fn enrollment(&self, body: Value) -> Value {
        self.enrollment_at("web", "eu-1", body).await
    }

    /// A fresh enrollment token for `project`/`edge`; returns the API's answer.
    pub async fn enrollment_at(&self, project: &str, edge: &str, body: Value) -> Value {
        let (s, v) = self
            .post(
                &format!("/api/v1/projects/{project}/edges/{edge}/enrollment-tokens"),
                body,
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    pub async fn node(&self, hostname: &str) -> Option<Value> {
        let (s, v) = self.get("/api/v1/projects/web/edges/eu-1/nodes").await;
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == hostname)
            .cloned()
    }

    pub async fn reachable(&self, hostname: &str) -> bool {
        self.node(hostname)
            .await
            .is_some_and(|n| n["reachable"] == true)
    }

    /// Grants (`grant`) or takes back the Kubernetes gateway role of node
    /// `hostname` of web/eu-1, as a project admin does through the REST API;
    /// answers the node as it is now.
    pub async fn kube_gateway(&self, hostname: &str, grant: bool) -> Value {
        use postern_api::routes;
        let path = routes::path(
            routes::API,
            routes::NODE_KUBE_GATEWAY,
            &["web", "eu-1", hostname],
        );
        let method = if grant { "PUT" } else { "DELETE" };
        let (s, v) = http(self.api, method, &path, Some(&self.token), None)
            .await
            .unwrap();
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }

    /// Enrolls `hostname` (auto-approved) through the real join command; returns its data directory.
    pub async fn enroll(&self, hostname: &str) -> PathBuf {
        self.enroll_at("web", "eu-1", hostname, hostname).await
    }

    /// Enrolls `hostname` (auto-approved) into `project`/`edge`, keeping its data in
    /// `dir_name` under the test directory; returns that directory.
    pub async fn enroll_at(
        &self,
        project: &str,
        edge: &str,
        hostname: &str,
        dir_name: &str,
    ) -> PathBuf {
        let t = self
            .enrollment_at(project, edge, serde_json::json!({"auto_approve": true}))
            .await;
        let dir = self.dir.path().join(dir_name);
        let out = run_join(
            t["join_command"].as_str().unwrap(),
            &["--hostname", hostname, "--data-dir", dir.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    /// Enrolls `hostname`, runs its agent, and waits until the node is reachable.
    pub async fn agent(&self, hostname: &str) -> AgentProc {
        self.agent_with(hostname, &[]).await
    }

    /// Like [`Bastion::agent`], with extra `postern-agent run` arguments.
    pub async fn agent_with(&self, hostname: &str, extra: &[&str]) -> AgentProc {
        let dir = self.enroll(hostname).await;
        let agent = AgentProc::run_with(&dir, extra);
        eventually(
            Duration::from_secs(15),
            &format!("{hostname} reachable"),
            || self.reachable(hostname),
        )
        .await;
        agent
    }

    /// The newest 100 audit entries with this action (in the API's order),
    /// selected by the audit's own filter: a test's polling reads, audited
    /// too, cannot push them out of the page.
    pub async fn audit(&self, action: &str) -> Vec<Value> {
        let encoded: String = action
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (s, v) = self
            .get(&format!("/api/v1/audit?limit=100&action={encoded}"))
            .await;
        assert_eq!(s, 200, "{v}");
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect()
    }

    /// Posts a cmdexec execution to project `web`, edge `eu-1`; answers the 202's body.
    pub async fn execute(&self, body: Value) -> Value {
        let (s, v) = self.post(EXECUTE, body).await;
        assert_eq!(s, 202, "{v}");
        v
    }

    /// Polls the execution until no node is pending or running; answers it with
    /// up to 1000 of its nodes.
    pub async fn finished(&self, exec_id: &str, within: Duration) -> Value {
        let path =
            format!("/cmdexec/v1/projects/web/edges/eu-1/execution/{exec_id}/?node_limit=1000");
        let until = Instant::now() + within;
        loop {
            let (s, v) = self.get(&path).await;
            assert_eq!(s, 200, "{v}");
            if v["status"] != "pending" && v["status"] != "running" {
                return v;
            }
            assert!(
                Instant::now() < until,
                "execution not finished after {within:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        let (_, v) = http(self.api, "GET", "/metrics", None, None).await.unwrap();
        v.as_str().unwrap_or_default().to_string()
    }

    /// A metric's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        metric_in(&text, name).unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// A metric summed over several replicas.
    pub async fn metric_total(bastions: &[&Bastion], name: &str) -> u64 {
        let mut n = 0;
        for b in bastions {
            n += b.metric(name).await;
        }
        n
    }
}

/// A metric's value in a `/metrics` page, if the page has it.
pub fn metric_in<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

impl Drop for Bastion {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn hex_key() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A `postern-agent run` process.
pub struct AgentProc {
    child: Child,
    pub data_dir: PathBuf,
}

impl AgentProc {
    pub fn run(data_dir: &Path) -> AgentProc {
        AgentProc::run_with(data_dir, &[])
    }

    pub fn run_with(data_dir: &Path, extra: &[&str]) -> AgentProc {
        AgentProc::spawn(Command::new(bin("postern-agent")), data_dir, extra)
    }

    /// An agent on another host: inside the network namespace `ns`.
    pub fn run_in(ns: &netns::Netns, data_dir: &Path, extra: &[&str]) -> AgentProc {
        AgentProc::spawn(ns.command(&bin("postern-agent")), data_dir, extra)
    }

    /// Runs the agent from `cmd` (a `postern-agent` command, with its environment).
    pub fn spawn(mut cmd: Command, data_dir: &Path, extra: &[&str]) -> AgentProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = cmd
            .args(["run", "--data-dir"])
            .arg(data_dir)
            .args(["--backoff-cap", "2s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        AgentProc {
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        sigterm(&mut self.child);
    }

    /// SIGKILL: the agent dies without a word, as on a crash or power loss.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the join command text (as the bastion printed it) with extra arguments.
pub fn run_join(join_command: &str, extra: &[&str]) -> Output {
    let words: Vec<&str> = join_command.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"postern-agent"));
    Command::new(bin("postern-agent"))
        .args(&words[1..])
        .args(extra)
        .output()
        .unwrap()
}

/// One HTTP/1.1 request to the REST API; the body is parsed as JSON when it is JSON.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
    http_raw(addr, method, path, token, body).await
}

/// Like [`http`], with any body and content type (for malformed input).
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Bytes)>,
) -> anyhow::Result<(u16, Value)> {
    let (status, _, v) = http_with(addr, method, path, token, &[], body).await?;
    Ok((status, v))
}

/// Like [`http_raw`], with extra request headers; answers the response's
/// headers too.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<(&str, Bytes)>,
) -> anyhow::Result<(u16, http::HeaderMap, Value)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let payload = match body {
        Some((content_type, bytes)) => {
            req = req.header("content-type", content_type);
            bytes
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        sender.send_request(req.body(Full::new(payload))?),
    )
    .await??;
    let status = resp.status().as_u16();
    let resp_headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, resp_headers, v))
}
