//! Kubernetes as a source of node access, end to end against a REAL kube-apiserver:
//! a cluster admin signs a key list for the node with the real `ssh-keygen -Y sign`
//! and puts it and the signature in the node's Node object with kubectl; the agent
//! (with the kubelet's credentials, trusting the admin's public key) learns it;
//! the node's real sshd lets it in directly through `postern-keys` (the
//! break-glass path, no bastion); the bastion shows and audits it. Removed, it
//! stops; expired or malformed, it is never printed; with the API server down, the
//! cached key still works, also after an agent restart. And an identity that may
//! update `nodes/status` but not `nodes` (what CNI and monitoring DaemonSets hold),
//! which can set any annotation, gets no key in: not unsigned, not signed by its
//! own key, not by editing a signed list, not with a list signed for another node,
//! not by putting back an older signed list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postern_tests::kube::KubeCluster;
use postern_tests::ssh::{InstalledHelper, Node, SshUser, keygen, run_with_timeout, text};
use postern_tests::{AgentProc, Bastion, BastionOpts, eventually};
use serde_json::Value;

const ANNOTATION: &str = "postern.dev/authorized-keys";
const SIG_ANNOTATION: &str = "postern.dev/authorized-keys-sig";
const NODE: &str = "node-k";
/// May update `nodes/status` (and read Nodes), nothing else: a CNI DaemonSet's rights.
const STATUS_WRITER: &str = "status-writer";
const STATUS_WRITER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: cni-node-status
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["nodes/status"]
  verbs: ["get", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: cni-node-status
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cni-node-status
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: status-writer
"#;

/// A signing key made by the real `ssh-keygen`, in `dir`; its public half is
/// `<key>.pub`, which is what `--kube-node-keys-signer` is given.
fn signing_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    keygen(&key);
    key
}

/// `ssh-keygen -Y sign -n postern-node-keys` of `doc`, as the README tells a
/// cluster admin to run it: the armored signature.
fn sign(key: &Path, doc: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = key.with_file_name(format!("doc-{}.keys", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, doc).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "postern-node-keys", "-f"])
        .arg(key)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -Y sign: {}",
        text(&out.stderr)
    );
    std::fs::read_to_string(format!("{}.sig", file.display())).unwrap()
}

/// A key list for `node` with its header: valid for 30 days from now.
fn document(node: &str, serial: u64, body: &str) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let not_after = postern_api::kube_keys::format_utc(now_ms + 30 * 24 * 3600 * 1000).unwrap();
    format!("node={node}\nserial={serial}\nnot-after={not_after}\n{body}")
}

/// `postern-keys` as sshd runs it: the lines it prints for `login`.
fn helper(h: &InstalledHelper, data_dir: &Path, login: &str) -> String {
    let out = Command::new(&h.path)
        .arg("--data-dir")
        .arg(data_dir)
        .arg(login)
        .output()
        .unwrap();
    text(&out.stdout)
}

fn public_key(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// `ssh root@127.0.0.1 -p PORT` straight to the node's sshd, with `u`'s key.
fn ssh_direct(u: &SshUser, port: u16, login: &str) -> std::process::Output {
    run_with_timeout(
        Command::new("ssh").arg("-F").arg(&u.config).args([
            "-p",
            &port.to_string(),
            &format!("{login}@127.0.0.1"),
            "echo in",
        ]),
        Duration::from_secs(30),
    )
}

/// `kubectl annotate` as the cluster admin: the document and its signature in
/// one command (one update: the agent never sees one without the other), or both
/// removed.
fn annotate(k: &KubeCluster, value: Option<(&str, &str)>) {
    let args = match value {
        Some((doc, sig)) => [
            format!("{ANNOTATION}={doc}"),
            format!("{SIG_ANNOTATION}={sig}"),
        ],
        None => [format!("{ANNOTATION}-"), format!("{SIG_ANNOTATION}-")],
    };
    let out = k.kubectl(
        "admin",
        &["annotate", "node", NODE, "--overwrite", &args[0], &args[1]],
    );
    assert!(
        out.status.success(),
        "kubectl annotate: {}",
        text(&out.stderr)
    );
}

/// The cluster admin's whole routine: write the document, sign it, annotate.
/// Returns both texts, as anyone who can read the Node can.
fn grant(k: &KubeCluster, key: &Path, serial: u64, body: &str) -> (String, String) {
    let doc = document(NODE, serial, body);
    let sig = sign(key, &doc);
    annotate(k, Some((doc.as_str(), sig.as_str())));
    (doc, sig)
}

/// What a holder of `patch nodes/status` (and no right on `nodes` itself) can do:
/// set both annotations to any text through the status subresource, the request
/// flannel or node-problem-detector make. `sig: None` removes the signature.
fn status_patch(k: &KubeCluster, doc: &str, sig: Option<&str>) {
    let mut annotations = serde_json::Map::new();
    annotations.insert(ANNOTATION.to_string(), Value::from(doc));
    annotations.insert(
        SIG_ANNOTATION.to_string(),
        sig.map_or(Value::Null, Value::from),
    );
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(k.dir.path().join("certs/apiserver.crt"))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", k.token_of(STATUS_WRITER)),
            "-H",
            "Content-Type: application/merge-patch+json",
            "-X",
            "PATCH",
            "--data-binary",
            &patch.to_string(),
            &format!("{}/api/v1/nodes/{NODE}/status", k.url()),
        ])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "200",
        "the status writer's patch: {}",
        text(&out.stderr)
    );
}

