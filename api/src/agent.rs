//! The agent channel's contract: ALPN names, enrollment messages and the routes the
//! agent serves to the bastion over the reversed HTTP/2 connection.

use serde::{Deserialize, Serialize};

/// ALPN for the mutually authenticated, reversed HTTP/2 agent channel.
pub const ALPN_CHANNEL: &[u8] = b"postern-agent/1";
/// ALPN for enrollment: HTTP/1.1, server-authenticated only.
pub const ALPN_ENROLL: &[u8] = b"http/1.1";

/// Enrollment tokens look like `pet_<id>_<secret>`.
pub const ENROLL_TOKEN_PREFIX: &str = "pet";
pub const ENROLL_PATH: &str = "/agent/v1/enroll";
/// Largest enrollment request (a CSR and a few fields).
pub const ENROLL_MAX_BODY: usize = 16 * 1024;
/// GET, unauthenticated, on the agent port beside enrollment: a POSIX sh script
/// that installs the agent package and joins (the bastion's `install_command`).
pub const INSTALL_SCRIPT_PATH: &str = "/agent/v1/install.sh";
/// GET, unauthenticated, on the agent port: `<this>postern-agent_<version>_<arch>.deb`.
pub const PACKAGES_PATH: &str = "/agent/v1/packages/";

/// Where a bastion's agent port is, from `https://host[:port]`: what the agent
/// dials and the bastion names in its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerUrl {
    /// The URL as given, without a trailing slash.
    pub url: String,
    /// The host, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl ControllerUrl {
    pub fn parse(url: &str) -> Result<ControllerUrl, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("controller URL {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("controller URL {url:?} must start with https://"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("controller URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(ControllerUrl {
            url: url.trim_end_matches('/').to_string(),
            host,
            port: uri.port_u16().unwrap_or(443),
        })
    }
}

/// HTTP/2 flow-control windows of the agent channel (and of replica peering,
/// which carries the same streams). A stream's window is enough for a
/// relayed SSH stream at full speed; the connection's is many times larger, so a
/// few stalled streams (an SSH client that stops reading) cannot use up the whole
/// channel and block cmdexec or other sessions to the node: 64 streams must stall
/// at once before the channel does. Any Kubernetes answer may stall, not only a
/// watch, so the bastion bounds what they hold by bytes instead: one user's at
/// most eight stream windows of a connection, the door's at most half of it
/// (`bastion/src/kube/flow.rs`). Credit costs nothing until data is actually in
/// flight, and what may be buffered stays bounded by the streams' own windows.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 256 * 1024 * 1024;
/// Streams the agent serves at once on its channel (SSH sessions, Kubernetes
/// requests and watches, commands): hyper's default of 200 let one user's
/// watches take every stream of a node.
pub const MAX_CHANNEL_STREAMS: u32 = 8192;
pub const MAX_FRAME: u32 = 256 * 1024;

/// Agent routes, served by the agent and called by the bastion.
pub mod routes {
    pub const HEALTH: &str = "/v1/health";
    pub const CSR: &str = "/v1/csr";
    pub const CERT: &str = "/v1/cert";
    /// POST: run a command; GET: the exec IDs whose results are spooled, final.
    pub const EXEC: &str = "/v1/exec";
    pub const EXEC_ONE: &str = "/v1/exec/{exec_id}";
    pub const EXEC_STREAM: &str = "/v1/exec/{exec_id}/stream";
    pub const EXEC_CANCEL: &str = "/v1/exec/{exec_id}/cancel";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub protocol: u32,
    pub token: String,
    pub hostname: String,
    pub csr_pem: String,
    pub agent_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    pub node_id: String,
    pub state: crate::admin::NodeState,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// The agent's reply to `POST /v1/csr`: a fresh key pair was made on the node and
/// only this request leaves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrResponse {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallCert {
    pub cert_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub node_id: String,
    pub hostname: String,
    pub agent_version: String,
    /// The agent was started with `--kube-apiserver`: it CAN forward Kubernetes
    /// API requests to its cluster's API server. Only a capability: the bastion
    /// sends it requests only if a project admin granted the node the gateway
    /// role (`PUT …/nodes/{node}/kube-gateway`); any agent may say this. Named
    /// `kube_gateway` on the wire, as agents have always sent it.
    #[serde(default, rename = "kube_gateway")]
    pub kube_gateway_capable: bool,
    /// The agent reads keys from its Kubernetes Node object (`--kube-node-keys`),
    /// served at `GET /v1/kube-keys`. Absent from older agents.
    #[serde(default)]
    pub kube_node_keys: bool,
    /// The agent streams output while a command runs and can cancel it
    /// (`?stream=1`, `/v1/exec/{id}/stream`, `/v1/exec/{id}/cancel`). Absent
    /// from older agents, which are sent commands the old way.
    #[serde(default)]
    pub exec_stream: bool,
    /// The agent takes the release of a result on the command's own request
    /// (`POST /v1/exec?stream=1&release=1`): the body is the command's JSON
    /// and a newline, held open until the bastion has stored the result and
    /// sends [`RELEASE_LINE`]; one request per node instead of a POST and a
    /// DELETE. Absent from older agents, which are sent the DELETE.
    #[serde(default)]
    pub exec_release_inline: bool,
    /// How many finished results the agent still spools (at most
    /// `MAX_SPOOLED_LISTED`): with none, the bastion skips asking for the
    /// list at connect. Absent from older agents, which are asked.
    #[serde(default)]
    pub spooled_finished: Option<u32>,
    /// Labels from `--label k=v`, validated by the agent; the bastion checks them again.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What the bastion sends on a command's held-open request body once the
/// node's result is stored: the agent may drop its spooled copy.
pub const RELEASE_LINE: &[u8] = b"release\n";

/// `sha256:<hex>` of the CA certificate's DER, the pin carried by the join command.
pub fn format_ca_hash(digest: &[u8]) -> String {
    let mut s = String::with_capacity(7 + digest.len() * 2);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses `sha256:<64 hex>` into the digest, with a message that says what is expected.
pub fn parse_ca_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s.strip_prefix("sha256:").ok_or_else(|| {
        format!("CA hash {s:?} must start with 'sha256:' (copy it from the join command)")
    })?;
    if hex.len() != 64 {
        return Err(format!(
            "CA hash must have 64 hex digits after 'sha256:', got {}",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| "CA hash is not hex".to_string())?;
        out[i] = u8::from_str_radix(pair, 16)
            .map_err(|_| format!("CA hash has a non-hex digit in {pair:?}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_hash_round_trip() {
        let d = [0xabu8; 32];
        let s = format_ca_hash(&d);
        assert_eq!(parse_ca_hash(&s), Ok(d));
        assert!(parse_ca_hash("abc").is_err());
        assert!(parse_ca_hash("sha256:zz").is_err());
        assert!(parse_ca_hash(&format!("sha256:{}", "g".repeat(64))).is_err());
    }
}

/// `GET /v1/exec`: finished results the agent still holds, so a bastion can drop
/// those it has stored (a `DELETE` lost to a restart or a cut link).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpooledExecs {
    pub finished: Vec<String>,
}

/// Most exec IDs in one [`SpooledExecs`].
pub const MAX_SPOOLED_LISTED: usize = 10_000;
