//! kubectl through the bastion, end to end, against a REAL kube-apiserver: the
//! kubeconfig from `GET /api/v1/kubeconfig`, the bastion's Kubernetes listener, a
//! gateway agent that impersonates, and the cluster's own RBAC as the final word.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postern_tests::kube::{KubeCluster, door_tls, kubeconfig_ca, kubectl_bin};
use postern_tests::{AgentProc, Bastion, eventually, http};
use serde_json::{Value, json};

struct Setup {
    k: KubeCluster,
    b: Bastion,
    kube_addr: String,
    gateway: Option<AgentProc>,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let (k, b, kube_addr, gateway) = postern_tests::kube::door().await;
    Setup {
        k,
        b,
        kube_addr,
        gateway: Some(gateway),
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A bot with `role` in project `project`; answers (token, token id).
async fn user(b: &Bastion, name: &str, role: &str, project: &str) -> (String, String) {
    let (s, v) = b
        .post(
            &format!("/api/v1/projects/{project}/bots"),
            json!({ "name": name, "role": role }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = b
        .post(
            &format!("/api/v1/users/{name}/tokens"),
            json!({"ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// The kubeconfig the bastion gives the holder of `token`, saved to a file.
async fn kubeconfig(s: &Setup, token: &str, name: &str) -> PathBuf {
    let (code, v) = http(s.b.api, "GET", "/api/v1/kubeconfig", Some(token), None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{v}");
    let path = s.dir.path().join(name);
    std::fs::write(&path, v.as_str().expect("YAML text")).unwrap();
    path
}

fn kubectl(cfg: &Path, args: &[&str]) -> Output {
    Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(cfg)
        .arg("--request-timeout=20s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "kubectl failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "kubectl should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kubectl get configmaps -w`, its output lines readable as they come.
fn watch(cfg: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(cfg)
        .args(["get", "configmaps", "-w", "-o", "name"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => return,
            Ok(_) => {}
            Err(e) => panic!("no watch line with {want:?} within {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_unchanged_through_the_bastion() {
    let s = setup().await;
    let admin = kubeconfig(&s, &s.b.token, "admin.kubeconfig").await;
    let text = std::fs::read_to_string(&admin).unwrap();
    assert!(text.contains(&format!("https://{}", s.kube_addr)), "{text}");
    assert!(
        text.contains("tls-server-name: eu-1.web.kube.postern"),
        "{text}"
    );
    assert!(text.contains("certificate-authority-data"), "{text}");
    assert!(
        !text.contains(&s.k.token_of("gateway")),
        "no cluster credential reaches a user"
    );
    // The gateway's capability arrives with its channel.
    eventually(
        Duration::from_secs(15),
        "kubectl get namespaces",
        || async {
            kubectl(&admin, &["get", "namespaces", "-o", "name"])
                .status
                .success()
        },
    )
    .await;
    assert!(
        ok(&kubectl(&admin, &["get", "namespaces", "-o", "name"])).contains("namespace/default")
    );
    ok(&kubectl(
        &admin,
        &["create", "configmap", "c1", "--from-literal=a=b"],
    ));
    let got: Value = serde_json::from_str(&ok(&kubectl(
        &admin,
        &["get", "configmap", "c1", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(got["data"]["a"], "b");
    let yaml = s.dir.path().join("c2.yaml");
    std::fs::write(
        &yaml,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\ndata:\n  k: v\n",
    )
    .unwrap();
    ok(&kubectl(&admin, &["apply", "-f", yaml.to_str().unwrap()]));
    ok(&kubectl(&admin, &["delete", "configmap", "c1"]));
    assert_eq!(
        ok(&kubectl(&admin, &["auth", "can-i", "create", "pods"])).trim(),
        "yes"
    );
    let version: Value =
        serde_json::from_str(&ok(&kubectl(&admin, &["get", "--raw", "/version"]))).unwrap();
    assert_eq!(version["gitVersion"], "v1.20.2");
    let raw: Value = serde_json::from_str(&ok(&kubectl(
        &admin,
        &["get", "--raw", "/api/v1/namespaces/default/configmaps"],
    )))
    .unwrap();
    assert!(
        raw["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["metadata"]["name"] == "c2")
    );

    // A watch receives the event of a change made elsewhere.
    let (mut w, lines) = watch(&admin);
    wait_line(&lines, "configmap/c2", Duration::from_secs(15));
    let out = s.k.kubectl("admin", &["create", "configmap", "w1"]);
    assert!(out.status.success());
    wait_line(&lines, "configmap/w1", Duration::from_secs(15));
    let _ = w.kill();
    let _ = w.wait();

    // Impersonated as the Postern user, with the role's group.
    let seen = s.k.audit_find(|e| {
        e["user"]["username"] == "gateway"
            && e["impersonatedUser"]["username"] == "admin"
            && e["impersonatedUser"]["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "postern:org_admin"))
    });
    assert!(!seen.is_empty(), "the API server saw the impersonated user");
    // Audited at the bastion with what was touched and the node that served it.
    eventually(Duration::from_secs(10), "kube.request audited", || async {
        s.b.audit("kube.request").await.iter().any(|e| {
            e["detail"]["verb"] == "create"
                && e["detail"]["resource"] == "configmaps"
                && e["detail"]["namespace"] == "default"
                && e["detail"]["status"] == 201
                && e["detail"]["bytes_out"].as_u64().unwrap_or(0) > 0
                && e["detail"]["end"] == "complete"
                && e["detail"]["duration_ms"].is_u64()
                && e["detail"]["gateway"]["hostname"] == "gw-1"
                && e["source_ip"] == "127.0.0.1"
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_reaches_a_cluster_and_rbac_what_they_do_there() {
    let s = setup().await;
    let (reader_token, reader_token_id) = user(&s.b, "reader", "read_only", "web").await;
    let reader = kubeconfig(&s, &reader_token, "reader.kubeconfig").await;
    eventually(
        Duration::from_secs(15),
        "reader lists configmaps",
        || async { kubectl(&reader, &["get", "configmaps"]).status.success() },
    )
    .await;
    // The cluster's RBAC refuses a read_only user a change.
    let e = err(&kubectl(&reader, &["create", "configmap", "nope"]));
    assert!(e.contains("forbidden") && e.contains("reader"), "{e}");

    // Whatever identity the client claims does not get through.
    let e = kubectl(
        &reader,
        &[
            "--as",
            "system:admin",
            "--as-group",
            "system:masters",
            "create",
            "configmap",
            "x",
        ],
    );
    let e = err(&e);
    assert!(e.contains("forbidden"), "{e}");
    let ca = s.dir.path().join("bastion-ca.pem");
    let (_, v) = s.b.get("/api/v1/whoami").await;
    assert_eq!(v["name"], "admin");
    std::fs::write(
        &ca,
        kubeconfig_ca(&std::fs::read_to_string(&reader).unwrap()),
    )
    .unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {reader_token}"),
            "-H",
            "Impersonate-User: system:admin",
            "-H",
            "Impersonate-Group: system:masters",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"sneaky"}}"#,
            &format!(
                "https://{}/k8s/web/eu-1/api/v1/namespaces/default/configmaps",
                s.kube_addr
            ),
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("\"code\": 403") || body.contains("\"code\":403"),
        "{body}"
    );
    assert!(
        s.k.audit_find(|e| e["impersonatedUser"]["username"] == "system:admin"
            || e["user"]["username"] == "system:admin")
            .is_empty(),
        "a client's Impersonate-User reached the API server"
    );
    assert!(
        !s.k.audit_find(|e| e["impersonatedUser"]["username"] == "reader")
            .is_empty()
    );
    // A path the API server decodes is audited as what it does, before it does it.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", s.b.token),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"encoded"}}"#,
            &format!(
                "https://{}/k8s/web/eu-1/%61pi/v1/namespaces/default/config%6daps",
                s.kube_addr
            ),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"encoded\""));
    eventually(
        Duration::from_secs(10),
        "the encoded create audited as a create",
        || async {
            let entries = s.b.audit("kube.request").await;
            let is_it = |e: &&Value| {
                e["detail"]["verb"] == "create"
                    && e["detail"]["resource"] == "configmaps"
                    && e["actor"] == "admin"
            };
            entries
                .iter()
                .filter(is_it)
                .any(|e| e["outcome"] == "requested")
                && entries
                    .iter()
                    .filter(is_it)
                    .any(|e| e["detail"]["status"] == 201)
        },
    )
    .await;

    // A user of another project cannot reach the edge at all: refused at the bastion.
    let (s2, v) =
        s.b.post("/api/v1/projects", json!({ "name": "other" }))
            .await;
    assert_eq!(s2, 201, "{v}");
    let (outsider_token, _) = user(&s.b, "outsider", "project_admin", "other").await;
    let outsider = kubeconfig(&s, &outsider_token, "outsider.kubeconfig").await;
    assert!(
        !std::fs::read_to_string(&outsider)
            .unwrap()
            .contains("web-eu-1")
    );
    let forced = s.dir.path().join("forced.kubeconfig");
    std::fs::write(
        &forced,
        std::fs::read_to_string(&reader)
            .unwrap()
            .replace(&reader_token, &outsider_token),
    )
    .unwrap();
    let e = err(&kubectl(&forced, &["get", "configmaps"]));
    assert!(e.contains("not found") || e.contains("NotFound"), "{e}");
    eventually(
        Duration::from_secs(10),
        "the refusal is audited",
        || async {
            s.b.audit("kube.request")
                .await
                .iter()
                .any(|e| e["actor"] == "outsider" && e["outcome"] == "denied")
        },
    )
    .await;
    // No token, a bad token: 401.
    let bad = s.dir.path().join("bad.kubeconfig");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&reader)
            .unwrap()
            .replace(&reader_token, "pst_nope_nope"),
    )
    .unwrap();
    let e = err(&kubectl(&bad, &["get", "configmaps"]));
    assert!(e.contains("Unauthorized") || e.contains("logged in"), "{e}");

    // Revoking the token ends the user's running watch.
    let (mut w, lines) = watch(&reader);
    let out =
        s.k.kubectl("admin", &["create", "configmap", "before-revoke"]);
    assert!(out.status.success());
    wait_line(&lines, "configmap/before-revoke", Duration::from_secs(15));
    let (code, v) =
        s.b.delete(&format!("/api/v1/tokens/{reader_token_id}"))
            .await;
    assert_eq!(code, 204, "{v}");
    let started = Instant::now();
    let status = loop {
        if let Some(st) = w.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the watch outlived the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success() || started.elapsed() < Duration::from_secs(15));
    let e = err(&kubectl(&reader, &["get", "configmaps"]));
    assert!(e.contains("Unauthorized") || e.contains("logged in"), "{e}");
    let (_, revoked) = s.b.get("/api/v1/audit?limit=100").await;
    assert!(
        revoked["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["detail"]["kube"]["kube_requests_cut"] == 1),
        "the revocation's audit entry says what it cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_gateway_or_api_server_is_a_clear_error_never_a_hang() {
    let mut s = setup().await;
    let admin = kubeconfig(&s, &s.b.token, "admin.kubeconfig").await;
    eventually(
        Duration::from_secs(15),
        "kubectl get namespaces",
        || async { kubectl(&admin, &["get", "namespaces"]).status.success() },
    )
    .await;
    // An edge with no gateway.
    s.b.create_edge("web", "eu-2").await;
    let admin = kubeconfig(&s, &s.b.token, "admin2.kubeconfig").await;
    let t = Instant::now();
    let e = err(&kubectl(
        &admin,
        &["--context", "web-eu-2", "get", "configmaps"],
    ));
    assert!(e.contains("no Kubernetes gateway"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // The API server down.
    s.k.stop();
    let t = Instant::now();
    let e = err(&kubectl(
        &admin,
        &["--context", "web-eu-1", "get", "configmaps"],
    ));
    // A fixed text: the API server's address and the connection error are in
    // the gateway agent's log, never in the answer.
    assert!(
        e.contains("could not reach its API server") || e.contains("did not answer in time"),
        "{e}"
    );
    assert!(!e.contains(&format!("{}/", s.k.url())), "{e}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    s.k.start().await;
    eventually(
        Duration::from_secs(20),
        "back after the API server",
        || async {
            kubectl(&admin, &["--context", "web-eu-1", "get", "configmaps"])
                .status
                .success()
        },
    )
    .await;

    // The gateway agent down.
    s.gateway.take().unwrap().stop();
    eventually(Duration::from_secs(15), "gw-1 unreachable", || async {
        !s.b.reachable("gw-1").await
    })
    .await;
    let t = Instant::now();
    let e = err(&kubectl(
        &admin,
        &["--context", "web-eu-1", "get", "configmaps"],
    ));
    assert!(e.contains("is connected to the bastion"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// A stand-in for the one part that cannot run here, a kubelet: TLS on loopback
/// (the API server does not verify a kubelet without --kubelet-certificate-authority),
/// answering an `exec` upgrade with 101 and then echoing every byte; over
/// WebSocket it first says hello on stdout, as a container's shell would.
/// Each connection's request head comes back when its stream ends.
async fn echo_kubelet() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = rustls_pki_types::CertificateDer::from(key.cert.der().to_vec());
    let pk = rustls_pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], pk)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, heads) = (acceptor.clone(), heads.clone());
            tokio::spawn(async move {
                let _ = heads.send(echo_one(acceptor, tcp).await);
            });
        }
    });
    (port, rx)
}

async fn echo_one(acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    {
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.to_ascii_lowercase().contains("upgrade: websocket") {
            tls.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            )
            .await
            .unwrap();
            // A binary message on channel 1 (stdout).
            let hello = b"\x01ws-hello-from-the-pod\n";
            let mut frame = vec![0x82, hello.len() as u8];
            frame.extend_from_slice(hello);
            tls.write_all(&frame).await.unwrap();
        } else {
            tls.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            )
            .await
            .unwrap();
        }
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        head
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_upgrades_are_relayed_as_byte_streams_through_the_api_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let (kubelet_port, mut kubelet) = echo_kubelet().await;
    // A node whose kubelet is the stand-in, and a pod bound to it (no scheduler
    // runs here, and no controller makes service-account tokens).
    let out = s.k.apply(
        "admin",
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: kubelet-1\nstatus:\n  addresses:\n  - {{type: InternalIP, address: 127.0.0.1}}\n  daemonEndpoints:\n    kubeletEndpoint: {{Port: {kubelet_port}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: default\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\n  namespace: default\nspec:\n  nodeName: kubelet-1\n  automountServiceAccountToken: false\n  containers:\n  - {{name: c, image: busybox}}\n"
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = kubeconfig(&s, &s.b.token, "admin.kubeconfig").await;
    eventually(Duration::from_secs(15), "kubectl get pods", || async {
        kubectl(&admin, &["get", "pods"]).status.success()
    })
    .await;
    // The bastion's CA, from the kubeconfig, and a raw HTTP/1.1 upgrade as
    // kubectl's SPDY executor sends it.
    let mut tls = door_tls(&s.kube_addr, &admin, b"http/1.1").await;
    let req = format!(
        "POST /api/v1/namespaces/default/pods/p1/exec?command=sh&container=c&stdin=true&stdout=true HTTP/1.1\r\n\
         Host: eu-1.web.kube.postern\r\nAuthorization: Bearer {}\r\n\
         Impersonate-User: system:admin\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n",
        s.b.token
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(20), tls.read_exact(&mut byte))
            .await
            .expect("an answer to the upgrade")
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&head), s.b.log()));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: spdy/3.1"), "{head}");
    // Bytes both ways, through bastion, agent channel, gateway and API server:
    // a SPDY data frame, then bytes that are no frame the reader knows.
    let mut frame = vec![0, 0, 0, 3, 0, 0, 0, 24];
    frame.extend_from_slice(b"hello through every hop\n");
    for msg in [&frame[..], &vec![7u8; 200_000][..]] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(20), tls.read_exact(&mut back))
            .await
            .expect("the echo")
            .unwrap_or_else(|e| {
                panic!(
                    "{e}\n--- bastion ---\n{}\n--- gateway ---\n{}",
                    s.b.log(),
                    s.gateway.as_ref().map(|g| g.log()).unwrap_or_default()
                )
            });
        assert_eq!(back, msg);
    }
    drop(tls);
    let kubelet_saw = tokio::time::timeout(Duration::from_secs(20), kubelet.recv())
        .await
        .expect("the stand-in kubelet ends with the stream")
        .unwrap();
    assert!(
        kubelet_saw.starts_with("POST /exec/default/p1/c?"),
        "{kubelet_saw}"
    );
    // The exec was audited before it was sent, and its end with its bytes.
    eventually(
        Duration::from_secs(10),
        "the exec's audit entries",
        || async {
            let entries = s.b.audit("kube.request").await;
            let requested = entries
                .iter()
                .any(|e| e["outcome"] == "requested" && e["detail"]["subresource"] == "exec");
            let ended = entries.iter().any(|e| {
                e["detail"]["subresource"] == "exec"
                    && e["detail"]["status"] == 101
                    && e["detail"]["bytes_in"].as_u64().unwrap_or(0) >= 200_000
                    && e["detail"]["bytes_out"].as_u64().unwrap_or(0) >= 200_000
            });
            requested && ended
        },
    )
    .await;
    assert!(
        s.k.audit_find(|e| e["impersonatedUser"]["username"] == "system:admin")
            .is_empty()
    );
    // Recorded, under the project's default policy (best_effort): the pod,
    // the container, the command and what the pod sent, with the chain's head
    // in the exec's final audit entry.
    let rec = ended_kube_recording(&s, "kube_exec", 0).await;
    assert_eq!(
        (&rec["pod"], &rec["login"], &rec["command"], &rec["node"]),
        (
            &json!("default/p1"),
            &json!("c"),
            &json!("sh"),
            &json!("gw-1")
        ),
        "{rec}"
    );
    let cast = recording_cast(&s, rec["id"].as_str().unwrap()).await;
    assert!(cast.contains("hello through every hop"), "{cast}");
    assert!(cast.contains("input and resizes are not"), "{cast}");
    let entries = s.b.audit("kube.request").await;
    assert!(
        entries
            .iter()
            .any(|e| e["detail"]["recording"]["id"] == rec["id"]
                && e["detail"]["recording"]["last_hash"] == rec["last_hash"]),
        "{entries:?}"
    );

    // kubectl 1.30 and later speak WebSocket (v4.channel.k8s.io): stdout is
    // recorded from its channel, a resize from the client's.
    let mut tls = door_tls(&s.kube_addr, &admin, b"http/1.1").await;
    let req = format!(
        "GET /api/v1/namespaces/default/pods/p1/exec?command=bash&container=c&stdin=true&stdout=true&tty=true HTTP/1.1\r\n\
         Host: eu-1.web.kube.postern\r\nAuthorization: Bearer {}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: \r\nSec-WebSocket-Protocol: , v4.channel.k8s.io\r\n\r\n",
        s.b.token
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("ws-hello-from-the-pod") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf))
            .await
            .expect("the pod's hello over WebSocket")
            .unwrap();
        assert!(n > 0, "{}\n{}", String::from_utf8_lossy(&got), s.b.log());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got)
            .to_ascii_lowercase()
            .starts_with("http/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A resize, masked as a client's frames are.
    let resize = b"\x04{\"Width\":120,\"Height\":40}";
    let key = [9u8, 8, 7, 6];
    let mut frame = vec![0x82, 0x80 | resize.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(resize.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    tls.write_all(&frame).await.unwrap();
    let mut echo = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(20), tls.read_exact(&mut echo))
        .await
        .expect("the resize's echo")
        .unwrap();
    drop(tls);
    // The kubelet was offered exactly what the recorder read: one line, no
    // empty entry (which it would take for the binary protocol).
    let kubelet_saw = tokio::time::timeout(Duration::from_secs(20), kubelet.recv())
        .await
        .expect("the stand-in kubelet ends with the stream")
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(
        kubelet_saw.matches("sec-websocket-protocol:").count(),
        1,
        "{kubelet_saw}"
    );
    assert!(
        kubelet_saw.contains("sec-websocket-protocol: v4.channel.k8s.io\r\n"),
        "{kubelet_saw}"
    );
    let rec = ended_kube_recording(&s, "kube_exec", 1).await;
    assert_eq!(rec["command"], "bash", "{rec}");
    let cast = recording_cast(&s, rec["id"].as_str().unwrap()).await;
    assert!(cast.contains("ws-hello-from-the-pod"), "{cast}");
    assert!(cast.contains(r#""r", "120x40""#), "{cast}");
    assert!(!cast.contains("input and resizes"), "{cast}");
}

/// The `n`th (oldest first) recording of `kind`, once it has ended.
async fn ended_kube_recording(s: &Setup, kind: &str, n: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (st, v) = s.b.get("/api/v1/recordings?limit=100").await;
        assert_eq!(st, 200, "{v}");
        let mut of_kind: Vec<Value> = v["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == kind)
            .cloned()
            .collect();
        of_kind.reverse();
        if let Some(r) = of_kind.get(n).filter(|r| r["status"] == "ended") {
            return r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ended {kind} recording #{n}: {v}\n{}",
            s.b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn recording_cast(s: &Setup, id: &str) -> String {
    let (st, v) = http(
        s.b.api,
        "GET",
        &format!("/api/v1/recordings/{id}/cast"),
        Some(&s.b.token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{v}");
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_stream_not_the_node() {
    let s = setup().await;
    let admin = kubeconfig(&s, &s.b.token, "admin.kubeconfig").await;
    eventually(
        Duration::from_secs(15),
        "kubectl get namespaces",
        || async { kubectl(&admin, &["get", "namespaces"]).status.success() },
    )
    .await;
    // A watch over HTTP/2 whose client never reads: its window is small, so a
    // few changes fill it, then the bastion's queue, then the gateway's stream.
    let tls = door_tls(&s.kube_addr, &admin, b"h2").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/api/v1/namespaces/default/configmaps?watch=true")
        .header("authorization", format!("Bearer {}", s.b.token))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stalled = resp.into_body();
    // One argument may hold at most 128 KiB.
    let big = "x".repeat(100_000);
    for i in 0..40 {
        let out = s.k.kubectl(
            "admin",
            &[
                "create",
                "configmap",
                &format!("big-{i}"),
                &format!("--from-literal=d={big}"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The node stays usable meanwhile, and the stalled stream is ended.
    assert!(
        kubectl(&admin, &["get", "--raw", "/version"])
            .status
            .success()
    );
    eventually(
        Duration::from_secs(40),
        "the stalled watch ended and audited",
        || async {
            s.b.audit("kube.request")
                .await
                .iter()
                .any(|e| e["detail"]["verb"] == "watch" && e["detail"]["end"] == "client_stalled")
        },
    )
    .await;
    assert!(
        kubectl(&admin, &["get", "--raw", "/version"])
            .status
            .success()
    );
    drop(stalled);
}

/// The kube.request entries that name `hostname` as the node that served them.
async fn served_by(s: &Setup, hostname: &str) -> Vec<Value> {
    s.b.audit("kube.request")
        .await
        .into_iter()
        .filter(|e| e["detail"]["gateway"]["hostname"] == hostname)
        .collect()
}

/// The gateway role is granted, never claimed (review 3, finding 1): a second
/// approved node of the edge whose agent runs with `--kube-apiserver` pointing
/// elsewhere gets no request, not after it reconnects and not while the
/// granted gateway is down; every request's audit entry names the node that
/// served it; taking the role back ends the node's open watch and sends it
/// nothing more; and requests follow a grant, not a claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_granted_node_serves_an_edge_whatever_other_agents_claim() {
    let mut s = setup().await;
    // Where the claiming node would send what it is given: a listener that
    // counts connections and answers nothing.
    let decoy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let decoy_url = format!("https://{}", decoy.local_addr().unwrap());
    let dialled = Arc::new(AtomicUsize::new(0));
    let counter = dialled.clone();
    let decoy_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = decoy.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let creds = s.k.kubeconfig_for("gateway").await;
    let creds = creds.to_str().unwrap().to_string();
    let claim_args = [
        "--kube-apiserver",
        decoy_url.as_str(),
        "--kube-credentials",
        creds.as_str(),
    ];
    let mut claimer = s.b.agent_with("claims-1", &claim_args).await;
    eventually(
        Duration::from_secs(15),
        "claims-1's claim recorded",
        || async {
            s.b.node("claims-1")
                .await
                .is_some_and(|n| n["kube_gateway"]["capable"] == true)
        },
    )
    .await;
    let claims = s.b.node("claims-1").await.unwrap();
    assert_eq!(claims["kube_gateway"]["granted"], false, "{claims}");
    let gw = s.b.node("gw-1").await.unwrap();
    assert_eq!(
        gw["kube_gateway"],
        json!({"granted": true, "capable": true}),
        "{gw}"
    );
    let gw_id = gw["id"].as_str().unwrap().to_string();
    // The claim is seen: audited as held, waiting for a grant.
    eventually(Duration::from_secs(10), "the claim audited", || async {
        s.b.audit("node.kube_gateway_capable")
            .await
            .iter()
            .any(|e| e["outcome"] == "held" && e["detail"]["hostname"] == "claims-1")
    })
    .await;

    let admin = kubeconfig(&s, &s.b.token, "admin.kubeconfig").await;
    eventually(
        Duration::from_secs(15),
        "kubectl get namespaces",
        || async { kubectl(&admin, &["get", "namespaces"]).status.success() },
    )
    .await;
    // The claiming agent reconnects last (the review's attacker sorted first
    // that way): still only the granted node serves.
    claimer.stop();
    claimer = AgentProc::run_with(&claimer.data_dir, &claim_args);
    eventually(Duration::from_secs(15), "claims-1 back", || {
        s.b.reachable("claims-1")
    })
    .await;
    for i in 0..3 {
        let name = format!("granted-{i}");
        ok(&kubectl(
            &admin,
            &["create", "configmap", &name, "--from-literal=a=b"],
        ));
        ok(&kubectl(&admin, &["get", "configmap", &name]));
    }
    // The cluster itself saw them, so they went through the granted gateway.
    assert!(ok(&s.k.kubectl("admin", &["get", "configmaps", "-o", "name"])).contains("granted-2"));
    assert_eq!(
        dialled.load(Ordering::SeqCst),
        0,
        "a node that only claims the role was sent requests"
    );
    // Every entry of those requests, the one written before a change is sent
    // included, names the node that served it.
    eventually(
        Duration::from_secs(10),
        "the creates audited with their node",
        || async {
            let entries = s.b.audit("kube.request").await;
            // The only creates sent through the bastion in this test.
            let creates: Vec<&Value> = entries
                .iter()
                .filter(|e| {
                    e["detail"]["verb"] == "create" && e["detail"]["resource"] == "configmaps"
                })
                .collect();
            creates
                .iter()
                .filter(|e| e["detail"]["status"] == 201)
                .count()
                >= 3
                && creates
                    .iter()
                    .filter(|e| e["outcome"] == "requested")
                    .count()
                    >= 3
                && creates.iter().all(|e| {
                    e["detail"]["gateway"]["hostname"] == "gw-1"
                        && e["detail"]["gateway"]["node_id"] == gw_id.as_str()
                        && e["targets"]
                            .as_array()
                            .is_some_and(|t| t.iter().any(|t| t == "node:gw-1"))
                })
        },
    )
    .await;
    assert!(served_by(&s, "claims-1").await.is_empty());

    // The granted gateway down: the claiming node is no fallback.
    let gw_dir = s.gateway.as_ref().unwrap().data_dir.clone();
    s.gateway.take().unwrap().stop();
    eventually(Duration::from_secs(15), "gw-1 unreachable", || async {
        !s.b.reachable("gw-1").await
    })
    .await;
    let e = err(&kubectl(&admin, &["get", "configmaps"]));
    assert!(e.contains("is connected to the bastion"), "{e}");
    assert_eq!(dialled.load(Ordering::SeqCst), 0);
    let url = s.k.url();
    s.gateway = Some(AgentProc::run_with(
        &gw_dir,
        &["--kube-apiserver", &url, "--kube-credentials", &creds],
    ));
    eventually(
        Duration::from_secs(20),
        "kubectl through gw-1 again",
        || async { kubectl(&admin, &["get", "configmaps"]).status.success() },
    )
    .await;

    // Taking the role back ends the watch the node serves, at once, and no
    // new request goes anywhere: the edge has no gateway.
    let (mut w, lines) = watch(&admin);
    wait_line(&lines, "configmap/granted-0", Duration::from_secs(15));
    let v = s.b.kube_gateway("gw-1", false).await;
    assert_eq!(
        v["kube_gateway"],
        json!({"granted": false, "capable": true}),
        "{v}"
    );
    let started = Instant::now();
    while w.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the watch outlived the node's gateway role"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = err(&kubectl(&admin, &["get", "configmaps"]));
    assert!(e.contains("no Kubernetes gateway"), "{e}");
    assert_eq!(dialled.load(Ordering::SeqCst), 0);
    eventually(
        Duration::from_secs(10),
        "the watch's end audited",
        || async {
            served_by(&s, "gw-1")
                .await
                .iter()
                .any(|e| e["detail"]["verb"] == "watch" && e["detail"]["end"] == "gateway_revoked")
        },
    )
    .await;
    let revoked =
        s.b.audit("api DELETE /api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway")
            .await;
    assert!(
        revoked.iter().any(|e| e["outcome"] == "ok"
            && e["detail"]["detail"]["kube_requests_cut"].as_u64() >= Some(1)),
        "{revoked:?}"
    );

    // Requests follow the grant: granted, the other node is sent them (and,
    // its "API server" answering nothing, they fail), named in the audit.
    s.b.kube_gateway("claims-1", true).await;
    err(&kubectl(&admin, &["get", "configmaps"]));
    assert!(
        dialled.load(Ordering::SeqCst) >= 1,
        "the granted node was not sent the request"
    );
    eventually(
        Duration::from_secs(10),
        "the request audited with the node it went to",
        || async { !served_by(&s, "claims-1").await.is_empty() },
    )
    .await;
    drop(claimer);
    decoy_task.abort();
}

/// Most watches and streams one user may hold open (the bastion's
/// `MAX_LONG_PER_USER`).
const MAX_LONG_PER_USER: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_watch_the_api_server_takes_counts_as_a_watch() {
    let s = setup().await;
    let (token, _) = user(&s.b, "ro", "read_only", "web").await;
    let ro = kubeconfig(&s, &token, "ro.kubeconfig").await;
    eventually(Duration::from_secs(15), "ro lists configmaps", || async {
        kubectl(&ro, &["get", "configmaps"]).status.success()
    })
    .await;
    let tls = door_tls(&s.kube_addr, &ro, b"h2").await;
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let open = |query: &str| {
        let mut sender = sender.clone();
        let req = http::Request::get(format!("/api/v1/namespaces/default/configmaps?{query}"))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        async move { sender.send_request(req).await.unwrap() }
    };
    // The API server serves each of these as a watch (only `0` and `false`
    // are not), so the bastion counts each against the cap.
    let spellings = ["watch=yes", "watch=", "watch", "watch=on", "watch=True"];
    let mut held = Vec::new();
    for i in 0..MAX_LONG_PER_USER {
        let q = spellings[i % spellings.len()];
        let resp = open(q).await;
        assert_eq!(resp.status(), 200, "{q}");
        held.push(resp.into_body());
    }
    let refused = open("watch=yes").await;
    assert_eq!(refused.status(), 429);
    // A list is not a watch, however it spells it.
    let list = open("watch=FALSE").await;
    assert_eq!(list.status(), 200);
    eventually(
        Duration::from_secs(10),
        "the refusal audited as a watch",
        || async {
            s.b.audit("kube.request").await.iter().any(|e| {
                e["actor"] == "ro"
                    && e["outcome"] == "denied"
                    && e["detail"]["status"] == 429
                    && e["detail"]["verb"] == "watch"
            })
        },
    )
    .await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_stalled_answers_never_stop_the_gateways_channel() {
    let s = setup().await;
    let admin = kubeconfig(&s, &s.b.token, "admin.kubeconfig").await;
    let (token, _) = user(&s.b, "ro", "read_only", "web").await;
    let ro = kubeconfig(&s, &token, "ro.kubeconfig").await;
    eventually(Duration::from_secs(15), "ro reads the API", || async {
        kubectl(&ro, &["get", "--raw", "/version"]).status.success()
    })
    .await;
    // The OpenAPI document: several MB, readable by any authenticated identity.
    let doc = ok(&kubectl(&admin, &["get", "--raw", "/openapi/v2"])).len();
    assert!(doc > 1_000_000, "{doc}");
    // A client whose HTTP/2 window never opens: whatever the gateway sends for
    // it waits at the bastion. Enough such answers to fill the channel's
    // connection window several times over, were they let.
    let tls = door_tls(&s.kube_addr, &ro, b"h2").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let req = http::Request::get("/openapi/v2")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        stalled.push(resp.into_body());
    }
    // Another user's kubectl through the same gateway keeps its pace (before:
    // it waited for the stall deadline, 11 to 14 s).
    for _ in 0..3 {
        let admin = admin.clone();
        let t = Instant::now();
        let out =
            tokio::task::spawn_blocking(move || kubectl(&admin, &["get", "--raw", "/openapi/v2"]))
                .await
                .unwrap();
        assert!(ok(&out).len() > 1_000_000);
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "another user waited {:?}",
            t.elapsed()
        );
    }
    // The stalled answers were cut, the longest-waiting first, as the user's
    // share of the channel was reached, and the rest once they made no progress.
    eventually(
        Duration::from_secs(20),
        "the stalled answers cut and audited",
        || async {
            let entries = s.b.audit("kube.request").await;
            let ended = |how: &str| {
                entries
                    .iter()
                    .any(|e| e["actor"] == "ro" && e["detail"]["end"] == how)
            };
            ended("over_budget") && ended("client_stalled")
        },
    )
    .await;
    drop(stalled);
}

/// A person's kubeconfig holds no secret: kubectl runs `postern kube
/// credentials`, which gets a client certificate for the login session; when
/// the session ends, kubectl is refused and told to log in again.
#[tokio::test(flavor = "multi_thread")]
async fn a_persons_kubeconfig_holds_no_secret_and_kubectl_uses_the_sessions_certificate() {
    let s = setup().await;
    let b = &s.b;
    let (st, v) = b.post("/api/v1/users", json!({ "name": "kim" })).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = b
        .put(
            "/api/v1/users/kim/roles",
            json!({ "role": "read_only", "project": "web" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, inv) = b.post("/api/v1/users/kim/invitation", json!({})).await;
    assert_eq!(st, 201, "{inv}");
    let password = "kim's long passphrase";
    let (code, v) = http(
        b.api,
        "POST",
        "/api/v1/auth/invitation",
        None,
        Some(json!({ "invitation": inv["invitation"], "password": password })),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{v}");

    let home = s.dir.path().join("kim");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("pw"), password).unwrap();
    let bin_dir = postern_tests::bin("postern")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let postern = |args: &[&str]| {
        Command::new(postern_tests::bin("postern"))
            .args(args)
            .env("POSTERN_CONFIG_DIR", &home)
            .env("HOME", &home)
            .env_remove("POSTERN_TOKEN")
            .env_remove("POSTERN_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let url = format!("http://{}", b.api);
    let out = postern(&[
        "login",
        &url,
        "--user",
        "kim",
        "--password-file",
        home.join("pw").to_str().unwrap(),
        "--no-ssh",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = postern(&["kube", "config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg_text = String::from_utf8(out.stdout).unwrap();
    for secret in [
        "token",
        "client-key",
        "client-certificate",
        "pss_",
        "pst_",
        "password",
    ] {
        assert!(
            !cfg_text.contains(secret),
            "the kubeconfig holds {secret}:\n{cfg_text}"
        );
    }
    assert!(cfg_text.contains("command: postern"), "{cfg_text}");
    let cfg = home.join("kubeconfig");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let kubectl_as_kim = |args: &[&str]| {
        Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&cfg)
            .arg("--request-timeout=20s")
            .args(args)
            .env("PATH", &path)
            .env("POSTERN_CONFIG_DIR", &home)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    eventually(
        Duration::from_secs(30),
        "kim's kubectl get configmaps",
        || async { kubectl_as_kim(&["get", "configmaps"]).status.success() },
    )
    .await;
    // The request reached the cluster as kim, by the session's certificate.
    let who = ok(&kubectl_as_kim(&["auth", "can-i", "list", "configmaps"]));
    assert_eq!(who.trim(), "yes");
    let e = err(&kubectl_as_kim(&["create", "configmap", "nope"]));
    assert!(e.contains("forbidden"), "{e}");

    // The plugin answers in the version asked.
    let plugin = Command::new(postern_tests::bin("postern"))
        .args(["kube", "credentials"])
        .env("POSTERN_CONFIG_DIR", &home)
        .env("HOME", &home)
        .env("KUBERNETES_EXEC_INFO", r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#)
        .output()
        .unwrap();
    let cred: Value = serde_json::from_slice(&plugin.stdout).unwrap();
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1");
    assert!(
        cred["status"]["clientCertificateData"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(cred["status"]["expirationTimestamp"].is_string());

    // The session ends: kubectl is refused, and told what to do.
    let (st, v) = b.delete("/api/v1/users/kim/sessions").await;
    assert_eq!(st, 200, "{v}");
    let e = err(&kubectl_as_kim(&["get", "configmaps"]));
    assert!(e.contains("log in again"), "{e}");
    // A node's or a replica's certificate (the same CA) never passes for a
    // person: only a certificate naming a session does (pki tests), and a
    // bearer, when sent, decides over any certificate.
}
