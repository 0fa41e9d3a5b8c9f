//! What can go wrong talking to a bastion, each said so that a person knows
//! what to do next.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "{url:?} is not a bastion URL: {why} (expected e.g. http://127.0.0.1:8080 or https://bastion.example.com)"
    )]
    BadUrl { url: String, why: String },
    #[error(
        "cannot reach the bastion at {url}: {why}. Is it running, and is the URL right? (postern login URL, or POSTERN_URL)"
    )]
    Unreachable { url: String, why: String },
    #[error(
        "TLS with {url} failed: {why}. If the bastion's certificate is from a private CA, give it with --ca-file (or POSTERN_CA_FILE)"
    )]
    Tls { url: String, why: String },
    #[error(
        "{url} answered in plain HTTP, not TLS: use http:// for it (the bastion's REST API is plain HTTP on \
         loopback; https:// is for a TLS proxy in front of it)"
    )]
    NotTls { url: String },
    #[error(
        "{url} speaks TLS, not plain HTTP: it is not the REST API (perhaps the agent or Kubernetes port). \
         Use the bastion's --api-addr, or https:// for a TLS proxy in front of it"
    )]
    IsTls { url: String },
    #[error(
        "the bastion at {url} did not answer within {secs} s; retry, or check its health at {url}/readyz"
    )]
    Timeout { url: String, secs: u64 },
    /// The bastion answered with an error status and body.
    #[error("{}", api_message(*status, code, message))]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "the bastion at {url} gave an answer this client does not understand ({why}); is it a Postern bastion of the same version?"
    )]
    Decode { url: String, why: String },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn api_message(status: u16, code: &str, message: &str) -> String {
    match status {
        401 => format!(
            "not logged in or the token is no longer valid ({message}); log in again: postern login URL (or set POSTERN_TOKEN)"
        ),
        403 => format!("permission denied: {message}"),
        // Our 404s already say what was not found.
        404 if message.contains("not found") => message.to_string(),
        404 => format!("not found: {message}"),
        429 => format!("too many requests: {message}; wait and retry"),
        503 => format!("the bastion is unavailable: {message}; retry shortly"),
        _ if code.is_empty() => format!("the bastion answered {status}: {message}"),
        _ => message.to_string(),
    }
}
