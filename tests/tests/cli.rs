//! The `postern` CLI, the real binary against a real bastion and real agents:
//! login, listings, exec on a cluster with a failing node (output, summary,
//! exit status), scripts, grouping, history and show, keys, audit, the
//! errors people meet (bad URL, bad token, a project without a role), the
//! progress bar and Ctrl-C in a real terminal (tmux), and `ssh-config` used
//! by real `ssh` and `ansible`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use postern_tests::ssh::{InstalledHelper, Node, keygen, run_with_timeout, text};
use postern_tests::{AgentProc, Bastion, BastionOpts, bin, eventually};
use serde_json::Value;

/// A user's `postern`: its own config directory, nothing from the test's
/// environment.
struct Cli {
    config: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            config: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("postern"));
        c.args(args)
            .env_remove("POSTERN_URL")
            .env_remove("POSTERN_TOKEN")
            .env_remove("POSTERN_PROJECT")
            .env_remove("POSTERN_EDGE")
            .env_remove("POSTERN_CA_FILE")
            .env_remove("POSTERN_TOKEN_FILE")
            .env("POSTERN_CONFIG_DIR", self.config.path())
            .env("HOME", self.config.path())
            .env_remove("NO_COLOR");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.command(args), Duration::from_secs(60))
    }

    fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and expects exit status `code`; answers stdout and stderr.
    fn expect(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.run(args);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(code),
            "postern {args:?}\nstdout:\n{o}\nstderr:\n{e}"
        );
        // Piped: never a colour or a progress bar.
        assert!(
            !o.contains('\x1b') && !e.contains('\x1b'),
            "escapes when piped: {o}{e}"
        );
        (o, e)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.expect(args, 0).0
    }
}

/// An agent whose commands see POSTERN_TEST_FAIL, to fail on one node only.
async fn failing_agent(b: &Bastion, hostname: &str) -> AgentProc {
    let dir = b.enroll(hostname).await;
    let mut cmd = Command::new(bin("postern-agent"));
    cmd.env("POSTERN_TEST_FAIL", "1");
    let agent = AgentProc::spawn(cmd, &dir, &[]);
    eventually(Duration::from_secs(15), "failing agent reachable", || {
        b.reachable(hostname)
    })
    .await;
    agent
}

