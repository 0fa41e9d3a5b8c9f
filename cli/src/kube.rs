//! `postern kube`: kubectl through the bastion. `kube config` prints a
//! kubeconfig for the clusters you may reach (to a file you choose: it never
//! touches `~/.kube/config`); for a person it holds no secret, and kubectl
//! runs `kube credentials`, its exec credential plugin, which answers a client
//! certificate for the current login session (an hour at most, kept until
//! five minutes before its end), in the ExecCredential version kubectl asked
//! for (`KUBERNETES_EXEC_INFO`: v1beta1 for Debian's kubectl 1.20, v1 for
//! newer ones).

use clap::{Args, Subcommand};
use postern_client::Client;
use serde::{Deserialize, Serialize};

use crate::context::{Ctx, Global, tls};
use crate::{CliError, config};

#[derive(Debug, Args)]
pub struct KubeArgs {
    #[command(subcommand)]
    cmd: KubeCmd,
}

#[derive(Debug, Subcommand)]
enum KubeCmd {
    /// Print a kubeconfig for the clusters you may reach (redirect it to a file
    /// of your own, e.g. > ~/.kube/postern, and use KUBECONFIG)
    Config {
        /// Only this project's clusters
        #[arg(long, short)]
        project: Option<String>,
    },
    /// kubectl's exec credential plugin (the kubeconfig runs it): prints an
    /// ExecCredential with a client certificate for your session
    Credentials,
}

/// The certificate kept between kubectl's calls.
#[derive(Serialize, Deserialize)]
struct Kept {
    session_id: String,
    certificate: String,
    key: String,
    /// RFC 3339.
    expires_at: String,
}

/// Reused until this close to its end.
const RENEW_BEFORE_SECS: i64 = 300;

pub async fn run(global: &Global, a: KubeArgs) -> Result<(), CliError> {
    match a.cmd {
        KubeCmd::Config { project } => {
            let ctx = Ctx::new(global)?;
            let yaml = ctx.client.kubeconfig(project.as_deref()).await?;
            crate::outln!("{}", yaml.trim_end());
            Ok(())
        }
        KubeCmd::Credentials => credentials(global).await,
    }
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

async fn credentials(global: &Global) -> Result<(), CliError> {
    let login_again = || {
        CliError::Usage(
            "no Postern session for kubectl: log in with postern login URL --sso PROVIDER --org ORG (or --user NAME)"
                .into(),
        )
    };
    let profile = config::load()?.ok_or_else(login_again)?;
    let session_id = profile.session_id.clone().ok_or_else(|| {
        CliError::Usage(
            "the stored login is an API token, not a session: a bot's kubeconfig holds its token instead".into(),
        )
    })?;
    let kept_path = config::dir()?.join("kube-credential.json");
    let now = time::OffsetDateTime::now_utc();
    let kept: Option<Kept> = config::read_limited(&kept_path, 64 * 1024, "the kept credential")
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|k: &Kept| {
            k.session_id == session_id
                && parse_time(&k.expires_at)
                    .is_some_and(|t| (t - now).whole_seconds() > RENEW_BEFORE_SECS)
        });
    let kept = match kept {
        Some(k) => k,
        None => {
            let key = rcgen::KeyPair::generate()
                .map_err(|e| CliError::Usage(format!("cannot make a key: {e}")))?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                .and_then(|p| p.serialize_request(&key))
                .and_then(|r| r.pem())
                .map_err(|e| CliError::Usage(format!("cannot make a certificate request: {e}")))?;
            let ca = profile.ca_file.clone().or_else(|| global.ca_file.clone());
            let client = Client::new(&profile.url, Some(profile.token.clone()), tls(ca.as_ref())?)?;
            let cert = client.kube_certificate(&csr).await.map_err(|e| match e {
                postern_client::ClientError::Api {
                    status: 401,
                    message,
                    ..
                } => CliError::Usage(format!(
                    "{message} (your Postern session is over: log in again with postern login)"
                )),
                e => e.into(),
            })?;
            let k = Kept {
                session_id,
                certificate: cert.certificate,
                key: key.serialize_pem(),
                expires_at: cert.expires_at,
            };
            config::write_private(&kept_path, &serde_json::to_string(&k).unwrap_or_default())?;
            k
        }
    };
    // The version kubectl asked for; v1beta1 when it says nothing (1.20 and
    // older kubeconfigs).
    let asked = std::env::var("KUBERNETES_EXEC_INFO")
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["apiVersion"].as_str().map(str::to_string))
        .filter(|v| v.starts_with("client.authentication.k8s.io/"))
        .unwrap_or_else(|| "client.authentication.k8s.io/v1beta1".into());
    let out = serde_json::json!({
        "apiVersion": asked,
        "kind": "ExecCredential",
        "status": {
            "clientCertificateData": kept.certificate,
            "clientKeyData": kept.key,
            "expirationTimestamp": kept.expires_at,
        }
    });
    crate::outln!("{out}");
    Ok(())
}
