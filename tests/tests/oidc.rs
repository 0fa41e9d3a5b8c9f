//! The OpenID relying party against a REAL provider (npm's oidc-provider, see
//! scripts/oidc-provider): discovery, the authorization code flow with PKCE,
//! `state` and `nonce`, the provider's own login form driven by curl with a
//! cookie jar, the ID token's groups and `amr`; a code replayed, a wrong
//! password, keys rotated (an unknown `kid`, fetched again) and a provider
//! that is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use postern_bastion::identity::oidc::{OidcHttp, RelyingParty};
use serde_json::json;

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn provider_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("POSTERN_OIDC_PROVIDER_DIR") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(root.join("scripts/oidc-provider"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

struct Provider {
    child: Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(work: &Path, port: u16, keys: serde_json::Value) -> Provider {
    let issuer = format!("http://127.0.0.1:{port}");
    let config = work.join(format!("provider-{port}-{}.json", rand::random::<u32>()));
    std::fs::write(
        &config,
        json!({
            "issuer": issuer,
            "clients": [{"client_id": "postern", "client_secret": "s3cr3t", "redirect_uris": [REDIRECT]}],
            "users": [
                {"sub": "u-ann", "username": "ann", "password": "ann-pass", "email": "ann@example.com",
                 "groups": ["ops", "admins"], "amr": ["pwd", "otp"]},
            ],
            "keys": keys,
        })
        .to_string(),
    )
    .unwrap();
    let dir = provider_dir();
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg(&config)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("READY "), "the provider said {line:?}");
    Provider { child, issuer }
}

fn key(kid: &str) -> serde_json::Value {
    let out = Command::new("node")
        .arg(provider_dir().join("server.mjs"))
        .args(["--gen-key", kid])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A person at the provider's login form: follows the redirects with a
/// cookie jar, posts the form, answers where the provider sends them back.
fn sign_in_at(work: &Path, auth_url: &str, user: &str, password: &str) -> Result<String, String> {
    let jar = work.join(format!("jar-{}", rand::random::<u32>()));
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "20",
                "-c",
                jar.to_str().unwrap(),
                "-b",
                jar.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let form = curl(&["-L", "-o", "/dev/null", "-w", "%{url_effective}", auth_url]);
    let answer = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--data-urlencode",
        &format!("username={user}"),
        "--data-urlencode",
        &format!("password={password}"),
        &format!("{form}/login"),
    ]);
    let (code, resume) = answer.split_once(' ').unwrap();
    if code != "303" {
        return Err(format!("the provider answered {code}"));
    }
    Ok(curl(&["-o", "/dev/null", "-w", "%{redirect_url}", resume]))
}

fn query(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map(|v| v.replace("%2F", "/").replace("%3A", ":"))
}

fn http() -> OidcHttp {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    OidcHttp::new(Arc::new(tls))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_provider_signs_a_person_in_and_its_answers_are_checked() {
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = start(work.path(), port, key("k-one"));
    let mut rp = RelyingParty::discover(
        http(),
        &p.issuer,
        "postern",
        Some("s3cr3t"),
        REDIRECT,
        "groups",
    )
    .await
    .unwrap();
    let scopes = vec!["openid".to_string(), "email".into(), "groups".into()];

    // The whole flow.
    let s = rp.start(&scopes);
    assert!(s.url.contains("code_challenge_method=S256"), "{}", s.url);
    let back = sign_in_at(work.path(), &s.url, "ann", "ann-pass").unwrap();
    assert!(back.starts_with(REDIRECT), "{back}");
    assert_eq!(query(&back, "state").as_deref(), Some(s.state.as_str()));
    let code = query(&back, "code").unwrap();
    let who = rp.finish(&code, &s.pkce_verifier, &s.nonce).await.unwrap();
    assert_eq!(who.subject, "u-ann");
    assert_eq!(who.email.as_deref(), Some("ann@example.com"));
    assert_eq!(who.groups, ["ops", "admins"]);
    assert_eq!(who.amr, ["pwd", "otp"]);

    // The same code again: the provider refuses it.
    let e = rp
        .finish(&code, &s.pkce_verifier, &s.nonce)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused the code"), "{e}");
    // A wrong password never comes back with a code.
    let s2 = rp.start(&scopes);
    assert!(sign_in_at(work.path(), &s2.url, "ann", "wrong").is_err());
    // A nonce that is not the one sent.
    let s3 = rp.start(&scopes);
    let back = sign_in_at(work.path(), &s3.url, "ann", "ann-pass").unwrap();
    let e = rp
        .finish(
            &query(&back, "code").unwrap(),
            &s3.pkce_verifier,
            "another-nonce",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ID token was refused"), "{e}");

    // The provider rotates its key (a restart with a new one): the relying
    // party meets an unknown kid, fetches the keys again and accepts.
    drop(p);
    let p = start(work.path(), port, key("k-two"));
    let s4 = rp.start(&scopes);
    let back = sign_in_at(work.path(), &s4.url, "ann", "ann-pass").unwrap();
    let who = rp
        .finish(&query(&back, "code").unwrap(), &s4.pkce_verifier, &s4.nonce)
        .await
        .unwrap();
    assert_eq!(who.subject, "u-ann");

    // A provider that is down: a clear error, quickly.
    drop(p);
    let t0 = std::time::Instant::now();
    let e = RelyingParty::discover(
        http(),
        &format!("http://127.0.0.1:{port}"),
        "postern",
        None,
        REDIRECT,
        "groups",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("could not be read"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(12));
}
