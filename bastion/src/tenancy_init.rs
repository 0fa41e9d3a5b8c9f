//! `postern-bastion init`: the operator's first step with `serve`. Creates an org
//! and its first org admin (if missing) and mints an API token for that admin.

use postern_api::admin::{Role, TokenCreated};
use postern_api::validate;

use crate::clock::now_ms;
use crate::http::ApiError;
use crate::store::{BindingRow, Store};

pub async fn init(
    store: &Store,
    org: &str,
    admin: &str,
    ttl_seconds: i64,
) -> Result<TokenCreated, ApiError> {
    validate::name("org", org)?;
    validate::name("user", admin)?;
    let now = now_ms();
    let org_row = match store.org_by_name(org).await? {
        Some(o) => o,
        None => store.create_org(org, now).await?,
    };
    let user = match store.user_by_name(admin).await? {
        Some(u) if u.org_id == org_row.id => u,
        Some(_) => {
            return Err(ApiError::Conflict(format!(
                "user {admin:?} exists in another org"
            )));
        }
        None => store.create_user(&org_row.id, admin, now).await?,
    };
    store
        .set_binding(
            &user.id,
            &BindingRow {
                project_id: None,
                role: Role::OrgAdmin,
                logins: vec![],
                forward_to: vec![],
                kube_groups: None,
            },
            now,
        )
        .await?;
    let token =
        crate::http::issue_api_token(store, &user, Some("init".into()), ttl_seconds).await?;
    // The log's first entry: who was made admin, and when. It also means a
    // bastion's audit log is never empty, so `audit verify` on an empty store
    // knows it was pointed at the wrong one.
    let ev = crate::audit::Event::new("org.init", "ok")
        .org(&org_row.id)
        .actor("operator (postern-bastion init)")
        .target(admin)
        .detail(serde_json::json!({ "org": org, "admin": admin, "token_id": token.id }));
    crate::audit::Audit::new(store.clone())
        .record(ev)
        .await
        .map_err(ApiError::audit_refused)?;
    Ok(token)
}
