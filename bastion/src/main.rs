//! `postern-bastion`: parse flags, build the configuration, hand over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_bastion::state::Settings;
use postern_bastion::{Bastion, Config, audit::Audit, dev, store::Store};
use tokio_util::sync::CancellationToken;

// jemalloc returns freed memory and fragments less than glibc's malloc under tens of
// thousands of long-lived connections: measured with the agent swarm (see README).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "postern-bastion",
    version,
    about = "Postern bastion: zero-trust access to fleets of Linux hosts"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "POSTERN_LOG_FORMAT"
    )]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the bastion.
    Serve(Box<ServeArgs>),
    /// Run a bastion with a demo org, project, edge, admin token and one demo agent.
    Dev(Box<DevArgs>),
    /// Create an org and its first org admin (if missing) and print a new API token for that admin.
    Init {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "default")]
        org: String,
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Lifetime of the token.
        #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
    },
    /// Check or export the audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// sshd's AuthorizedKeysCommand for `dev`'s demo node: what `postern-keys`
    /// does, from this binary, so that `dev` needs nothing else built.
    #[command(hide = true)]
    KeysHelper {
        #[arg(long)]
        data_dir: PathBuf,
        login: String,
        fingerprint: Option<String>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Where the SQLite database and local state live.
    #[arg(long, env = "POSTERN_DATA_DIR")]
    data_dir: PathBuf,
    /// postgres://… to use PostgreSQL instead of SQLite in the data directory.
    #[arg(long, env = "POSTERN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    agent_addr: SocketAddr,
    /// The SSH front door (`ssh -J you@bastion login@node`). Give a public address
    /// (e.g. 0.0.0.0:2222) for engineers to reach it; SSH brings its own encryption.
    #[arg(long, default_value = "127.0.0.1:2222")]
    ssh_addr: SocketAddr,
    /// Where users dial the SSH front door (host:port), when not --ssh-addr
    /// (e.g. a load balancer's name); `postern ssh-config` writes it. Default:
    /// --ssh-addr, or the host of --agent-public-url when it listens on all
    /// addresses.
    #[arg(long)]
    ssh_public_addr: Option<String>,
    /// File holding the 32-byte master key (64 hex digits) that seals the CA key.
    /// Default: DATA_DIR/master.key. Keep it off the database's backups.
    #[arg(long, env = "POSTERN_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The URL agents dial, printed in join commands (default: https://<agent-addr>).
    #[arg(long)]
    agent_public_url: Option<String>,
    /// Extra DNS names or IPs for the agent port's certificate (repeatable).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Run as one replica of several sharing the PostgreSQL of --database-url:
    /// this replica's name, unique in the deployment (e.g. its host name).
    /// Replicas share the master key file; none is special.
    #[arg(long, requires = "peer_addr", env = "POSTERN_REPLICA_NAME")]
    replica_name: Option<String>,
    /// Where this replica listens for the other replicas (mutual TLS with
    /// certificates from the deployment's CA). Keep it on a private network.
    #[arg(long, requires = "replica_name")]
    peer_addr: Option<SocketAddr>,
    /// The address the other replicas dial to reach this one, when it is not
    /// --peer-addr (e.g. 0.0.0.0:8444 behind NAT): host:port.
    #[arg(long, requires = "peer_addr")]
    peer_advertise: Option<String>,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    packages: PackageArgs,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Args)]
struct PackageArgs {
    /// An agent package to serve on the agent port for the one-line join (the
    /// enrollment tokens' install_command): a postern-agent_<version>_<arch>.deb,
    /// or a directory of them; repeatable, one per architecture. Default, for
    /// the packaged binary (/usr/bin/postern-bastion): the directory its
    /// package ships the agent package in.
    #[arg(long = "agent-package", value_name = "FILE_OR_DIR")]
    agent_packages: Vec<PathBuf>,
}

