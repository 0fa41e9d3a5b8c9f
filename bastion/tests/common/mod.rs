//! Test support: stores on both backends, and an in-process bastion state.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use postern_bastion::pki::Pki;
use postern_bastion::secrets::MasterKey;
use postern_bastion::state::{Settings, Shared};
use postern_bastion::store::{EnrollmentTokenRow, NewNode, Store};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL server every test machine and CI has (trust auth, database `test`).
pub fn pg_base_url() -> String {
    std::env::var("POSTERN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Keeps a test's store (and its temporary directory or schema) alive.
pub struct TestStore {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestStore {
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some(schema) = self.schema {
            let admin = Store::open_admin(&pg_base_url()).await;
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    TestStore {
        store,
        _dir: Some(dir),
        schema: None,
    }
}

/// A fresh schema per test, so tests run in parallel on one database. Fails (not
/// skips) when PostgreSQL is unreachable: CI must run these.
pub async fn postgres() -> TestStore {
    let base = pg_base_url();
    let schema = format!("t_{}", uuid_like());
    let admin = Store::open_admin(&base).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for these tests: {e}"));
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = Store::open(&url).await.unwrap();
    TestStore {
        store,
        _dir: None,
        schema: Some(schema),
    }
}

fn uuid_like() -> String {
    hex::encode(postern_bastion::secrets::random_bytes::<8>().unwrap())
}

/// A bastion's shared state over a store, without listeners: for `Router::oneshot`.
pub async fn shared(store: Store) -> Arc<Shared> {
    shared_with(store, Settings::default()).await
}

/// [`shared`] with these settings.
pub async fn shared_with(store: Store, settings: Settings) -> Arc<Shared> {
    let key = MasterKey::from_hex(
        &hex::encode(postern_bastion::secrets::random_bytes::<32>().unwrap()),
        "test",
    )
    .unwrap();
    let pki = Pki::load_or_create(&store, &key, Duration::from_secs(3600))
        .await
        .unwrap();
    Shared::new(store, pki, settings, CancellationToken::new())
}

/// An enrollment token row for `edge`, not auto-approving.
pub fn token_row(id: &str, edge: &str, max_uses: i64, expires_at: i64) -> EnrollmentTokenRow {
    EnrollmentTokenRow {
        id: id.into(),
        edge_id: edge.into(),
        secret_hash: "h".into(),
        created_by: None,
        created_at: 0,
        expires_at,
        max_uses,
        uses: 0,
        auto_approve: false,
        revoked_at: None,
    }
}

/// A node enrolled with `token` into `edge`, not auto-approved.
pub fn new_node<'a>(id: &'a str, token: &'a str, edge: &'a str, host: &'a str) -> NewNode<'a> {
    NewNode {
        id,
        token_id: token,
        edge_id: edge,
        hostname: host,
        agent_version: "0.1.0",
        auto_approve: false,
        cert_serial: "01",
        cert_expires_at: 99,
    }
}

/// Runs a store test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let t = $crate::common::sqlite().await;
                    super::$name(&t.store).await;
                    t.cleanup().await;
                }
                #[tokio::test]
                async fn postgres() {
                    let t = $crate::common::postgres().await;
                    super::$name(&t.store).await;
                    t.cleanup().await;
                }
            }
        )*
    };
}
