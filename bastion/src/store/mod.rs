//! The store: sqlx over SQLite (a file in the data directory, WAL) by default, or
//! PostgreSQL when given a `postgres://` URL.
//!
//! Queries are runtime-checked and written once for both backends through sqlx's
//! `Any` driver; the same tests run against both. Timestamps are unix milliseconds.

mod console;
mod executions;
mod identity;
mod kube_keys;
pub(crate) mod many_rows;
mod nodes;
pub(crate) mod pacing;
mod recordings;
mod replicas;
mod ssh_keys;
mod sso;
mod tenancy;
mod tokens;

use std::path::Path;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use thiserror::Error;

pub use console::ConsoleRow;
pub use executions::{
    CLAIM_LEASE_MS, ExecutionPage, ExecutionRow, HistoryRow, IdempotencyClaim, IdempotencyKey,
    ResultRow, ResultUpdate, StoredEvent,
};
pub use identity::{
    DEFAULT_SESSION_SECONDS, InvitationRow, LocalCredentials, MAX_SESSION_SECONDS, OrgPolicy,
    SessionRow,
};
pub use kube_keys::KubeKeysChange;
pub use nodes::{Approval, EnrollOutcome, KubeGatewayRow, LabelReport, NewNode, NodeRow};
pub use recordings::{ChunkRow, RecordingFilter, RecordingRow};
pub use replicas::{PresenceRow, ReplicaEvent, ReplicaRow};
pub use ssh_keys::{NewSshKey, NodePlace, SshKeyRow};
pub use sso::{GroupMappingRow, OidcProviderRow, PendingLogin, stronger};
pub use tenancy::{BindingRow, EdgeRow, OrgRow, ProjectRow, UserRow};
pub use tokens::{ApiTokenRow, EnrollmentTokenRow};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "cannot reach the database at {url}: {detail} (is it running, and is --database-url right?)"
    )]
    Unreachable { url: String, detail: String },
    #[error(
        "the database named in {url} does not exist: create it once (for example \
         `sudo -u postgres createdb -O postern postern`), or fix --database-url / POSTERN_DATABASE_URL"
    )]
    NoDatabase { url: String },
}

