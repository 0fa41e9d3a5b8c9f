//! The admin REST API in process (`Router::oneshot`, no sockets): authentication,
//! authorization by role and org, and every kind of bad input, which must get a
//! clear JSON error and change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use postern_api::admin::{NodeState, Role};
use postern_bastion::http::{issue_api_token, router};
use postern_bastion::state::Shared;
use postern_bastion::store::{ApiTokenRow, BindingRow, LabelReport, NewNode};
use serde_json::{Value, json};
use tower::ServiceExt;

struct World {
    app: Router,
    shared: Arc<Shared>,
    admin: String,
    padmin: String,
    member: String,
    outsider: String,
    other_org_admin: String,
    _t: common::TestStore,
}

async fn token_for(
    shared: &Shared,
    org: &str,
    name: &str,
    binding: Option<(Option<&str>, Role)>,
) -> String {
    let user = shared.store.create_user(org, name, 1).await.unwrap();
    if let Some((project, role)) = binding {
        let project_id = match project {
            Some(p) => Some(
                shared
                    .store
                    .project_by_name(org, p)
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
            ),
            None => None,
        };
        shared
            .store
            .set_binding(
                &user.id,
                &BindingRow {
                    project_id,
                    role,
                    logins: vec!["deploy".into()],
                    forward_to: vec![],
                    kube_groups: None,
                },
                1,
            )
            .await
            .unwrap();
    }
    issue_api_token(&shared.store, &user, None, 3600)
        .await
        .unwrap()
        .token
}

async fn world() -> World {
    world_with(postern_bastion::http::Settings::default()).await
}

/// A world whose REST door has these settings.
async fn world_with(rest: postern_bastion::http::Settings) -> World {
    let t = common::sqlite().await;
    let shared = common::shared(t.store.clone()).await;
    let s = &shared.store;
    let org = s.create_org("acme", 1).await.unwrap();
    let web = s.create_project(&org.id, "web", 1).await.unwrap();
    s.create_project(&org.id, "db", 1).await.unwrap();
    s.create_edge(&web.id, "eu-1", 1).await.unwrap();
    let other = s.create_org("globex", 1).await.unwrap();
    let secret = s.create_project(&other.id, "secret", 1).await.unwrap();
    s.create_edge(&secret.id, "hq", 1).await.unwrap();
    World {
        app: router(shared.clone(), rest),
        admin: token_for(&shared, &org.id, "admin", Some((None, Role::OrgAdmin))).await,
        padmin: token_for(
            &shared,
            &org.id,
            "pat",
            Some((Some("web"), Role::ProjectAdmin)),
        )
        .await,
        member: token_for(
            &shared,
            &org.id,
            "mem",
            Some((Some("web"), Role::ProjectMember)),
        )
        .await,
        outsider: token_for(&shared, &org.id, "olly", Some((Some("db"), Role::ReadOnly))).await,
        other_org_admin: token_for(&shared, &other.id, "gadmin", Some((None, Role::OrgAdmin)))
            .await,
        shared,
        _t: t,
    }
}

