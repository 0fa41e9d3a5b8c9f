//! The terminating SSH mode and session recording, end to end with real
//! OpenSSH clients (ssh, scp, sftp, rsync), a real sshd that asks
//! `postern-keys`, tmux for an interactive terminal, Debian's asciinema to
//! play the export, and the store's own bytes changed behind the bastion's back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_tests::ssh::{InstalledHelper, Node, SshUser, run_with_timeout, text};
use postern_tests::{Bastion, BastionOpts, bin};
use serde_json::{Value, json};

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `postern ARGS` as the org admin.
fn postern(b: &Bastion, args: &[&str]) -> std::process::Output {
    run_with_timeout(
        Command::new(bin("postern"))
            .args(args)
            .env("POSTERN_URL", format!("http://{}", b.api))
            .env("POSTERN_TOKEN", &b.token)
            .env_remove("POSTERN_TOKEN_FILE")
            .env("POSTERN_CONFIG_DIR", b.dir.path().join("cli-config")),
        Duration::from_secs(60),
    )
}

async fn recordings(b: &Bastion, query: &str) -> Vec<Value> {
    let (s, v) = b.get(&format!("/api/v1/recordings?{query}")).await;
    assert_eq!(s, 200, "{v}");
    v["recordings"].as_array().unwrap().clone()
}

