//! The bastion's command line: its commands and flags (clap), and the
//! core's settings made from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use postern_bastion::app::DoorSettings;
use postern_bastion::state::Settings;

#[derive(Parser)]
#[command(
    name = "postern-bastion",
    version,
    about = "Postern bastion: zero-trust access to fleets of Linux hosts"
)]
pub(crate) struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "POSTERN_LOG_FORMAT"
    )]
    pub(crate) log_format: String,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
pub(crate) struct Common {
    /// Where the SQLite database and local state live.
    #[arg(long, env = "POSTERN_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// postgres://… to use PostgreSQL instead of SQLite in the data directory.
    #[arg(long, env = "POSTERN_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub(crate) agent_addr: SocketAddr,
    /// The SSH front door (`ssh -J you@bastion login@node`). Give a public address
    /// (e.g. 0.0.0.0:2222) for engineers to reach it; SSH brings its own encryption.
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub(crate) ssh_addr: SocketAddr,
    /// Where users dial the SSH front door (host:port), when not --ssh-addr
    /// (e.g. a load balancer's name); `postern ssh-config` writes it. Default:
    /// --ssh-addr, or the host of --agent-public-url when it listens on all
    /// addresses.
    #[arg(long)]
    pub(crate) ssh_public_addr: Option<String>,
    /// File holding the 32-byte master key (64 hex digits) that seals the CA key.
    /// Default: DATA_DIR/master.key. Keep it off the database's backups.
    #[arg(long, env = "POSTERN_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// The URL agents dial, printed in join commands (default: https://<agent-addr>).
    #[arg(long)]
    pub(crate) agent_public_url: Option<String>,
    /// Extra DNS names or IPs for the agent port's certificate (repeatable).
    #[arg(long = "tls-name")]
    pub(crate) tls_names: Vec<String>,
    /// Run as one replica of several sharing the PostgreSQL of --database-url:
    /// this replica's name, unique in the deployment (e.g. its host name).
    /// Replicas share the master key file; none is special.
    #[arg(long, requires = "peer_addr", env = "POSTERN_REPLICA_NAME")]
    pub(crate) replica_name: Option<String>,
    /// Where this replica listens for the other replicas (mutual TLS with
    /// certificates from the deployment's CA). Keep it on a private network.
    #[arg(long, requires = "replica_name")]
    pub(crate) peer_addr: Option<SocketAddr>,
    /// The address the other replicas dial to reach this one, when it is not
    /// --peer-addr (e.g. 0.0.0.0:8444 behind NAT): host:port.
    #[arg(long, requires = "peer_addr")]
    pub(crate) peer_advertise: Option<String>,
    #[command(flatten)]
    pub(crate) kube: KubeArgs,
    #[command(flatten)]
    pub(crate) packages: PackageArgs,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
}

#[derive(Args)]
pub(crate) struct PackageArgs {
    /// An agent package to serve on the agent port for the one-line join (the
    /// enrollment tokens' install_command): a postern-agent_<version>_<arch>.deb,
    /// or a directory of them; repeatable, one per architecture. Default, for
    /// the packaged binary (/usr/bin/postern-bastion): the directory its
    /// package ships the agent package in.
    #[arg(long = "agent-package", value_name = "FILE_OR_DIR")]
    pub(crate) agent_packages: Vec<PathBuf>,
}

