//! Signing in over REST, in process: invitations (password and TOTP set by the
//! user, never an admin), sign-in with a TOTP or recovery code, the guessing
//! limits, sessions as bearers and their end, SSH certificates for a
//! session, disabled users, the org's policy, and bad input that changes
//! nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use postern_api::admin::Role;
use postern_bastion::http::{issue_api_token, router};
use postern_bastion::identity::totp;
use postern_bastion::state::Shared;
use postern_bastion::store::BindingRow;
use serde_json::{Value, json};
use tower::ServiceExt;

struct World {
    app: Router,
    shared: Arc<Shared>,
    admin: String,
    _t: common::TestStore,
}

const PASSWORD: &str = "correct horse battery staple";

async fn world() -> World {
    let t = common::sqlite().await;
    let shared = common::shared(t.store.clone()).await;
    let s = &shared.store;
    let org = s.create_org("acme", 1).await.unwrap();
    let web = s.create_project(&org.id, "web", 1).await.unwrap();
    let admin = s.create_user(&org.id, "admin", 1).await.unwrap();
    s.set_binding(
        &admin.id,
        &BindingRow {
            project_id: None,
            role: Role::OrgAdmin,
            logins: vec![],
            forward_to: vec![],
            kube_groups: None,
        },
        1,
    )
    .await
    .unwrap();
    let ann = s.create_user(&org.id, "ann", 1).await.unwrap();
    s.set_binding(
        &ann.id,
        &BindingRow {
            project_id: Some(web.id.clone()),
            role: Role::ProjectMember,
            logins: vec!["deploy".into()],
            forward_to: vec![],
            kube_groups: None,
        },
        1,
    )
    .await
    .unwrap();
    let admin_token = issue_api_token(s, &admin, None, 3600).await.unwrap().token;
    World {
        app: router(shared.clone(), Default::default()),
        shared,
        admin: admin_token,
        _t: t,
    }
}

impl World {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(method, uri, token, body.map(|b| b.to_string()))
            .await
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn login(&self, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/api/v1/auth/login", None, Some(body))
            .await
    }

