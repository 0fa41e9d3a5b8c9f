//! `postern-auth-bench`: what authenticating one REST or Kubernetes request
//! costs the bastion, a login session's bearer beside an API token's, in one
//! run: the bastion's own check (`access::authn::bearer`) in process, against
//! SQLite in a temporary directory or PostgreSQL (`--database-url`). Reports
//! the CPU time of this process per check (it runs the store too) and the
//! wall time. Build in release and run:
//! `cargo build --release -p postern-tests --bins && target/release/postern-auth-bench`.

use std::time::Instant;

use clap::Parser;
use postern_api::admin::Role;
use postern_bastion::access::authn;
use postern_bastion::identity::sessions;
use postern_bastion::store::{BindingRow, Store};
use postern_tests::swarm::cpu_secs;

#[derive(Parser)]
#[command(about = "CPU per bearer check: a login session against an API token")]
struct Args {
    /// Checks of each kind.
    #[arg(long, default_value_t = 20_000)]
    checks: usize,
    /// PostgreSQL instead of SQLite.
    #[arg(long)]
    database_url: Option<String>,
}

async fn measure(store: &Store, header: &str, n: usize) -> (f64, f64) {
    let source = Some(
        "127.0.0.1"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
    );
    // Warm up: connections, statement caches.
    for _ in 0..200 {
        let _ = authn::bearer(store, Some(header), source).await;
    }
    let pid = std::process::id();
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    for _ in 0..n {
        if authn::bearer(store, Some(header), source).await.is_err() {
            eprintln!("a check failed");
            std::process::exit(1);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    (cpu / n as f64 * 1e6, wall / n as f64 * 1e6)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    postern_tests::init_bench_logs();
    let a = Args::parse();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = match &a.database_url {
        Some(u) => Store::open(u).await,
        None => Store::open_sqlite(dir.path()).await,
    }
    .unwrap_or_else(|e| panic!("store: {e}"));
    let org = store
        .create_org(&format!("bench{}", rand::random::<u32>()), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let project = store
        .create_project(&org.id, "web", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let user = store
        .create_user(&org.id, &format!("u{}", rand::random::<u32>()), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .set_binding(
            &user.id,
            &BindingRow {
                project_id: Some(project.id),
                role: Role::ProjectMember,
                logins: vec!["deploy".into()],
                forward_to: vec![],
                kube_groups: None,
            },
            1,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let token = postern_bastion::http::issue_api_token(&store, &user, None, 3600)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .token;
    let session = sessions::issue(&store, &user, "password", false, None, Some(3600))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (token_cpu, token_wall) = measure(&store, &format!("Bearer {token}"), a.checks).await;
    let (session_cpu, session_wall) = measure(
        &store,
        &format!("Bearer {}", session.token.expose()),
        a.checks,
    )
    .await;
    let report = serde_json::json!({
        "store": if a.database_url.is_some() { "postgres" } else { "sqlite" },
        "checks": a.checks,
        "api_token": { "cpu_us": token_cpu, "wall_us": token_wall },
        "session": { "cpu_us": session_cpu, "wall_us": session_wall },
        "session_cpu_over_token": session_cpu / token_cpu,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