const FAIL_ON_ONE: &str =
    "echo hello; test -z \"$POSTERN_TEST_FAIL\" || { echo boom >&2; exit 3; }";

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_logs_in_lists_runs_and_reads_back() {
    let b = Bastion::start(BastionOpts::default()).await;
    let _a1 = b.agent("web-1").await;
    let _a2 = b.agent("web-2").await;
    let _a3 = failing_agent(&b, "web-3").await;
    let url = format!("http://{}", b.api);
    let cli = Cli::new();

    // Not logged in yet: says how.
    let (_, e) = cli.expect(&["nodes"], 2);
    assert!(e.contains("postern login"), "{e}");

    // Log in with the token on stdin; it is stored for the user only.
    let out = cli.run_with_stdin(&["login", &url], &format!("{}\n", b.token));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("as admin"),
        "{}",
        text(&out.stdout)
    );
    let stored = cli.config.path().join("login.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "login file mode {mode:o}");

    let who = cli.ok(&["whoami"]);
    assert!(who.contains("admin") && who.contains("org_admin"), "{who}");

    // One project, one edge: no -p/-e needed. A table for people, JSON for scripts.
    // A node shows as reachable as soon as its channel is registered, and as
    // provisioned a moment later (its first health answer is read then):
    // under load the listing may come between the two.
    eventually(
        Duration::from_secs(15),
        "every node provisioned",
        || async {
            let nodes = cli.ok(&["nodes"]);
            ["web-1", "web-2", "web-3"].iter().all(|h| {
                nodes
                    .lines()
                    .any(|l| l.starts_with(h) && l.contains("provisioned"))
            })
        },
    )
    .await;
    let nodes = cli.ok(&["nodes"]);
    let header = nodes.lines().next().unwrap();
    assert!(
        header.starts_with("HOSTNAME") && header.contains("REACHABLE"),
        "{nodes}"
    );
    for h in ["web-1", "web-2", "web-3"] {
        let line = nodes.lines().find(|l| l.starts_with(h)).unwrap();
        assert!(
            line.contains("provisioned") && line.contains("yes"),
            "{line}"
        );
    }
    let v: Value =
        serde_json::from_str(&cli.ok(&["nodes", "-p", "web", "-e", "eu-1", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);

    // The operator's steps: an edge, a join token, a node that joins with it
    // and waits for approval, approved.
    let (o, _) = cli.expect(&["edges", "create", "lab", "-p", "web"], 0);
    assert!(o.contains("edge lab created in web"), "{o}");
    let jt = cli.ok(&["join-token", "-e", "lab", "--uses", "2", "--ttl", "1h"]);
    assert!(jt.contains("A token for 2 node(s) of web/lab"), "{jt}");
    let join = jt
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("postern-agent join ")
                .map(|_| l.trim())
        })
        .unwrap_or_else(|| panic!("no join command: {jt}"));
    let lab = b.dir.path().join("lab-1");
    let out = postern_tests::run_join(
        join,
        &["--hostname", "lab-1", "--data-dir", lab.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (o, e) = cli.expect(&["nodes", "-e", "lab"], 0);
    assert!(o.contains("lab-1") && o.contains("pending"), "{o}");
    assert!(
        e.contains("wait for approval; to approve them with the labels shown above:")
            && e.contains("  postern nodes approve lab-1 -p web -e lab"),
        "{e}"
    );
    let (o, _) = cli.expect(&["nodes", "approve", "lab-1", "-e", "lab"], 0);
    assert!(o.contains("node lab-1 approved"), "{o}");
    // The approval named the labels it covers: those its agent reported.
    assert!(o.contains("its agent's labels, approved: (none)"), "{o}");
    // The Kubernetes gateway role: granted to a named node (its agent does not
    // run with --kube-apiserver, and is told so), shown on it, taken back.
    let (o, e) = cli.expect(&["nodes", "kube-gateway", "lab-1", "-e", "lab"], 0);
    assert!(
        o.contains("node lab-1 is a Kubernetes gateway of web/lab"),
        "{o}"
    );
    assert!(e.contains("--kube-apiserver"), "{e}");
    let v: Value = serde_json::from_str(&cli.ok(&["nodes", "-e", "lab", "--json"])).unwrap();
    assert_eq!(
        v[0]["kube_gateway"],
        serde_json::json!({"granted": true, "capable": false}),
        "{v}"
    );
    let (o, _) = cli.expect(
        &["nodes", "kube-gateway", "lab-1", "-e", "lab", "--revoke"],
        0,
    );
    assert!(
        o.contains("node lab-1 is no longer a Kubernetes gateway"),
        "{o}"
    );
    let (_, e) = cli.expect(&["join-token", "-e", "lab", "--uses", "0"], 2);
    assert!(e.contains("--uses"), "{e}");
    // Two edges now: which one must be said.
    let (_, e) = cli.expect(&["nodes"], 2);
    assert!(
        e.contains("which edge of web?") && e.contains("eu-1, lab"),
        "{e}"
    );
    let cli = Cli {
        config: cli.config,
        env: vec![("POSTERN_EDGE".into(), "eu-1".into())],
    };

    // A cluster with one failing node: every line prefixed by its node, the
    // failure and a summary on stderr, exit status 1.
    let (o, e) = cli.expect(&["exec", "--cluster", "--", FAIL_ON_ONE], 1);
    for h in ["web-1", "web-2", "web-3"] {
        assert!(o.lines().any(|l| l == format!("{h}: hello")), "{o}");
    }
    assert!(e.lines().any(|l| l == "web-3: boom"), "{e}");
    assert!(e.contains("web-3: failed (exit 3)"), "{e}");
    let summary = e.lines().last().unwrap();
    assert!(
        summary.starts_with("3 nodes: 2 succeeded, 1 failed (not succeeded: web-3)"),
        "{summary}"
    );
    let exec_id = summary.rsplit("exec ").next().unwrap().trim().to_string();

    // The nodes that succeed: exit 0.
    let (o, e) = cli.expect(&["exec", "-n", "web-1,web-2", "--", "echo", "ok"], 0);
    assert_eq!(o.lines().filter(|l| l.ends_with(": ok")).count(), 2, "{o}");
    assert!(e.contains("2 nodes: 2 succeeded"), "{e}");

    // Grouped as clush -b: identical output once, with its nodes.
    let (o, _) = cli.expect(
        &["exec", "--cluster", "-b", "--", "echo same; echo twice"],
        0,
    );
    assert!(o.contains("web-1,web-2,web-3 (3)\n"), "{o}");
    assert_eq!(o.matches("same\ntwice\n").count(), 1, "{o}");

    // A script, sent whole, run as one program with its own interpreter.
    let script = cli.config.path().join("check.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\nx=$((20 + 22))\necho \"answer $x\"\n",
    )
    .unwrap();
    let (o, _) = cli.expect(
        &["exec", "-n", "web-2", "--script", script.to_str().unwrap()],
        0,
    );
    assert_eq!(o.trim(), "web-2: answer 42");

    // JSON lines of the events, for scripts.
    let (o, _) = cli.expect(&["exec", "-n", "web-1", "--json", "--", "echo j"], 0);
    let events: Vec<Value> = o
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.last().unwrap()["event"], "execution_finished", "{o}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "output" && e["data"] == "j\n"),
        "{o}"
    );

    // History and one execution in full.
    let h = cli.ok(&["history"]);
    assert!(h.lines().next().unwrap().starts_with("EXEC ID"), "{h}");
    assert!(h.contains(&exec_id), "{h}");
    let show = cli.ok(&["show", &exec_id]);
    assert!(
        show.contains("failed (exit 3)") && show.contains("boom"),
        "{show}"
    );
    assert!(show.contains("2 succeeded, 1 failed"), "{show}");
    let v: Value = serde_json::from_str(&cli.ok(&["show", &exec_id, "--json"])).unwrap();
    assert_eq!(v["node_counts"]["failed"], 1);

    // Bad input: said clearly, exit 2, nothing run.
    let before = b.audit("cmdexec.execute").await.len();
    let (_, e) = cli.expect(&["exec", "--", "true"], 2);
    assert!(e.contains("on which nodes?"), "{e}");
    let (_, e) = cli.expect(&["exec", "--cluster"], 2);
    assert!(e.contains("what should run?"), "{e}");
    let (_, e) = cli.expect(&["exec", "-n", "no-such-node", "--", "true"], 2);
    assert!(e.contains("no-such-node"), "{e}");
    let (_, e) = cli.expect(
        &[
            "exec",
            "--cluster",
            "--max-concurrency",
            "lots",
            "--",
            "true",
        ],
        2,
    );
    assert!(e.contains("max_concurrency"), "{e}");
    let (_, e) = cli.expect(&["show", "0192f7a0-0000-7000-8000-000000000000"], 2);
    assert!(e.contains("not found") || e.contains("exec"), "{e}");
    let (_, e) = cli.expect(&["history", "--limit", "0"], 2);
    assert!(e.contains("--limit"), "{e}");
    let (_, e) = cli.expect(&["nodes", "-p", "nope"], 2);
    assert!(e.contains("not found"), "{e}");
    assert_eq!(
        b.audit("cmdexec.execute").await.len(),
        before,
        "nothing ran"
    );

    // Keys: add, list, remove.
    let key = cli.config.path().join("id_ed25519");
    keygen(&key);
    let added = cli.ok(&["keys", "add", key.with_extension("pub").to_str().unwrap()]);
    let fp = added
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap()
        .to_string();
    assert!(cli.ok(&["keys", "list"]).contains(&fp));
    let (_, e) = cli.expect(&["keys", "add", "/etc/hostname"], 2);
    assert!(e.contains("key"), "{e}");
    cli.ok(&["keys", "rm", &fp]);
    assert!(!cli.ok(&["keys"]).contains(&fp));

    // The audit log, filtered.
    let a = cli.ok(&["audit", "--action", "cmdexec.*", "--limit", "100"]);
    assert!(a.contains("cmdexec.execute"), "{a}");
    assert!(!a.contains("api GET"), "{a}");
    let (_, e) = cli.expect(&["audit", "--since", "yesterday"], 2);
    assert!(e.contains("since"), "{e}");
    // A reader that stops early (`postern audit | head -1`): no panic, exit 0.
    for args in [&["audit", "--limit", "100"][..], &["nodes"], &["history"]] {
        let mut child = cli
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let e = text(&out.stderr);
        assert!(!e.contains("panicked"), "postern {args:?}: {e}");
        assert_eq!(out.status.code(), Some(0), "postern {args:?}: {e}");
    }

    // Scripts without a login: POSTERN_URL and POSTERN_TOKEN.
    let script_user = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), url.clone()),
            ("POSTERN_TOKEN".into(), b.token.clone()),
            ("POSTERN_EDGE".into(), "eu-1".into()),
        ],
    };
    assert!(script_user.ok(&["nodes", "--json"]).contains("web-1"));

    // A bastion that is not there, a bad URL, a bad token.
    let (_, e) = cli.expect(&["--url", "http://127.0.0.1:1", "whoami"], 2);
    assert!(
        e.contains("no token for") || e.contains("cannot reach"),
        "{e}"
    );
    let (_, e) = script_user.expect(&["--url", "http://127.0.0.1:1", "whoami"], 2);
    assert!(
        e.contains("cannot reach the bastion at http://127.0.0.1:1"),
        "{e}"
    );
    let (_, e) = script_user.expect(&["--url", "127.0.0.1:8080", "whoami"], 2);
    assert!(e.contains("http://"), "{e}");
    let bad = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), url.clone()),
            ("POSTERN_TOKEN".into(), "pat_not-a-real-token".into()),
        ],
    };
    let (_, e) = bad.expect(&["nodes"], 2);
    assert!(e.contains("postern login"), "{e}");
    let out = Cli::new().run_with_stdin(&["login", &url], "pat_wrong\n");
    assert_eq!(out.status.code(), Some(2));
    // At login, the refusal says what to check, not "log in again".
    assert!(
        text(&out.stderr).contains("refused this token")
            && text(&out.stderr).contains("postern users token")
            && !text(&out.stderr).contains("log in again"),
        "{}",
        text(&out.stderr)
    );

    // People get no API token: they sign in.
    cli.ok(&["users", "create", "pam"]);
    let (_, e) = cli.expect(&["users", "token", "pam", "--ttl", "1h"], 2);
    assert!(e.contains("API tokens are for bots"), "{e}");
    // A bot of another project sees nothing of this one and runs nothing.
    cli.ok(&["projects", "create", "lab"]);
    cli.ok(&["bots", "create", "bob", "-p", "lab", "--role", "read_only"]);
    assert!(cli.ok(&["bots", "-p", "lab"]).contains("bob"));
    let bob_token = cli
        .ok(&["users", "token", "bob", "--ttl", "1h"])
        .trim()
        .to_string();
    let bob = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), url.clone()),
            ("POSTERN_TOKEN".into(), bob_token.clone()),
            ("POSTERN_EDGE".into(), "eu-1".into()),
        ],
    };
    let (_, e) = bob.expect(&["nodes", "-p", "web"], 2);
    assert!(e.contains("not found"), "{e}");
    let (_, e) = bob.expect(
        &["exec", "-p", "web", "-e", "eu-1", "--cluster", "--", "true"],
        2,
    );
    assert!(e.contains("not found"), "{e}");
    // Given a read-only role, bob may look but not run.
    cli.ok(&["users", "role", "bob", "read_only", "-p", "web"]);
    assert!(bob.ok(&["nodes", "-p", "web"]).contains("web-1"));
    let (_, e) = bob.expect(&["exec", "-p", "web", "--cluster", "--", "true"], 2);
    assert!(e.contains("permission denied"), "{e}");
    assert_eq!(
        b.audit("cmdexec.execute").await.len(),
        before,
        "nothing ran"
    );

    // Completions and the man page come from the same definitions.
    assert!(cli.ok(&["completions", "bash"]).contains("_postern"));
    let man = cli.ok(&["man"]);
    assert!(
        man.contains(".TH postern") && man.contains("Exit status"),
        "{man}"
    );

    cli.ok(&["logout"]);
    assert!(!stored.exists());
    let (_, e) = cli.expect(&["whoami"], 2);
    assert!(e.contains("not logged in"), "{e}");
}

