//! The gateway's own credential for its cluster's API server, read from a
//! kubeconfig (`--kube-credentials`): the server and its CA, and a bearer token or
//! a client certificate. Relative paths are read beside the kubeconfig, as
//! kubectl reads them. What the gateway cannot honour (exec plugins, auth
//! providers, skipping TLS verification) is refused at start with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} is not a kubeconfig: {1}")]
    Parse(String, String),
    #[error("kubeconfig {file}: {what}")]
    Invalid { file: String, what: String },
}

#[derive(Debug, Default, Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Debug, Default, Deserialize)]
struct Cluster {
    server: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
    #[serde(rename = "tls-server-name")]
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(rename = "client-certificate")]
    cert: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key")]
    key: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    exec: Option<serde_yaml::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_yaml::Value>,
    username: Option<String>,
}

/// What the gateway dials and presents.
#[derive(Clone)]
pub struct Credentials {
    /// `https://host:port` and any path prefix, without a trailing slash.
    pub server: http::Uri,
    pub host: String,
    pub port: u16,
    pub server_name: ServerName<'static>,
    /// TLS offering HTTP/2 (ordinary requests) and HTTP/1.1 only (upgrades).
    pub tls_h2: Arc<ClientConfig>,
    pub tls_h1: Arc<ClientConfig>,
    /// `Bearer …`, when the credential is a token.
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("token", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `file`; `server` (`--kube-apiserver`) overrides the kubeconfig's.
    pub fn load(file: &Path, server: Option<&str>) -> Result<Credentials, CredentialsError> {
        let name = file.display().to_string();
        let text =
            std::fs::read_to_string(file).map_err(|e| CredentialsError::Read(name.clone(), e))?;
        let kc: Kubeconfig = serde_yaml::from_str(&text)
            .map_err(|e| CredentialsError::Parse(name.clone(), e.to_string()))?;
        let dir = file.parent().unwrap_or(Path::new("."));
        Credentials::from_config(&kc, dir, &name, server)
    }

    fn from_config(
        kc: &Kubeconfig,
        dir: &Path,
        file: &str,
        server: Option<&str>,
    ) -> Result<Credentials, CredentialsError> {
        let bad = |what: String| CredentialsError::Invalid {
            file: file.to_string(),
            what,
        };
        let context = match &kc.current_context {
            Some(c) if !c.is_empty() => kc
                .contexts
                .iter()
                .find(|n| &n.name == c)
                .map(|n| &n.context)
                .ok_or_else(|| bad(format!("current-context {c:?} is not among its contexts")))?,
            _ if kc.contexts.len() == 1 => &kc.contexts[0].context,
            _ => {
                return Err(bad(
                    "no current-context: set one (kubectl config use-context)".into(),
                ));
            }
        };
        let cluster = kc
            .clusters
            .iter()
            .find(|n| n.name == context.cluster)
            .map(|n| &n.cluster)
            .ok_or_else(|| {
                bad(format!(
                    "cluster {:?} of the current context is missing",
                    context.cluster
                ))
            })?;
        let user = kc
            .users
            .iter()
            .find(|n| n.name == context.user)
            .map(|n| &n.user)
            .ok_or_else(|| {
                bad(format!(
                    "user {:?} of the current context is missing",
                    context.user
                ))
            })?;
        if cluster.insecure {
            return Err(bad(
                "insecure-skip-tls-verify is not honoured: give the API server's CA (certificate-authority-data)".into(),
            ));
        }
        if user.exec.is_some() || user.auth_provider.is_some() || user.username.is_some() {
            return Err(bad(
                "the gateway supports a token, a token file or a client certificate; exec plugins, auth providers and passwords are not honoured".into(),
            ));
        }
        let server = server
            .map(str::to_string)
            .or_else(|| cluster.server.clone())
            .ok_or_else(|| bad("no server: give --kube-apiserver URL".into()))?;
        let uri: http::Uri = server
            .trim_end_matches('/')
            .parse()
            .map_err(|e| bad(format!("server {server:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(format!("server {server:?} must be https://")));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad(format!("server {server:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let sni = cluster
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|e| bad(format!("{sni:?} is not a TLS server name: {e}")))?;

        let read = |p: &Path| {
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            };
            std::fs::read(&p).map_err(|e| CredentialsError::Read(p.display().to_string(), e))
        };
        let b64 = |what: &str, s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| bad(format!("{what} is not base64: {e}")))
        };
        let ca_pem = match (&cluster.ca_data, &cluster.ca) {
            (Some(d), _) => b64("certificate-authority-data", d)?,
            (None, Some(p)) => read(p)?,
            (None, None) => {
                return Err(bad(
                    "no certificate-authority: the gateway verifies the API server against the cluster's CA".into(),
                ));
            }
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem).filter_map(Result::ok) {
            roots
                .add(c)
                .map_err(|e| bad(format!("certificate-authority: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("certificate-authority holds no PEM certificate".into()));
        }
        let client_cert = match (&user.cert_data, &user.cert, &user.key_data, &user.key) {
            (None, None, None, None) => None,
            (cd, cp, kd, kp) => {
                let cert_pem = match (cd, cp) {
                    (Some(d), _) => b64("client-certificate-data", d)?,
                    (None, Some(p)) => read(p)?,
                    (None, None) => {
                        return Err(bad("a client key without a client certificate".into()));
                    }
                };
                let key_pem = match (kd, kp) {
                    (Some(d), _) => b64("client-key-data", d)?,
                    (None, Some(p)) => read(p)?,
                    (None, None) => return Err(bad("a client certificate without its key".into())),
                };
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                    .filter_map(Result::ok)
                    .collect();
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| bad(format!("client key: {e}")))?;
                if chain.is_empty() {
                    return Err(bad("client certificate holds no PEM certificate".into()));
                }
                Some((chain, key))
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(p)) => Some(String::from_utf8_lossy(&read(p)?).trim().to_string()),
            (None, None) => None,
        };
        if token.is_none() && client_cert.is_none() {
            return Err(bad(
                "the current user has no token and no client certificate".into(),
            ));
        }
        let authorization = match token {
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| bad("the token holds characters a header cannot carry".into()))?,
            ),
            None => None,
        };
        let tls = |alpn: Vec<Vec<u8>>| -> Result<Arc<ClientConfig>, CredentialsError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots.clone());
            let mut cfg = match &client_cert {
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| bad(format!("client certificate: {e}")))?,
                None => builder.with_no_client_auth(),
            };
            cfg.alpn_protocols = alpn;
            Ok(Arc::new(cfg))
        };
        Ok(Credentials {
            server: uri,
            host,
            port,
            server_name,
            tls_h2: tls(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
            tls_h1: tls(vec![b"http/1.1".to_vec()])?,
            authorization,
        })
    }
}
