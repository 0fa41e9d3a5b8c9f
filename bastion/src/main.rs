//! `postern-bastion`: parse flags, build the configuration, hand over to the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use postern_bastion::{Bastion, Config, audit::Audit, dev, store::Store};
use tokio_util::sync::CancellationToken;

// jemalloc returns freed memory and fragments less than glibc's malloc under tens of
// thousands of long-lived connections: measured with the agent swarm (see README).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "main/args.rs"]
mod args;

use args::*;

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// jemalloc returns freed pages to the system only while the process keeps
/// allocating, unless its background thread purges them: a bastion whose
/// fleet went quiet after a reconnect storm would otherwise keep the storm's
/// peak (measured with the agent swarm: 49 KiB per idle agent, 25 once purged).
#[cfg(feature = "jemalloc")]
fn purge_in_background() {
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!(
            "Warning: jemalloc's background purging is off ({e}); memory freed stays mapped until the next allocations"
        );
    }
}

/// jemalloc's heap figures for `/metrics` (see `metrics::HeapGauges`).
#[cfg(feature = "jemalloc")]
fn jemalloc_heap() -> Option<postern_bastion::metrics::HeapGauges> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The figures are a snapshot taken at the last epoch: take one now.
    epoch::advance().ok()?;
    Some(postern_bastion::metrics::HeapGauges {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "jemalloc")]
    {
        purge_in_background();
        postern_bastion::metrics::set_heap_reader(jemalloc_heap);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause shown only when it adds
/// something: our errors often carry their source's text already, and
/// anyhow's "Caused by:" list would say the same sentence two or three times.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
    }
    text
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    match cli.cmd {
        Cmd::Serve(a) => {
            let master_key_file = a
                .master_key_file
                .unwrap_or_else(|| a.common.data_dir.join("master.key"));
            check_master_key(&master_key_file)?;
            let cfg = Config {
                data_dir: a.common.data_dir,
                database_url: a.common.database_url,
                api_addr: a.api_addr,
                agent_addr: a.agent_addr,
                ssh_addr: Some(a.ssh_addr),
                master_key_file,
                create_master_key: false,
                tls_names: a.tls_names,
                node_cert_ttl: a.tuning.node_cert_ttl,
                settings: settings(&a.tuning, a.agent_public_url),
                doors: door_settings(&a.tuning, a.ssh_public_addr),
                replica: match (a.replica_name, a.peer_addr) {
                    (Some(name), Some(peer_addr)) => {
                        Some(postern_bastion::replicas::ReplicaConfig {
                            name,
                            peer_addr,
                            peer_advertise: a.peer_advertise,
                        })
                    }
                    _ => None,
                },
                kube: a.kube.config(),
                agent_packages: a.packages.paths(),
            };
            serve(cfg).await
        }
        Cmd::Dev(a) => {
            let (kube_addr, kube_note) = dev_kube_addr(a.kube_addr);
            let cfg = Config {
                master_key_file: a.data_dir.join("master.key"),
                data_dir: a.data_dir,
                database_url: None,
                api_addr: a.api_addr,
                agent_addr: a.agent_addr,
                ssh_addr: Some(a.ssh_addr),
                create_master_key: true,
                tls_names: vec![],
                node_cert_ttl: a.tuning.node_cert_ttl,
                settings: settings(&a.tuning, None),
                doors: door_settings(&a.tuning, None),
                replica: None,
                kube: kube_addr.map(|addr| postern_bastion::app::KubeConfig {
                    addr,
                    tls: None,
                    public_url: None,
                }),
                agent_packages: a.packages.paths(),
            };
            run_dev(cfg, kube_note).await
        }
        Cmd::Audit { cmd } => audit(cmd).await,
        Cmd::KeysHelper {
            data_dir,
            login,
            fingerprint,
        } => {
            postern_keys::run(data_dir, login, fingerprint.filter(|f| !f.is_empty()));
            Ok(())
        }
        Cmd::Init {
            common,
            org,
            admin,
            token_ttl,
        } => {
            postern_bastion::fsutil::private_dir(&common.data_dir)
                .with_context(|| format!("cannot create {}", common.data_dir.display()))?;
            let store = open_store(&common, true).await?;
            let ttl = i64::try_from(token_ttl.as_secs()).unwrap_or(i64::MAX);
            let token = postern_bastion::tenancy_init::init(&store, &org, &admin, ttl)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.close().await;
            store_files_to_data_dir_owner(&common);
            println!("{}", token.token);
            Ok(())
        }
    }
}

