//! `postern-agent`: parse flags, then hand over to the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_agent::ssh::BreakGlass;
use postern_agent::{Agent, AgentOptions, Identity, JoinRequest};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "postern-agent", version, about = "Postern node agent")]
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
    /// Enroll this node with a bastion and exit.
    Join {
        /// The bastion's agent URL, e.g. https://bastion.example.com:8443. Several
        /// replicas may be given comma-separated (https://a:8443,https://b:8443, at
        /// most 16): joining tries them in order, and the channel fails over between
        /// them in turn.
        #[arg(long)]
        controller: String,
        /// The enrollment token (pet_…).
        #[arg(long, env = "POSTERN_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// The bastion CA's hash (sha256:…), from the join command.
        #[arg(long)]
        ca_hash: String,
        /// This node's name; defaults to the machine's hostname.
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long, default_value = "/var/lib/postern-agent")]
        data_dir: PathBuf,
    },
    /// Check this node as sshd and the bastion will (its identity, the bastion,
    /// sshd's AuthorizedKeysCommand and the helper's path, the keys socket), and
    /// say what to fix. Exits 1 if a check fails. Run it as root.
    Doctor {
        #[arg(long, default_value = "/var/lib/postern-agent")]
        data_dir: PathBuf,
        /// The sshd to ask (`sshd -T`).
        #[arg(long, default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
        /// The sshd configuration file to check (sshd's own default otherwise).
        #[arg(long)]
        sshd_config: Option<PathBuf>,
    },
    /// Keep the channel to the bastion up (the systemd service runs this).
    Run {
        #[arg(long, default_value = "/var/lib/postern-agent")]
        data_dir: PathBuf,
        /// Longest wait between reconnect attempts.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        backoff_cap: Duration,
        /// The local port of this node's sshd: the only port the bastion may relay to.
        #[arg(long, default_value_t = 22)]
        sshd_port: u16,
        /// The sshd configuration whose AuthorizedKeysCommand is checked before
        /// each session is relayed (sshd's own default otherwise): a keys helper
        /// sshd would refuse is reported to the user instead of a bare
        /// "Permission denied".
        #[arg(long)]
        sshd_config: Option<PathBuf>,
        /// Break-glass public keys (authorized_keys lines without options), offered
        /// to sshd only while the bastion has been unreachable for --break-glass-grace.
        #[arg(long)]
        break_glass_keys: Option<PathBuf>,
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        break_glass_grace: Duration,
        /// How often to PING the bastion on an idle channel; a dead link (no FIN,
        /// no RST) is found within this plus --keepalive-timeout.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        keepalive_interval: Duration,
        /// How long a PING may go unanswered before the channel is dropped.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        keepalive_timeout: Duration,
        /// Offer only the plain channel (ALPN postern-agent/1), which the bastion
        /// never parks: an idle channel then keeps its HTTP/2 connection.
        #[arg(long)]
        no_park: bool,
        /// Make this agent a Kubernetes gateway for its edge: the URL of the
        /// cluster's API server (kubectl through the bastion reaches it here).
        #[arg(long, requires = "kube_credentials", env = "POSTERN_KUBE_APISERVER")]
        kube_apiserver: Option<String>,
        /// A kubeconfig whose current user may impersonate users and groups on
        /// the cluster (token, token file or client certificate; the cluster's CA).
        #[arg(long, requires = "kube_apiserver", env = "POSTERN_KUBE_CREDENTIALS")]
        kube_credentials: Option<PathBuf>,
        /// Also let in the keys listed in this node's Kubernetes Node object
        /// (annotation `postern.dev/authorized-keys`) when signed by a key of
        /// --kube-node-keys-signer (annotation `postern.dev/authorized-keys-sig`),
        /// read with the kubelet's credentials and cached for when the API server
        /// is down.
        #[arg(long, requires_all = ["kubelet_kubeconfig", "node_name"])]
        kube_node_keys: bool,
        /// The OpenSSH public keys (one per line) of whoever may grant access
        /// through the Node annotation: it is used only with a signature by one of
        /// them (`ssh-keygen -Y sign -n postern-node-keys`). Required with
        /// --kube-node-keys.
        #[arg(long, value_name = "FILE", requires = "kube_node_keys")]
        kube_node_keys_signer: Option<PathBuf>,
        /// The kubelet's kubeconfig (its API server, CA and credentials).
        #[arg(long, requires = "kube_node_keys")]
        kubelet_kubeconfig: Option<PathBuf>,
        /// This node's name in Kubernetes (the kubelet's `--hostname-override`, or
        /// its hostname).
        #[arg(long, requires = "kube_node_keys")]
        node_name: Option<String>,
        /// A label for this node, `key=value` (Kubernetes label syntax; repeat
        /// for more): reported to the bastion, where executions select nodes by
        /// label (`target_type: selector`).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    postern_api::labels::parse_label_arg(s).map_err(|e| e.to_string())
}

