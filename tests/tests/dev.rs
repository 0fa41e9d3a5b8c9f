//! `postern-bastion dev`, the README's first command: a demo node that becomes
//! reachable with the token it writes, a restart that keeps everything, and the
//! README's tour run as written against a fresh `dev`.
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
    // Off the default ports, which the README tour's test uses.
    let ssh = format!("127.0.0.1:{}", free_port());
    let kube = format!("127.0.0.1:{}", free_port());
    Dev(Command::new(bin("postern-bastion"))
        .args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--api-addr", api, "--agent-addr", agent])
        .args(["--ssh-addr", &ssh, "--kube-addr", &kube])
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

/// The README's tour, as written: the block after its `<!-- tour: … -->` marker
/// runs in bash (`-euo pipefail`) against a fresh `dev` on its default ports,
/// from the directory that holds `postern-dev`. Only `cargo run … -p
/// postern-bastion --` and the CLI's build are mapped, to the binaries this
/// suite built. HOME is a fresh
/// one with its own key, which `dev` registers for admin; the SSH line must
/// reach the demo node's own sshd through the bastion.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_tour_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let at = readme
        .find("<!-- tour:")
        .expect("the README marks its tour");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let end = start + rest[start..].find("```").unwrap();
    let bastion = bin("postern-bastion").display().to_string();
    let cli_dir = bin("postern").parent().unwrap().display().to_string();
    let script = rest[start..end]
        .replace(
            "cargo build --release -p postern-cli && PATH=$PWD/target/release:$PATH",
            &format!("PATH={cli_dir}:$PATH"),
        )
        .replace("cargo run --release -p postern-bastion --", &bastion)
        .replace("cargo run -p postern-bastion --", &bastion);
    assert!(
        !script.contains("cargo "),
        "an unmapped cargo command: {script}"
    );
    assert!(script.contains("ssh "), "the tour includes SSH");

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    postern_tests::ssh::keygen(&home.join(".ssh/id_ed25519"));
    let dev = Dev(Command::new(bin("postern-bastion"))
        .args(["dev", "--data-dir", "./postern-dev"])
        .current_dir(dir.path())
        .env("HOME", &home)
        .env_remove("SUDO_USER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let token_file = dir.path().join("postern-dev/admin.token");
    eventually(Duration::from_secs(30), "dev up with its demo node", || async {
        let Ok(token) = std::fs::read_to_string(&token_file) else {
            return false;
        };
        let nodes = "/api/v1/projects/demo/edges/local/nodes";
        dir.path().join("postern-dev/ssh_config").exists()
            && matches!(
                http("127.0.0.1:8080".parse().unwrap(), "GET", nodes, Some(token.trim()), None).await,
                Ok((200, v)) if v[0]["reachable"] == true
            )
    })
    .await;
    let out = tokio::task::spawn_blocking({
        let (cwd, home) = (dir.path().to_path_buf(), home.clone());
        move || {
            Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(cwd)
                .env("HOME", home)
                .env_remove("SUDO_USER")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tour failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 node: 1 succeeded"),
        "the exec summary:\n{stderr}"
    );
    for expected in [
        "logged in to http://127.0.0.1:8080 as admin",
        "demo-node  provisioned  yes",
        "load average",
        "demo-node: done",
        "cmdexec.execute",
        "audit log intact",
        "\"hostname\":\"demo-node\"",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} not in the tour's output:\n{stdout}\n{stderr}"
        );
    }
    drop(dev);
}

/// Quick restarts, as an operator (or a supervisor) does them: start, join a
/// second node, restart within a second, again and again. Every restart must
/// bring every agent back (the demo node in the process and a separate agent),
/// and print that it is up. Once in about forty restarts, a restarted `dev`
/// used to serve its API while no agent could come back.
#[tokio::test(flavor = "multi_thread")]
async fn every_quick_restart_brings_every_agent_back() {
    let rounds: usize = std::env::var("POSTERN_RESTART_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("postern-dev");
    let api = format!("127.0.0.1:{}", free_port());
    let agent_addr = format!("127.0.0.1:{}", free_port());
    let ssh = format!("127.0.0.1:{}", free_port());
    let kube = format!("127.0.0.1:{}", free_port());
    let addr: std::net::SocketAddr = api.parse().unwrap();
    let nodes = "/api/v1/projects/demo/edges/local/nodes";
    let mut agent: Option<postern_tests::AgentProc> = None;
    for round in 0..rounds {
        let log = dir.path().join(format!("dev-{round}.log"));
        let dev = Dev(Command::new(bin("postern-bastion"))
            .args(["dev", "--data-dir"])
            .arg(&data)
            .args(["--api-addr", &api, "--agent-addr", &agent_addr])
            .args(["--ssh-addr", &ssh, "--kube-addr", &kube])
            .env("POSTERN_LOG", "info,postern_bastion=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap());
        let up = || async {
            let Ok(token) = std::fs::read_to_string(data.join("admin.token")) else {
                return false;
            };
            let said_up = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Postern dev bastion is up");
            let want = if agent.is_some() { 2 } else { 1 };
            said_up
                && matches!(
                    http(addr, "GET", nodes, Some(token.trim()), None).await,
                    Ok((200, v)) if v.as_array().is_some_and(|a| {
                        a.iter().filter(|n| n["reachable"] == true).count() == want
                    })
                )
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !up().await {
            if std::time::Instant::now() > deadline {
                let agent_log = agent.as_ref().map(|a| a.log()).unwrap_or_default();
                panic!(
                    "restart {round}: not every agent came back within 30 s\n--- dev:\n{}\n--- agent:\n{agent_log}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // As the report's loop did: one join with a wrong token before the restart.
        let join = std::fs::read_to_string(data.join("join-command")).unwrap();
        let wrong = join
            .split_whitespace()
            .map(|w| {
                if w.starts_with("pet_") {
                    "pet_000000000000000000000000_wrong"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let out = postern_tests::run_join(
            &wrong,
            &[
                "--hostname",
                "wrong-node",
                "--data-dir",
                dir.path().join(format!("wrong-{round}")).to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "a wrong token joined: {out:?}");
        if agent.is_none() {
            let agent_dir = dir.path().join("bar-node");
            let out = postern_tests::run_join(
                join.trim(),
                &[
                    "--hostname",
                    "bar-node",
                    "--data-dir",
                    agent_dir.to_str().unwrap(),
                ],
            );
            assert!(out.status.success(), "{out:?}");
            agent = Some(postern_tests::AgentProc::run(&agent_dir));
        }
        drop(dev);
    }
}