/// Refuses to serve without a readable master key, telling "missing" from
/// "cannot be read": a key that exists but is unreadable to this user (a 0700
/// root directory, a root-owned 0600 file) must never be answered with advice
/// to create one, which would overwrite it and lose the CA it seals.
fn check_master_key(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "master key file {p} does not exist: on a new bastion create it once with \
             `(umask 077; head -c32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {p})`, \
             or pass --master-key-file with the key this store was made with",
            p = path.display()
        ),
        Err(e) => anyhow::bail!(
            "cannot read the master key file {p}: {e} ({who}, this process runs as uid {uid}). \
             The key may exist: do not create a new one (that loses the CA it seals). Run the \
             bastion as the key's owner, or make the key readable to this user only \
             (chown postern {p}; chmod 0600 {p}), with every directory above it searchable",
            p = path.display(),
            who = describe_owner(path),
            uid = {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
            },
        ),
    }
}

/// Owner and mode of `path`, or of the nearest directory above it that this
/// user can look at (the one that hides it).
fn describe_owner(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    for p in path.ancestors() {
        if let Ok(m) = std::fs::metadata(p) {
            return format!(
                "{} is owned by uid {} with mode {:04o}",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            );
        }
    }
    "its owner cannot be read".into()
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let bastion = Bastion::start(cfg, shutdown.clone())
        .await
        .context("cannot start the bastion")?;
    log_addresses(&bastion);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    bastion.run().await.context("the REST API server failed")
}

/// The default Kubernetes listener of `dev`.
const DEV_KUBE_ADDR: &str = "127.0.0.1:6443";

/// Where `dev` listens for kubectl: the address given, else 6443 when it is
/// free. A taken 6443 (every k3s host has one) is not a reason to fail the
/// tour: dev starts without the Kubernetes door and says which flag brings it.
fn dev_kube_addr(given: Option<SocketAddr>) -> (Option<SocketAddr>, Option<String>) {
    if given.is_some() {
        return (given, None);
    }
    let Ok(addr) = DEV_KUBE_ADDR.parse::<SocketAddr>() else {
        return (None, None);
    };
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            (Some(addr), None)
        }
        Err(e) => (
            None,
            Some(format!(
                "off: {addr} is taken ({e}; a local Kubernetes?); to reach edges with kubectl, \
                 restart dev with --kube-addr 127.0.0.1:PORT"
            )),
        ),
    }
}

async fn run_dev(cfg: Config, kube_note: Option<String>) -> anyhow::Result<()> {
    let data_dir = cfg.data_dir.clone();
    let shutdown = CancellationToken::new();
    let bastion = Bastion::start(cfg, shutdown.clone())
        .await
        .context("cannot start the bastion")?;
    let files = dev::bootstrap(&bastion.shared(), &data_dir)
        .await
        .context("dev bootstrap failed")?;
    log_addresses(&bastion);
    let api = bastion
        .api_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ssh = bastion
        .ssh_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let shared = bastion.shared();
    let ssh_host_key = bastion.ssh_host_key();
    let ssh_addr = bastion.ssh_addr();
    let running = tokio::spawn(bastion.run());
    // SSH to the demo node when this machine can: its own sshd, and the
    // user's key for admin.
    let (demo_sshd, ssh_note) =
        match dev::sshd::start(&data_dir, &data_dir.join("demo-agent")).await {
            Ok(s) => {
                let (note, identity) = dev::register_users_key(&shared, &api, &data_dir).await;
                let client = match (ssh_addr, &ssh_host_key) {
                    (Some(addr), Some(key)) => {
                        dev::sshd::write_client_files(&data_dir, addr, key, identity.as_deref())
                    }
                    _ => Err("the SSH front door is off".to_string()),
                };
                let how = match client {
                    Ok(cfg) => format!(
                        "ssh -F {} demo-node uptime, or ssh -J admin@{ssh} root@demo-node uptime",
                        cfg.display()
                    ),
                    Err(e) => format!("ssh -J admin@{ssh} root@demo-node uptime ({e})"),
                };
                (Some(s), format!("{note}; then: {how}"))
            }
            Err(why) => (None, format!("no SSH to the demo node: {why}")),
        };
    let agent = dev::demo_agent(
        &data_dir,
        &files.join_file,
        demo_sshd.as_ref().map(|s| s.port),
    )
    .await
    .context("demo agent")?;
    let agent_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { agent.run(shutdown).await }
    });
    let install = files
        .install_file
        .as_ref()
        .map(|f| {
            format!(
                "  install command: {} (one line, as root on a Debian node)\n",
                f.display()
            )
        })
        .unwrap_or_default();
    eprintln!(
        "\nPostern dev bastion is up.\n  admin API token: {tok}\n  join command:    {join}\n{install}  try: curl -H \"Authorization: Bearer $(cat {tok})\" http://{api}/api/v1/projects/demo/edges/local/nodes\n  SSH: {ssh_note}\n",
        tok = files.token_file.display(),
        join = files.join_file.display(),
    );
    if let Some(note) = kube_note {
        eprintln!("  Kubernetes: {note}\n");
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent_task).await;
    drop(demo_sshd);
    match tokio::time::timeout(Duration::from_secs(20), running).await {
        Ok(Ok(r)) => r.context("the REST API server failed"),
        _ => Ok(()),
    }
}