/// A stand-in bastion that accepts an execution (202) and then refuses its
/// event stream (403, as for a reader whose role was taken away meanwhile):
/// plain HTTP/1.1, one request per connection, on a thread of its own.
fn accepting_then_refusing_bastion() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then as much of the body as it announces.
            let head_end = loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let (status, body) = if head.starts_with("post ") && head.contains("/execute") {
                (
                    "202 Accepted",
                    r#"{"exec_id":"0199-accepted","submitted_at":"2026-12-06T08:07:55.840Z","username":"alice","project_id":"web","edge_id":"eu-1","timeout":60,"target_nodes":["web-1"],"unreachable_nodes":[],"unapproved_nodes":[]}"#,
                )
            } else {
                (
                    "403 Forbidden",
                    r#"{"error":{"code":"forbidden","message":"you may no longer read project web"}}"#,
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// Once `exec` has submitted, losing the live view is not "the request
/// failed" (2): the command was accepted and runs, and a wrapper that retries
/// on 2 would run it again (the review: a 429 after two minutes of resuming
/// gave 2). It says where to follow the execution and exits 3.
#[test]
fn exec_that_loses_its_live_view_after_submitting_exits_3() {
    let url = accepting_then_refusing_bastion();
    let cli = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), url),
            ("POSTERN_TOKEN".into(), "pat_test".into()),
        ],
    };
    let (_, e) = cli.expect(
        &["exec", "-p", "web", "-e", "eu-1", "--cluster", "--", "true"],
        3,
    );
    assert!(
        e.contains(
            "submitted as 0199-accepted, live view lost: follow it with postern show 0199-accepted -p web -e eu-1"
        ),
        "{e}"
    );
    assert!(e.contains("you may no longer read project web"), "{e}");
}

