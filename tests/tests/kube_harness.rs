//! The real kube-apiserver harness itself: it starts, authorizes as a real cluster
//! does (admin, the impersonating gateway, a kubelet that may change only its own Node),
//! audits, and survives a stop and start on the same data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use postern_tests::kube::KubeCluster;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const NODE_A: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n";
const NODE_B: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-b\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_real_apiserver_authorizes_audits_and_restarts() {
    let t = Instant::now();
    let mut k = KubeCluster::start_with_nodes(&["node-a"]).await;
    eprintln!("kube-apiserver ready in {:?}", t.elapsed());

    // Admin lists nodes (none yet) and creates two.
    let out = ok(&k.kubectl("admin", &["get", "nodes"]));
    assert!(!out.contains("node-a"), "{out}");
    ok(&k.apply("admin", NODE_A));
    ok(&k.apply("admin", NODE_B));
    let out = ok(&k.kubectl("admin", &["get", "nodes", "-o", "name"]));
    assert!(
        out.contains("node/node-a") && out.contains("node/node-b"),
        "{out}"
    );

    // The kubelet of node-a reads Nodes (the Node authorizer lets kubelets read them
    // all) but may change only its own (NodeRestriction).
    let cfg = k.kubeconfig_for("node:node-a").await;
    assert!(cfg.exists());
    ok(&k.kubectl("node:node-a", &["get", "node", "node-a"]));
    ok(&k.kubectl(
        "node:node-a",
        &["annotate", "node", "node-a", "postern.dev/x=1"],
    ));
    let refused = k.kubectl(
        "node:node-a",
        &["annotate", "node", "node-b", "postern.dev/x=1"],
    );
    assert!(!refused.status.success(), "a kubelet changed another node");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The gateway may impersonate; the impersonated user has no rights, and the audit
    // log names them.
    let as_alice = k.kubectl("gateway", &["get", "nodes", "--as", "alice"]);
    assert!(!as_alice.status.success());
    assert!(
        String::from_utf8_lossy(&as_alice.stderr).contains("\"alice\" cannot list"),
        "{}",
        String::from_utf8_lossy(&as_alice.stderr)
    );
    let seen = k.audit_find(|e| e["impersonatedUser"]["username"] == "alice");
    assert!(!seen.is_empty(), "no audit event for the impersonated user");
    assert_eq!(seen[0]["user"]["username"], "gateway");
    // Without the ClusterRole a kubelet may not impersonate at all.
    let denied = k.kubectl("node:node-a", &["get", "nodes", "--as", "alice"]);
    assert!(!denied.status.success());

    // A node identity made after start (restarts the apiserver once).
    k.kubeconfig_for("node:node-b").await;
    ok(&k.kubectl("node:node-b", &["get", "node", "node-b"]));

    // Down, then up again on the same data.
    k.stop();
    assert!(!k.running());
    let down = k.kubectl("admin", &["--request-timeout=2s", "get", "nodes"]);
    assert!(
        !down.status.success(),
        "kubectl worked with the apiserver stopped"
    );
    k.start().await;
    let out = ok(&k.kubectl("admin", &["get", "nodes", "-o", "name"]));
    assert!(
        out.contains("node/node-a"),
        "data lost over a restart: {out}"
    );
    assert!(k.url().starts_with("https://127.0.0.1:"));
    assert!(k.ca_pem().contains("BEGIN CERTIFICATE"));
}
