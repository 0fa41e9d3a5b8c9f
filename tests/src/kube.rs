//! A REAL Kubernetes API server for the tests: upstream kube-apiserver (v1.20,
//! built from Debian's source package by `scripts/kube-apiserver`) on Debian's etcd,
//! both on ephemeral 127.0.0.1 ports in a temporary directory. Never a mock.
//!
//! The cluster authorizes with `Node,RBAC` and the `NodeRestriction` admission
//! plugin, as a real cluster does, so a kubelet identity may read only its own Node.
//! Identities come from a static token file:
//! - `admin`: group `system:masters` (a cluster admin);
//! - `gateway`: allowed by a ClusterRole the harness applies to impersonate users
//!   and groups (the credential a Postern kube gateway agent holds);
//! - `node:NAME`: a kubelet (`system:node:NAME`, group `system:nodes`), made on
//!   request. The apiserver reads the token file only at start, so a node identity
//!   not named at start restarts the apiserver once (a few seconds);
//! - `status-writer`: no rights until a test binds some, e.g. those of a CNI or
//!   monitoring DaemonSet (`nodes/status` but not `nodes`).
//!
//! Every request is written to an audit log at `Metadata` level that tests read
//! (e.g. to see `impersonatedUser`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::free_port;

/// How long the API server may take to answer `/readyz` (it takes 4-5 s here).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The RBAC objects that let the `gateway` identity impersonate.
const GATEWAY_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: postern-gateway-impersonator
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: postern-gateway-impersonator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: postern-gateway-impersonator
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: gateway
"#;

const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n";

/// The directory holding `kube-apiserver` and `etcd`: `$POSTERN_KUBE_BIN`, else the
/// cache `scripts/kube-apiserver` fills. Panics (never skips) when they are missing.
pub fn kube_bin_dir() -> PathBuf {
    let dir = std::env::var_os("POSTERN_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/postern-kube/bin"));
    for b in ["kube-apiserver", "etcd"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run scripts/kube-apiserver (it builds the real kube-apiserver and \
             etcd once into /var/tmp/postern-kube/bin; or set POSTERN_KUBE_BIN)",
            dir.join(b).display()
        );
    }
    dir
}

/// The kubectl the tests drive: `$POSTERN_KUBECTL`, else `kubectl` on the PATH.
pub fn kubectl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("POSTERN_KUBECTL") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    });
    found.expect("kubectl is missing: install kubernetes-client (scripts/test does)")
}

/// One identity in the static token file.
#[derive(Debug, Clone)]
struct TokenUser {
    token: String,
    user: String,
    groups: Vec<String>,
}

/// etcd plus kube-apiserver on loopback; [`Drop`] kills both.
pub struct KubeCluster {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    port: u16,
    users: Vec<TokenUser>,
}

impl KubeCluster {
    /// Starts a cluster with kubelet identities for `nodes` already in its token file.
    pub async fn start_with_nodes(nodes: &[&str]) -> KubeCluster {
        let bin = kube_bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        // The client CA: no test client uses certificates yet, but the recipe the
        // apiserver is checked with has one, and kubelet-style certificates need it.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "postern-test-client-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(d.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(d.join("ca.key"), ca_key.serialize_pem()).unwrap();
        // Service-account signing pair (ECDSA P-256; the apiserver accepts it).
        let sa = rcgen::KeyPair::generate().unwrap();
        std::fs::write(d.join("sa.key"), sa.serialize_pem()).unwrap();
        std::fs::write(d.join("sa.pub"), sa.public_key_pem()).unwrap();
        std::fs::write(d.join("audit-policy.yaml"), AUDIT_POLICY).unwrap();
        let mut users = vec![
            TokenUser {
                token: random_token(),
                user: "admin".into(),
                groups: vec!["system:masters".into()],
            },
            TokenUser {
                token: random_token(),
                user: "gateway".into(),
                groups: Vec::new(),
            },
            TokenUser {
                token: random_token(),
                user: "status-writer".into(),
                groups: Vec::new(),
            },
        ];
        for n in nodes {
            users.push(node_user(n));
        }
        let mut k = KubeCluster {
            dir,
            bin,
            etcd: None,
            apiserver: None,
            etcd_client_port: free_port(),
            etcd_peer_port: free_port(),
            port: free_port(),
            users,
        };
        k.write_tokens();
        k.start().await;
        let out = k.apply("admin", GATEWAY_RBAC);
        assert!(out.status.success(), "gateway RBAC: {}", stderr(&out));
        k
    }

