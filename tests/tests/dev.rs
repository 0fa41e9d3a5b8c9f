//! `postern-bastion dev`, the README's first command: a demo node that becomes
//! reachable with the token it writes, and a restart that keeps everything.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use postern_tests::{bin, eventually, free_port, http};

struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, api: &str, agent: &str) -> Dev {
    Dev(Command::new(bin("postern-bastion"))
        .args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--api-addr", api, "--agent-addr", agent])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_runs_a_demo_node_and_keeps_everything_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("postern-dev");
    let api = format!("127.0.0.1:{}", free_port());
    let agent = format!("127.0.0.1:{}", free_port());
    let addr = api.parse().unwrap();
    let nodes = "/api/v1/projects/demo/edges/local/nodes";
    let mut first_id = String::new();
    for round in 0..2 {
        let _dev = start(&data, &api, &agent);
        eventually(Duration::from_secs(20), "admin.token written", || async {
            data.join("admin.token").exists()
        })
        .await;
        let token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let ok = || async {
            match http(addr, "GET", nodes, Some(&token), None).await {
                Ok((200, v)) => {
                    v[0]["hostname"] == "demo-node"
                        && v[0]["reachable"] == true
                        && v[0]["state"] == "provisioned"
                }
                _ => false,
            }
        };
        eventually(Duration::from_secs(20), "demo-node reachable", ok).await;
        let (_, v) = http(addr, "GET", nodes, Some(&token), None).await.unwrap();
        let id = v[0]["id"].as_str().unwrap().to_string();
        if round == 0 {
            first_id = id;
            let join = std::fs::read_to_string(data.join("join-command")).unwrap();
            assert!(join.starts_with(&format!(
                "postern-agent join --controller https://{agent} --token pet_"
            )));
        } else {
            assert_eq!(id, first_id, "the restart kept the node");
        }
    }
}