fn log_addresses(b: &Bastion) {
    tracing::info!(
        api = ?b.api_addr(),
        agents = ?b.agent_addr(),
        ssh = ?b.ssh_addr(),
        peers = ?b.peer_addr(),
        ca_hash = %b.shared().pki.ca_hash(),
        "bastion listening"
    );
}

async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    let (common, verify) = match cmd {
        AuditCmd::Verify(c) => (c, true),
        AuditCmd::Export(c) => (c, false),
    };
    let store = open_store(&common, false).await?;
    store_files_to_data_dir_owner(&common);
    let audit = Audit::new(store);
    if verify {
        match audit.verify().await? {
            // A bastion's log is never empty (init records the first admin):
            // an empty one is the wrong store, and must not pass as intact.
            Ok(0) => {
                eprintln!(
                    "AUDIT LOG EMPTY: no entry in {}; is this the bastion's store? Pass the --database-url \
                     (or POSTERN_DATABASE_URL) and --data-dir that `serve` uses",
                    describe_store(&common)
                );
                std::process::exit(2);
            }
            Ok(n) => {
                let entries = if n == 1 { "entry" } else { "entries" };
                println!("audit log intact: {n} {entries} verified");
                Ok(())
            }
            Err(brk) => {
                eprintln!("AUDIT LOG TAMPERED: {brk}");
                std::process::exit(1);
            }
        }
    } else {
        let mut out = std::io::BufWriter::new(std::io::stdout());
        audit.export(&mut out).await?;
        std::io::Write::flush(&mut out)?;
        Ok(())
    }
}

/// SQLite's files, made by root for a data directory the service user owns
/// (`init` and `audit verify` as the README runs them), go to that user, so
/// `serve` can write them.
fn store_files_to_data_dir_owner(common: &Common) {
    if common.database_url.is_some() {
        return;
    }
    let files = ["postern.db", "postern.db-wal", "postern.db-shm"];
    if let Err(e) = postern_bastion::fsutil::match_dir_owner(&common.data_dir, &files) {
        eprintln!(
            "warning: cannot give the store's files in {} to the directory's owner ({e}); serve may not be able to write them",
            common.data_dir.display()
        );
    }
}

/// Which store a subcommand uses, for messages (no password).
fn describe_store(common: &Common) -> String {
    match &common.database_url {
        Some(url) => postern_bastion::store::redact(url),
        None => common.data_dir.join("postern.db").display().to_string(),
    }
}

async fn open_store(common: &Common, create: bool) -> anyhow::Result<Store> {
    let stray = common.data_dir.join("postern.db");
    if common.database_url.is_some() && stray.exists() {
        // Earlier runs without --database-url made it: whatever they wrote (a
        // token from `init`, say) is not in the store used now.
        tracing::warn!(
            file = %stray.display(),
            "an unused SQLite store sits in the data directory while this command uses --database-url; \
             a token or log in it is not in the store used now"
        );
    }
    Ok(match &common.database_url {
        Some(url) => Store::open(url).await?,
        None => {
            anyhow::ensure!(
                create || common.data_dir.join("postern.db").exists(),
                "no database in {}: pass the bastion's --data-dir (or --database-url)",
                common.data_dir.display()
            );
            Store::open_sqlite(&common.data_dir).await?
        }
    })
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