    /// Starts a cluster with no kubelet identity yet.
    pub async fn start_new() -> KubeCluster {
        KubeCluster::start_with_nodes(&[]).await
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The PEM that verifies the apiserver's serving certificate: the certificate
    /// (and its signer) the apiserver made for itself in `--cert-dir`.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("certs/apiserver.crt"))
            .expect("the apiserver's serving certificate")
    }

    /// The bearer token of `identity` (`admin`, `gateway`, `status-writer` or
    /// `node:NAME`).
    pub async fn token(&mut self, identity: &str) -> String {
        self.ensure(identity).await;
        self.user(identity).token.clone()
    }

    /// The bearer token of an identity already in the token file.
    pub fn token_of(&self, identity: &str) -> String {
        self.user(identity).token.clone()
    }

    /// A kubeconfig file for `identity`, inside the cluster's directory.
    pub async fn kubeconfig_for(&mut self, identity: &str) -> PathBuf {
        self.ensure(identity).await;
        self.write_kubeconfig(identity)
    }

    /// Runs kubectl as `identity` (`admin`, `gateway` or `status-writer`; a node needs
    /// [`KubeCluster::kubeconfig_for`] first) with `args`.
    pub fn kubectl(&self, identity: &str, args: &[&str]) -> Output {
        let cfg = self.write_kubeconfig(identity);
        Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(cfg)
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// `kubectl apply -f -` of `yaml` as `identity`.
    pub fn apply(&self, identity: &str, yaml: &str) -> Output {
        use std::io::Write;
        let cfg = self.write_kubeconfig(identity);
        let mut child = Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(cfg)
            .args(["--request-timeout=20s", "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Every audit event so far, oldest first.
    pub fn audit_events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit events `pred` accepts, e.g. those with an `impersonatedUser`.
    pub fn audit_find(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.audit_events()
            .into_iter()
            .filter(|e| pred(e))
            .collect()
    }

    /// The process ids of the API server and etcd, while they run.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.apiserver.as_ref().map(Child::id),
            self.etcd.as_ref().map(Child::id),
        )
    }

    /// Kills the apiserver and etcd (the "API server down" case); the data stays.
    pub fn stop(&mut self) {
        for c in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            kill(c);
        }
    }

    /// Starts etcd and the apiserver (again) on the same ports and data, and waits
    /// until the apiserver is ready.
    pub async fn start(&mut self) {
        if self.etcd.is_none() {
            self.spawn_etcd();
        }
        if self.apiserver.is_none() {
            self.spawn_apiserver();
        }
        self.wait_ready().await;
    }

    /// Whether both processes are running.
    pub fn running(&mut self) -> bool {
        let alive =
            |c: &mut Option<Child>| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        alive(&mut self.etcd) && alive(&mut self.apiserver)
    }

    fn spawn_etcd(&mut self) {
        let d = self.dir.path();
        let client = format!("http://127.0.0.1:{}", self.etcd_client_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let log = std::fs::File::create(d.join("etcd.log")).unwrap();
        let child = Command::new(self.bin.join("etcd"))
            .arg("--data-dir")
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--listen-metrics-urls", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.etcd = Some(child);
    }

    fn spawn_apiserver(&mut self) {
        let d = self.dir.path();
        let p = |name: &str| d.join(name).display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("apiserver.log"))
            .unwrap();
        let child = Command::new(self.bin.join("kube-apiserver"))
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_client_port
            ))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--cert-dir={}", p("certs")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!("--token-auth-file={}", p("tokens.csv")))
            .args([
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--endpoint-reconciler-type=none",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
            ])
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg(format!("--audit-policy-file={}", p("audit-policy.yaml")))
            .arg(format!("--audit-log-path={}", p("audit.log")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if self.readyz().await {
                return;
            }
            let exited = self
                .apiserver
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > READY_TIMEOUT {
                let tail = |f: &str| {
                    let t = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(30)..].join("\n")
                };
                panic!(
                    "kube-apiserver not ready after {:?} (exit: {exited:?}).\n\
                     --- apiserver stderr (tail) ---\n{}\n--- etcd stderr (tail) ---\n{}",
                    start.elapsed(),
                    tail("apiserver.log"),
                    tail("etcd.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One `GET /readyz` as admin, through kubectl (it verifies the serving
    /// certificate the way every other client here does).
    async fn readyz(&self) -> bool {
        if !self.dir.path().join("certs/apiserver.crt").exists() {
            return false;
        }
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(kubectl_bin())
                .arg("--kubeconfig")
                .arg(self.write_kubeconfig("admin"))
                .args(["--request-timeout=5s", "get", "--raw", "/readyz"])
                .stdin(Stdio::null())
                .output(),
        )
        .await;
        matches!(out, Ok(Ok(o)) if o.status.success() && o.stdout.starts_with(b"ok"))
    }

    async fn ensure(&mut self, identity: &str) {
        if self.users.iter().any(|u| u.user == user_name(identity)) {
            return;
        }
        let name = identity.strip_prefix("node:").unwrap_or_else(|| {
            panic!("unknown identity {identity}: admin, gateway, status-writer or node:NAME")
        });
        self.users.push(node_user(name));
        self.write_tokens();
        // The token file is read only at start.
        if let Some(c) = self.apiserver.take() {
            kill(c);
            self.start().await;
        }
    }

    fn user(&self, identity: &str) -> &TokenUser {
        let name = user_name(identity);
        self.users
            .iter()
            .find(|u| u.user == name)
            .unwrap_or_else(|| panic!("no identity {identity} (made on request by kubeconfig_for)"))
    }

    fn write_tokens(&self) {
        let mut csv = String::new();
        for (i, u) in self.users.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},uid-{i},\"{}\"\n",
                u.token,
                u.user,
                u.groups.join(",")
            ));
        }
        std::fs::write(self.dir.path().join("tokens.csv"), csv).unwrap();
    }

    fn write_kubeconfig(&self, identity: &str) -> PathBuf {
        let u = self.user(identity);
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", identity.replace(':', "-")));
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {id}\n  user:\n    token: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: {id}\n\
             current-context: test\n",
            self.url(),
            u.token,
            id = identity.replace(':', "-"),
        );
        write_private(&path, &cfg);
        path
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `node:NAME` → `system:node:NAME`; `admin`, `gateway`, `status-writer` as they are.
fn user_name(identity: &str) -> String {
    match identity.strip_prefix("node:") {
        Some(n) => format!("system:node:{n}"),
        None => identity.to_string(),
    }
}