impl World {
    /// The whole response, for the tests that look at headers.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(b),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.app.clone().oneshot(req).await.unwrap()
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> (StatusCode, Value) {
        let resp = self.send(method, uri, token, body).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, Some(token), None).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            uri,
            Some(token),
            Some(Body::from(body.to_string())),
        )
        .await
    }

    async fn project_names(&self) -> Vec<String> {
        let (_, v) = self.get("/api/v1/projects", &self.admin).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn assert_error(v: &Value, code: &str, needle: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_clear_message() {
    let w = world().await;
    let (s, v) = w.call(Method::GET, "/api/v1/projects", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized", "Authorization: Bearer");
    for bad in [
        "garbage",
        "pst_000000000000000000000000_x",
        &format!("{}x", w.admin),
    ] {
        let (s, _) = w.get("/api/v1/projects", bad).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}");
    }
    // Expired and revoked tokens.
    let user = w.shared.store.user_by_name("admin").await.unwrap().unwrap();
    let t = postern_bastion::secrets::new_token("pst").unwrap();
    w.shared
        .store
        .insert_api_token(&ApiTokenRow {
            id: t.id.clone(),
            user_id: user.id,
            secret_hash: t.hash.clone(),
            name: None,
            created_at: 0,
            expires_at: 1,
            revoked_at: None,
        })
        .await
        .unwrap();
    let (s, v) = w.get("/api/v1/projects", t.full.expose()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized", "expired");
    // People sign in; tokens are for bots, and always expire.
    let (s, v) = w
        .post(
            "/api/v1/users/admin/tokens",
            &w.admin,
            json!({"ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_error(&v, "bad_request", "API tokens are for bots");
    let (s, v) = w
        .post(
            "/api/v1/projects/web/bots",
            &w.admin,
            json!({"name": "ci", "role": "read_only"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = w.post("/api/v1/users/ci/tokens", &w.admin, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_error(&v, "bad_request", "ttl_seconds is required");
    let (_, created) = w
        .post(
            "/api/v1/users/ci/tokens",
            &w.admin,
            json!({"ttl_seconds": 3600}),
        )
        .await;
    let fresh = created["token"].as_str().unwrap().to_string();
    assert_eq!(w.get("/api/v1/whoami", &fresh).await.0, StatusCode::OK);
    let id = created["id"].as_str().unwrap();
    let (s, _) = w
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = w.get("/api/v1/whoami", &fresh).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized", "revoked");
}

#[tokio::test]
async fn roles_decide_403_and_invisible_projects_are_404() {
    let w = world().await;
    // Read: members see their project's nodes; others' projects do not exist for them.
    assert_eq!(
        w.get("/api/v1/projects/web/edges/eu-1/nodes", &w.member)
            .await
            .0,
        StatusCode::OK
    );
    let (s, v) = w
        .get("/api/v1/projects/web/edges/eu-1/nodes", &w.outsider)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found", "project \"web\" not found");
    // A project of another org is 404 even to that org's... other admins.
    let (s, _) = w
        .get("/api/v1/projects/secret/edges/hq/nodes", &w.admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = w.get("/api/v1/projects/web", &w.other_org_admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Manage: project admins may, members may not.
    let (s, v) = w
        .post(
            "/api/v1/projects/web/edges",
            &w.member,
            json!({"name": "us-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_error(&v, "forbidden", "project_member may not");
    let (s, _) = w
        .post(
            "/api/v1/projects/web/edges",
            &w.padmin,
            json!({"name": "us-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Org-level actions are org_admin only.
    let (s, _) = w
        .post("/api/v1/projects", &w.padmin, json!({"name": "new"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        w.get("/api/v1/audit", &w.padmin).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.get("/api/v1/users", &w.member).await.0,
        StatusCode::FORBIDDEN
    );
    // Users of another org are invisible.
    assert_eq!(
        w.get("/api/v1/users/admin", &w.other_org_admin).await.0,
        StatusCode::NOT_FOUND
    );
    // Listing shows only visible projects.
    let (_, v) = w.get("/api/v1/projects", &w.member).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_unknown_oversized_and_untyped_bodies_change_nothing() {
    let w = world().await;
    let before = w.project_names().await;
    let cases: Vec<(Body, Option<&str>, StatusCode, &str, &str)> = vec![
        (
            Body::from("{\"name\": "),
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed JSON",
        ),
        (
            Body::from("{\"name\":\"x\",\"color\":\"red\"}"),
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown field",
        ),
        (
            Body::from("{\"name\":7}"),
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid request body",
        ),
        (
            // Serde reads a struct from an array of its fields too; the API does not.
            Body::from("[\"x\"]"),
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a JSON object",
        ),
        (
            Body::from("{\"name\":\"x\"}"),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            Body::from(format!("{{\"name\":\"{}\"}}", "a".repeat(70_000))),
            Some("application/json"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "too large",
        ),
        (
            Body::from("{\"name\":\"Bad Name\"}"),
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid project",
        ),
    ];
    for (body, ctype, status, code, needle) in cases {
        let mut req = Request::post("/api/v1/projects")
            .header("authorization", format!("Bearer {}", w.admin));
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        let resp = w
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{needle}");
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_error(&v, code, needle);
    }
    assert_eq!(
        w.project_names().await,
        before,
        "a refused request changed the store"
    );
}

#[tokio::test]
async fn out_of_range_limits_and_bad_queries_are_400() {
    let w = world().await;
    for q in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "offset=-5",
        "limit=abc",
        "colour=red",
    ] {
        let (s, v) = w.get(&format!("/api/v1/audit?{q}"), &w.admin).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let (s, v) = w.get("/api/v1/audit?limit=100&offset=0", &w.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["limit"], 100);
    for body in [
        json!({"ttl_seconds": 0}),
        json!({"max_uses": 0}),
        json!({"ttl_seconds": 99_999_999}),
    ] {
        let (s, _) = w
            .post(
                "/api/v1/projects/web/edges/eu-1/enrollment-tokens",
                &w.admin,
                body,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
    let (s, v) = w
        .post(
            "/api/v1/projects/web/bots",
            &w.admin,
            json!({"name": "ci", "role": "read_only"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for ttl in [5, 400 * 86_400] {
        let (s, v) = w
            .post(
                "/api/v1/users/ci/tokens",
                &w.admin,
                json!({ "ttl_seconds": ttl }),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_error(&v, "bad_request", "between 60 and");
    }
}

#[tokio::test]
async fn unknown_nodes_edges_and_routes_are_404() {
    let w = world().await;
    let (s, v) = w
        .get("/api/v1/projects/web/edges/eu-1/nodes/ghost", &w.admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found", "node \"ghost\" not found");
    let (s, _) = w
        .call(
            Method::DELETE,
            "/api/v1/projects/web/edges/eu-1/nodes/ghost",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = w
        .get("/api/v1/projects/web/edges/nowhere/nodes", &w.admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found", "edge \"nowhere\"");
    let (s, v) = w.get("/api/v1/nonsense", &w.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    // A path parameter that is not UTF-8 once decoded names nothing: a JSON 404
    // like any unknown name, not axum's plain-text 400.
    for uri in [
        "/api/v1/projects/%FF",
        "/api/v1/users/a%FFb/tokens",
        "/cmdexec/v1/projects/web/edges/%C3/execution/x/",
    ] {
        let (s, v) = w.get(uri, &w.admin).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{uri}: {v}");
    }
}

#[tokio::test]
async fn roles_and_users_validate_logins_and_scopes() {
    let w = world().await;
    let (s, _) = w
        .post("/api/v1/users", &w.admin, json!({"name": "carol"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = w
        .post("/api/v1/users", &w.admin, json!({"name": "carol"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let put = |body: Value| {
        let w = &w;
        async move {
            w.call(
                Method::PUT,
                "/api/v1/users/carol/roles",
                Some(&w.admin),
                Some(Body::from(body.to_string())),
            )
            .await
        }
    };
    let (s, v) =
        put(json!({"role": "project_member", "project": "web", "logins": ["root;rm"]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "bad_request", "invalid unix login");
    let (s, _) = put(json!({"role": "project_member", "logins": []})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = put(json!({"role": "org_admin", "project": "web"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = put(json!({"role": "superuser", "project": "web"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) =
        put(json!({"role": "project_member", "project": "web", "logins": ["deploy"]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["roles"][0]["logins"][0], "deploy");
    // Kubernetes groups: never a system: group, header-safe, at most 16; nothing
    // changes on a refusal.
    for groups in [
        json!(["system:masters"]),
        json!(["a b"]),
        json!(["x\r\nImpersonate-User: admin"]),
        json!(["g".repeat(129)]),
        json!((0..17).map(|i| format!("g{i}")).collect::<Vec<_>>()),
        json!([""]),
    ] {
        let (s, v) =
            put(json!({"role": "project_member", "project": "web", "kube_groups": groups})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{groups}: {v}");
    }
    let (_, v) = w.get("/api/v1/users/carol", &w.admin).await;
    assert!(v["roles"][0].get("kube_groups").is_none(), "{v}");
    let (s, v) = put(json!({"role": "project_member", "project": "web", "logins": ["deploy"], "kube_groups": ["sre", "team-a@corp"]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["roles"][0]["kube_groups"], json!(["sre", "team-a@corp"]));
    let (s, _) = w
        .call(
            Method::DELETE,
            "/api/v1/users/carol/roles/web",
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A project name is checked like every name, before any lookup.
    let (s, v) = put(json!({"role": "read_only", "project": "Web\0"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "bad_request", "invalid project");
    // Scopes and ids that no row can have are not found, without a lookup (a NUL
    // would be an error from PostgreSQL, not an answer).
    for uri in [
        "/api/v1/users/carol/roles/a%00b",
        "/api/v1/users/carol/ssh-keys/a%00b",
        "/api/v1/tokens/a%00b",
        "/api/v1/projects/web/edges/eu-1/enrollment-tokens/a%00b",
    ] {
        let (s, v) = w.call(Method::DELETE, uri, Some(&w.admin), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}: {v}");
    }
    // Token names: at most 100 characters, however many bytes they take.
    let (s, v) = w
        .post(
            "/api/v1/projects/web/bots",
            &w.admin,
            json!({"name": "names-bot", "role": "read_only"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = w
        .post(
            "/api/v1/users/names-bot/tokens",
            &w.admin,
            json!({"name": "é".repeat(100), "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = w
        .post(
            "/api/v1/users/names-bot/tokens",
            &w.admin,
            json!({"name": "é".repeat(101), "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn every_call_and_every_denial_is_audited() {
    let w = world().await;
    w.post("/api/v1/projects", &w.member, json!({"name": "sneaky"}))
        .await;
    w.get("/api/v1/projects/secret", &w.admin).await;
    w.post("/api/v1/projects", &w.admin, json!({"name": "ok"}))
        .await;
    let (_, v) = w.get("/api/v1/audit?limit=10", &w.admin).await;
    let entries = v["entries"].as_array().unwrap();
    let find = |actor: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["actor"] == actor && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} entry for {actor}: {v}"))
    };
    let denied = find("mem", "denied");
    assert_eq!(denied["action"], "api POST /api/v1/projects");
    assert_eq!(denied["detail"]["status"], 403);
    assert_eq!(
        find("admin", "not_found")["detail"]["path"],
        "/api/v1/projects/secret"
    );
    assert_eq!(find("admin", "ok")["project"], "ok");
    // The other org's admin sees none of it.
    let (_, v) = w.get("/api/v1/audit", &w.other_org_admin).await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] != "admin")
    );
    assert_eq!(
        w.shared.audit.log().verify().await.unwrap().map(|n| n > 3),
        Ok(true)
    );
}

/// An admin who reads the log right after a change finds it: a change is
/// answered only once its outcome is committed (a CI run once read the log
/// between the answer and the batch's commit).
#[tokio::test]
async fn a_change_is_in_the_log_when_it_is_answered() {
    let w = world().await;
    for i in 0..40 {
        let name = format!("p{i}");
        let (st, v) = w
            .post("/api/v1/projects", &w.admin, json!({ "name": name }))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let (_, page) = w
            .get(
                "/api/v1/audit?limit=1&action=api%20POST%20%2Fapi%2Fv1%2Fprojects",
                &w.admin,
            )
            .await;
        assert_eq!(
            page["entries"][0]["project"], name,
            "round {i}: the answer came before its entry: {page}"
        );
    }
}

#[tokio::test]
async fn enrollment_tokens_carry_a_working_join_command() {
    let w = world().await;
    let (s, v) = w
        .post(
            "/api/v1/projects/web/edges/eu-1/enrollment-tokens",
            &w.padmin,
            json!({"max_uses": 3, "auto_approve": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let join = v["join_command"].as_str().unwrap();
    assert!(join.starts_with("postern-agent join --controller https://"));
    assert!(join.contains(v["token"].as_str().unwrap()));
    assert!(join.contains(&format!("--ca-hash {}", w.shared.pki.ca_hash())));
    let id = v["id"].as_str().unwrap();
    let (s, _) = w
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/web/edges/eu-1/enrollment-tokens/{id}"),
            Some(&w.member),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = w
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/web/edges/eu-1/enrollment-tokens/{id}"),
            Some(&w.padmin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let w = world().await;
    let (s, _) = w.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = w.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = w.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("postern_agents_connected 0"));
    assert!(text.contains("# TYPE postern_agent_handshakes_total counter"));
}

#[tokio::test]
async fn a_lost_database_is_503_with_a_retry_hint_not_a_500() {
    let w = world().await;
    let (s, _) = w.get("/api/v1/projects", &w.admin).await;
    assert_eq!(s, StatusCode::OK);
    w.shared.store.close().await;
    for (method, uri, body) in [
        (Method::GET, "/api/v1/projects", None),
        (
            Method::POST,
            "/api/v1/projects",
            Some(json!({"name": "new"})),
        ),
    ] {
        let body = body.map(|b| Body::from(b.to_string()));
        let resp = w.send(method, uri, Some(&w.admin), body).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(resp.headers()["retry-after"], "2");
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_error(&v, "unavailable", "retry in a few seconds");
    }
    let (s, _) = w.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

/// Every route of `http::router`, as the OpenAPI document names it. A route added
/// to the router must be added here (the test reads the router's source to check)
/// and described in the document.
const DOCUMENTED_ROUTES: &[&str] = &[
    "GET /api/v1/whoami",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/console",
    "GET /api/v1/auth/console",
    "GET /api/v1/auth/sso/console",
    "GET /api/v1/projects/{project}/edges/{edge}/nodes/{node}/terminal",
    "GET /api/v1/audit/verify",
    "POST /api/v1/auth/logout",
    "POST /api/v1/auth/ssh-certificate",
    "POST /api/v1/auth/kube-certificate",
    "POST /api/v1/auth/invitation",
    "POST /api/v1/users/{user}/invitation",
    "GET /api/v1/users/{user}/sessions",
    "DELETE /api/v1/users/{user}/sessions",
    "DELETE /api/v1/users/{user}/mfa",
    "POST /api/v1/users/{user}/disable",
    "POST /api/v1/users/{user}/enable",
    "GET /api/v1/org/policy",
    "PUT /api/v1/org/policy",
    "GET /api/v1/projects/{project}/bots",
    "POST /api/v1/projects/{project}/bots",
    "DELETE /api/v1/projects/{project}/bots/{name}",
    "GET /api/v1/sso/providers",
    "PUT /api/v1/sso/providers/{name}",
    "DELETE /api/v1/sso/providers/{name}",
    "GET /api/v1/sso/providers/{name}/groups",
    "PUT /api/v1/sso/providers/{name}/groups/{group}/roles",
    "DELETE /api/v1/sso/providers/{name}/groups/{group}/roles/{scope}",
    "GET /api/v1/auth/sso/start",
    "GET /api/v1/auth/sso/callback",
    "POST /api/v1/auth/sso/device",
    "GET /api/v1/auth/sso/device",
    "POST /api/v1/auth/sso/device/confirm",
    "POST /api/v1/auth/sso/device/approve",
    "POST /api/v1/auth/sso/collect",
    "GET /api/v1/kubeconfig",
    "GET /api/v1/projects",
    "POST /api/v1/projects",
    "GET /api/v1/projects/{project}",
    "GET /api/v1/projects/{project}/edges",
    "POST /api/v1/projects/{project}/edges",
    "GET /api/v1/projects/{project}/edges/{edge}/nodes",
    "GET /api/v1/projects/{project}/edges/{edge}/nodes/{node}",
    "DELETE /api/v1/projects/{project}/edges/{edge}/nodes/{node}",
    "POST /api/v1/projects/{project}/edges/{edge}/nodes/{node}/approve",
    "PUT /api/v1/projects/{project}/edges/{edge}/nodes/{node}/labels",
    "POST /api/v1/projects/{project}/edges/{edge}/nodes/{node}/disable",
    "POST /api/v1/projects/{project}/edges/{edge}/nodes/{node}/enable",
    "PUT /api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway",
    "DELETE /api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway",
    "POST /api/v1/projects/{project}/edges/{edge}/enrollment-tokens",
    "DELETE /api/v1/projects/{project}/edges/{edge}/enrollment-tokens/{token_id}",
    "GET /api/v1/users",
    "POST /api/v1/users",
    "GET /api/v1/users/{user}",
    "DELETE /api/v1/users/{user}",
    "PUT /api/v1/users/{user}/roles",
    "DELETE /api/v1/users/{user}/roles/{scope}",
    "GET /api/v1/users/{user}/tokens",
    "POST /api/v1/users/{user}/tokens",
    "GET /api/v1/users/{user}/ssh-keys",
    "POST /api/v1/users/{user}/ssh-keys",
    "DELETE /api/v1/users/{user}/ssh-keys/{key_id}",
    "DELETE /api/v1/tokens/{token_id}",
    "GET /api/v1/audit",
    "GET /api/v1/projects/{project}/recording-policy",
    "PUT /api/v1/projects/{project}/recording-policy",
    "GET /api/v1/recordings",
    "GET /api/v1/recordings/{id}",
    "DELETE /api/v1/recordings/{id}",
    "GET /api/v1/recordings/{id}/segments",
    "GET /api/v1/recordings/{id}/cast",
    "GET /api/v1/recordings/{id}/live",
    "GET /api/v1/org/recording-retention",
    "PUT /api/v1/org/recording-retention",
    "GET /api/v1/ssh",
    "POST /cmdexec/v1/projects/{project_id}/edges/{edge_id}/execute/",
    "GET /cmdexec/v1/projects/{project_id}/edges/{edge_id}/execution/{exec_id}/",
    "GET /cmdexec/v1/projects/{project_id}/history/",
    "GET /cmdexec/v1/projects/{project_id}/edges/{edge_id}/execution/{exec_id}/events",
    "POST /cmdexec/v1/projects/{project_id}/edges/{edge_id}/execution/{exec_id}/cancel",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
];

/// Routes the document leaves out on purpose: the cmdexec paths without their
/// trailing slash, the same handlers as the documented ones.
const UNDOCUMENTED_ALIASES: &[&str] = &[
    "POST /cmdexec/v1/projects/{project}/edges/{edge}/execute",
    "GET /cmdexec/v1/projects/{project}/edges/{edge}/execution/{exec_id}",
    "GET /cmdexec/v1/projects/{project}/history",
];

/// The web console's files: served beside the API, not part of it (so not
/// in the document), and a file the build does not have is a 404.
const CONSOLE_FILES: &[&str] = &["GET /", "GET /favicon.svg", "GET /assets/{path}"];

/// `GET /a/{x}/b` → `GET /a/{}/b`: the document and the router may name parameters
/// differently.
fn unnamed_params(route: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in route.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// The routes `http::router` declares, read from its source: each `.route("path",
/// get(…).post(…))`, under the prefix its sub-router is nested at.
fn routes_in_router_source() -> std::collections::BTreeSet<String> {
    let src = include_str!("../src/http/mod.rs");
    let body = &src[src.find("pub fn router(").unwrap()..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}\n").unwrap()];
    let string_at = |s: &str| -> String {
        let s = &s[s.find('"').unwrap() + 1..];
        s[..s.find('"').unwrap()].to_string()
    };
    // The router names most paths by their constant in `postern_api::routes`.
    let constants: std::collections::HashMap<String, String> =
        include_str!("../../api/src/routes.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": &str = ")?;
                Some((name.to_string(), string_at(rest)))
            })
            .collect();
    let path_at = |s: &str| -> String {
        let s = s.trim_start();
        let constant = |s: &str| -> String {
            let name = s.trim_start().strip_prefix("routes::").unwrap();
            let end = name
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(name.len());
            constants[&name[..end]].clone()
        };
        if s.starts_with('"') {
            string_at(s)
        } else if let Some(rest) = s.strip_prefix("&format!(\"{}/\",") {
            format!("{}/", constant(rest))
        } else {
            constant(s)
        }
    };
    // `.nest("/api/v1", api)`: the prefix of each sub-router, by variable.
    let mut prefixes = std::collections::HashMap::new();
    for part in body.split(".nest(").skip(1) {
        let prefix = path_at(part);
        let after = &part[part.find(',').unwrap() + 1..];
        let var = after[..after.find(')').unwrap()].trim().to_string();
        prefixes.insert(var, prefix);
    }
    let mut routes = std::collections::BTreeSet::new();
    // Each `let x = Router::new()…;` is a sub-router; the final expression is the
    // top-level router, with no prefix.
    for stmt in body.split(';') {
        let var = match stmt.trim_start().strip_prefix("let ") {
            Some(rest) => rest.split([' ', '=']).next().unwrap().to_string(),
            None => String::new(),
        };
        let prefix = prefixes.get(&var).cloned().unwrap_or_default();
        for part in stmt.split(".route(").skip(1) {
            let path = path_at(part);
            // The route's arguments: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let mut end = part.len();
            for (i, c) in part.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &part[..end];
            for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
                let called = args.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !args[..i]
                            .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                });
                if called {
                    routes.insert(format!("{} {prefix}{path}", method.to_uppercase()));
                }
            }
        }
    }
    routes
}

#[tokio::test]
async fn openapi_document_and_swagger_ui_are_served_offline() {
    use std::collections::BTreeSet;
    let w = world().await;
    let (s, v) = w
        .call(Method::GET, "/api-docs/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);

    // The list above is the router's: nothing missing, nothing extra.
    let in_router = routes_in_router_source();
    let listed: BTreeSet<String> = DOCUMENTED_ROUTES
        .iter()
        .chain(UNDOCUMENTED_ALIASES)
        .chain(CONSOLE_FILES)
        .map(|r| unnamed_params(r))
        .collect();
    let in_router_unnamed: BTreeSet<String> = in_router.iter().map(|r| unnamed_params(r)).collect();
    assert!(
        in_router.len() > 30,
        "router source not understood: {in_router:?}"
    );
    let unlisted: Vec<_> = in_router_unnamed.difference(&listed).collect();
    let not_routed: Vec<_> = listed.difference(&in_router_unnamed).collect();
    assert!(
        unlisted.is_empty() && not_routed.is_empty(),
        "in http::router but not in DOCUMENTED_ROUTES (list it and describe it with \
         #[utoipa::path]): {unlisted:?}; listed but not in the router: {not_routed:?}"
    );
    // Each route is really served: no token gets 401 (or the ops answer), never
    // the 404 of an unknown endpoint or a 405.
    for route in DOCUMENTED_ROUTES.iter().chain(UNDOCUMENTED_ALIASES) {
        let (method, path) = route.split_once(' ').unwrap();
        let uri = unnamed_params(path).replace("{}", "x");
        let (st, body) = w
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &uri,
                None,
                None,
            )
            .await;
        assert!(
            st != StatusCode::NOT_FOUND && st != StatusCode::METHOD_NOT_ALLOWED,
            "{route}: {st} {body}"
        );
    }

    // The document describes exactly the documented routes, each fully.
    let mut documented = BTreeSet::new();
    for (path, item) in v["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let route = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            assert!(op["tags"][0].is_string(), "{route} has no tag");
            assert!(op["summary"].is_string(), "{route} has no summary");
            if op["security"].is_array() {
                for status in ["401", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{route} does not document {status}"
                    );
                }
            }
            if op["requestBody"].is_object() {
                for status in ["400", "413", "415"] {
                    assert!(
                        responses.contains_key(status),
                        "{route} takes a body but does not document {status}"
                    );
                }
            }
            for param in op["parameters"].as_array().into_iter().flatten() {
                assert!(
                    param["description"].is_string(),
                    "{route}: parameter {} has no description",
                    param["name"]
                );
            }
            documented.insert(route);
        }
    }
    let expected: BTreeSet<String> = DOCUMENTED_ROUTES.iter().map(|r| r.to_string()).collect();
    for route in &expected {
        assert!(
            documented.contains(route),
            "{route} missing from the OpenAPI document"
        );
    }
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        extra.is_empty(),
        "the document describes routes the router does not have: {extra:?}"
    );
    assert_eq!(
        v["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Request bodies refuse unknown fields, as the handlers do.
    for schema in ["CreateProject", "RoleBinding", "CreateToken", "AddSshKey"] {
        assert_eq!(
            v["components"]["schemas"][schema]["additionalProperties"], false,
            "{schema}"
        );
    }
    let resp = w
        .app
        .clone()
        .oneshot(Request::get("/swagger-ui/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("swagger-ui"));
    // The assets come from the binary, not a CDN.
    assert!(!String::from_utf8_lossy(&html).contains("https://"));
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2JQ1wJ5z0XQ9Q5a0a4wq4C9n9m6QH2b6YwFQ2pR1L mem@laptop";

#[tokio::test]
async fn ssh_keys_are_validated_scoped_and_audited() {
    let w = world().await;
    // A user adds their own key; it comes back canonical with its fingerprint.
    let (s, v) = w
        .post(
            "/api/v1/users/mem/ssh-keys",
            &w.member,
            json!({ "public_key": KEY }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    assert_eq!(v["comment"], "mem@laptop");
    assert_eq!(v["algorithm"], "ssh-ed25519");
    let key_id = v["id"].as_str().unwrap().to_string();

    // Registering proves no possession of the key, so another user registering
    // the same public key must not block anyone: it is theirs too, and it only
    // ever authenticates each of them as themselves.
    let (s, v) = w
        .post(
            "/api/v1/users/admin/ssh-keys",
            &w.admin,
            json!({ "public_key": KEY }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The same key twice for one user is a conflict.
    let (s, v) = w
        .post(
            "/api/v1/users/mem/ssh-keys",
            &w.member,
            json!({ "public_key": KEY }),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "conflict", "already registered");

    // Invalid keys, unknown fields, malformed JSON: 400, nothing stored.
    for (body, needle) in [
        (json!({ "public_key": "" }), "empty"),
        (
            json!({ "public_key": "ssh-ed25519 notbase64!" }),
            "not an OpenSSH public key",
        ),
        (
            json!({ "public_key": format!("{KEY}\n{KEY}") }),
            "single line",
        ),
        (
            json!({ "public_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAP" }),
            "not an OpenSSH public key",
        ),
        (json!({ "public_key": "A".repeat(9000) }), "longer than"),
    ] {
        let (s, v) = w.post("/api/v1/users/mem/ssh-keys", &w.member, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_error(&v, "bad_request", needle);
    }
    let (s, v) = w
        .post(
            "/api/v1/users/mem/ssh-keys",
            &w.member,
            json!({ "public_key": KEY, "options": "command=\"sh\"" }),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = w
        .call(
            Method::POST,
            "/api/v1/users/mem/ssh-keys",
            Some(&w.member),
            Some(Body::from("{\"public_key\": ")),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = w.get("/api/v1/users/mem/ssh-keys", &w.member).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");

    // Another user may not touch them; another org's admin cannot even see the user.
    let (s, _) = w.get("/api/v1/users/mem/ssh-keys", &w.padmin).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = w
        .get("/api/v1/users/mem/ssh-keys", &w.other_org_admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = w
        .call(
            Method::DELETE,
            &format!("/api/v1/users/mem/ssh-keys/{key_id}"),
            Some(&w.other_org_admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The org admin may list and delete them; a second delete is 404.
    let (s, _) = w.get("/api/v1/users/mem/ssh-keys", &w.admin).await;
    assert_eq!(s, StatusCode::OK);
    let uri = format!("/api/v1/users/mem/ssh-keys/{key_id}");
    let (s, _) = w.call(Method::DELETE, &uri, Some(&w.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = w.call(Method::DELETE, &uri, Some(&w.admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let mem = w.shared.store.user_by_name("mem").await.unwrap().unwrap();
    assert!(
        w.shared
            .store
            .list_ssh_keys(&mem.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Adding and deleting are audited.
    let (_, v) = w.get("/api/v1/audit?limit=100", &w.admin).await;
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions
            .iter()
            .any(|a| a.contains("POST /api/v1/users/{user}/ssh-keys")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a.contains("DELETE /api/v1/users/{user}/ssh-keys/{key_id}")),
        "{actions:?}"
    );
}

/// Audit fails closed for what changes things: when the audit log cannot be
/// written, an admin mutation and an execution are refused with 503 and change
/// nothing; reads still answer. (The failure is a trigger that refuses every
/// audit insert, as a full or broken log would.)
#[tokio::test]
async fn unauditable_mutations_and_executions_do_not_happen() {
    let w = world().await;
    let s = &w.shared.store;
    let edge = s
        .edge_by_name(
            &s.project_by_name(
                &s.user_by_name("admin").await.unwrap().unwrap().org_id,
                "web",
            )
            .await
            .unwrap()
            .unwrap()
            .id,
            "eu-1",
        )
        .await
        .unwrap()
        .unwrap();
    s.insert_enrollment_token(&common::token_row("tok", &edge.id, 1, i64::MAX))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &edge.id, "node-1"), 1)
        .await
        .unwrap();

    sqlx::query(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log full'); END",
    )
    .execute(s.pool())
    .await
    .unwrap();
    let failures = || {
        w.shared
            .metrics
            .audit_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let failed_before = failures();
    let (st, v) = w
        .post("/api/v1/projects", &w.admin, json!({ "name": "new-one" }))
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit log"),
        "{v}"
    );
    let (st, v) = w
        .post(
            "/cmdexec/v1/projects/web/edges/eu-1/execute/",
            &w.admin,
            json!({ "target_type": "cluster", "command": "true" }),
        )
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // Each refusal is counted for the operator's alert: its fail-closed
    // entry, and its outcome (which the full log refuses too).
    assert_eq!(failures() - failed_before, 4);
    // Reads go on; nothing was created or run.
    let (st, v) = w.get("/api/v1/projects", &w.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(!v.to_string().contains("new-one"), "{v}");
    let (st, v) = w.get("/cmdexec/v1/projects/web/history/", &w.admin).await;
    assert_eq!((st, v["total"].as_i64()), (StatusCode::OK, Some(0)), "{v}");

    sqlx::query("DROP TRIGGER refuse_audit")
        .execute(s.pool())
        .await
        .unwrap();
    let (st, v) = w
        .post("/api/v1/projects", &w.admin, json!({ "name": "new-one" }))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (_, v) = w.get("/api/v1/audit?limit=5", &w.admin).await;
    let outcomes: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "api POST /api/v1/projects")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "requested"], "{v}");
}

/// The Kubernetes gateway role is a project admin's grant to a named node
/// (review 3, finding 1): a project member may not grant or take it back, an
/// unknown or unapproved node is refused, what the node's agent says grants
/// nothing, the node view shows both, every call is audited with the node, and
/// taking the role back ends what the node serves.
#[tokio::test]
async fn the_kube_gateway_role_is_granted_by_a_project_admin_and_audited() {
    let w = world().await;
    let s = &w.shared.store;
    let org = s.user_by_name("admin").await.unwrap().unwrap().org_id;
    let web = s.project_by_name(&org, "web").await.unwrap().unwrap();
    let edge = s.edge_by_name(&web.id, "eu-1").await.unwrap().unwrap();
    s.insert_enrollment_token(&common::token_row("tok", &edge.id, 3, i64::MAX))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &edge.id, "gw-1"), 1)
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n2", "tok", &edge.id, "pending-1"), 1)
        .await
        .unwrap();
    s.set_node_state("n1", NodeState::Approved, 2)
        .await
        .unwrap();
    // Its agent says it can serve: that alone makes no gateway.
    s.set_kube_gateway_capable("n1", true).await.unwrap();
    s.set_kube_gateway_capable("n2", true).await.unwrap();
    let (st, v) = w
        .get("/api/v1/projects/web/edges/eu-1/nodes/gw-1", &w.member)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["kube_gateway"],
        json!({"granted": false, "capable": true}),
        "{v}"
    );
    assert!(s.kube_gateways(&edge.id).await.unwrap().is_empty());

    let uri = |node: &str| format!("/api/v1/projects/web/edges/eu-1/nodes/{node}/kube-gateway");
    // A project member may neither grant nor take back; nothing changes.
    for method in [Method::PUT, Method::DELETE] {
        let (st, v) = w.call(method, &uri("gw-1"), Some(&w.member), None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
        assert_error(&v, "forbidden", "project_member may not");
    }
    // Someone without a role in the project does not see it; another org's admin neither.
    let (st, _) = w
        .call(Method::PUT, &uri("gw-1"), Some(&w.outsider), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = w
        .call(Method::PUT, &uri("gw-1"), Some(&w.other_org_admin), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // No token: 401.
    let (st, _) = w.call(Method::PUT, &uri("gw-1"), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s.kube_gateways(&edge.id).await.unwrap().is_empty());
    // An unknown node, an unknown edge: 404.
    for method in [Method::PUT, Method::DELETE] {
        let (st, v) = w
            .call(method.clone(), &uri("ghost"), Some(&w.padmin), None)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
        assert_error(&v, "not_found", "node \"ghost\" not found");
        let (st, v) = w
            .call(
                method,
                "/api/v1/projects/web/edges/nowhere/nodes/gw-1/kube-gateway",
                Some(&w.padmin),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    }
    // A node not let in yet is refused: approve it first.
    let (st, v) = w
        .call(Method::PUT, &uri("pending-1"), Some(&w.padmin), None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "conflict", "approve it");
    assert!(!s.node("n2").await.unwrap().unwrap().kube_gateway_granted);

    // The project admin grants: shown on the node, and the node is a gateway.
    let (st, v) = w
        .call(Method::PUT, &uri("gw-1"), Some(&w.padmin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["hostname"], "gw-1");
    assert_eq!(v["kube_gateway"], json!({"granted": true, "capable": true}));
    let gateways = s.kube_gateways(&edge.id).await.unwrap();
    assert_eq!(
        gateways.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    // Granting again changes nothing.
    let (st, v) = w
        .call(Method::PUT, &uri("gw-1"), Some(&w.padmin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, listed) = w
        .get("/api/v1/projects/web/edges/eu-1/nodes", &w.member)
        .await;
    let shown = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == "gw-1")
        .unwrap();
    assert_eq!(shown["kube_gateway"]["granted"], true, "{listed}");

    // Taking it back ends what the node serves at once (here a request
    // registered as the Kubernetes door registers it), and nothing else. The
    // REST door never calls the Kubernetes door: the change reaches it on the
    // core's access bus.
    let kube = postern_bastion::kube::Door::new(w.shared.clone(), 1 << 20);
    let (_held, on_gw) = kube.live.register("u", "t", &web.id, "n1", true).unwrap();
    let (_other, elsewhere) = kube.live.register("u", "t", &web.id, "n9", true).unwrap();
    let (st, v) = w
        .call(Method::DELETE, &uri("gw-1"), Some(&w.padmin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["kube_gateway"],
        json!({"granted": false, "capable": true})
    );
    assert!(on_gw.gateway.is_cancelled());
    assert!(!elsewhere.gateway.is_cancelled() && !on_gw.access.is_cancelled());
    assert!(s.kube_gateways(&edge.id).await.unwrap().is_empty());
    // Taking back what is not held is no error.
    let (st, _) = w
        .call(Method::DELETE, &uri("pending-1"), Some(&w.admin), None)
        .await;
    assert_eq!(st, StatusCode::OK);

    // Audited: the refusals, and each change with the node and what it did.
    let (_, v) = w.get("/api/v1/audit?limit=100", &w.admin).await;
    let entries = v["entries"].as_array().unwrap();
    let put = "api PUT /api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway";
    let delete = "api DELETE /api/v1/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway";
    let find = |action: &str, actor: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["actor"] == actor && e["outcome"] == outcome)
            .collect::<Vec<_>>()
    };
    let denied = find(put, "mem", "denied");
    assert!(denied.iter().any(|e| e["detail"]["status"] == 403), "{v}");
    assert!(!find(delete, "mem", "denied").is_empty(), "{v}");
    assert!(!find(put, "pat", "not_found").is_empty(), "{v}");
    assert!(!find(put, "pat", "rejected").is_empty(), "the 409: {v}");
    let granted = find(put, "pat", "ok");
    assert_eq!(granted.len(), 2, "{v}");
    assert!(
        granted.iter().all(|e| e["project"] == "web"
            && e["targets"] == json!(["gw-1"])
            && e["detail"]["detail"]["kube_gateway"] == "granted"
            && e["detail"]["detail"]["node_id"] == "n1"),
        "{v}"
    );
    assert_eq!(
        granted
            .iter()
            .filter(|e| e["detail"]["detail"]["changed"] == true)
            .count(),
        1,
        "{v}"
    );
    // Written before it acted, as every admin change is.
    assert!(!find(put, "pat", "requested").is_empty(), "{v}");
    let revoked = find(delete, "pat", "ok");
    assert_eq!(revoked.len(), 1, "{v}");
    assert_eq!(revoked[0]["detail"]["detail"]["kube_gateway"], "revoked");
    assert_eq!(revoked[0]["detail"]["detail"]["kube_requests_cut"], 1);
    assert_eq!(revoked[0]["targets"], json!(["gw-1"]));

    // Disabling a gateway takes the role back; enabling the node again does
    // not give it back (review 4): a project admin grants it again.
    let (st, v) = w
        .call(Method::PUT, &uri("gw-1"), Some(&w.padmin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let node = "/api/v1/projects/web/edges/eu-1/nodes/gw-1";
    let (st, v) = w
        .call(
            Method::POST,
            &format!("{node}/disable"),
            Some(&w.padmin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["kube_gateway"]["granted"], false, "{v}");
    let (st, v) = w
        .call(
            Method::POST,
            &format!("{node}/enable"),
            Some(&w.padmin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["kube_gateway"]["granted"], false, "{v}");
    assert!(s.kube_gateways(&edge.id).await.unwrap().is_empty());
    let (_, v) = w.get("/api/v1/audit?limit=100", &w.admin).await;
    assert!(
        v["entries"].as_array().unwrap().iter().any(|e| e["action"]
            == "api POST /api/v1/projects/{project}/edges/{edge}/nodes/{node}/disable"
            && e["outcome"] == "ok"
            && e["detail"]["detail"]["kube_gateway_revoked"] == true),
        "{v}"
    );
}

/// An execution of `project`/`edge` stored as it is, with `nodes` nodes
/// already settled (unreachable, each with its event); finished when
/// `finished`, else still running.
async fn stored_execution(
    shared: &Shared,
    org: &str,
    (project, edge): (&str, &str),
    id: &str,
    nodes: usize,
    finished: bool,
) {
    use postern_api::cmdexec::NodeExecStatus;
    use postern_bastion::store::{ExecutionRow, ResultRow};
    let s = &shared.store;
    let p = s.project_by_name(org, project).await.unwrap().unwrap();
    let e = s.edge_by_name(&p.id, edge).await.unwrap().unwrap();
    let x = ExecutionRow {
        id: id.into(),
        org_id: org.into(),
        project_id: p.id,
        project_name: project.into(),
        edge_id: e.id,
        edge_name: edge.into(),
        username: "admin".into(),
        source_ip: None,
        command: "true".into(),
        content_type: "string".into(),
        target_type: "cluster".into(),
        target: None,
        timeout_secs: 60,
        created_at: 1,
        finished_at: finished.then_some(2),
        max_concurrency: None,
        max_errors: None,
        selector: None,
        cancel_requested_at: None,
    };
    let results: Vec<ResultRow> = (0..nodes)
        .map(|i| {
            let mut r = ResultRow::new(
                id,
                &format!("n{i}"),
                &format!("node-{i}"),
                NodeExecStatus::Unreachable,
            );
            r.finished_at = Some(2);
            r
        })
        .collect();
    s.insert_execution(&x, &results).await.unwrap();
}

/// An org holds at most its share of the bastion's live streams: one tenant
/// filling it (users are free to create) leaves another tenant its streams.
/// A reader who loses access is cut off on a timer, although the client
/// reads nothing (on the code as reviewed, the check ran only when the body
/// was polled, so an unread stream kept its place).
#[tokio::test]
async fn an_org_holds_its_share_of_live_streams_and_lost_access_ends_them_unread() {
    let w = world_with(postern_bastion::http::Settings {
        exec_streams_per_org: 4,
        ..Default::default()
    })
    .await;
    let s = &w.shared.store;
    let acme = s.org_by_name("acme").await.unwrap().unwrap().id;
    let globex = s.org_by_name("globex").await.unwrap().unwrap().id;
    stored_execution(&w.shared, &acme, ("web", "eu-1"), "ex-acme", 0, false).await;
    stored_execution(&w.shared, &globex, ("secret", "hq"), "ex-globex", 0, false).await;
    let acme_events = "/cmdexec/v1/projects/web/edges/eu-1/execution/ex-acme/events";
    let globex_events = "/cmdexec/v1/projects/secret/edges/hq/execution/ex-globex/events";

    // Four streams of org acme (three users), none of them read: its share.
    let mut open = Vec::new();
    for token in [&w.admin, &w.admin, &w.padmin, &w.member] {
        let resp = w
            .send(Method::GET, acme_events, Some(token.as_str()), None)
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        open.push(resp);
    }
    let (st, v) = w.get(acme_events, &w.padmin).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_error(&v, "too_many_requests", "your organization");
    // Another tenant is not shut out.
    let theirs = w
        .send(Method::GET, globex_events, Some(&w.other_org_admin), None)
        .await;
    assert_eq!(theirs.status(), StatusCode::OK);

    // The member loses access: their unread stream is cut at once (the REST
    // door hears it on the access bus; the 5 s recheck is the fallback) and
    // gives its place back.
    let (st, v) = w
        .call(Method::DELETE, "/api/v1/users/mem", Some(&w.admin), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let t0 = std::time::Instant::now();
    let freed = loop {
        let resp = w
            .send(Method::GET, acme_events, Some(&w.padmin), None)
            .await;
        if resp.status() == StatusCode::OK {
            break resp;
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "the revoked reader's stream still holds its place"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    drop((open, theirs, freed));
}

/// A stream whose client takes no events is ended after the stall deadline
/// and gives its place back (on the code as reviewed, eight such streams of a
/// finished execution still refused a ninth 30 s later); a client that reads
/// gets every event.
#[tokio::test]
async fn a_stream_whose_client_reads_nothing_is_dropped_after_the_stall_deadline() {
    let w = world_with(postern_bastion::http::Settings {
        exec_stream_stall: std::time::Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let acme = w
        .shared
        .store
        .org_by_name("acme")
        .await
        .unwrap()
        .unwrap()
        .id;
    // 40 nodes' events and the end: more than a stream queues for its client.
    stored_execution(&w.shared, &acme, ("web", "eu-1"), "ex-many", 40, true).await;
    let events = "/cmdexec/v1/projects/web/edges/eu-1/execution/ex-many/events";
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let resp = w.send(Method::GET, events, Some(&w.admin), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        stalled.push(resp);
    }
    let (st, v) = w.get(events, &w.admin).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let t0 = std::time::Instant::now();
    let reader = loop {
        let resp = w.send(Method::GET, events, Some(&w.admin), None).await;
        if resp.status() == StatusCode::OK {
            break resp;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(8),
            "streams that read nothing still hold their places"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // This one reads: it gets every event, to the end.
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.into_body().collect(),
    )
    .await
    .unwrap()
    .unwrap()
    .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("event: node_finished").count(), 40, "{text}");
    assert!(text.contains("event: execution_finished"), "{text}");
    drop(stalled);
}

/// The review's double run: a submit waits (for the audit chain) past its
/// Idempotency-Key claim's lease, a retry with the key takes the claim over,
/// and then the first submit reaches the store. It stores and runs nothing,
/// says why in the audit log, and the retry's execution is the one.
#[tokio::test]
async fn a_submit_that_lost_its_idempotency_claim_runs_nothing() {
    use postern_api::cmdexec::{ContentType, TargetType};
    use postern_bastion::cmdexec::{Submission, SubmitError};
    use postern_bastion::store::{CLAIM_LEASE_MS, IdempotencyClaim, IdempotencyKey};
    let w = world().await;
    let s = &w.shared.store;
    let org = s.org_by_name("acme").await.unwrap().unwrap().id;
    let project = s.project_by_name(&org, "web").await.unwrap().unwrap();
    let edge = s.edge_by_name(&project.id, "eu-1").await.unwrap().unwrap();
    s.insert_enrollment_token(&common::token_row("tok", &edge.id, 1, i64::MAX))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &edge.id, "node-1"), 1)
        .await
        .unwrap();
    let nodes = s.list_nodes(&edge.id).await.unwrap();
    let key = IdempotencyKey {
        org_id: &org,
        username: "admin",
        key: "k-slow",
    };
    let day = 24 * 3600 * 1000;
    assert_eq!(
        s.claim_idempotency_key(&key, "h", "x-first", 1_000, day, CLAIM_LEASE_MS)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );
    // The first request went quiet past its lease; a retry takes the key.
    assert!(
        s.renew_idempotency_claim(&key, "x-first", -1)
            .await
            .unwrap()
    );
    assert_eq!(
        s.claim_idempotency_key(&key, "h", "x-retry", 2_000, day, CLAIM_LEASE_MS)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );

    let first = Submission {
        org_id: org.clone(),
        project,
        edge,
        username: "admin".into(),
        source_ip: None,
        command: "echo once".into(),
        content_type: ContentType::String,
        target_type: TargetType::Cluster,
        target: None,
        timeout_secs: 60,
        nodes,
        selector: None,
        max_concurrency: None,
        max_errors: None,
        exec_id: Some("x-first".into()),
        idempotency_key: Some("k-slow".into()),
    };
    let lost = w.shared.cmdexec.submit(first.clone()).await;
    assert!(
        matches!(lost, Err(SubmitError::ClaimLost)),
        "{:?}",
        lost.as_ref().err()
    );
    assert!(s.execution("x-first").await.unwrap().is_none());
    let (_, v) = w.get("/api/v1/audit?limit=20", &w.admin).await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| { e["action"] == "cmdexec.execute" && e["outcome"] == "abandoned" }),
        "{v}"
    );

    let retry = Submission {
        exec_id: Some("x-retry".into()),
        ..first
    };
    let r = w.shared.cmdexec.submit(retry).await.unwrap();
    assert_eq!(r.exec_id, "x-retry");
    assert!(s.execution("x-retry").await.unwrap().is_some());
    // Bound to its execution: held for good.
    assert_eq!(
        s.claim_idempotency_key(&key, "h", "x-third", 3_000, day, CLAIM_LEASE_MS)
            .await
            .unwrap(),
        IdempotencyClaim::Held {
            request_sha256: "h".into(),
            exec_id: "x-retry".into()
        }
    );
}

/// The web/eu-1 edge of the world, for tests that enroll nodes in the store.
async fn web_edge(w: &World) -> String {
    let s = &w.shared.store;
    let org = s.user_by_name("admin").await.unwrap().unwrap().org_id;
    let project = s.project_by_name(&org, "web").await.unwrap().unwrap();
    s.edge_by_name(&project.id, "eu-1")
        .await
        .unwrap()
        .unwrap()
        .id
}

fn labels(pairs: &[(&str, &str)]) -> postern_api::labels::Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The agent of node `id` connects and reports `pairs`, as the channel does at
/// each connection: the node is marked provisioned, then its labels recorded.
async fn agent_connects(w: &World, id: &str, pairs: &[(&str, &str)]) -> LabelReport {
    let s = &w.shared.store;
    s.mark_provisioned(id).await.unwrap();
    s.report_agent_labels(id, &labels(pairs)).await.unwrap()
}

const NODE_N4: &str = "/api/v1/projects/web/edges/eu-1/nodes/n4";

/// The review's three ways for a node to move itself into a selector, each
/// closed: labels an agent reports become the node's only as an approval
/// names them, whatever the node's state. (a) The agent is away when its
/// pending node is approved: its next connection's labels wait. (b) Disable,
/// then enable: the next connection's labels wait. (c) The labels change
/// between what the approver saw and the approval: refused, nothing changes.
#[tokio::test]
async fn agent_labels_become_the_nodes_only_as_an_approval_names_them() {
    let w = world().await;
    let s = &w.shared.store;
    let edge = web_edge(&w).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, i64::MAX))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n4", "tok", &edge, "n4"), 1)
        .await
        .unwrap();
    let approve = format!("{NODE_N4}/approve");

    // Pending: what the agent reports waits, and the approver sees it.
    assert_eq!(
        agent_connects(&w, "n4", &[("role", "web")]).await,
        LabelReport::Held
    );
    let (_, n) = w.get(NODE_N4, &w.padmin).await;
    assert_eq!(n["state"], "pending", "{n}");
    assert_eq!(n["labels"], json!({}), "{n}");
    assert_eq!(n["agent_labels_pending"], json!({"role": "web"}), "{n}");

    // (a) The agent steps away; the approval names what the approver saw.
    let (st, n) = w
        .post(&approve, &w.padmin, json!({"labels": {"role": "web"}}))
        .await;
    assert_eq!(st, StatusCode::OK, "{n}");
    assert_eq!(n["state"], "approved", "{n}");
    assert_eq!(n["labels"], json!({"role": "web"}), "{n}");
    assert!(n["agent_labels_pending"].is_null(), "{n}");
    // It comes back with other labels: they wait, though it was `approved`.
    assert_eq!(
        agent_connects(&w, "n4", &[("role", "db")]).await,
        LabelReport::Held
    );
    let (_, n) = w.get(NODE_N4, &w.padmin).await;
    assert_eq!(n["state"], "provisioned", "{n}");
    assert_eq!(
        n["labels"],
        json!({"role": "web"}),
        "(a) taken unreviewed: {n}"
    );
    assert_eq!(n["agent_labels_pending"], json!({"role": "db"}), "{n}");
    // Reporting the same again records nothing new; back to the approved
    // labels drops the change.
    assert_eq!(
        agent_connects(&w, "n4", &[("role", "db")]).await,
        LabelReport::Unchanged
    );
    assert_eq!(
        agent_connects(&w, "n4", &[("role", "web")]).await,
        LabelReport::Withdrawn
    );
    assert!(w.get(NODE_N4, &w.padmin).await.1["agent_labels_pending"].is_null());

    // (b) Disabled, then enabled: `approved` again, and still nothing is
    // taken from the next connection.
    assert_eq!(
        agent_connects(&w, "n4", &[("role", "db")]).await,
        LabelReport::Held
    );
    for step in ["disable", "enable"] {
        let (st, n) = w
            .call(
                Method::POST,
                &format!("{NODE_N4}/{step}"),
                Some(&w.padmin),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{step}: {n}");
    }
    assert_eq!(w.get(NODE_N4, &w.padmin).await.1["state"], "approved");
    assert_eq!(
        agent_connects(&w, "n4", &[("role", "db"), ("tier", "payments")]).await,
        LabelReport::Held
    );
    let (_, n) = w.get(NODE_N4, &w.padmin).await;
    assert_eq!(
        n["labels"],
        json!({"role": "web"}),
        "(b) taken unreviewed: {n}"
    );
    assert_eq!(
        n["agent_labels_pending"],
        json!({"role": "db", "tier": "payments"}),
        "{n}"
    );

    // (c) The approver saw one change; the agent swapped it before the click.
    let seen = n["agent_labels_pending"].clone();
    agent_connects(&w, "n4", &[("role", "db"), ("tier", "gold")]).await;
    let (st, v) = w.post(&approve, &w.padmin, json!({ "labels": seen })).await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "(c) approved what nobody saw: {v}"
    );
    assert_error(&v, "conflict", "role=db,tier=gold");
    assert_error(&v, "conflict", "nothing was changed");
    let (_, n) = w.get(NODE_N4, &w.padmin).await;
    assert_eq!(n["labels"], json!({"role": "web"}), "{n}");
    assert_eq!(
        n["agent_labels_pending"],
        json!({"role": "db", "tier": "gold"}),
        "{n}"
    );
    // Approving without labels approves none of them.
    let (st, n) = w.post(&approve, &w.padmin, json!({})).await;
    assert_eq!(st, StatusCode::OK, "{n}");
    assert_eq!(n["labels"], json!({"role": "web"}), "{n}");
    let (st, n) = w.call(Method::POST, &approve, Some(&w.padmin), None).await;
    assert_eq!(st, StatusCode::OK, "no body at all is {{}}: {n}");
    assert_eq!(n["labels"], json!({"role": "web"}), "{n}");
    // What it reports now, named: taken.
    let (st, n) = w
        .post(
            &approve,
            &w.padmin,
            json!({"labels": {"role": "db", "tier": "gold"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{n}");
    assert_eq!(n["labels"], json!({"role": "db", "tier": "gold"}), "{n}");
    assert!(n["agent_labels_pending"].is_null(), "{n}");
    // The approval is audited with the labels it named.
    let (_, page) = w
        .get(
            "/api/v1/audit?limit=100&action=api%20POST%20%2Fapi%2Fv1%2Fprojects%2F%7Bproject%7D%2Fedges%2F%7Bedge%7D%2Fnodes%2F%7Bnode%7D%2Fapprove",
            &w.admin,
        )
        .await;
    assert!(
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"].to_string().contains("gold")),
        "{page}"
    );

    // A pending node approved without labels: approved, its labels still wait.
    s.enroll_node(&common::new_node("n5", "tok", &edge, "n5"), 1)
        .await
        .unwrap();
    agent_connects(&w, "n5", &[("role", "web")]).await;
    let (st, n) = w
        .call(
            Method::POST,
            "/api/v1/projects/web/edges/eu-1/nodes/n5/approve",
            Some(&w.padmin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{n}");
    assert_eq!(n["state"], "approved", "{n}");
    assert_eq!(n["labels"], json!({}), "{n}");
    assert_eq!(n["agent_labels_pending"], json!({"role": "web"}), "{n}");
}

/// An auto-approving token is the approval of its node's first labels report,
/// and of nothing after it.
#[tokio::test]
async fn an_auto_approving_token_covers_the_first_labels_report_only() {
    let w = world().await;
    let s = &w.shared.store;
    let edge = web_edge(&w).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, i64::MAX))
        .await
        .unwrap();
    let auto = NewNode {
        auto_approve: true,
        ..common::new_node("n6", "tok", &edge, "n6")
    };
    s.enroll_node(&auto, 1).await.unwrap();
    assert_eq!(
        agent_connects(&w, "n6", &[("role", "web")]).await,
        LabelReport::Taken
    );
    assert_eq!(
        agent_connects(&w, "n6", &[("role", "db")]).await,
        LabelReport::Held
    );
    let (_, n) = w
        .get("/api/v1/projects/web/edges/eu-1/nodes/n6", &w.padmin)
        .await;
    assert_eq!(n["labels"], json!({"role": "web"}), "{n}");
    assert_eq!(n["agent_labels_pending"], json!({"role": "db"}), "{n}");
}

/// What the approve call may carry, and what it refuses.
#[tokio::test]
async fn approve_bodies_are_checked_and_change_nothing_when_refused() {
    let w = world().await;
    let s = &w.shared.store;
    let edge = web_edge(&w).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, i64::MAX))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n4", "tok", &edge, "n4"), 1)
        .await
        .unwrap();
    let approve = format!("{NODE_N4}/approve");
    for (body, code) in [
        (json!({"labels": {"has space": "x"}}), "bad_request"),
        (json!({"labels": {}, "extra": 1}), "bad_request"),
        (json!({"labels": ["role"]}), "bad_request"),
    ] {
        let (st, v) = w.post(&approve, &w.padmin, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    // Bytes that are not said to be JSON are not read as JSON.
    let resp = w
        .app
        .clone()
        .oneshot(
            Request::post(approve.as_str())
                .header("authorization", format!("Bearer {}", w.padmin))
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A member may not approve.
    let (st, _) = w.post(&approve, &w.member, json!({})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (_, n) = w.get(NODE_N4, &w.padmin).await;
    assert_eq!(n["state"], "pending", "{n}");
}

/// A node cannot enroll under a name that reads as an IP address: the bastion
/// refuses it itself (an agent older than this check, or no agent at all,
/// could send one), before the token is even looked at.
#[tokio::test]
async fn enrollment_refuses_names_that_read_as_addresses() {
    let w = world().await;
    for name in ["10.20.30.40", "1234", "127.1", "0x7f.0.0.1"] {
        let req = postern_api::agent::EnrollRequest {
            protocol: postern_api::PROTOCOL_VERSION,
            token: "pet_x_y".into(),
            hostname: name.into(),
            csr_pem: String::new(),
            agent_version: "0.1.0".into(),
        };
        match postern_bastion::agent_port::enroll(&w.shared, &req, None).await {
            Err(postern_bastion::agent_port::EnrollError::BadRequest(m)) => {
                assert!(m.contains("IP address"), "{name}: {m}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(w.shared.store.count_nodes().await.unwrap(), 0);
}
