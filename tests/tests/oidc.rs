//! The OpenID relying party against a REAL provider (npm's oidc-provider, see
//! scripts/oidc-provider): discovery, the authorization code flow with PKCE,
//! `state` and `nonce`, the provider's own login form driven by curl with a
//! cookie jar, the ID token's groups and `amr`; a code replayed, a wrong
//! password, keys rotated (an unknown `kid`, fetched again) and a provider
//! that is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use postern_bastion::identity::oidc::{OidcHttp, RelyingParty};
use postern_tests::oidc::{self, Browser, Provider, key, query};
use serde_json::json;

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn users() -> serde_json::Value {
    json!([{"sub": "u-ann", "username": "ann", "password": "ann-pass", "email": "ann@example.com",
            "groups": ["ops", "admins"], "amr": ["pwd", "otp"]}])
}

fn start(work: &Path, port: u16, keys: serde_json::Value) -> Provider {
    oidc::start(work, port, &[REDIRECT], users(), keys)
}

fn sign_in_at(work: &Path, url: &str, user: &str, password: &str) -> Result<String, String> {
    Browser::new(work)
        .sign_in(url, user, password, false)
        .map(|(_, to)| to)
}

fn http() -> OidcHttp {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    // The provider runs on loopback over http: allowed here only.
    OidcHttp::new(Arc::new(tls)).private_networks(true)
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

    // Without leave for private networks, a provider on loopback (or any
    // private or link-local address, or over http) is never called: an org
    // admin cannot point the bastion into its own network.
    let public_only = OidcHttp::new(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    ));
    for issuer in [
        p.issuer.clone(),
        format!("https://127.0.0.1:{port}"),
        "https://169.254.169.254".to_string(),
        "https://10.1.2.3".to_string(),
        "https://[::1]:443".to_string(),
        format!("https://localhost:{port}"),
    ] {
        let e = RelyingParty::discover(
            public_only.clone(),
            &issuer,
            "postern",
            None,
            REDIRECT,
            "groups",
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("https") || e.to_string().contains("private or loopback"),
            "{issuer}: {e}"
        );
    }

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