impl PackageArgs {
    fn paths(self) -> Vec<PathBuf> {
        use postern_bastion::agents::packages::{PACKAGED_BINARY, SHIPPED_DIR};
        // Only the packaged binary: a build elsewhere (tests, a checkout) on a
        // machine that has the package must not serve it unasked.
        let packaged =
            std::env::current_exe().is_ok_and(|exe| exe == std::path::Path::new(PACKAGED_BINARY));
        if self.agent_packages.is_empty() && packaged && std::path::Path::new(SHIPPED_DIR).is_dir()
        {
            vec![PathBuf::from(SHIPPED_DIR)]
        } else {
            self.agent_packages
        }
    }
}

#[derive(Args)]
struct KubeArgs {
    /// Serve the Kubernetes API of every edge here (kubectl and helm through the
    /// bastion, e.g. 0.0.0.0:6443), with TLS. Off when not given.
    #[arg(long, env = "POSTERN_KUBE_ADDR")]
    kube_addr: Option<SocketAddr>,
    /// The Kubernetes listener's certificate chain (PEM), instead of one from
    /// the bastion's CA. Needs --kube-tls-key.
    #[arg(long, requires_all = ["kube_tls_key", "kube_addr"])]
    kube_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --kube-tls-cert.
    #[arg(long, requires = "kube_tls_cert")]
    kube_tls_key: Option<PathBuf>,
    /// The URL kubeconfigs name as their server, when clients reach the
    /// listener under another name (e.g. https://bastion.example.com:6443).
    #[arg(long, requires = "kube_addr")]
    kube_public_url: Option<String>,
}

impl KubeArgs {
    fn config(self) -> Option<postern_bastion::app::KubeConfig> {
        let addr = self.kube_addr?;
        Some(postern_bastion::app::KubeConfig {
            addr,
            tls: self.kube_tls_cert.zip(self.kube_tls_key),
            public_url: self.kube_public_url,
        })
    }
}

#[derive(Args)]
struct DevArgs {
    #[arg(long, env = "POSTERN_DATA_DIR", default_value = "./postern-dev")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    agent_addr: SocketAddr,
    /// The SSH front door (`ssh -J you@bastion login@node`).
    #[arg(long, default_value = "127.0.0.1:2222")]
    ssh_addr: SocketAddr,
    /// The Kubernetes listener (kubectl through the bastion). Without it, dev
    /// takes 127.0.0.1:6443 when free and otherwise (a k3s or kind on this
    /// machine holds it) starts without one and says so.
    #[arg(long)]
    kube_addr: Option<SocketAddr>,
    #[command(flatten)]
    packages: PackageArgs,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Args)]