impl PackageArgs {
    pub(crate) fn paths(self) -> Vec<PathBuf> {
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
pub(crate) struct KubeArgs {
    /// Serve the Kubernetes API of every edge here (kubectl and helm through the
    /// bastion, e.g. 0.0.0.0:6443), with TLS. Off when not given.
    #[arg(long, env = "POSTERN_KUBE_ADDR")]
    pub(crate) kube_addr: Option<SocketAddr>,
    /// The Kubernetes listener's certificate chain (PEM), instead of one from
    /// the bastion's CA. Needs --kube-tls-key.
    #[arg(long, requires_all = ["kube_tls_key", "kube_addr"])]
    pub(crate) kube_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --kube-tls-cert.
    #[arg(long, requires = "kube_tls_cert")]
    pub(crate) kube_tls_key: Option<PathBuf>,
    /// The URL kubeconfigs name as their server, when clients reach the
    /// listener under another name (e.g. https://bastion.example.com:6443).
    #[arg(long, requires = "kube_addr")]
    pub(crate) kube_public_url: Option<String>,
}

impl KubeArgs {
    pub(crate) fn config(self) -> Option<postern_bastion::app::KubeConfig> {
        let addr = self.kube_addr?;
        Some(postern_bastion::app::KubeConfig {
            addr,
            tls: self.kube_tls_cert.zip(self.kube_tls_key),
            public_url: self.kube_public_url,
        })
    }
}

#[derive(Args)]
pub(crate) struct DevArgs {
    #[arg(long, env = "POSTERN_DATA_DIR", default_value = "./postern-dev")]
    pub(crate) data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub(crate) agent_addr: SocketAddr,
    /// The SSH front door (`ssh -J you@bastion login@node`).
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub(crate) ssh_addr: SocketAddr,
    /// The Kubernetes listener (kubectl through the bastion). Without it, dev
    /// takes 127.0.0.1:6443 when free and otherwise (a k3s or kind on this
    /// machine holds it) starts without one and says so.
    #[arg(long)]
    pub(crate) kube_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) packages: PackageArgs,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
}

#[derive(Args)]
pub(crate) struct Tuning {
    /// Lifetime of node certificates; agents rotate at two thirds of it.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) node_cert_ttl: Duration,
    /// How often to look for certificates due for rotation.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) rotation_check: Duration,
    /// Most simultaneous connections on the agent port.
    #[arg(long, default_value_t = 16_000)]
    pub(crate) max_agent_connections: usize,
    /// Connections on the agent port still in their TLS handshake from one
    /// source address (an IPv6 /64): one address cannot take the port, and the
    /// agents behind one NAT address are not limited once connected.
    #[arg(long, default_value_t = postern_bastion::limits::AGENT_HANDSHAKES_PER_SOURCE as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) agent_handshakes_per_source: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Duration,
    /// How often to PING an idle agent channel; a dead link (no FIN, no RST) is
    /// found within this plus --keepalive-timeout, and the node marked unreachable.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) keepalive_interval: Duration,
    /// How long a PING may go unanswered before the channel is dropped.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub(crate) keepalive_timeout: Duration,
    /// An agent channel with no call for this long gives its HTTP/2 connection
    /// up (its buffers, about 30 KiB per agent) and starts a new one on the
    /// same TLS session at the next call, without a round trip; 0s: never.
    /// Agents older than this release are never parked.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) agent_park_after: Duration,
    /// How long a node running a command may stay disconnected before its result is `lost`.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub(crate) exec_lost_grace: Duration,
    /// Output kept per stream and node, 2 bytes to 1 MiB; beyond it, head and tail are kept.
    #[arg(long, default_value_t = postern_api::cmdexec::DEFAULT_KEEP_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(2..=postern_api::cmdexec::MAX_KEEP_BYTES as u64))]
    pub(crate) exec_keep_bytes: u64,
    /// Live execution streams one org may hold open on this bastion (of 128 in all).
    #[arg(long, default_value_t = postern_bastion::http::exec_events::STREAMS_PER_ORG as u64,
          value_parser = clap::value_parser!(u64).range(1..=postern_bastion::http::exec_events::STREAMS_GLOBAL as u64))]
    pub(crate) exec_streams_per_org: u64,
    /// A live execution stream whose client takes no event for this long is
    /// ended (clients resume where they were), so it keeps no place.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) exec_stream_stall: Duration,
    /// How long a key grant pushed to a node for an SSH jump stays valid there.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) ssh_grant_ttl: Duration,
    /// SSH clients must authenticate within this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) ssh_auth_timeout: Duration,
    /// Unauthenticated SSH connections, as sshd's MaxStartups: START:RATE:FULL drops
    /// new ones at random from START (RATE %, rising to 100 % at FULL), or FULL alone.
    #[arg(long, default_value_t = postern_bastion::ssh::MaxStartups::DEFAULT)]
    pub(crate) ssh_max_startups: postern_bastion::ssh::MaxStartups,
    /// Unauthenticated SSH connections from one source address at most, as sshd's
    /// PerSourceMaxStartups, so one client cannot lock out the rest.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) ssh_per_source_max_startups: u64,
    /// An SSH client must send its identification line within this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) ssh_banner_timeout: Duration,
    /// Enrollments served at once, in their own pool apart from agent channels.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) max_enrollments: u64,
    /// Also offer chacha20-poly1305 on the SSH front door, for clients without
    /// AES-GCM (OpenSSH would then pick it first, at a CPU cost to the bastion).
    #[arg(long)]
    pub(crate) ssh_allow_chacha20: bool,
    /// The most one session recording may hold (bytes of cast). Past it the
    /// cast says so and records no more; a strict session ends there.
    #[arg(long, default_value_t = 512 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub(crate) recording_max_bytes: u64,
    /// Let OpenID providers be on loopback or private networks, and over plain
    /// http (a provider beside the bastion; tests). Off by default, so an org
    /// admin cannot point the bastion into its own network.
    #[arg(long)]
    pub(crate) sso_allow_private_networks: bool,
    /// A TLS proxy in front of the REST API (an address or CIDR; repeat for
    /// several): from it, the client's address is read from X-Forwarded-For
    /// for per-source limits and the audit log.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub(crate) trusted_proxies: Vec<String>,
    /// A web console session ends after this long without a request (or a
    /// keystroke in its terminal); at most 12 hours.
    #[arg(long, default_value = "15min", value_parser = humantime::parse_duration)]
    pub(crate) console_idle: Duration,
}

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Walk the hash chain; exits 1 if an entry was edited or removed.
    Verify(Common),
    /// Print every entry, oldest first, as JSON lines.
    Export(Common),
}

