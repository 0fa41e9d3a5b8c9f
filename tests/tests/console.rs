//! The web console end to end: a real bastion, two nodes with real agents
//! and sshd, people who set their password and TOTP through invitations, and
//! Debian's Chromium driven by `console/tests/e2e.mjs` (playwright-core,
//! installed by scripts/test with `npm ci`). Beside it, the console's
//! security over plain HTTP: the cookie's flags, CSRF, Origin, the idle
//! timeout, the terminal's WebSocket from another site, and the CSP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postern_tests::console::person;
use postern_tests::ssh::{InstalledHelper, Node, run_with_timeout, text};
use postern_tests::{Bastion, BastionOpts};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uses_the_console_in_a_real_browser() {
    let node_modules = repo().join("console/node_modules/playwright-core");
    if !node_modules.exists()
        || !Path::new("/usr/bin/chromium").exists()
        || !Path::new("/usr/bin/firefox-esr").exists()
    {
        panic!(
            "the console's browser test needs Debian's chromium and firefox-esr, and `npm ci` in console/: run scripts/test, which installs them"
        );
    }
    // With a Kubernetes door (the console downloads a kubeconfig for it),
    // and an OpenID provider beside it on loopback.
    let b = Bastion::start(BastionOpts {
        extra_args: vec![
            "--kube-addr".into(),
            format!("127.0.0.1:{}", postern_tests::free_port()),
            "--sso-allow-private-networks".into(),
        ],
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _a = Node::start(&b, &helper, "node-a").await;
    let _b = Node::start(&b, &helper, "node-b").await;
    // Another project's node, which nobody of web may see.
    let (s, v) = b.post("/api/v1/projects", json!({ "name": "other" })).await;
    assert_eq!(s, 201, "{v}");
    b.create_edge("other", "x").await;
    b.enroll_at("other", "x", "secret-node", "secret-node")
        .await;
    let (s, v) = b
        .put(
            "/api/v1/projects/web/recording-policy",
            json!({ "default": "best_effort" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Carol runs commands and reads the audit log (an org admin) and logs in
    // to web's nodes as root (a project member).
    let (carol_pw, carol_code) = person(
        &b,
        "carol",
        &[
            json!({ "role": "org_admin" }),
            json!({ "role": "project_member", "project": "web", "logins": ["root"] }),
        ],
    )
    .await;
    let (dave_pw, dave_code) = person(
        &b,
        "dave",
        &[json!({ "role": "read_only", "project": "web" })],
    )
    .await;
    // Fay signs in through the org's provider (a real oidc-provider), whose
    // group "ops" reads web.
    let callback = format!("http://{}/api/v1/auth/sso/callback", b.api);
    let provider = postern_tests::oidc::start(
        b.dir.path(),
        postern_tests::oidc::free_port(),
        &[&callback],
        json!([{ "sub": "u-fay", "username": "fay", "password": "pw-fay",
                 "email": "fay@example.com", "groups": ["ops"], "amr": ["pwd", "otp"] }]),
        postern_tests::oidc::key("k1"),
    );
    let (s, v) = b
        .put(
            "/api/v1/sso/providers/corp",
            json!({ "issuer": provider.issuer, "client_id": "postern", "client_secret": "s3cr3t",
                    "redirect_url": callback, "allowed_domains": ["example.com"] }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = b
        .put(
            "/api/v1/sso/providers/corp/groups/ops/roles",
            json!({ "role": "read_only", "project": "web" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // Gus uses Firefox (Debian's firefox-esr), with the same rights as Carol.
    let (gus_pw, gus_code) = person(
        &b,
        "gus",
        &[
            json!({ "role": "org_admin" }),
            json!({ "role": "project_member", "project": "web", "logins": ["root"] }),
        ],
    )
    .await;
    let artifacts = b.dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = run_with_timeout(
        Command::new("node")
            .arg(repo().join("console/tests/e2e.mjs"))
            .current_dir(repo().join("console"))
            .env("URL", format!("http://{}", b.api))
            .env("CAROL_PASSWORD", carol_pw)
            .env("CAROL_CODE", carol_code)
            .env("DAVE_PASSWORD", dave_pw)
            .env("DAVE_CODE", dave_code)
            .env("ARTIFACTS", &artifacts),
        Duration::from_secs(300),
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    if !out.status.success() {
        // Screenshots stay for whoever reads the failure.
        let kept = std::env::temp_dir().join("postern-console-artifacts");
        let _ = std::fs::create_dir_all(&kept);
        for f in std::fs::read_dir(&artifacts)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::copy(f.path(), kept.join(f.file_name()));
        }
        panic!(
            "the browser flows failed (screenshots in {}):\n{said}\nbastion log:\n{}",
            kept.display(),
            b.log()
        );
    }
    assert!(said.contains("all console flows passed"), "{said}");
    eprintln!("{said}");

    let out = run_with_timeout(
        Command::new("node")
            .arg(repo().join("console/tests/firefox.mjs"))
            .current_dir(repo().join("console"))
            .env("URL", format!("http://{}", b.api))
            .env("NAME", "gus")
            .env("PASSWORD", gus_pw)
            .env("CODE", gus_code),
        Duration::from_secs(300),
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.contains("firefox flows passed"),
        "the Firefox flows failed:\n{said}\nbastion log:\n{}",
        b.log()
    );
    eprintln!("{said}");

    // The kubeconfig the console downloaded is one kubectl reads, and it
    // names the bastion's Kubernetes door and Postern's credential plugin.
    let kubeconfig = artifacts.join("kubeconfig");
    let out = Command::new("kubectl")
        .args(["config", "view", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["clusters"].as_array().unwrap().is_empty(), "{v}");
    assert!(v.to_string().contains("postern"), "{v}");

    // The session the terminal opened went through the SSH door: audited as
    // a terminated SSH session of carol's on node-a.
    let entries = b.audit("ssh.terminate.login").await;
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "carol" && e.to_string().contains("node-a")),
        "{entries:?}"
    );
}

/// The cookie's value from a `Set-Cookie` header, and the header.
fn session_cookie(h: &http::HeaderMap) -> (String, String) {
    let set = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("postern_console="))
        .expect("a console cookie");
    let value = set.split(';').next().unwrap().to_string();
    (value, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_other_sites_missing_csrf_tokens_and_idle_sessions() {
    use postern_tests::http_with;
    // 127.0.0.1 plays the TLS proxy too: what it says in X-Forwarded-Proto
    // decides the cookie's name and Secure.
    let b = Bastion::start(BastionOpts {
        extra_args: vec![
            "--console-idle".into(),
            "3s".into(),
            "--trusted-proxy".into(),
            "127.0.0.1".into(),
        ],
        ..BastionOpts::default()
    })
    .await;
    let (pw, code) = person(
        &b,
        "erin",
        &[json!({ "role": "project_member", "project": "web", "logins": ["root"] })],
    )
    .await;
    let here = format!("http://{}", b.api);
    let body = |v: serde_json::Value| Some(("application/json", bytes::Bytes::from(v.to_string())));
    let login = json!({ "name": "erin", "password": pw, "code": code });

    // A page of another site cannot sign anyone in.
    let (s, _, v) = http_with(
        b.api,
        "POST",
        "/api/v1/auth/console",
        None,
        &[("origin", "https://evil.example")],
        body(login.clone()),
    )
    .await
    .unwrap();
    assert_eq!(s, 403, "{v}");
    // The console's own page can; the session is in an HttpOnly, SameSite=Strict
    // cookie (not Secure over plain http), never in the body.
    let (s, h, v) = http_with(
        b.api,
        "POST",
        "/api/v1/auth/console",
        None,
        &[("origin", &here)],
        body(login),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    let (cookie, set) = session_cookie(&h);
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    assert!(
        !v.to_string().contains("pss_"),
        "the bearer leaked into the body: {v}"
    );
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    let c = [("cookie", cookie.as_str())];
    let (s, _, v) = http_with(b.api, "GET", "/api/v1/whoami", None, &c, None)
        .await
        .unwrap();
    assert_eq!((s, v["name"].as_str()), (200, Some("erin")));

    // Writes: no token, a wrong token, another site's Origin: refused, and
    // nothing changes (the session still works).
    let add_key = json!({ "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ5b2F0cGVydHVyYmF0aW9uc2hvdWxkbm90c2F5MTIz x" });
    for (extra, why) in [
        (vec![], "no token"),
        (vec![("x-postern-csrf", "wrong")], "a wrong token"),
        (
            vec![
                ("x-postern-csrf", csrf.as_str()),
                ("origin", "https://evil.example"),
            ],
            "another site",
        ),
    ] {
        let mut hs = c.to_vec();
        hs.extend(extra);
        let (s, _, v) = http_with(
            b.api,
            "POST",
            "/api/v1/users/erin/ssh-keys",
            None,
            &hs,
            body(add_key.clone()),
        )
        .await
        .unwrap();
        assert_eq!(s, 403, "{why}: {v}");
    }
    let (s, _, v) = http_with(b.api, "GET", "/api/v1/users/erin/ssh-keys", None, &c, None)
        .await
        .unwrap();
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");

    // The terminal's WebSocket: another site's page, or no CSRF subprotocol.
    let ws = |origin: &'static str, proto: String| {
        let cookie = cookie.clone();
        async move {
            let hs = [
                ("cookie", cookie.as_str()),
                ("origin", origin),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-protocol", proto.as_str()),
            ];
            http_with(
                b.api,
                "GET",
                "/api/v1/projects/web/edges/eu-1/nodes/node-x/terminal?login=root",
                None,
                &hs,
                None,
            )
            .await
            .unwrap()
        }
    };
    let (s, _, v) = ws(
        "https://evil.example",
        format!("postern-terminal, csrf.{csrf}"),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, _, v) = ws("null", "postern-terminal".into()).await;
    assert_eq!(s, 403, "{v}");

    // The page: a Content-Security-Policy that allows no inline script, and
    // no inline script in it.
    let (s, h, page) = http_with(b.api, "GET", "/", None, &[], None).await.unwrap();
    assert_eq!(s, 200);
    let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'self'") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = page.as_str().unwrap();
    assert!(
        !page.contains("<script>") && page.contains("type=\"module\""),
        "{page}"
    );

    // Through the TLS proxy (which names the client too): a `__Host-`
    // cookie, Secure; over https only that name counts, so a cookie planted
    // under the plain name (by another host, or a plain-http answer) is not
    // a session there.
    let (pw2, code2) = person(
        &b,
        "erin2",
        &[json!({ "role": "read_only", "project": "web" })],
    )
    .await;
    let via_tls = [
        ("origin", here.as_str()),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let (s, h, v) = http_with(
        b.api,
        "POST",
        "/api/v1/auth/console",
        None,
        &via_tls,
        body(json!({ "name": "erin2", "password": pw2, "code": code2 })),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    let set = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-postern="))
        .unwrap_or_else(|| panic!("no __Host- cookie: {h:?}"));
    assert!(set.contains("; Secure") && set.contains("Path=/;"), "{set}");
    let token = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("__Host-postern=")
        .to_string();
    let host_cookie = format!("__Host-postern={token}");
    let plain_cookie = format!("postern_console={token}");
    let with = |c: &str| {
        vec![
            ("cookie", c.to_string()),
            ("x-forwarded-proto", "https".to_string()),
        ]
    };
    for (c, want) in [(&host_cookie, 200), (&plain_cookie, 401)] {
        let hs = with(c);
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, h, v) = http_with(b.api, "GET", "/api/v1/whoami", None, &hs, None)
            .await
            .unwrap();
        assert_eq!(s, want, "{c}: {v}");
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    }

    // Every page carries framing rules, and a sign-in page runs no script.
    let (s, h, _) = http_with(b.api, "GET", "/api/v1/auth/sso/callback", None, &[], None)
        .await
        .unwrap();
    assert_eq!(s, 401);
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // Idle for longer than the timeout (3 s here): signed out, and stays so.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s, _, v) = http_with(b.api, "GET", "/api/v1/whoami", None, &c, None)
        .await
        .unwrap();
    assert_eq!(s, 401, "{v}");
    assert!(v.to_string().contains("without use"), "{v}");
    let (s, _, _) = http_with(b.api, "GET", "/api/v1/whoami", None, &c, None)
        .await
        .unwrap();
    assert_eq!(s, 401);
}

/// The console's TypeScript types are generated from the API's OpenAPI
/// document (`npm run types`); they must be those of this API, or the
/// console compiles against calls the bastion does not answer.
#[test]
fn the_consoles_types_are_generated_from_this_apis_document() {
    use utoipa::OpenApi;
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("openapi.json");
    std::fs::write(
        &doc,
        serde_json::to_string(&postern_bastion::http::openapi::ApiDoc::openapi()).unwrap(),
    )
    .unwrap();
    let out_file = dir.path().join("schema.d.ts");
    let console = repo().join("console");
    let out = run_with_timeout(
        Command::new(console.join("node_modules/.bin/openapi-typescript"))
            .arg(&doc)
            .arg("-o")
            .arg(&out_file)
            .current_dir(&console),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fresh = std::fs::read_to_string(&out_file).unwrap();
    let committed = std::fs::read_to_string(console.join("src/api/schema.d.ts")).unwrap();
    assert!(
        fresh == committed,
        "console/src/api/schema.d.ts is not this API's: regenerate it (see console/package.json's `types`) and rebuild the console"
    );
}

/// A terminal WebSocket of the console for `cookie` (with its CSRF token),
/// or the HTTP status it was refused with.
async fn terminal(
    b: &Bastion,
    cookie: &str,
    csrf: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!(
        "ws://{}/api/v1/projects/web/edges/eu-1/nodes/node-a/terminal?login=root&cols=100&rows=30",
        b.api
    )
    .into_client_request()
    .unwrap();
    let h = req.headers_mut();
    h.insert("cookie", cookie.parse().unwrap());
    h.insert("origin", format!("http://{}", b.api).parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        format!("postern-terminal, csrf.{csrf}").parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("the terminal's WebSocket: {e}"),
    }
}

/// Reads the terminal until its output holds `needle` (binary frames) or a
/// control message does (text frames); answers all it read.
async fn read_until(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    needle: &str,
    within: Duration,
) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = String::new();
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Message::Text(t) => seen.push_str(t.as_str()),
                Message::Close(_) => {
                    seen.push_str("<closed>");
                    return;
                }
                _ => {}
            }
            if seen.contains(needle) {
                return;
            }
        }
        seen.push_str("<closed>");
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_ends_with_its_idle_session_and_one_person_holds_at_most_eight() {
    use futures_util::SinkExt;
    use postern_tests::http_with;
    use tokio_tungstenite::tungstenite::Message;
    let b = Bastion::start(BastionOpts {
        extra_args: vec!["--console-idle".into(), "4s".into()],
        ..BastionOpts::default()
    })
    .await;
    let helper = InstalledHelper::install();
    let _node = Node::start(&b, &helper, "node-a").await;
    let (pw, code) = person(
        &b,
        "ivy",
        &[json!({ "role": "project_member", "project": "web", "logins": ["root"] })],
    )
    .await;
    let here = format!("http://{}", b.api);
    let login = json!({ "name": "ivy", "password": pw, "code": code });
    let (s, h, v) = http_with(
        b.api,
        "POST",
        "/api/v1/auth/console",
        None,
        &[("origin", &here)],
        Some(("application/json", bytes::Bytes::from(login.to_string()))),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    let (cookie, _) = session_cookie(&h);
    let csrf = v["csrf_token"].as_str().unwrap().to_string();

    // Eight terminals at once; a ninth is refused, and says why.
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(terminal(&b, &cookie, &csrf).await.expect("a terminal"));
    }
    assert_eq!(terminal(&b, &cookie, &csrf).await.err(), Some(429));
    let mut ws = open.pop().unwrap();
    drop(open);

    // Typing is using: the shell answers, and the session stays.
    ws.send(Message::Binary("echo typed-$((6*7))\n".into()))
        .await
        .unwrap();
    let seen = read_until(&mut ws, "typed-42", Duration::from_secs(30)).await;
    assert!(seen.contains("typed-42"), "{seen}");
    let typed = std::time::Instant::now();

    // Nothing for longer than the timeout: the terminal says so and ends,
    // and a keystroke then revives nothing.
    let seen = read_until(&mut ws, "without use", Duration::from_secs(20)).await;
    assert!(seen.contains("without use: sign in again"), "{seen}");
    // Never before the timeout (4 s).
    let quiet = typed.elapsed();
    assert!(
        quiet >= Duration::from_secs(4),
        "ended {quiet:?} after the last keystroke"
    );
    let _ = ws.send(Message::Binary("echo back\n".into())).await;
    let (s, _, v) = http_with(
        b.api,
        "GET",
        "/api/v1/whoami",
        None,
        &[("cookie", cookie.as_str())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 401, "{v}");

    // An opened terminal is audited as opened (101), not as an error.
    let entries = b
        .audit("api GET /api/v1/projects/{project}/edges/{edge}/nodes/{node}/terminal")
        .await;
    assert!(entries.iter().any(|e| e["outcome"] == "ok"), "{entries:?}");
}