impl StoreError {
    /// Maps unique-constraint violations to `Conflict`, so callers can answer 409
    /// instead of 500 without parsing backend messages.
    fn conflict_or(e: sqlx::Error, what: impl Into<String>) -> StoreError {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict(what.into());
        }
        StoreError::Db(e)
    }

    /// True when the database is unreachable, shutting down or too busy: the same
    /// request may well succeed in a moment, so callers answer "retry", not "bug".
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => {
                let Some(code) = db.code() else {
                    return false;
                };
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // SQLite's extended codes carry the primary one in the low byte:
                    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), after the busy timeout.
                    return code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
                }
                // PostgreSQL: connection failures (class 08), too many connections,
                // shutting down (57P…), serialization failure, deadlock, and a
                // lock not granted within `lock_timeout` (busy, as SQLite's).
                code.starts_with("08")
                    || code.starts_with("57P")
                    || matches!(&*code, "53300" | "40001" | "40P01" | "55P03")
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run. On SQLite, one connection of its own:
    /// SQLite takes one writer at a time anyway, and a connection that alone
    /// writes keeps its page cache across transactions (a write on another
    /// connection empties it), while writers queue here instead of polling
    /// the file lock under the busy timeout. On PostgreSQL, `pool` itself.
    writes: AnyPool,
    backend: Backend,
    /// Kept for connections outside the pool (LISTEN needs its own session).
    url: std::sync::Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Opens the SQLite file `postern.db` in `data_dir`, creating it if missing.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Store> {
        let path = data_dir.join("postern.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Store::open(&url).await
    }

    /// Opens a store by URL (`sqlite://…` or `postgres://…`) and applies migrations.
    pub async fn open(url: &str) -> Result<Store> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let max = match backend {
            // One writer at a time is all SQLite allows; a few readers help listings.
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let options = |max: u32| {
            let mut options = AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(10));
            if backend == Backend::Sqlite {
                // A write on one pooled connection empties the page cache of
                // the others (WAL), which then read every page again with a
                // system call each: mapped, those reads are memory reads
                // (measured on a 10,000-node fan-out, where they were a third
                // of SQLite's time). Durability is untouched (synchronous
                // stays FULL).
                options = options.after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(&mut *conn, "PRAGMA mmap_size = 268435456").await?;
                        sqlx::Executor::execute(&mut *conn, "PRAGMA cache_size = -16384").await?;
                        Ok(())
                    })
                });
            }
            options
        };
        let unreachable = |e: sqlx::Error| match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                StoreError::Unreachable {
                    url: redact(url),
                    detail: e.to_string(),
                }
            }
            // invalid_catalog_name: PostgreSQL's "database … does not exist".
            sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
                StoreError::NoDatabase { url: redact(url) }
            }
            e => StoreError::Db(e),
        };
        let pool = options(max).connect(url).await.map_err(unreachable)?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed during writes; the setting persists in the file.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let writes = match backend {
            // Kept open and warm: no idle close, no ping before each use.
            Backend::Sqlite => options(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false)
                .connect(url)
                .await
                .map_err(unreachable)?,
            Backend::Postgres => pool.clone(),
        };
        Ok(Store {
            pool,
            writes,
            backend,
            url: url.into(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL the store was opened with (it may hold a password: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Opens a transaction that will write. On SQLite it takes the write lock at
    /// BEGIN (`BEGIN IMMEDIATE`), so it waits its turn under the busy timeout; a
    /// deferred transaction that first reads and then writes is refused outright
    /// with "database is locked" when another writer got there first.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.writes.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writes.begin().await?,
        })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }

    // --- the CA row ---------------------------------------------------------

    pub async fn load_ca(&self) -> Result<Option<(String, String)>> {
        self.load_ca_row("main").await
    }

    /// One CA row (`main`: the X.509 CA; others name theirs).
    pub async fn load_ca_row(&self, id: &str) -> Result<Option<(String, String)>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT cert_pem, key_sealed FROM ca WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row)
    }

    /// Inserts the CA unless one exists; returns the one that is stored, so two
    /// replicas starting together agree on a single CA.
    pub async fn insert_ca(
        &self,
        cert_pem: &str,
        key_sealed: &str,
        now: i64,
    ) -> Result<(String, String)> {
        self.insert_ca_row("main", cert_pem, key_sealed, now).await
    }

    /// [`Store::insert_ca`] for the CA row `id`.
    pub async fn insert_ca_row(
        &self,
        id: &str,
        cert_pem: &str,
        key_sealed: &str,
        now: i64,
    ) -> Result<(String, String)> {
        let res = sqlx::query(
            "INSERT INTO ca (id, cert_pem, key_sealed, created_at) VALUES ($4, $1, $2, $3)",
        )
        .bind(cert_pem)
        .bind(key_sealed)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => {}
            Err(e) => match StoreError::conflict_or(e, "ca") {
                StoreError::Conflict(_) => {}
                other => return Err(other),
            },
        }
        self.load_ca_row(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("CA row vanished after insert".into()))
    }
}

/// A database URL fit for messages: any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some(pair) => pair,
        None => return url.to_string(),
    };
    let user = auth.split_once(':').map_or(auth, |(u, _)| u);
    let shown = if auth.contains(':') {
        format!("{user}:***")
    } else {
        user.to_string()
    };
    let host = host.split_once('?').map_or(host, |(h, _)| h);
    format!("{scheme}://{shown}@{host}")
}

/// `$from,$from+1,…`: `n` numbered placeholders for an `IN (…)` list.
fn placeholders(from: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("${}", from + i))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Store {
    /// A bare pool without migrations, for operator tasks such as creating schemas.
    pub async fn open_admin(url: &str) -> AnyPool {
        install_default_drivers();
        #[allow(clippy::expect_used)]
        AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .expect("cannot connect to the database")
    }
}