fn node_user(name: &str) -> TokenUser {
    TokenUser {
        token: random_token(),
        user: format!("system:node:{name}"),
        groups: vec!["system:nodes".into()],
    }
}

fn random_token() -> String {
    (0..24)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The cluster-side RBAC a cluster admin applies once (the README shows it):
/// org admins are cluster admins, read_only users may read everything.
pub const POSTERN_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: postern-org-admins
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "postern:org_admin"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: postern-read-only
rules:
- apiGroups: ["*"]
  resources: ["*"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: postern-read-only
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: postern-read-only}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "postern:read_only"}
"#;

/// A real API server with [`POSTERN_RBAC`] applied, a bastion with its Kubernetes
/// listener, and a gateway agent `gw-1` for project `web`, edge `eu-1`, granted
/// the gateway role by the project's admin (its `--kube-apiserver` alone would
/// not make it one); answers them and the listener's address.
pub async fn door() -> (KubeCluster, crate::Bastion, String, crate::AgentProc) {
    let mut k = KubeCluster::start_new().await;
    let out = k.apply("admin", POSTERN_RBAC);
    assert!(out.status.success(), "{}", stderr(&out));
    let kube_addr = format!("127.0.0.1:{}", free_port());
    let b = crate::Bastion::start(crate::BastionOpts {
        extra_args: vec!["--kube-addr".into(), kube_addr.clone()],
        ..crate::BastionOpts::default()
    })
    .await;
    let creds = k.kubeconfig_for("gateway").await;
    let url = k.url();
    let gateway = b
        .agent_with(
            "gw-1",
            &[
                "--kube-apiserver",
                &url,
                "--kube-credentials",
                creds.to_str().unwrap(),
            ],
        )
        .await;
    let node = b.kube_gateway("gw-1", true).await;
    assert_eq!(node["kube_gateway"]["granted"], true, "{node}");
    (k, b, kube_addr, gateway)
}

/// The CA PEM of a kubeconfig the bastion gave (its `certificate-authority-data`).
pub fn kubeconfig_ca(yaml: &str) -> Vec<u8> {
    let b64 = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .expect("certificate-authority-data")
        .trim();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// A TLS client that trusts only `ca_pem` (a kubeconfig's CA) and offers `alpn`.
pub fn client_tls(ca_pem: &[u8], alpn: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    std::sync::Arc::new(cfg)
}

/// A TLS connection to the bastion's Kubernetes listener at `addr` for edge
/// `eu-1` of project `web` (its server name), trusting the CA of the kubeconfig
/// `kubeconfig` and offering `alpn`.
pub async fn door_tls(
    addr: &str,
    kubeconfig: &Path,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let ca = kubeconfig_ca(&std::fs::read_to_string(kubeconfig).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("eu-1.web.kube.postern").unwrap();
    tokio_rustls::TlsConnector::from(client_tls(&ca, alpn))
        .connect(name, tcp)
        .await
        .unwrap()
}