fn tmux(socket: &Path, args: &[&str]) -> Output {
    Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn pane(socket: &Path) -> String {
    text(&tmux(socket, &["capture-pane", "-p", "-e", "-t", "cli"]).stdout)
}

/// The progress bar, Ctrl-C and the token prompt, in a real terminal: tmux gives `postern` a
/// pty, `send-keys C-c` is a real SIGINT from the terminal.
#[tokio::test(flavor = "multi_thread")]
async fn in_a_terminal_exec_shows_progress_ctrl_c_cancels_and_login_hides_the_token() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is missing: scripts/test installs it");
    }
    let b = Bastion::start(BastionOpts::default()).await;
    let _a1 = b.agent("web-1").await;
    // web-2's commands see POSTERN_TEST_FAIL: there, the command sleeps until cancelled.
    let _a2 = failing_agent(&b, "web-2").await;
    let cli = Cli::new();
    let url = format!("http://{}", b.api);
    let socket = cli.config.path().join("tmux.sock");
    let script = cli.config.path().join("run.sh");
    // The shell traps SIGINT (so it lives on to print the exit status); its
    // child gets the default disposition back, as with any handled signal.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntrap 'true' INT\nexport POSTERN_CONFIG_DIR={cfg} POSTERN_URL={url} POSTERN_TOKEN={token}\n\
             {postern} exec --cluster -- 'echo started; [ -n \"$POSTERN_TEST_FAIL\" ] && sleep 600; echo quick'\n\
             echo EXIT=$?\nenv -u POSTERN_TOKEN {postern} login {url}\necho LOGIN=$?\nsleep 600\n",
            cfg = cli.config.path().display(),
            token = b.token,
            postern = bin("postern").display(),
        ),
    )
    .unwrap();
    let out = tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "cli",
            "-x",
            "120",
            "-y",
            "30",
            &format!("sh {}", script.display()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    struct Kill(PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = tmux(&self.0, &["kill-server"]);
        }
    }
    let _kill = Kill(socket.clone());

    // The bar: elapsed time, done/total, the failure count later.
    eventually(
        Duration::from_secs(20),
        "a progress bar with 1/2 nodes",
        || async {
            let p = pane(&socket);
            p.contains("1/2 nodes") && p.contains("quick")
        },
    )
    .await;
    let p = pane(&socket);
    assert!(p.contains("\x1b["), "colour on a terminal: {p}");
    assert!(p.contains("00:00:0"), "elapsed time: {p}");

    tmux(&socket, &["send-keys", "-t", "cli", "C-c"]);
    eventually(Duration::from_secs(30), "cancelled, exit 130", || async {
        pane(&socket).contains("EXIT=130")
    })
    .await;
    let p = pane(&socket);
    assert!(p.contains("cancelling"), "{p}");
    assert!(
        p.contains("1 succeeded") && p.contains("1 cancelled"),
        "{p}"
    );
    // On the nodes: the sleeping command was stopped, as the API records.
    let exec = b.audit("cmdexec.cancel").await;
    assert_eq!(exec.len(), 1, "one cancel: {exec:?}");

    // Login on a terminal asks for the token without echoing it.
    eventually(Duration::from_secs(20), "the token prompt", || async {
        pane(&socket).contains("API token:")
    })
    .await;
    tmux(&socket, &["send-keys", "-t", "cli", &b.token, "Enter"]);
    eventually(Duration::from_secs(20), "logged in", || async {
        pane(&socket).contains("LOGIN=0")
    })
    .await;
    let p = pane(&socket);
    assert!(p.contains("logged in to") && p.contains("as admin"), "{p}");
    assert!(!p.contains(&b.token), "the token was echoed: {p}");
}