/// A log without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the node's agent has logged `what`.
async fn agent_logged(node: &Node, what: &str) {
    eventually(Duration::from_secs(20), what, || async {
        plain(&node.agent.log()).contains(what)
    })
    .await;
}

async fn node_view(b: &Bastion) -> Value {
    b.node(NODE).await.expect("the node is listed")
}

/// The agent flags that read this node's keys from its Node object, signed by
/// the key whose public half is `signer`.
fn node_keys_args<'a>(signer: &'a str, kubelet: &'a str) -> [&'a str; 7] {
    [
        "--kube-node-keys",
        "--kube-node-keys-signer",
        signer,
        "--kubelet-kubeconfig",
        kubelet,
        "--node-name",
        NODE,
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_in_the_node_object_let_in_at_the_nodes_sshd_and_the_bastion_shows_them() {
    let mut k = KubeCluster::start_with_nodes(&[NODE]).await;
    let out = k.apply(
        "admin",
        &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kubelet = k.kubeconfig_for(&format!("node:{NODE}")).await;
    let kubelet = kubelet.to_str().unwrap().to_string();

    let mut b = Bastion::start(BastionOpts::default()).await;
    let h = InstalledHelper::install();
    // The cluster admin's signing key; the agent gets its public half.
    let admin = signing_key(b.dir.path(), "cluster-admin");
    let signer = admin.with_extension("pub");
    let kube_args = node_keys_args(signer.to_str().unwrap(), &kubelet);
    let mut node = Node::start_with(&b, &h, NODE, &kube_args).await;
    let dir = node.agent.data_dir.clone();
    let port = node.sshd.port;

    // Two people with keys that Postern never saw: on-call, and a contractor.
    let oncall = SshUser::unregistered(&b, "oncall");
    let expired = SshUser::unregistered(&b, "expired");
    let (oncall_fp, expired_fp) = (fingerprint(&oncall.key), fingerprint(&expired.key));
    let refused = ssh_direct(&oncall, port, "root");
    assert!(!refused.status.success(), "no key yet, no way in");

    // The cluster admin adds them: on-call for root, the other already expired,
    // and a malformed line between them (lines 4 to 7, after the header).
    grant(
        &k,
        &admin,
        1,
        &format!(
            "# on-call\nlogins=root {}\nssh-ed25519 not-a-key\nexpires=2001-01-01T00:00:00Z {}\n",
            public_key(&oncall.key),
            public_key(&expired.key)
        ),
    );
    eventually(
        Duration::from_secs(20),
        "the agent learns the key",
        || async { helper(&h, &dir, "root").contains(&public_key(&oncall.key)[..60]) },
    )
    .await;
    let lines = helper(&h, &dir, "root");
    assert_eq!(
        lines.lines().count(),
        1,
        "only the live, valid key: {lines}"
    );
    // Every key ends when the signed document does (its not-after), so sshd
    // enforces that end even from the cache.
    assert!(lines.starts_with("restrict,pty,expiry-time=\""), "{lines}");
    assert!(
        lines.contains("postern:kube-node-annotation:line=5"),
        "{lines}"
    );
    assert!(
        lines.contains("expiry-time="),
        "every key ends with the document's not-after: {lines}"
    );
    assert!(!lines.contains("not-a-key"), "{lines}");
    assert!(helper(&h, &dir, "postgres").is_empty(), "logins=root only");
    let out = ssh_direct(&oncall, port, "root");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "in");
    let out = ssh_direct(&expired, port, "root");
    assert!(!out.status.success(), "an expired key never gets in");
    let log = plain(&node.agent.log());
    assert!(
        log.contains("line=6") && log.contains("skipped a line"),
        "the agent logs the malformed line with its number:\n{log}"
    );

    // The bastion shows them on the node, with the rejected line, and audits it.
    eventually(
        Duration::from_secs(20),
        "the bastion shows the key",
        || async {
            node_view(&b).await["kube_keys"]["keys"][0]["fingerprint"] == oncall_fp.as_str()
        },
    )
    .await;
    let v = node_view(&b).await;
    let shown = &v["kube_keys"];
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(shown["keys"][0]["logins"], serde_json::json!(["root"]));
    assert_eq!(shown["rejected"][0]["line"], 6, "{v}");
    assert!(shown["updated_at"].is_string(), "{v}");
    assert!(
        !v.to_string().contains(&expired_fp),
        "expired keys are not shown: {v}"
    );
    let audits = b.audit("node.kube_keys").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["detail"]["added"], serde_json::json!([oncall_fp]));
    assert_eq!(audits[0]["detail"]["rejected"][0]["line"], 6);
    assert_eq!(audits[0]["project"], "web");

    // A bastion restart re-reads the same set: shown again, not audited again.
    b.restart().await;
    eventually(Duration::from_secs(20), "agent back", || b.reachable(NODE)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.audit("node.kube_keys").await.len(), 1);
    assert_eq!(
        node_view(&b).await["kube_keys"]["keys"][0]["fingerprint"],
        oncall_fp.as_str()
    );

    // The API server goes down: the key keeps working, also after an agent restart
    // (from the cache), and with the agent down (the helper reads the cache file).
    k.stop();
    let out = ssh_direct(&oncall, port, "root");
    assert!(
        out.status.success(),
        "API server down: {}",
        text(&out.stderr)
    );
    node.agent.stop();
    let lines = helper(&h, &dir, "root");
    assert!(
        lines.contains("postern:kube-node-annotation"),
        "agent down: {lines}"
    );
    let port_arg = port.to_string();
    let args: Vec<&str> = [&["--sshd-port", port_arg.as_str()][..], &kube_args[..]].concat();
    node.agent = AgentProc::run_with(&dir, &args);
    eventually(Duration::from_secs(20), "agent back", || b.reachable(NODE)).await;
    let out = ssh_direct(&oncall, port, "root");
    assert!(
        out.status.success(),
        "agent restarted, API server down: {}",
        text(&out.stderr)
    );
    assert!(
        node.agent.log().contains("serving cached keys"),
        "{}",
        node.agent.log()
    );
    let cache = std::fs::metadata(dir.join("kube-keys.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&cache.permissions()) & 0o777,
        0o600
    );

    // The API server is back and the key is removed: it stops working, the
    // bastion shows it gone and audits the removal.
    k.start().await;
    annotate(&k, None);
    eventually(Duration::from_secs(30), "the key is withdrawn", || async {
        helper(&h, &dir, "root").is_empty()
    })
    .await;
    let out = ssh_direct(&oncall, port, "root");
    assert!(!out.status.success(), "a removed key no longer gets in");
    eventually(
        Duration::from_secs(20),
        "the bastion shows no key",
        || async { node_view(&b).await["kube_keys"]["keys"] == serde_json::json!([]) },
    )
    .await;
    let audits = b.audit("node.kube_keys").await;
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert_eq!(
        audits[0]["detail"]["removed"],
        serde_json::json!([oncall_fp])
    );

    // Added again (a new document, so a higher serial), then the agent runs
    // without --kube-node-keys: the keys go from the helper, its cache and the
    // bastion's view, and the removal is audited.
    grant(&k, &admin, 2, &public_key(&oncall.key));
    eventually(Duration::from_secs(20), "shown again", || async {
        node_view(&b).await["kube_keys"]["keys"][0]["fingerprint"] == oncall_fp.as_str()
    })
    .await;
    node.agent.stop();
    node.agent = AgentProc::run_with(&dir, &["--sshd-port", port_arg.as_str()]);
    eventually(Duration::from_secs(20), "the view forgets them", || async {
        node_view(&b).await["kube_keys"].is_null()
    })
    .await;
    assert!(helper(&h, &dir, "root").is_empty());
    assert!(!dir.join("kube-keys.json").exists());
    let audits = b.audit("node.kube_keys").await;
    assert_eq!(audits.len(), 4, "{audits:?}");
    assert_eq!(
        audits[0]["detail"]["removed"],
        serde_json::json!([oncall_fp])
    );
    drop(node);
    drop(k);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_kubelet_kubeconfig_no_signer_or_missing_flags_fail_at_start() {
    let b = Bastion::start(BastionOpts::default()).await;
    let dir = b.enroll("node-x").await;
    let signer = signing_key(b.dir.path(), "cluster-admin").with_extension("pub");
    let signer = signer.to_str().unwrap();
    let bogus = b.dir.path().join("no-such-kubeconfig");
    let bogus = bogus.to_str().unwrap();
    let agent = |args: &[&str]| {
        Command::new(postern_tests::bin("postern-agent"))
            .args(["run", "--data-dir"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = agent(&[
        "--kube-node-keys",
        "--kube-node-keys-signer",
        signer,
        "--kubelet-kubeconfig",
        bogus,
        "--node-name",
        "node-x",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("kubelet kubeconfig"),
        "{}",
        text(&out.stderr)
    );
    // Without a signer key the annotation would be anyone's word: refused, and
    // the message says why.
    let out = agent(&[
        "--kube-node-keys",
        "--kubelet-kubeconfig",
        bogus,
        "--node-name",
        "node-x",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--kube-node-keys-signer") && err.contains("nodes/status"),
        "{err}"
    );
    // A signer file that holds no key.
    let junk = b.dir.path().join("junk.pub");
    std::fs::write(&junk, "not a key\n").unwrap();
    let out = agent(&[
        "--kube-node-keys",
        "--kube-node-keys-signer",
        junk.to_str().unwrap(),
        "--kubelet-kubeconfig",
        bogus,
        "--node-name",
        "node-x",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--kube-node-keys-signer") && err.contains("line 1"),
        "{err}"
    );
    // --kube-node-keys without its two companions is refused by the flags.
    let out = agent(&["--kube-node-keys"]);
    assert!(!out.status.success());
}

/// Bastion replicas share PostgreSQL: the replica holding the node's channel polls
/// the agent, and any replica shows the keys and the audit entry.
#[tokio::test(flavor = "multi_thread")]
async fn another_replica_shows_the_keys_of_a_node_whose_channel_it_does_not_hold() {
    let mut k = KubeCluster::start_with_nodes(&[NODE]).await;
    let out = k.apply(
        "admin",
        &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kubelet = k.kubeconfig_for(&format!("node:{NODE}")).await;
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let r2 = Bastion::replica_of(&r1, "r2").await;
    let admin = signing_key(r1.dir.path(), "cluster-admin");
    let signer = admin.with_extension("pub");
    // Enrolled through r2, the agent knows only r2.
    let _agent = r2
        .agent_with(
            NODE,
            &node_keys_args(signer.to_str().unwrap(), kubelet.to_str().unwrap()),
        )
        .await;
    let u = SshUser::unregistered(&r1, "oncall");
    let fp = fingerprint(&u.key);
    grant(
        &k,
        &admin,
        1,
        &format!("logins=root {}", public_key(&u.key)),
    );
    eventually(Duration::from_secs(20), "r1 shows the key", || async {
        node_view(&r1).await["kube_keys"]["keys"][0]["fingerprint"] == fp.as_str()
    })
    .await;
    // Audited in a batch by the replica that holds the channel: committed
    // shortly after the keys themselves.
    eventually(Duration::from_secs(10), "the change audited", || async {
        !r1.audit("node.kube_keys").await.is_empty()
    })
    .await;
    let audits = r1.audit("node.kube_keys").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["detail"]["added"], serde_json::json!([fp]));
    // The node view's `kube_keys` is in the OpenAPI document.
    let (s, doc) = postern_tests::http(r1.api, "GET", "/api-docs/openapi.json", None, None)
        .await
        .unwrap();
    assert_eq!(s, 200);
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["Node"]["properties"]["kube_keys"].is_object(),
        "{}",
        schemas["Node"]
    );
    assert!(schemas["NodeKubeKeys"]["properties"]["rejected"].is_object());
}

/// The attack of the security review: an identity that may update `nodes/status`
/// but not `nodes` (what flannel, calico-node or node-problem-detector hold on
/// every node) can set the Node's annotations to anything, through the status
/// subresource. Whatever it writes, no key of its choosing gets in; at worst the
/// node's Kubernetes keys go until the cluster admin signs again.
#[tokio::test(flavor = "multi_thread")]
async fn whoever_may_only_update_node_status_cannot_let_a_key_in() {
    let mut k = KubeCluster::start_with_nodes(&[NODE]).await;
    let out = k.apply(
        "admin",
        &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = k.apply("admin", STATUS_WRITER_RBAC);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let can_i = |args: &[&str]| {
        let out = k.kubectl(STATUS_WRITER, &[&["auth", "can-i"][..], args].concat());
        text(&out.stdout).trim().to_string()
    };
    assert_eq!(can_i(&["patch", "nodes"]), "no");
    assert_eq!(can_i(&["patch", "nodes", "--subresource=status"]), "yes");
    let kubelet = k.kubeconfig_for(&format!("node:{NODE}")).await;

    let b = Bastion::start(BastionOpts::default()).await;
    let h = InstalledHelper::install();
    let admin = signing_key(b.dir.path(), "cluster-admin");
    let signer = admin.with_extension("pub");
    let node = Node::start_with(
        &b,
        &h,
        NODE,
        &node_keys_args(signer.to_str().unwrap(), kubelet.to_str().unwrap()),
    )
    .await;
    let dir = node.agent.data_dir.clone();
    let port = node.sshd.port;
    let oncall = SshUser::unregistered(&b, "oncall");
    let mallory = SshUser::unregistered(&b, "mallory");
    let mallory_key = public_key(&mallory.key);
    let mallory_signer = signing_key(b.dir.path(), "mallory-signer");
    // After each attempt: nothing for any login, and mallory's ssh is refused.
    let nothing_gets_in = || {
        for login in ["root", "postgres"] {
            let lines = helper(&h, &dir, login);
            assert!(lines.is_empty(), "{login}: {lines}");
        }
        let out = ssh_direct(&mallory, port, "root");
        assert!(!out.status.success(), "mallory got in");
    };

    // 1. The review's reproduction: a plain key list, no signature.
    status_patch(&k, &format!("logins=root {mallory_key}"), None);
    agent_logged(&node, "is not signed").await;
    nothing_gets_in();
    eventually(Duration::from_secs(20), "the bastion shows why", || async {
        let v = node_view(&b).await;
        v["kube_keys"]["rejected"][0]["line"] == 0
            && v["kube_keys"]["rejected"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("is not signed"))
    })
    .await;

    // The cluster admin once let mallory in (serial 1), then took it back
    // (serial 2); on-call stays.
    let oncall_line = format!("logins=root {}", public_key(&oncall.key));
    let (old_doc, old_sig) = grant(
        &k,
        &admin,
        1,
        &format!("{oncall_line}\nlogins=root {mallory_key}\n"),
    );
    eventually(Duration::from_secs(20), "mallory let in", || async {
        helper(&h, &dir, "root").contains(&mallory_key[..60])
    })
    .await;
    let (doc, sig) = grant(&k, &admin, 2, &format!("{oncall_line}\n"));
    eventually(Duration::from_secs(20), "mallory taken out", || async {
        let lines = helper(&h, &dir, "root");
        !lines.contains(&mallory_key[..60]) && lines.contains(&public_key(&oncall.key)[..60])
    })
    .await;

    // 2. The signed list with mallory added: the signature no longer matches, and
    // the whole list goes (on-call too), not just the added line.
    status_patch(
        &k,
        &format!("{doc}logins=root {mallory_key}\n"),
        Some(sig.as_str()),
    );
    agent_logged(&node, "changed after it was signed").await;
    nothing_gets_in();

    // 3. A list signed with the status writer's own key.
    let forged = document(NODE, 99, &format!("logins=root {mallory_key}\n"));
    status_patch(&k, &forged, Some(sign(&mallory_signer, &forged).as_str()));
    agent_logged(&node, "is not one of this agent's").await;
    nothing_gets_in();

    // 4. A list the admin really signed, for another node where mallory may log in.
    let elsewhere = document("node-other", 100, &format!("logins=root {mallory_key}\n"));
    status_patch(&k, &elsewhere, Some(sign(&admin, &elsewhere).as_str()));
    agent_logged(&node, "signed for node").await;
    nothing_gets_in();

    // 5. The admin's own older list, still within its not-after, put back.
    status_patch(&k, &old_doc, Some(old_sig.as_str()));
    agent_logged(&node, "is lower than").await;
    nothing_gets_in();

    // The admin signs again: on-call is back, mallory still out.
    grant(&k, &admin, 3, &format!("{oncall_line}\n"));
    eventually(Duration::from_secs(20), "on-call back", || async {
        helper(&h, &dir, "root").contains(&public_key(&oncall.key)[..60])
    })
    .await;
    let out = ssh_direct(&oncall, port, "root");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ssh_direct(&mallory, port, "root");
    assert!(!out.status.success(), "mallory got in");
    drop(node);
    drop(k);
}