    /// Invites ann and accepts with a TOTP secret; answers the secret and the
    /// recovery codes.
    async fn enrol_ann(&self) -> (Vec<u8>, Vec<String>) {
        let (st, inv) = self
            .call(
                Method::POST,
                "/api/v1/users/ann/invitation",
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{inv}");
        let secret = totp::new_secret().unwrap();
        // A code from the previous step, so that the sign-in just after may use
        // the current one.
        let code = totp::code_at(&secret, now() - 30).unwrap();
        let (st, acc) = self
            .call(
                Method::POST,
                "/api/v1/auth/invitation",
                None,
                Some(json!({
                    "invitation": inv["invitation"], "password": PASSWORD,
                    "totp_secret": totp::base32(&secret), "totp_code": code,
                })),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{acc}");
        let codes = acc["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        (secret, codes)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_invited_user_signs_in_with_password_and_totp_and_the_session_is_a_bearer() {
    let w = world().await;
    let (secret, codes) = w.enrol_ann().await;
    assert_eq!(codes.len(), 10);

    // The password alone asks for the code.
    let (st, v) = w.login(json!({"name": "ann", "password": PASSWORD})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(message(&v), postern_api::identity::NEED_CODE);

    let code = totp::code_at(&secret, now()).unwrap();
    let (st, s) = w
        .login(json!({"name": "ann", "password": PASSWORD, "code": code}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{s}");
    assert_eq!(s["method"], "password+totp");
    assert_eq!(s["mfa"], true);
    let token = s["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pss_"));
    let (st, me) = w
        .call(Method::GET, "/api/v1/whoami", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{me}");
    assert_eq!(me["name"], "ann");

    // The same code again, within its step: refused.
    let (st, v) = w
        .login(json!({"name": "ann", "password": PASSWORD, "code": code}))
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(message(&v).contains("used already"), "{v}");

    // A recovery code works once.
    let (st, v) = w
        .login(json!({"name": "ann", "password": PASSWORD, "code": codes[0].to_uppercase()}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["recovery_codes_left"], 9);
    let (st, v) = w
        .login(json!({"name": "ann", "password": PASSWORD, "code": codes[0]}))
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");

    // Logout ends the session: it says to log in again.
    let (st, _) = w
        .call(Method::POST, "/api/v1/auth/logout", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = w
        .call(Method::GET, "/api/v1/whoami", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(message(&v).contains("log in again"), "{v}");

    // The invitation was single use.
    let audit = w.shared.audit.log();
    assert!(audit.verify().await.unwrap().is_ok());
    let (_, page) = w
        .call(Method::GET, "/api/v1/audit?limit=100", Some(&w.admin), None)
        .await;
    let text = page.to_string();
    assert!(
        text.contains("password+totp"),
        "sign-ins audited with their method"
    );
    assert!(
        text.contains("used already"),
        "refusals audited with their reason"
    );
}

#[tokio::test]
async fn guessing_is_limited_per_user_and_per_source() {
    let w = world().await;
    w.enrol_ann().await;
    for _ in 0..5 {
        let (st, v) = w
            .login(json!({"name": "ann", "password": "wrong password!!"}))
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(message(&v), "wrong name or password");
    }
    // Locked now, even with the right password, and said so.
    let (st, v) = w.login(json!({"name": "ann", "password": PASSWORD})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(message(&v).contains("too many failed sign-ins"), "{v}");
    // Unknown names read as wrong passwords, and count for the source.
    for i in 0..20 {
        let (st, v) = w
            .login(json!({"name": format!("nobody{i}"), "password": "whatever it is"}))
            .await;
        if st == StatusCode::TOO_MANY_REQUESTS {
            assert!(message(&v).contains("too many failed sign-ins"), "{v}");
            return;
        }
        assert_eq!(message(&v), "wrong name or password");
    }
    panic!("the source was never held");
}

#[tokio::test]
async fn a_session_certifies_one_ssh_key_until_it_ends() {
    let w = world().await;
    let s = &w.shared.store;
    let ann = s.user_by_name("ann").await.unwrap().unwrap();
    s.set_local_credentials(
        &ann.id,
        Some(
            &postern_bastion::identity::password::hash(PASSWORD)
                .await
                .unwrap(),
        ),
        None,
        1,
    )
    .await
    .unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ann@laptop";
    let (st, v) = w
        .login(
            json!({"name": "ann", "password": PASSWORD, "ssh_public_key": key, "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["method"], "password");
    let cert = ssh_key::Certificate::from_openssh(v["ssh_certificate"].as_str().unwrap()).unwrap();
    let checked = w.shared.pki.user_ca().check(&cert, "ann", now()).unwrap();
    assert_eq!(checked.session_id, v["id"]);
    assert!(cert.valid_before() <= now() + 600);
    let token = v["token"].as_str().unwrap();
    // Another key for the same session: refused, log in again.
    let other =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2pQ5Kb6oXhxVU5bgw0NxWmd3jJ3LDnTTuY2nXtuT9E x";
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/auth/ssh-certificate",
            Some(token),
            Some(json!({"public_key": other})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    // The same key again: a new certificate.
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/auth/ssh-certificate",
            Some(token),
            Some(json!({"public_key": key})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["principal"], "ann");
    // An API token cannot ask for one.
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/auth/ssh-certificate",
            Some(&w.admin),
            Some(json!({"public_key": key})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // The admin ends ann's sessions: the bearer is refused with the reason.
    let (st, v) = w
        .call(
            Method::DELETE,
            "/api/v1/users/ann/sessions",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ended"], 1);
    let (st, v) = w
        .call(Method::GET, "/api/v1/whoami", Some(token), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(message(&v).contains("ended by admin"), "{v}");
}

#[tokio::test]
async fn a_disabled_user_can_neither_sign_in_nor_use_what_they_hold() {
    let w = world().await;
    let s = &w.shared.store;
    let ann = s.user_by_name("ann").await.unwrap().unwrap();
    let ann_token = issue_api_token(s, &ann, None, 3600).await.unwrap().token;
    s.set_local_credentials(
        &ann.id,
        Some(
            &postern_bastion::identity::password::hash(PASSWORD)
                .await
                .unwrap(),
        ),
        None,
        1,
    )
    .await
    .unwrap();
    let (st, v) = w.login(json!({"name": "ann", "password": PASSWORD})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let session = v["token"].as_str().unwrap().to_string();
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/users/ann/disable",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["sessions_ended"], 1);
    for t in [&session, &ann_token] {
        let (st, v) = w.call(Method::GET, "/api/v1/whoami", Some(t), None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    }
    let (st, v) = w.login(json!({"name": "ann", "password": PASSWORD})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(message(&v).contains("disabled"), "{v}");
    // Nobody disables themself.
    let (st, _) = w
        .call(
            Method::POST,
            "/api/v1/users/admin/disable",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = w
        .call(
            Method::POST,
            "/api/v1/users/ann/enable",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = w.login(json!({"name": "ann", "password": PASSWORD})).await;
    assert_eq!(st, StatusCode::CREATED);
}

#[tokio::test]
async fn an_org_requiring_mfa_refuses_password_only_users_and_enrolment_without_totp() {
    let w = world().await;
    let (st, v) = w
        .call(
            Method::PUT,
            "/api/v1/org/policy",
            Some(&w.admin),
            Some(json!({"require_mfa": true, "session_max_seconds": 3600, "bot_token_max_seconds": 86400})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, inv) = w
        .call(
            Method::POST,
            "/api/v1/users/ann/invitation",
            Some(&w.admin),
            None,
        )
        .await;
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/auth/invitation",
            None,
            Some(json!({"invitation": inv["invitation"], "password": PASSWORD})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("requires MFA"), "{v}");
    // Nothing was claimed: the same invitation enrols with TOTP.
    let secret = totp::new_secret().unwrap();
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/auth/invitation",
            None,
            Some(json!({"invitation": inv["invitation"], "password": PASSWORD,
                "totp_secret": totp::base32(&secret), "totp_code": totp::code_at(&secret, now() - 30).unwrap()})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // Sessions are capped at the org's maximum.
    let (st, v) = w
        .login(json!({"name": "ann", "password": PASSWORD, "code": totp::code_at(&secret, now()).unwrap(), "ttl_seconds": 999999}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let s = w
        .shared
        .store
        .session(v["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(s.expires_at - s.created_at <= 3_600_000);
    // Used once: a second acceptance is refused.
    let (st, _) = w
        .call(
            Method::POST,
            "/api/v1/auth/invitation",
            None,
            Some(json!({"invitation": inv["invitation"], "password": PASSWORD})),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_sign_in_input_is_refused_clearly_and_changes_nothing() {
    let w = world().await;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{".into(), StatusCode::BAD_REQUEST, "JSON"),
        (
            json!({"name": "ann", "password": "x", "extra": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "extra",
        ),
        (
            json!({"name": "ann", "password": "x".repeat(5000)}).to_string(),
            StatusCode::BAD_REQUEST,
            "longer than",
        ),
        (
            json!({"name": "a".repeat(100), "password": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "longer than",
        ),
        (
            json!({"name": "ann", "password": "x", "ssh_public_key": "not a key"}).to_string(),
            StatusCode::BAD_REQUEST,
            "OpenSSH public key",
        ),
        (
            json!({"name": "ann", "password": "x", "code": "9".repeat(100)}).to_string(),
            StatusCode::BAD_REQUEST,
            "longer than",
        ),
    ];
    for (body, status, needle) in cases {
        let (st, v) = w
            .raw(Method::POST, "/api/v1/auth/login", None, Some(body.clone()))
            .await;
        assert_eq!(st, status, "{body}: {v}");
        assert!(message(&v).contains(needle), "{body}: {v}");
    }
    for bad in [
        "",
        "piv_x",
        "piv_000000000000000000000000_x",
        "pst_000000000000000000000000_x",
    ] {
        let (st, v) = w
            .call(
                Method::POST,
                "/api/v1/auth/invitation",
                None,
                Some(json!({"invitation": bad, "password": PASSWORD})),
            )
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{bad}: {v}");
    }
    // Out-of-range policies.
    for body in [
        json!({"require_mfa": true, "session_max_seconds": 10, "bot_token_max_seconds": 86400}),
        json!({"require_mfa": true, "session_max_seconds": 9_999_999, "bot_token_max_seconds": 86400}),
        json!({"require_mfa": true, "session_max_seconds": 3600, "bot_token_max_seconds": 86400, "sso_mfa_values": [""]}),
    ] {
        let (st, v) = w
            .call(
                Method::PUT,
                "/api/v1/org/policy",
                Some(&w.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (_, p) = w
        .call(Method::GET, "/api/v1/org/policy", Some(&w.admin), None)
        .await;
    assert_eq!(p["require_mfa"], false, "{p}");
    // A member may not invite or read the policy.
    let ann = w.shared.store.user_by_name("ann").await.unwrap().unwrap();
    let t = issue_api_token(&w.shared.store, &ann, None, 3600)
        .await
        .unwrap()
        .token;
    let (st, _) = w
        .call(
            Method::POST,
            "/api/v1/users/admin/invitation",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = w
        .call(Method::GET, "/api/v1/org/policy", Some(&t), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        w.shared
            .store
            .local_credentials(&ann.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn bots_hold_expiring_tokens_bound_to_their_networks_and_never_sign_in() {
    let w = world().await;
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/projects/web/bots",
            Some(&w.admin),
            Some(json!({"name": "ci", "role": "project_member", "logins": ["deploy"], "source_cidrs": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["source_cidrs"], json!(["10.0.0.0/8"]));
    // Refused: org_admin, bad networks, a taken name.
    for (body, status) in [
        (
            json!({"name": "boss", "role": "org_admin"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "b2", "role": "read_only", "source_cidrs": ["10.0.0.0/40"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "b3", "role": "read_only", "source_cidrs": ["not-a-net"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "ann", "role": "read_only"}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"name": "b4", "role": "read_only", "extra": 1}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (st, v) = w
            .call(
                Method::POST,
                "/api/v1/projects/web/bots",
                Some(&w.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, status, "{body}: {v}");
    }
    // A token must expire, within the org's maximum.
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/users/ci/tokens",
            Some(&w.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, t) = w
        .call(
            Method::POST,
            "/api/v1/users/ci/tokens",
            Some(&w.admin),
            Some(json!({"ttl_seconds": 3600})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    // From outside its networks (here: no address at all), the token is refused and says why.
    let (st, v) = w
        .call(
            Method::GET,
            "/api/v1/whoami",
            Some(t["token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(message(&v).contains("source networks"), "{v}");
    // A bot never signs in, and a member may not make bots.
    let s = &w.shared.store;
    let ci = s.user_by_name("ci").await.unwrap().unwrap();
    s.set_local_credentials(
        &ci.id,
        Some(
            &postern_bastion::identity::password::hash(PASSWORD)
                .await
                .unwrap(),
        ),
        None,
        1,
    )
    .await
    .unwrap();
    let (st, v) = w.login(json!({"name": "ci", "password": PASSWORD})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(message(&v).contains("bot"), "{v}");
    let ann = s.user_by_name("ann").await.unwrap().unwrap();
    let ann_token = issue_api_token(s, &ann, None, 3600).await.unwrap().token;
    let (st, _) = w
        .call(
            Method::POST,
            "/api/v1/projects/web/bots",
            Some(&ann_token),
            Some(json!({"name": "sneaky", "role": "read_only"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Listed with its tokens; deleted, its token stops.
    let (st, v) = w
        .call(
            Method::GET,
            "/api/v1/projects/web/bots",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v[0]["name"], "ci");
    assert_eq!(v[0]["tokens"].as_array().unwrap().len(), 1);
    let (st, _) = w
        .call(
            Method::DELETE,
            "/api/v1/projects/web/bots/ci",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(s.user_by_name("ci").await.unwrap().is_none());
}

#[tokio::test]
async fn bots_get_no_more_than_their_makers_hold_and_never_mint_their_own_credentials() {
    let w = world().await;
    let s = &w.shared.store;
    // pat: project admin on web with the login deploy only.
    let org = s.org_by_name("acme").await.unwrap().unwrap();
    let web = s.project_by_name(&org.id, "web").await.unwrap().unwrap();
    let pat = s.create_user(&org.id, "pat", 1).await.unwrap();
    s.set_binding(
        &pat.id,
        &BindingRow {
            project_id: Some(web.id.clone()),
            role: Role::ProjectAdmin,
            logins: vec!["deploy".into()],
            forward_to: vec![],
            kube_groups: Some(vec!["web-readers".into()]),
        },
        1,
    )
    .await
    .unwrap();
    let pat_token = issue_api_token(s, &pat, None, 3600).await.unwrap().token;
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/projects/web/bots",
            Some(&pat_token),
            Some(json!({"name": "b1", "role": "project_admin", "logins": ["root"]})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("login root"), "{v}");
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/projects/web/bots",
            Some(&pat_token),
            Some(json!({"name": "b1", "role": "project_member", "logins": ["deploy"]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let b1 = s.user_by_name("b1").await.unwrap().unwrap();
    let b = &s.bindings(&b1.id).await.unwrap()[0];
    assert_eq!(
        b.kube_groups,
        Some(vec!["web-readers".to_string()]),
        "the maker's groups, no more"
    );
    // The project admin gives it a token; the bot cannot mint itself more,
    // nor register itself a key.
    let (st, t) = w
        .call(
            Method::POST,
            "/api/v1/users/b1/tokens",
            Some(&pat_token),
            Some(json!({"ttl_seconds": 600})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let bot = t["token"].as_str().unwrap();
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/users/b1/tokens",
            Some(bot),
            Some(json!({"ttl_seconds": 600})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl b1";
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/users/b1/ssh-keys",
            Some(bot),
            Some(json!({"public_key": key})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");

    // Someone who signs in through SSO gets no registered key: it would
    // outlive their groups.
    let ann = s.user_by_name("ann").await.unwrap().unwrap();
    let provider = postern_bastion::store::OidcProviderRow {
        id: "p1".into(),
        org_id: org.id.clone(),
        name: "corp".into(),
        issuer: "https://idp.example".into(),
        client_id: "c".into(),
        client_secret_sealed: "x".into(),
        redirect_url: "https://b/api/v1/auth/sso/callback".into(),
        scopes: vec!["openid".into()],
        groups_claim: "groups".into(),
        allowed_domains: vec![],
        created_at: 1,
    };
    s.put_oidc_provider(&provider).await.unwrap();
    s.link_sso_user("p1", "sub-ann", &ann.id, 1).await.unwrap();
    let (st, v) = w
        .call(
            Method::POST,
            "/api/v1/users/ann/ssh-keys",
            Some(&w.admin),
            Some(json!({"public_key": key})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("single sign-on"), "{v}");
}