/// A user of `b` (the admin's token in the environment) with a key in
/// `~/.ssh/id_ed25519`, registered with `keys add` (which takes
/// `~/.ssh/id_ed25519.pub` when given no file); answers the key's path.
fn cli_with_key(b: &Bastion) -> (Cli, std::path::PathBuf) {
    let cli = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), format!("http://{}", b.api)),
            ("POSTERN_TOKEN".into(), b.token.clone()),
        ],
    };
    let key = cli.config.path().join("id_ed25519");
    keygen(&key);
    let ssh_dir = cli.config.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(key.with_extension("pub"), ssh_dir.join("id_ed25519.pub")).unwrap();
    cli.ok(&["keys", "add"]);
    (cli, key)
}

/// `postern ssh-config` gives plain `ssh NODE` and Ansible a way through the
/// bastion, with the bastion's host key known before the first connection.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_config_serves_real_ssh_and_ansible() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _n1 = Node::start(&b, &helper, "web-1").await;
    let _n2 = Node::start(&b, &helper, "web-2").await;
    let (cli, key) = cli_with_key(&b);
    let ssh_dir = cli.config.path().join(".ssh");

    // A node that joined but waits for approval, under the bastion's own alias
    // in ssh_config: never written (it would make every jump recurse).
    let t = b.enrollment(serde_json::json!({})).await;
    let pending = b.dir.path().join("pending");
    let out = postern_tests::run_join(
        t["join_command"].as_str().unwrap(),
        &[
            "--hostname",
            "postern-bastion",
            "--data-dir",
            pending.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let config = cli.ok(&["ssh-config", "--identity", key.to_str().unwrap()]);
    // The bastion's login goes with the jump, so a `User` of the user's own
    // for every host cannot change it.
    assert!(
        config.contains("ProxyJump admin@postern-bastion\n"),
        "{config}"
    );
    assert!(config.contains("Host web-1 web-2 *.eu-1.web\n"), "{config}");
    assert_eq!(
        config.matches("postern-bastion").count(),
        2,
        "alias and ProxyJump only: {config}"
    );
    let known = std::fs::read_to_string(cli.config.path().join("known_hosts")).unwrap();
    assert!(
        known.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", b.ssh.port())),
        "{known}"
    );
    let file = cli.config.path().join("ssh_config");
    std::fs::write(&file, &config).unwrap();

    // Plain ssh, by plain name and by NODE.EDGE.PROJECT; the bastion's key is
    // checked strictly (never asked about).
    for host in ["web-1", "web-2.eu-1.web"] {
        let out = run_with_timeout(
            Command::new("ssh").arg("-F").arg(&file).args([
                "-o",
                "BatchMode=yes",
                host,
                "echo via-$((1+1))",
            ]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "ssh {host}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "via-2");
    }

    // Ansible, with the same file.
    let inv = cli.config.path().join("inventory.ini");
    std::fs::write(
        &inv,
        format!(
            "[web]\nweb-1\nweb-2\n[web:vars]\nansible_ssh_common_args=-F {}\nansible_python_interpreter=/usr/bin/python3\n",
            file.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new("ansible")
            .args(["web", "-i"])
            .arg(&inv)
            .args(["-m", "command", "-a", "echo from-ansible"])
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env("ANSIBLE_LOCAL_TEMP", cli.config.path().join("ansible-tmp")),
        Duration::from_secs(120),
    );
    let o = text(&out.stdout);
    assert!(out.status.success(), "ansible: {o}\n{}", text(&out.stderr));
    assert_eq!(o.matches("from-ansible").count(), 2, "{o}");

    // --install: written to the config directory and Included from ~/.ssh/config,
    // after everything already there (behind `Match all`, so that it is read
    // for every host), once.
    std::fs::write(ssh_dir.join("config"), "Host old\n  User x\n").unwrap();
    cli.ok(&["ssh-config", "--install"]);
    cli.ok(&["ssh-config", "--install"]);
    let user_config = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
    let include = format!(
        "Include \"{}\"",
        cli.config.path().join("ssh_config").display()
    );
    assert!(
        user_config.starts_with("Host old\n  User x\n"),
        "{user_config}"
    );
    assert!(
        user_config.ends_with(&format!("\nMatch all\n{include}\n")),
        "{user_config}"
    );
    assert_eq!(user_config.matches("Include").count(), 1, "{user_config}");
    // Where the first versions put it, at the top: moved to the end.
    std::fs::write(
        ssh_dir.join("config"),
        format!("{include}\n\nHost old\n  User x\n"),
    )
    .unwrap();
    cli.ok(&["ssh-config", "--install"]);
    assert_eq!(
        std::fs::read_to_string(ssh_dir.join("config")).unwrap(),
        user_config
    );
    let (_, e) = cli.expect(&["ssh-config", "--login", "bad login"], 2);
    assert!(e.contains("login"), "{e}");
}

/// `postern ssh-config --install` never overrides the user's own ssh
/// configuration: its Include is read last, a node named like one of the
/// user's hosts gets no plain alias (it stays reachable as
/// NODE.EDGE.PROJECT), and a print-only run leaves the known_hosts the
/// installed configuration reads as it was.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_config_leaves_the_users_own_hosts_alone() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    // A joiner named a node after the user's own build machine.
    let _buildbox = Node::start(&b, &helper, "buildbox").await;
    let _web = Node::start(&b, &helper, "web-1").await;
    let (cli, key) = cli_with_key(&b);
    let ssh_dir = cli.config.path().join(".ssh");

    let user_config = ssh_dir.join("config");
    std::fs::write(
        &user_config,
        "Host buildbox\n  HostName 10.20.30.40\n  User deploy\nHost *\n  ForwardAgent yes\n",
    )
    .unwrap();
    cli.ok(&[
        "ssh-config",
        "--install",
        "--identity",
        key.to_str().unwrap(),
    ]);
    let file = cli.config.path().join("ssh_config");
    let installed = std::fs::read_to_string(&file).unwrap();
    assert!(installed.contains("Host web-1 *.eu-1.web\n"), "{installed}");
    assert!(
        installed.contains("(your ssh configuration has them): buildbox\n"),
        "{installed}"
    );
    let written = std::fs::read_to_string(&user_config).unwrap();
    assert!(
        written.starts_with("Host buildbox\n  HostName 10.20.30.40\n"),
        "{written}"
    );
    assert!(
        written.ends_with(&format!("Match all\nInclude \"{}\"\n", file.display())),
        "{written}"
    );

    // What ssh makes of each name, with the user's file as ssh reads it.
    let resolved = |host: &str| -> String {
        let out = run_with_timeout(
            Command::new("ssh")
                .arg("-F")
                .arg(&user_config)
                .args(["-G", host]),
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "ssh -G {host}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let own = resolved("buildbox");
    for line in [
        "hostname 10.20.30.40\n",
        "user deploy\n",
        "forwardagent yes\n",
    ] {
        assert!(
            own.contains(line),
            "the user's buildbox lost {line:?}: {own}"
        );
    }
    assert!(!own.contains("proxyjump"), "captured by Postern: {own}");
    for host in ["web-1", "buildbox.eu-1.web"] {
        let via = resolved(host);
        assert!(
            via.contains("proxyjump admin@postern-bastion\n") && via.contains("user root\n"),
            "{host}: {via}"
        );
    }
    // Real ssh, through the installed configuration: the node named
    // buildbox by its full name, and a plain name.
    for host in ["buildbox.eu-1.web", "web-1"] {
        let out = run_with_timeout(
            Command::new("ssh")
                .arg("-F")
                .arg(&user_config)
                .args(["-o", "BatchMode=yes", host, "echo via-$((1+1))"])
                .env_remove("SSH_AUTH_SOCK"),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "ssh {host}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "via-2");
    }
}

/// Operator review S8: a print-only `postern ssh-config` (against a replica's
/// own address, say) must not rewrite the known_hosts an installed
/// configuration reads; it adds the bastion's line if missing, and replaces
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn printing_ssh_config_leaves_the_installed_known_hosts_alone() {
    let b = Bastion::start(BastionOpts::default()).await;
    let cli = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), format!("http://{}", b.api)),
            ("POSTERN_TOKEN".into(), b.token.clone()),
        ],
    };
    cli.ok(&["ssh-config", "--install"]);
    let known = cli.config.path().join("known_hosts");
    let installed = std::fs::read_to_string(&known).unwrap();
    assert!(
        installed.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", b.ssh.port())),
        "{installed}"
    );
    // What the installed configuration trusts for the address it was
    // installed for, which this bastion does not answer on.
    let other = "[10.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2JQ1wJ5z0XQ9Q5a0a4wq4C9n9m6QH2b6YwFQ2pR1L\n";
    let before = format!("{other}{installed}");
    std::fs::write(&known, &before).unwrap();
    let printed = cli.ok(&["ssh-config"]);
    assert!(printed.contains("Host postern-bastion\n"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        before,
        "print-only rewrote the known_hosts an installed config reads"
    );
    // A file without the bastion's line gets it added, after what was there.
    std::fs::write(&known, other).unwrap();
    cli.ok(&["ssh-config"]);
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("{other}{installed}")
    );
}

/// `postern audit --follow` prints entries as they are written, oldest first,
/// and not its own polling (which is audited too).
#[tokio::test(flavor = "multi_thread")]
async fn audit_follow_prints_new_entries_as_they_are_written() {
    use std::io::BufRead;
    let b = Bastion::start(BastionOpts::default()).await;
    let _a = b.agent("web-1").await;
    let cli = Cli {
        config: tempfile::tempdir().unwrap(),
        env: vec![
            ("POSTERN_URL".into(), format!("http://{}", b.api)),
            ("POSTERN_TOKEN".into(), b.token.clone()),
        ],
    };
    let mut follow = cli
        .command(&["audit", "--follow", "--limit", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let it print the newest entry and poll a few times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cli.ok(&["exec", "-n", "web-1", "--", "true"]);
    cli.ok(&["projects", "create", "later"]);
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
        if lines
            .iter()
            .any(|l| l.contains("api POST /api/v1/projects"))
        {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what} not followed: {lines:#?}"))
    };
    assert!(
        at("cmdexec.execute") < at("api POST /api/v1/projects"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("api GET /api/v1/audit")),
        "its own polls: {lines:#?}"
    );
    let executes = lines
        .iter()
        .filter(|l| l.contains("cmdexec.execute"))
        .count();
    assert_eq!(executes, 1, "each entry once: {lines:#?}");
}
