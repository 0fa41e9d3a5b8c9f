//! Identity end to end, with the real CLI and real OpenSSH: an invited user
//! sets a password and enrols TOTP with `postern invitation accept`, signs in
//! with `postern login --user`, and reaches a node through the bastion with
//! the certificate the session got (no registered key), until the session
//! ends: then the live SSH session is cut and the next one refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_tests::ssh::{InstalledHelper, Node, run_with_timeout, text, write_config};
use postern_tests::{Bastion, BastionOpts, bin};

struct Person {
    config: tempfile::TempDir,
}

impl Person {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("postern"));
        c.args(args)
            .env_remove("POSTERN_URL")
            .env_remove("POSTERN_TOKEN")
            .env_remove("POSTERN_TOKEN_FILE")
            .env_remove("SSH_AUTH_SOCK")
            .env("POSTERN_CONFIG_DIR", self.config.path())
            .env("HOME", self.config.path());
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = run_with_timeout(&mut self.command(args), Duration::from_secs(60));
        assert!(
            out.status.success(),
            "postern {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_person_reaches_nodes_with_the_sessions_certificate_until_it_ends() {
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let url = format!("http://{}", b.api);
    let (s, v) = b
        .post("/api/v1/users", serde_json::json!({"name": "carol"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = b
        .put(
            "/api/v1/users/carol/roles",
            serde_json::json!({"role": "project_member", "project": "web", "logins": ["root"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, inv) = b
        .post("/api/v1/users/carol/invitation", serde_json::json!({}))
        .await;
    assert_eq!(s, 201, "{inv}");

    let carol = Person {
        config: tempfile::tempdir().unwrap(),
    };
    let dir = carol.config.path();
    std::fs::write(dir.join("invitation"), inv["invitation"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("password"), "a long enough passphrase\n").unwrap();
    let secret_file = dir.join("totp");
    let out = carol.run(&[
        "invitation",
        "accept",
        &url,
        "--invitation-file",
        dir.join("invitation").to_str().unwrap(),
        "--password-file",
        dir.join("password").to_str().unwrap(),
        "--totp-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    let said = text(&out.stdout);
    assert!(said.contains("Recovery codes"), "{said}");

    // Sign in: the code of the next step (the enrolment spent this one).
    let code = postern_tests::next_totp_code(&secret_file);
    let out = carol.run(&[
        "login",
        &url,
        "--user",
        "carol",
        "--password-file",
        dir.join("password").to_str().unwrap(),
        "--code",
        &code,
    ]);
    let said = text(&out.stdout);
    assert!(said.contains("password+totp"), "{said}");
    let key = dir.join("ssh").join("id_ed25519");
    assert!(key.with_file_name("id_ed25519-cert.pub").exists(), "{said}");
    let login: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("login.json")).unwrap()).unwrap();
    assert!(login["token"].as_str().unwrap().starts_with("pss_"));
    let out = carol.run(&["whoami"]);
    assert!(text(&out.stdout).contains("carol"));

    // OpenSSH with the certificate: carol registered no key.
    let config = dir.join("ssh_config");
    write_config(
        &config,
        b.ssh.port(),
        "carol",
        &key,
        &dir.join("known_hosts"),
    );
    let ssh = |args: &[&str]| {
        run_with_timeout(
            Command::new("ssh").arg("-F").arg(&config).args(args),
            Duration::from_secs(60),
        )
    };
    let out = ssh(&["-J", "bastion", "root@node-a", "echo with-a-certificate"]);
    assert!(
        out.status.success(),
        "{}\nbastion log:\n{}\nsshd log:\n{}",
        text(&out.stderr),
        b.log(),
        node.sshd.log()
    );
    assert_eq!(text(&out.stdout).trim(), "with-a-certificate");

    // postern ssh-config names the session's key and certificate: plain
    // ssh with it reaches the node by NODE.EDGE.PROJECT.
    let out = carol.run(&["ssh-config"]);
    let cfg_text = text(&out.stdout);
    assert!(cfg_text.contains("CertificateFile"), "{cfg_text}");
    let generated = dir.join("generated_ssh_config");
    std::fs::write(&generated, format!("{cfg_text}Host *\n  BatchMode yes\n")).unwrap();
    let out = run_with_timeout(
        Command::new("ssh")
            .arg("-F")
            .arg(&generated)
            .args(["node-a.eu-1.web", "echo via-ssh-config"])
            .env("HOME", dir),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\n{cfg_text}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "via-ssh-config");

    // A live session, then the admin ends carol's sessions: it is cut.
    let mut live = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-J", "bastion", "root@node-a", "echo started; sleep 120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(live.stdout.as_mut().unwrap(), &mut first).unwrap();
    let (s, v) = b.delete("/api/v1/users/carol/sessions").await;
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    loop {
        if live.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the live SSH session outlived its login session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ssh(&["-J", "bastion", "root@node-a", "true"]);
    assert!(!out.status.success(), "a jump after the session ended");
    let out = carol.command(&["whoami"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("log in again"),
        "{}",
        text(&out.stderr)
    );

    // The audit names the sign-in, the certificate and the end.
    let (_, page) = b.get("/api/v1/audit?limit=100").await;
    let all = page.to_string();
    assert!(all.contains("api POST /api/v1/auth/login"), "{all}");
    assert!(all.contains("password+totp"), "{all}");
    assert!(
        all.contains("api DELETE /api/v1/users/{user}/sessions"),
        "{all}"
    );
    assert!(all.contains("\"ended\":1"), "{all}");
}

/// Reads the CLI's first stdout line (the URL it prints) while it waits.
fn spawn_cli(p: &Person, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = p
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

fn finish(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn single_sign_on_maps_groups_to_roles_at_every_sign_in_and_refuses_with_reasons() {
    use postern_tests::oidc::{self, Browser};
    // The provider runs beside the bastion, on loopback over http.
    let b = Bastion::start(BastionOpts {
        extra_args: vec!["--sso-allow-private-networks".into()],
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let url = format!("http://{}", b.api);
    let callback = format!("{url}/api/v1/auth/sso/callback");
    let work = tempfile::tempdir().unwrap();
    let users = |ann_groups: &[&str]| {
        serde_json::json!([
            {"sub": "u-ann", "username": "ann", "password": "pw-ann", "email": "ann@example.com",
             "groups": ann_groups, "amr": ["pwd", "otp"]},
            {"sub": "u-bob", "username": "bob", "password": "pw-bob", "email": "bob@example.com",
             "groups": ["ops"], "amr": ["pwd"]},
            {"sub": "u-eve", "username": "eve", "password": "pw-eve", "email": "eve@elsewhere.net",
             "groups": ["ops"], "amr": ["pwd", "otp"]},
        ])
    };
    let port = oidc::free_port();
    let keys = oidc::key("k1");
    let provider = oidc::start(
        work.path(),
        port,
        &[&callback],
        users(&["ops"]),
        keys.clone(),
    );

    // An org admin configures the provider and maps its group "ops".
    let (s, v) = b
        .put(
            "/api/v1/sso/providers/corp",
            serde_json::json!({"issuer": provider.issuer, "client_id": "postern", "client_secret": "s3cr3t",
                "redirect_url": callback, "allowed_domains": ["example.com"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("client_secret").is_none(), "{v}");
    let (s, v) = b
        .put(
            "/api/v1/sso/providers/corp/groups/ops/roles",
            serde_json::json!({"role": "project_member", "project": "web", "logins": ["root"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The browser flow: the CLI prints the URL and waits on its loopback port.
    let ann = Person {
        config: tempfile::tempdir().unwrap(),
    };
    let (cli, start) = spawn_cli(&ann, &["login", &url, "--sso", "corp", "--org", "default"]);
    assert!(start.contains("/api/v1/auth/sso/start?"), "{start}");
    let (status, at) = Browser::new(work.path())
        .sign_in(&start, "ann", "pw-ann", true)
        .unwrap();
    assert_eq!(status, "200", "the browser ended at {at}");
    let (ok, said) = finish(cli);
    assert!(ok, "{said}");
    assert!(said.contains("sso:corp"), "{said}");
    let out = ann.run(&["whoami"]);
    let me = text(&out.stdout);
    assert!(me.contains("project_member on web"), "{me}");

    // The session's certificate reaches the node (ann registered no key).
    let dir = ann.config.path();
    let config = dir.join("ssh_config");
    write_config(
        &config,
        b.ssh.port(),
        "ann",
        &dir.join("ssh/id_ed25519"),
        &dir.join("known_hosts"),
    );
    let out = run_with_timeout(
        Command::new("ssh").arg("-F").arg(&config).args([
            "-J",
            "bastion",
            "root@node-a",
            "echo sso-ok",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        node.sshd.log()
    );

    // Removed from the group at the provider: no role at the next sign-in.
    drop(provider);
    let provider = oidc::start(
        work.path(),
        port,
        &[&callback],
        users(&["dev"]),
        keys.clone(),
    );
    let (cli, start) = spawn_cli(
        &ann,
        &[
            "login", &url, "--sso", "corp", "--org", "default", "--no-ssh",
        ],
    );
    Browser::new(work.path())
        .sign_in(&start, "ann", "pw-ann", true)
        .unwrap();
    let (ok, said) = finish(cli);
    assert!(ok, "{said}");
    let me = text(&ann.run(&["whoami"]).stdout);
    assert!(me.contains("no roles yet"), "{me}");

    // Headless: a URL and a code for another device; the CLI polls. The
    // link alone approves nothing: the person types the code, and is told
    // what they approve (the org, the provider, where the request came from).
    let mut child = ann
        .command(&[
            "login",
            &url,
            "--sso",
            "corp",
            "--org",
            "default",
            "--headless",
            "--no-ssh",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (verify, code) = {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        let (mut a, mut b) = (String::new(), String::new());
        r.read_line(&mut a).unwrap();
        r.read_line(&mut b).unwrap();
        (
            a.trim().to_string(),
            b.trim().trim_start_matches("code: ").to_string(),
        )
    };
    assert!(
        verify.ends_with("/api/v1/auth/sso/device") && !verify.contains(&code),
        "{verify}"
    );
    // From another site (no cookie of this browser): nothing is approved.
    assert_eq!(Browser::post_without_cookie(&verify, &code), "400");
    // A wrong code is refused.
    assert!(
        Browser::new(work.path())
            .approve_device(&verify, "BBBB-CCCC")
            .is_err()
    );
    let phone = Browser::new(work.path());
    let (confirm, to_provider) = phone.approve_device(&verify, &code).unwrap();
    assert!(
        confirm.contains("default") && confirm.contains("corp") && confirm.contains("127.0.0.1"),
        "{confirm}"
    );
    let (status, _) = phone.sign_in(&to_provider, "ann", "pw-ann", true).unwrap();
    assert_eq!(status, "200");
    let (ok, said) = finish(child);
    assert!(ok, "{said}");

    // An email outside the allowed domains: refused, and the CLI says why.
    let eve = Person {
        config: tempfile::tempdir().unwrap(),
    };
    let (cli, start) = spawn_cli(&eve, &["login", &url, "--sso", "corp", "--org", "default"]);
    Browser::new(work.path())
        .sign_in(&start, "eve", "pw-eve", true)
        .unwrap();
    let (ok, said) = finish(cli);
    assert!(!ok);
    assert!(said.contains("not in a domain"), "{said}");

    // The org requires MFA: bob's provider did not assert it.
    let (s, v) = b
        .put(
            "/api/v1/org/policy",
            serde_json::json!({"require_mfa": true, "session_max_seconds": 3600,
                "bot_token_max_seconds": 86400, "sso_mfa_values": ["otp"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bob = Person {
        config: tempfile::tempdir().unwrap(),
    };
    let (cli, start) = spawn_cli(
        &bob,
        &[
            "login", &url, "--sso", "corp", "--org", "default", "--no-ssh",
        ],
    );
    Browser::new(work.path())
        .sign_in(&start, "bob", "pw-bob", true)
        .unwrap();
    let (ok, said) = finish(cli);
    assert!(!ok);
    assert!(said.contains("requires MFA"), "{said}");

    // A replayed callback (same state) is refused.
    let (cli, start) = spawn_cli(
        &ann,
        &[
            "login", &url, "--sso", "corp", "--org", "default", "--no-ssh",
        ],
    );
    let (_, back) = Browser::new(work.path())
        .sign_in(&start, "ann", "pw-ann", false)
        .unwrap();
    assert!(back.starts_with(&callback), "{back}");
    // Where the bastion sends the browser: the CLI's listener, with a code
    // that is worth nothing without the verifier only that CLI holds.
    let to_cli = String::from_utf8_lossy(
        &Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{redirect_url}", &back])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    let code = oidc::query(&to_cli, "code").expect("a code for the CLI");
    for verifier in [None, Some("not-the-clis-verifier")] {
        let mut body = serde_json::json!({ "code": code });
        if let Some(v) = verifier {
            body["verifier"] = serde_json::json!(v);
        }
        let (s, v) =
            postern_tests::http(b.api, "POST", "/api/v1/auth/sso/collect", None, Some(body))
                .await
                .unwrap();
        assert_eq!(s, 401, "{v}");
    }
    // The listener takes only its own sign-in (its state), then the real
    // delivery completes the CLI's login.
    let forged = to_cli.replace("state=", "state=x");
    let (status, _) = Browser::new(work.path()).open(&forged);
    assert_eq!(status, "404", "a request without the CLI's state");
    let (status, _) = Browser::new(work.path()).open(&to_cli);
    assert_eq!(status, "200", "the first use reaches the CLI");
    let (ok, said) = finish(cli);
    assert!(ok, "{said}");
    let (status, body) = Browser::new(work.path()).open(&back);
    assert_eq!(status, "401", "{body}");
    assert!(body.contains("used already"), "{body}");

    // Audited: the sign-ins with provider, groups and roles; the refusals with reasons.
    let (_, page) = b.get("/api/v1/audit?limit=100").await;
    let all = page.to_string();
    assert!(
        all.contains("sso:corp") && all.contains("\"groups\":[\"ops\"]"),
        "{all}"
    );
    assert!(
        all.contains("not in a domain") && all.contains("requires MFA"),
        "{all}"
    );
    drop(provider);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_org_that_refuses_peoples_keys_lets_only_certificates_and_bots_keys_in() {
    use postern_tests::ssh::SshUser;
    let b = Bastion::start(BastionOpts::default()).await;
    let helper = InstalledHelper::install();
    let node = Node::start(&b, &helper, "node-a").await;
    let alice = SshUser::create(&b, "alice", Some(("project_member", &["root"]))).await;
    let out = alice.jump("root", "node-a", "true");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        node.sshd.log()
    );
    // A bot with a registered key (Ansible in CI).
    let (s, v) = b
        .post(
            "/api/v1/projects/web/bots",
            serde_json::json!({"name": "ansible", "role": "project_member", "logins": ["root"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let bot = SshUser::unregistered(&b, "ansible");
    let public = std::fs::read_to_string(bot.key.with_extension("pub")).unwrap();
    let (s, v) = b
        .post(
            "/api/v1/users/ansible/ssh-keys",
            serde_json::json!({ "public_key": public.trim() }),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let (s, v) = b
        .put(
            "/api/v1/org/policy",
            serde_json::json!({"require_mfa": false, "session_max_seconds": 28800,
                "bot_token_max_seconds": 86400, "refuse_person_keys": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let refused = alice.jump_refused("root", "node-a");
    assert!(refused.contains("Permission denied"), "{refused}");
    let out = bot.jump("root", "node-a", "echo bot-ok");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "bot-ok");
}