async fn cast(b: &Bastion, id: &str) -> String {
    let (s, v) = postern_tests::http(
        b.api,
        "GET",
        &format!("/api/v1/recordings/{id}/cast"),
        Some(&b.token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The first terminated session's recording that `pred` accepts, waiting for it.
async fn wait_recording(b: &Bastion, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rs = recordings(b, "mode=terminate&limit=100").await;
        if let Some(r) = rs.iter().find(|r| pred(r)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {rs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The recording whose exec command contains `needle`, once it has ended.
async fn ended_exec(b: &Bastion, needle: &str) -> Value {
    wait_recording(b, needle, |r| {
        r["command"].as_str().unwrap_or("").contains(needle) && r["status"] == "ended"
    })
    .await
}

/// `asciinema cat FILE`, in a pseudo-terminal (util-linux `script`): the
/// player reads its keys from /dev/tty, which a test has none of.
fn asciinema_cat(file: &std::path::Path) -> Command {
    let mut c = Command::new("script");
    c.args([
        "-qec",
        &format!("asciinema cat {}", file.display()),
        "/dev/null",
    ]);
    c
}

fn helper_prints(helper: &InstalledHelper, node: &Node, login: &str, fp: &str) -> String {
    let out = run_with_timeout(
        Command::new(postern_tests::ssh::helper_binary(helper))
            .arg("--data-dir")
            .arg(&node.agent.data_dir)
            .args([login, fp]),
        Duration::from_secs(5),
    );
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_sessions_run_copy_and_are_recorded_tamper_evidently() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root", "ghost"]))).await;
    let cfg = alice.config.to_str().unwrap().to_string();

    // A command, its exit status, the qualified name.
    let out = alice.ssh(&["root+node-a@bastion", "echo hello-$((6*7))"]);
    assert!(
        out.status.success(),
        "{}\nbastion log:\n{}\nsshd log:\n{}",
        text(&out.stderr),
        b.log(),
        node.sshd.log()
    );
    assert_eq!(text(&out.stdout).trim(), "hello-42");
    let out = alice.ssh(&["root+node-a.eu-1.web@bastion", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // Files: scp, sftp and rsync through the bastion, byte-identical.
    let work = b.dir.path().join("files");
    std::fs::create_dir_all(&work).unwrap();
    let src = work.join("payload");
    let status = Command::new("head")
        .args(["-c", "50000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let up = work.join("scp-up");
    let out = run_with_timeout(
        Command::new("scp")
            // -O: the scp protocol (an exec), not sftp (a subsystem, tried below).
            .args(["-q", "-O", "-F", &cfg])
            .arg(&src)
            .arg(format!("root+node-a@bastion:{}", up.display())),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "scp: {}\n{}",
        text(&out.stderr),
        b.log()
    );
    assert_eq!(sha256(&src), sha256(&up), "scp changed the bytes");
    let batch = work.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {w}/sftp-up\nget {w}/sftp-up {w}/sftp-down\n",
            src.display(),
            w = work.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new("sftp")
            .args(["-F", &cfg, "-b"])
            .arg(&batch)
            .arg("root+node-a@bastion"),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert_eq!(
        sha256(&src),
        sha256(&work.join("sftp-down")),
        "sftp changed the bytes"
    );
    let out = run_with_timeout(
        Command::new("rsync")
            .args(["-e", &format!("ssh -F {cfg}")])
            .arg(&src)
            .arg(format!(
                "root+node-a@bastion:{}",
                work.join("rsync-up").display()
            )),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "rsync: {}", text(&out.stderr));
    assert_eq!(
        sha256(&src),
        sha256(&work.join("rsync-up")),
        "rsync changed the bytes"
    );

    // What was recorded: the command's output; of the copies, markers only.
    let hello = ended_exec(&b, "echo hello").await;
    assert_eq!(hello["mode"], "terminate");
    assert_eq!(hello["login"], "root");
    assert_eq!(hello["user"], "alice");
    assert_eq!(hello["policy"], "best_effort");
    let id = hello["id"].as_str().unwrap().to_string();
    let text_cast = cast(&b, &id).await;
    let header: Value = serde_json::from_str(text_cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(text_cast.contains("hello-42"), "{text_cast}");
    assert!(text_cast.contains("exit status 0"), "{text_cast}");
    // scp's own protocol is an exec: marked as a transfer, and recorded like
    // any exec (the command's text is the client's word); sftp's bytes are not.
    let scp = ended_exec(&b, "scp").await;
    assert!(
        cast(&b, scp["id"].as_str().unwrap())
            .await
            .contains("file transfer: scp")
    );
    let rs = recordings(&b, "mode=terminate&limit=100").await;
    assert!(
        rs.iter()
            .any(|r| r["kind"] == "subsystem" && r["command"] == "sftp"),
        "{rs:?}"
    );

    // A range of it, as players seek.
    let (s, h, v) = postern_tests::http_with(
        b.api,
        "GET",
        &format!("/api/v1/recordings/{id}/cast"),
        Some(&b.token),
        &[("range", "bytes=0-9")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 206, "{v}");
    assert_eq!(v, Value::String(text_cast[..10].to_string()));
    assert_eq!(
        h["content-range"],
        format!("bytes 0-9/{}", text_cast.len()).as_str()
    );
    let (s, _, _) = postern_tests::http_with(
        b.api,
        "GET",
        &format!("/api/v1/recordings/{id}/cast"),
        Some(&b.token),
        &[("range", "bytes=99999999-")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 416);

    // The audit log holds the chain's head; the CLI checks it, and plays it.
    let out = postern(&b, &["recordings", "verify", &id]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("chain intact"),
        "{}",
        text(&out.stdout)
    );
    let out = postern(&b, &["play", &id, "--format", "text"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello-42");
    // Exported, asciinema plays it unchanged.
    let out = postern(&b, &["play", &id, "--format", "cast"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let export = work.join("hello.cast");
    std::fs::write(&export, &out.stdout).unwrap();
    let out = run_with_timeout(&mut asciinema_cat(&export), Duration::from_secs(20));
    assert!(out.status.success(), "asciinema cat: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello-42"));

    // One stored byte changed behind the bastion's back: verify finds it,
    // and the rest of the recordings still play.
    let store = postern_bastion::store::Store::open_sqlite(&b.data_dir())
        .await
        .unwrap();
    let chunk = store
        .recording_chunks(&id, 0, 1, true)
        .await
        .unwrap()
        .remove(0);
    let mut data = chunk.data.unwrap();
    let n = data.len() / 2;
    data[n] ^= 0x20;
    store
        .overwrite_chunk(&id, 0, Some(&data), None)
        .await
        .unwrap();
    let out = postern(&b, &["recordings", "verify", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("was changed"),
        "{}",
        text(&out.stderr)
    );
    let out = postern(
        &b,
        &["play", scp["id"].as_str().unwrap(), "--format", "text"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The one-time key is good for one login: the node holds it no longer.
    let logins = b.audit("ssh.terminate.login").await;
    assert!(!logins.is_empty());
    for e in &logins {
        let fp = e["detail"]["one_time_key"].as_str().unwrap();
        assert_eq!(e["detail"]["taken_back"], true, "{e}");
        assert_eq!(
            helper_prints(&helper, &node, "root", fp),
            "",
            "the one-time key {fp} is still granted"
        );
    }

    // A login the node's sshd refuses: said plainly, with what to do.
    let out = alice.ssh(&["ghost+node-a@bastion", "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refused the bastion's one-time credential for ghost"),
        "{}",
        text(&out.stderr)
    );
    // A login the role does not allow, a node that does not exist, a bad name.
    let out = alice.ssh(&["daemon+node-a@bastion", "true"]);
    assert!(
        text(&out.stderr).contains("does not allow the login daemon"),
        "{}",
        text(&out.stderr)
    );
    let out = alice.ssh(&["root+nowhere@bastion", "true"]);
    assert!(!out.status.success());
    let out = alice.ssh(&["Bad Login+node-a@bastion", "true"]);
    assert!(!out.status.success());
    // Without a node, a session says how to ask for one.
    let out = alice.ssh(&["bastion", "true"]);
    assert!(
        text(&out.stderr).contains("LOGIN+NODE"),
        "{}",
        text(&out.stderr)
    );

    // ssh -L from a terminated connection: to what the role names, only.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    let (s, v) = b
        .put(
            "/api/v1/users/alice/roles",
            json!({"role": "project_member", "project": "web", "logins": ["root", "ghost"],
                "forward_to": [format!("127.0.0.1:{echo_port}")]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = echo.accept() {
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = std::io::Write::write_all(&mut s, &buf);
            }
        }
    });
    let (ok_port, bad_port) = (postern_tests::free_port(), postern_tests::free_port());
    let mut fwd = Command::new("ssh")
        .args(["-F", &cfg, "-N", "-o", "ExitOnForwardFailure=yes"])
        .arg("-L")
        .arg(format!("127.0.0.1:{ok_port}:127.0.0.1:{echo_port}"))
        .arg("-L")
        .arg(format!("127.0.0.1:{bad_port}:127.0.0.1:1"))
        .arg("root+node-a@bastion")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", ok_port)) {
            break c;
        }
        assert!(Instant::now() < deadline, "the forward never listened");
        std::thread::sleep(Duration::from_millis(100));
    };
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(&mut conn, b"ping!").unwrap();
    let mut back = [0u8; 5];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping!");
    let mut bad = std::net::TcpStream::connect(("127.0.0.1", bad_port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        bad.read(&mut buf).unwrap_or(0),
        0,
        "a forward outside forward_to is closed"
    );
    let _ = fwd.kill();
    let _ = fwd.wait();
    let denied = b.audit("ssh.connect").await;
    assert!(
        denied.iter().any(|e| e["detail"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("does not allow forwarding to 127.0.0.1:1")),
        "{denied:?}"
    );

    // Another project's member sees none of it.
    let (s, v) = b.post("/api/v1/projects", json!({"name": "other"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = b
        .post(
            "/api/v1/projects/other/bots",
            json!({"name": "olga", "role": "project_admin"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = b
        .post("/api/v1/users/olga/tokens", json!({"ttl_seconds": 3600}))
        .await;
    assert_eq!(s, 201, "{v}");
    let olga = v["token"].as_str().unwrap().to_string();
    let (s, v) = postern_tests::http(b.api, "GET", "/api/v1/recordings", Some(&olga), None)
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["total"], 0, "{v}");
    for path in [
        format!("/api/v1/recordings/{id}"),
        format!("/api/v1/recordings/{id}/cast"),
        format!("/api/v1/recordings/{id}/segments"),
    ] {
        let (s, _) = postern_tests::http(b.api, "GET", &path, Some(&olga), None)
            .await
            .unwrap();
        assert_eq!(s, 404, "{path}");
    }
    let (s, _) = postern_tests::http(
        b.api,
        "DELETE",
        &format!("/api/v1/recordings/{id}"),
        Some(&olga),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 404);
    // Bad input: a clear 400 or 404, nothing changed.
    for q in [
        "mode=sideways",
        "limit=0",
        "limit=1000",
        "colour=red",
        "since=yesterday",
        "user=",
    ] {
        let (s, v) = b.get(&format!("/api/v1/recordings?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
    }
    for path in [
        "/api/v1/recordings/nope",
        "/api/v1/recordings/00000000-0000-0000-0000-000000000000/cast",
    ] {
        let (s, _) = b.get(path).await;
        assert_eq!(s, 404, "{path}");
    }
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({"default": "loud"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({"labels": [{"selector": "a in ()", "level": "strict"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = b.get("/api/v1/projects/web/recording-policy").await;
    assert_eq!((s, &v["default"]), (200, &json!("best_effort")), "{v}");

    // Retention, org-wide: set from the CLI, kept in the org's policy;
    // out of range refused before anything is sent.
    let out = postern(&b, &["recordings", "retention", "30"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("deleted 30 days after"));
    let (s, v) = b.get("/api/v1/org/recording-retention").await;
    assert_eq!((s, &v["days"]), (200, &json!(30)), "{v}");
    // Bad input changes nothing.
    for bad in [
        json!({"days": -1}),
        json!({"days": 3651}),
        json!({"days": "30"}),
        json!({"days": 30, "keep": true}),
        json!({}),
    ] {
        let (s, v) = b.put("/api/v1/org/recording-retention", bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (_, v) = b.get("/api/v1/org/recording-retention").await;
    assert_eq!(v["days"], 30, "{v}");
    let out = postern(&b, &["recordings", "retention", "4000"]);
    assert!(!out.status.success());
    let out = postern(&b, &["recordings", "retention", "0"]);
    assert!(
        text(&out.stdout).contains("kept until"),
        "{}",
        text(&out.stderr)
    );

    // A project role shows one's own recordings; a project admin's, all.
    for (bot, role, sees_alices) in [
        ("mo", "project_member", false),
        ("ro", "read_only", false),
        ("pa", "project_admin", true),
    ] {
        let (s, v) = b
            .post(
                "/api/v1/projects/web/bots",
                json!({"name": bot, "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = b
            .post(
                &format!("/api/v1/users/{bot}/tokens"),
                json!({"ttl_seconds": 3600}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let t = v["token"].as_str().unwrap().to_string();
        let (s, v) =
            postern_tests::http(b.api, "GET", "/api/v1/recordings?limit=100", Some(&t), None)
                .await
                .unwrap();
        assert_eq!(s, 200, "{v}");
        let any = v["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["user"] == "alice");
        assert_eq!(any, sees_alices, "{role}: {v}");
        let (s, _) = postern_tests::http(
            b.api,
            "GET",
            &format!("/api/v1/recordings/{id}/cast"),
            Some(&t),
            None,
        )
        .await
        .unwrap();
        assert_eq!(s, if sees_alices { 200 } else { 404 }, "{role}");
        // Watching live is for admins: a project admin may (the session
        // has ended, so the watch is the whole cast and ends at once).
        let (s, _) = postern_tests::http(
            b.api,
            "GET",
            &format!("/api/v1/recordings/{id}/live"),
            Some(&t),
            None,
        )
        .await
        .unwrap();
        assert_eq!(s, if sees_alices { 200 } else { 404 }, "{role} live");
    }

    // A key two users registered names neither: the login names the user.
    let (s, v) = b.post("/api/v1/users", json!({"name": "mallory"})).await;
    assert_eq!(s, 201, "{v}");
    let public = std::fs::read_to_string(alice.key.with_extension("pub")).unwrap();
    let (s, v) = b
        .post(
            "/api/v1/users/mallory/ssh-keys",
            json!({"public_key": public.trim()}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let out = alice.ssh(&["root+node-a@bastion", "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("root+web-1+alice"),
        "{}",
        text(&out.stderr)
    );
    let out = alice.ssh(&["root+node-a+alice@bastion", "echo named-$((1+1))"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "named-2");
    // A command that closes its output before it exits: sshd sends EOF, then
    // the exit status. The client closes on EOF; the status still reaches it
    // (before, the bastion passed EOF on at once and the status was lost:
    // ssh said 255, and OpenSSH's multiplexing master died under Ansible).
    // Through a multiplexing master (Ansible's ControlMaster), whose session
    // closes as soon as it has EOF both ways.
    let sock = b.dir.path().join("mux.sock");
    let cfg = alice.config.display().to_string();
    let mux = |extra: &[&str]| {
        let mut c = Command::new("ssh");
        c.args(["-F", &cfg, "-o", "LogLevel=ERROR", "-S"])
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null());
        c
    };
    let mut master = mux(&["-M", "-N", "root+node-a+alice@bastion"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the master never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        let out = run_with_timeout(
            &mut mux(&[
                "root+node-a+alice@bastion",
                "exec >&- 2>&-; sleep 0.3; exit 7",
            ]),
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    }
    let _ = master.kill();
    let _ = master.wait();

    // Strict, with input: a command's text does not switch the recording
    // off, and what is typed is recorded even when the terminal hides it.
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({"default": "strict", "input": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out = alice.ssh(&[
        "root+node-a+alice@bastion",
        "scp 2>/dev/null; echo HIDDEN-$((6*7))",
    ]);
    assert!(
        text(&out.stdout).contains("HIDDEN-42"),
        "{}",
        text(&out.stderr)
    );
    let hidden = ended_exec(&b, "HIDDEN").await;
    assert!(
        cast(&b, hidden["id"].as_str().unwrap())
            .await
            .contains("HIDDEN-42")
    );
    let mut typed = Command::new("ssh")
        .args([
            "-F",
            &cfg,
            "root+node-a+alice@bastion",
            "stty -echo 2>/dev/null; read x; echo read-done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(typed.stdin.as_mut().unwrap(), b"typed-secret\n").unwrap();
    let out = typed.wait_with_output().unwrap();
    assert!(text(&out.stdout).contains("read-done"));
    let read = ended_exec(&b, "read x").await;
    let c = cast(&b, read["id"].as_str().unwrap()).await;
    assert!(c.contains(r#""i", "typed-secret"#), "{c}");

    // A damaged segment length: that cast ends there, the bastion stays up,
    // and the other recordings still play.
    let exit3 = ended_exec(&b, "exit 3").await;
    store
        .overwrite_chunk(exit3["id"].as_str().unwrap(), 0, None, Some(20_000_000_000))
        .await
        .unwrap();
    let r = postern_tests::http(
        b.api,
        "GET",
        &format!("/api/v1/recordings/{}/cast", exit3["id"].as_str().unwrap()),
        Some(&b.token),
        None,
    )
    .await;
    assert!(
        r.is_err() || r.as_ref().unwrap().0 != 200 || r.as_ref().unwrap().1 == json!(""),
        "{r:?}"
    );
    let (s, _) = b.get("/readyz").await;
    assert_eq!(s, 200);
    let out = postern(
        &b,
        &["play", hidden["id"].as_str().unwrap(), "--format", "text"],
    );
    assert!(
        text(&out.stdout).contains("HIDDEN-42"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interactive_session_replays_as_the_terminal_showed_it() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &format!("postern-rec-{}", std::process::id())])
            .args(args)
            .output()
            .unwrap()
    };
    let pane = || text(&tmux(&["capture-pane", "-p", "-t", "rec"]).stdout);
    let cmd = format!(
        "ssh -tt -o LogLevel=ERROR -F {} root+node-a@bastion",
        alice.config.display()
    );
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        "rec",
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let p = pane();
            if p.contains(what) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} never showed; the pane:\n{p}\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("#");
    // An org admin watches the session live: what it showed so far, then
    // what it shows as it comes, ending when it ends.
    let live = wait_recording(&b, "the live shell", |r| {
        r["kind"] == "shell" && r["status"] == "live"
    })
    .await;
    let live_id = live["id"].as_str().unwrap().to_string();
    let (mut watcher, watched) = follow(
        Command::new(bin("postern"))
            .args(["play", &live_id, "--follow", "--format", "text"])
            .env("POSTERN_URL", format!("http://{}", b.api))
            .env("POSTERN_TOKEN", &b.token)
            .env_remove("POSTERN_TOKEN_FILE")
            .env("POSTERN_CONFIG_DIR", b.dir.path().join("cli-config"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tmux(&["send-keys", "-t", "rec", "echo mark-$((40+2))", "Enter"]);
    wait_for("mark-42");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !watched.lock().unwrap().contains("mark-42") {
        assert!(
            Instant::now() < deadline,
            "the live watch did not show mark-42 within 5 s: {:?}",
            watched.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux(&["resize-window", "-t", "rec", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", "rec", "stty size", "Enter"]);
    let shown = wait_for("40 120");
    tmux(&["send-keys", "-t", "rec", "exit", "Enter"]);
    let rs = {
        let mut rs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            rs = recordings(&b, "mode=terminate").await;
            if rs
                .iter()
                .any(|r| r["kind"] == "shell" && r["status"] == "ended")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rs
    };
    tmux(&["kill-server"]);
    // The watch ended with the session, by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = watcher.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the live watch outlived the session"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let shell = rs
        .iter()
        .find(|r| r["kind"] == "shell")
        .unwrap_or_else(|| panic!("{rs:?}"));
    assert_eq!(
        (shell["width"].as_u64(), shell["height"].as_u64()),
        (Some(100), Some(30))
    );
    let id = shell["id"].as_str().unwrap();
    let c = cast(&b, id).await;
    assert!(
        c.contains(r#""r", "120x40""#),
        "the resize is recorded: {c}"
    );
    // Every line the terminal showed is in the recording's text.
    let out = postern(&b, &["play", id, "--format", "text"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let played = text(&out.stdout);
    for line in shown.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        assert!(
            played.contains(line),
            "{line:?} was on the screen but is not in the recording:\n{played}"
        );
    }
    // And Debian's asciinema reads the export.
    let out = postern(&b, &["play", id, "--format", "cast"]);
    let export = b.dir.path().join("shell.cast");
    std::fs::write(&export, &out.stdout).unwrap();
    let out = run_with_timeout(&mut asciinema_cat(&export), Duration::from_secs(20));
    assert!(out.status.success(), "asciinema cat: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("mark-42"));
}

/// A session's output as the client reads it, line by line, on a thread.
fn follow(mut child: std::process::Child) -> (std::process::Child, Arc<Mutex<String>>) {
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, seen)
}

fn last_tick(s: &str) -> u64 {
    s.lines()
        .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_bastion_loses_at_most_a_second_of_its_recording() {
    let mut b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let child = Command::new("ssh")
        .arg("-F")
        .arg(&alice.config)
        .args([
            "root+node-a@bastion",
            "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut child, seen) = follow(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_tick(&seen.lock().unwrap()) < 30 {
        assert!(Instant::now() < deadline, "no ticks: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.kill();
    let client_saw = last_tick(&seen.lock().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    b.restart().await;
    let rs = recordings(&b, "mode=terminate").await;
    let r = rs
        .first()
        .unwrap_or_else(|| panic!("no recording: {}", b.log()));
    assert_eq!(r["status"], "interrupted", "{r}");
    let out = postern(&b, &["play", r["id"].as_str().unwrap(), "--format", "text"]);
    assert!(
        out.status.success(),
        "the recording plays: {}",
        text(&out.stderr)
    );
    let recorded = last_tick(&text(&out.stdout));
    // A tick each 0.1 s; a segment at most 1 s old (and a little for the sleep
    // and the client's own buffering).
    assert!(
        client_saw.saturating_sub(recorded) <= 14,
        "the client saw tick-{client_saw}, the recording ends at tick-{recorded}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_refuses_the_relay_and_a_lost_store_ends_the_session_best_effort_marks_it() {
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = postern_tests::proxy::TcpProxy::start(pg).await;
    let url = postern_tests::postgres_url().replace("127.0.0.1:5432", &proxy.addr.to_string());
    let b = Bastion::start(BastionOpts {
        database_url: Some(url),
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({"default": "off", "roles": {"project_member": "strict"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The relay cannot be recorded: refused, naming the way that can.
    let why = alice.jump_refused("root", "node-a");
    assert!(
        why.contains("must be recorded") && why.contains("+node-a@"),
        "{why}"
    );
    let out = alice.ssh(&["root+node-a@bastion", "echo recorded"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The store goes away mid-session: a strict session ends within 5 s.
    let ticker = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done";
    let spawn = || {
        Command::new("ssh")
            .arg("-F")
            .arg(&alice.config)
            .args(["root+node-a@bastion", ticker])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut child, seen) = follow(spawn());
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_tick(&seen.lock().unwrap()) < 20 {
        assert!(Instant::now() < deadline, "no ticks: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut();
    let cut_at = Instant::now();
    let ended = loop {
        if child.try_wait().unwrap().is_some() {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(15),
            "the session outlived its recording"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 5 s, and the second it takes a segment to be due.
    assert!(
        ended <= Duration::from_secs(7),
        "ended {ended:?} after the store went away"
    );
    assert!(b.log().contains("strict recording cannot write"));
    proxy.restore();

    // best_effort: the session goes on, and the recording says what it lost.
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({"default": "best_effort"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (mut child, seen) = follow(spawn());
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_tick(&seen.lock().unwrap()) < 20 {
        assert!(Instant::now() < deadline, "no ticks: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.restore();
    let before = last_tick(&seen.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_tick(&seen.lock().unwrap()) < before + 30 {
        assert!(
            Instant::now() < deadline,
            "the session stopped with its store: {}",
            b.log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "a best_effort session ended with its store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let gapped = wait_recording(&b, "the best_effort recording's gap", |r| {
        r["policy"] == "best_effort" && r["gaps"].as_i64() > Some(0)
    })
    .await;
    let c = cast(&b, gapped["id"].as_str().unwrap()).await;
    assert!(c.contains("could not be stored"), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_stops_at_its_limit_and_a_strict_session_with_it() {
    let b = Bastion::start(BastionOpts {
        extra_args: vec!["--recording-max-bytes".into(), "1048576".into()],
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;

    // best_effort: the session runs to its end, the recording stops at 1 MiB.
    let out = alice.ssh(&["root+node-a@bastion", "seq 1 1000000 # over-the-limit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        out.stdout.len(),
        6_888_896,
        "the whole output reached the client"
    );
    let r = ended_exec(&b, "over-the-limit").await;
    let size = r["cast_bytes"].as_i64().unwrap();
    assert!(size <= 1_048_576 + 4096, "the recording holds {size} bytes");
    let c = cast(&b, r["id"].as_str().unwrap()).await;
    assert!(
        c.contains("recording limit of 1048576 bytes reached"),
        "{}",
        &c[c.len().saturating_sub(300)..]
    );

    // strict: no unrecorded output; the session ends at the limit.
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({"default": "strict"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out = alice.ssh(&["root+node-a@bastion", "seq 1 1000000 # strict-limit"]);
    assert!(
        out.stdout.len() < 6_888_896,
        "a strict session ran past its recording's limit"
    );
}