fn system_hostname() -> anyhow::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read the hostname; pass --hostname")?;
    Ok(h.trim().to_string())
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
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
        Cmd::Doctor {
            data_dir,
            sshd,
            sshd_config,
        } => {
            let checks = postern_agent::doctor::run(&postern_agent::doctor::DoctorOptions {
                data_dir,
                sshd,
                sshd_config,
                timeout: Duration::from_secs(5),
            })
            .await;
            for c in &checks {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                let mut lines = c.detail.lines();
                println!("{mark} {:<12} {}", c.name, lines.next().unwrap_or_default());
                for l in lines {
                    println!("{:17} {l}", "");
                }
            }
            if checks.iter().any(|c| !c.ok) {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Join {
            controller,
            token,
            ca_hash,
            hostname,
            data_dir,
        } => {
            let hostname = match hostname {
                Some(h) => h,
                None => system_hostname()?,
            };
            let identity = postern_agent::join(&JoinRequest {
                controller,
                token,
                ca_hash,
                hostname,
                data_dir: Some(data_dir.clone()),
            })
            .await
            .context("join failed")?;
            println!(
                "enrolled {} as node {}; start the channel with: postern-agent run --data-dir {}",
                identity.meta.hostname,
                identity.meta.node_id,
                data_dir.display()
            );
            Ok(())
        }
        Cmd::Run {
            data_dir,
            backoff_cap,
            sshd_port,
            sshd_config,
            break_glass_keys,
            break_glass_grace,
            keepalive_interval,
            keepalive_timeout,
            no_park,
            kube_apiserver,
            kube_credentials,
            kube_node_keys,
            kube_node_keys_signer,
            kubelet_kubeconfig,
            node_name,
            labels,
        } => {
            let labels: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
            postern_api::labels::validate_labels(&labels).context("--label")?;
            let gateway = match (&kube_apiserver, &kube_credentials) {
                (Some(url), Some(file)) => {
                    let creds = postern_agent::kube::Credentials::load(file, Some(url))
                        .context("--kube-credentials")?;
                    tracing::info!(apiserver = %url, "Kubernetes gateway for this edge");
                    Some(postern_agent::kube::Gateway::new(creds))
                }
                _ => None,
            };
            let kube_node_keys = match (kube_node_keys, kubelet_kubeconfig, node_name) {
                (true, Some(path), Some(name)) => {
                    postern_api::validate::hostname(&name)
                        .map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
                    // Not a clap `requires`: the reason is the point of the message.
                    let Some(signer) = kube_node_keys_signer else {
                        anyhow::bail!(
                            "--kube-node-keys needs --kube-node-keys-signer FILE, the public key(s) \
                             of whoever may grant access: anyone who may update nodes/status \
                             (CNI and monitoring DaemonSets, the kubelet) can change a Node's \
                             annotations, so the agent uses them only when signed by one of these \
                             keys (ssh-keygen -Y sign -n postern-node-keys; see the README)"
                        );
                    };
                    let signers = postern_agent::kube_keys::load_signers(&signer)?;
                    Some(
                        postern_agent::kube_keys::KubeNodeKeysConfig::from_kubeconfig(
                            &path, &name, signers,
                        )
                        .await?,
                    )
                }
                _ => None,
            };
            let break_glass = match break_glass_keys {
                Some(path) => {
                    Some(BreakGlass::load(&path, break_glass_grace).map_err(anyhow::Error::msg)?)
                }
                None => None,
            };
            let identity = Identity::load(&data_dir)?;
            tracing::info!(node = %identity.meta.node_id, hostname = %identity.meta.hostname, "agent starting");
            let agent = Agent::new(
                identity,
                AgentOptions {
                    backoff_cap,
                    sshd_port,
                    break_glass,
                    keepalive_interval: keepalive_interval.max(Duration::from_secs(1)),
                    keepalive_timeout: keepalive_timeout.max(Duration::from_secs(1)),
                    park: !no_park,
                    kube_node_keys,
                    labels,
                    sshd_check: Some(postern_agent::doctor::DoctorOptions {
                        data_dir: data_dir.clone(),
                        sshd: PathBuf::from("/usr/sbin/sshd"),
                        sshd_config,
                        timeout: Duration::from_secs(5),
                    }),
                    ..AgentOptions::default()
                },
            );
            let agent = match gateway {
                Some(g) => agent.with_kube_gateway(g),
                None => agent,
            };
            let shutdown = CancellationToken::new();
            let runner = tokio::spawn({
                let agent = agent.clone();
                let shutdown = shutdown.clone();
                async move { agent.run(shutdown).await }
            });
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), runner).await;
            Ok(())
        }
    }
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