pub(crate) fn settings(t: &Tuning, public_url: Option<String>) -> Settings {
    Settings {
        agent_public_url: public_url.unwrap_or_default(),
        handshake_timeout: t.handshake_timeout,
        keepalive_interval: t.keepalive_interval.max(Duration::from_secs(1)),
        keepalive_timeout: t.keepalive_timeout.max(Duration::from_secs(1)),
        park_after: t.agent_park_after,
        exec_lost_grace: t.exec_lost_grace,
        exec_keep_bytes: usize::try_from(t.exec_keep_bytes)
            .unwrap_or(postern_api::cmdexec::DEFAULT_KEEP_BYTES),
        ..Settings::default()
    }
}

/// Each door's own settings, from the flags.
pub(crate) fn door_settings(t: &Tuning, ssh_public_addr: Option<String>) -> DoorSettings {
    DoorSettings {
        ssh: postern_bastion::ssh::Settings {
            ssh_grant_ttl: t
                .ssh_grant_ttl
                .clamp(Duration::from_secs(10), Duration::from_secs(24 * 3600)),
            ssh_auth_timeout: t.ssh_auth_timeout.max(Duration::from_secs(1)),
            ssh_max_startups: t.ssh_max_startups,
            ssh_per_source_max_startups: usize::try_from(t.ssh_per_source_max_startups)
                .unwrap_or(usize::MAX),
            ssh_banner_timeout: t.ssh_banner_timeout.max(Duration::from_secs(1)),
            ssh_allow_chacha20: t.ssh_allow_chacha20,
            recording_max_bytes: t.recording_max_bytes,
            ..postern_bastion::ssh::Settings::default()
        },
        rest: postern_bastion::http::Settings {
            exec_streams_per_org: usize::try_from(t.exec_streams_per_org)
                .unwrap_or(postern_bastion::http::exec_events::STREAMS_PER_ORG),
            exec_stream_stall: t.exec_stream_stall.max(Duration::from_secs(1)),
            sso_private_networks: t.sso_allow_private_networks,
            trusted_proxies: t.trusted_proxies.clone(),
            console_idle: t
                .console_idle
                .clamp(Duration::from_secs(1), Duration::from_secs(12 * 3600)),
            ..postern_bastion::http::Settings::default()
        },
        agent_port: postern_bastion::agent_port::Settings {
            rotation_check: t.rotation_check,
            max_agent_connections: t.max_agent_connections,
            agent_handshakes_per_source: usize::try_from(t.agent_handshakes_per_source)
                .unwrap_or(usize::MAX),
            max_enrollments: usize::try_from(t.max_enrollments).unwrap_or(usize::MAX),
        },
        ssh_public_addr,
    }
}