struct Tuning {
    /// Lifetime of node certificates; agents rotate at two thirds of it.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    node_cert_ttl: Duration,
    /// How often to look for certificates due for rotation.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    rotation_check: Duration,
    /// Most simultaneous connections on the agent port.
    #[arg(long, default_value_t = 16_000)]
    max_agent_connections: usize,
    /// Connections on the agent port still in their TLS handshake from one
    /// source address (an IPv6 /64): one address cannot take the port, and the
    /// agents behind one NAT address are not limited once connected.
    #[arg(long, default_value_t = postern_bastion::limits::AGENT_HANDSHAKES_PER_SOURCE as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    agent_handshakes_per_source: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// How often to PING an idle agent channel; a dead link (no FIN, no RST) is
    /// found within this plus --keepalive-timeout, and the node marked unreachable.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// How long a PING may go unanswered before the channel is dropped.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// How long a node running a command may stay disconnected before its result is `lost`.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    exec_lost_grace: Duration,
    /// Output kept per stream and node, 2 bytes to 1 MiB; beyond it, head and tail are kept.
    #[arg(long, default_value_t = postern_api::cmdexec::DEFAULT_KEEP_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(2..=postern_api::cmdexec::MAX_KEEP_BYTES as u64))]
    exec_keep_bytes: u64,
    /// Live execution streams one org may hold open on this bastion (of 128 in all).
    #[arg(long, default_value_t = postern_bastion::http::exec_events::STREAMS_PER_ORG as u64,
          value_parser = clap::value_parser!(u64).range(1..=postern_bastion::http::exec_events::STREAMS_GLOBAL as u64))]
    exec_streams_per_org: u64,
    /// A live execution stream whose client takes no event for this long is
    /// ended (clients resume where they were), so it keeps no place.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    exec_stream_stall: Duration,
    /// How long a key grant pushed to a node for an SSH jump stays valid there.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    ssh_grant_ttl: Duration,
    /// SSH clients must authenticate within this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ssh_auth_timeout: Duration,
    /// Unauthenticated SSH connections, as sshd's MaxStartups: START:RATE:FULL drops
    /// new ones at random from START (RATE %, rising to 100 % at FULL), or FULL alone.
    #[arg(long, default_value_t = postern_bastion::ssh::MaxStartups::DEFAULT)]
    ssh_max_startups: postern_bastion::ssh::MaxStartups,
    /// Unauthenticated SSH connections from one source address at most, as sshd's
    /// PerSourceMaxStartups, so one client cannot lock out the rest.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ssh_per_source_max_startups: u64,
    /// An SSH client must send its identification line within this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ssh_banner_timeout: Duration,
    /// Enrollments served at once, in their own pool apart from agent channels.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_enrollments: u64,
    /// Also offer chacha20-poly1305 on the SSH front door, for clients without
    /// AES-GCM (OpenSSH would then pick it first, at a CPU cost to the bastion).
    #[arg(long)]
    ssh_allow_chacha20: bool,
    /// Let OpenID providers be on loopback or private networks, and over plain
    /// http (a provider beside the bastion; tests). Off by default, so an org
    /// admin cannot point the bastion into its own network.
    #[arg(long)]
    sso_allow_private_networks: bool,
    /// A TLS proxy in front of the REST API (an address or CIDR; repeat for
    /// several): from it, the client's address is read from X-Forwarded-For
    /// for per-source limits and the audit log.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain; exits 1 if an entry was edited or removed.
    Verify(Common),
    /// Print every entry, oldest first, as JSON lines.
    Export(Common),
}

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

fn settings(t: &Tuning, public_url: Option<String>) -> Settings {
    Settings {
        agent_public_url: public_url.unwrap_or_default(),
        rotation_check: t.rotation_check,
        max_agent_connections: t.max_agent_connections,
        agent_handshakes_per_source: usize::try_from(t.agent_handshakes_per_source)
            .unwrap_or(usize::MAX),
        handshake_timeout: t.handshake_timeout,
        keepalive_interval: t.keepalive_interval.max(Duration::from_secs(1)),
        keepalive_timeout: t.keepalive_timeout.max(Duration::from_secs(1)),
        exec_lost_grace: t.exec_lost_grace,
        exec_keep_bytes: usize::try_from(t.exec_keep_bytes)
            .unwrap_or(postern_api::cmdexec::DEFAULT_KEEP_BYTES),
        exec_streams_per_org: usize::try_from(t.exec_streams_per_org)
            .unwrap_or(postern_bastion::http::exec_events::STREAMS_PER_ORG),
        exec_stream_stall: t.exec_stream_stall.max(Duration::from_secs(1)),
        ssh_grant_ttl: t
            .ssh_grant_ttl
            .clamp(Duration::from_secs(10), Duration::from_secs(24 * 3600)),
        ssh_auth_timeout: t.ssh_auth_timeout.max(Duration::from_secs(1)),
        ssh_max_startups: t.ssh_max_startups,
        ssh_per_source_max_startups: usize::try_from(t.ssh_per_source_max_startups)
            .unwrap_or(usize::MAX),
        ssh_banner_timeout: t.ssh_banner_timeout.max(Duration::from_secs(1)),
        max_enrollments: usize::try_from(t.max_enrollments).unwrap_or(usize::MAX),
        ssh_allow_chacha20: t.ssh_allow_chacha20,
        sso_private_networks: t.sso_allow_private_networks,
        trusted_proxies: t.trusted_proxies.clone(),
        kube_public_url: None,
        kube_by_server_name: false,
        ..Settings::default()
    }
}

fn main() -> std::process::ExitCode {
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
                settings: Settings {
                    ssh_public_addr: a.ssh_public_addr,
                    ..settings(&a.tuning, a.agent_public_url)
                },
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
