//! Kubernetes as a source of node access, end to end against a REAL kube-apiserver:
//! a cluster admin puts a key in the node's Node object with kubectl; the agent
//! (with the kubelet's credentials) learns it; the node's real sshd lets it in
//! directly through `postern-keys` (the break-glass path, no bastion); the bastion
//! shows and audits it. Removed, it stops; expired or malformed, it is never
//! printed; with the API server down, the cached key still works, also after an
//! agent restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use postern_tests::kube::KubeCluster;
use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text};
use postern_tests::{AgentProc, Bastion, BastionOpts, eventually};
use serde_json::Value;

const ANNOTATION: &str = "postern.dev/authorized-keys";
const NODE: &str = "node-k";

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

fn annotate(k: &KubeCluster, value: Option<&str>) {
    let arg = match value {
        Some(v) => format!("{ANNOTATION}={v}"),
        None => format!("{ANNOTATION}-"),
    };
    let out = k.kubectl("admin", &["annotate", "node", NODE, "--overwrite", &arg]);
    assert!(
        out.status.success(),
        "kubectl annotate: {}",
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

async fn node_view(b: &Bastion) -> Value {
    b.node(NODE).await.expect("the node is listed")
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
    let kube_args = [
        "--kube-node-keys",
        "--kubelet-kubeconfig",
        kubelet.as_str(),
        "--node-name",
        NODE,
    ];
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
    // and a malformed line between them.
    annotate(
        &k,
        Some(&format!(
            "# on-call\nlogins=root {}\nssh-ed25519 not-a-key\nexpires=2001-01-01T00:00:00Z {}\n",
            public_key(&oncall.key),
            public_key(&expired.key)
        )),
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
    assert!(lines.starts_with("restrict,pty "), "{lines}");
    assert!(
        lines.contains("postern:kube-node-annotation:line=2"),
        "{lines}"
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
        log.contains("line=3") && log.contains("skipped a line"),
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
    assert_eq!(shown["rejected"][0]["line"], 3, "{v}");
    assert!(shown["updated_at"].is_string(), "{v}");
    assert!(
        !v.to_string().contains(&expired_fp),
        "expired keys are not shown: {v}"
    );
    let audits = b.audit("node.kube_keys").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["detail"]["added"], serde_json::json!([oncall_fp]));
    assert_eq!(audits[0]["detail"]["rejected"][0]["line"], 3);
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

    // Added again, then the agent runs without --kube-node-keys: the keys go from
    // the helper, its cache and the bastion's view, and the removal is audited.
    annotate(&k, Some(&public_key(&oncall.key)));
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
async fn a_bad_kubelet_kubeconfig_or_missing_flags_fail_at_start() {
    let b = Bastion::start(BastionOpts::default()).await;
    let dir = b.enroll("node-x").await;
    let bogus = b.dir.path().join("no-such-kubeconfig");
    let out = Command::new(postern_tests::bin("postern-agent"))
        .args(["run", "--data-dir"])
        .arg(&dir)
        .args(["--kube-node-keys", "--kubelet-kubeconfig"])
        .arg(&bogus)
        .args(["--node-name", "node-x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("kubelet kubeconfig"),
        "{}",
        text(&out.stderr)
    );
    // --kube-node-keys without its two companions is refused by the flags.
    let out = Command::new(postern_tests::bin("postern-agent"))
        .args(["run", "--data-dir"])
        .arg(&dir)
        .arg("--kube-node-keys")
        .output()
        .unwrap();
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
    // Enrolled through r2, the agent knows only r2.
    let _agent = r2
        .agent_with(
            NODE,
            &[
                "--kube-node-keys",
                "--kubelet-kubeconfig",
                kubelet.to_str().unwrap(),
                "--node-name",
                NODE,
            ],
        )
        .await;
    let u = SshUser::unregistered(&r1, "oncall");
    let fp = fingerprint(&u.key);
    annotate(&k, Some(&format!("logins=root {}", public_key(&u.key))));
    eventually(Duration::from_secs(20), "r1 shows the key", || async {
        node_view(&r1).await["kube_keys"]["keys"][0]["fingerprint"] == fp.as_str()
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
