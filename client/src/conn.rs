//! One HTTP/1.1 exchange with the bastion, over TCP or TLS: the CLI makes a
//! handful of requests per run, so a connection per request keeps this small
//! and never leaves a half-used connection behind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::ClientError;

/// Where the bastion's REST API is: `http://` on loopback, or `https://`
/// through the TLS proxy in front of it, with an optional path prefix.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// As given, without a trailing slash (for messages).
    pub url: String,
    https: bool,
    host: String,
    port: u16,
    /// `host[:port]` for the Host header.
    authority: String,
    /// A path the API is mounted under behind a proxy (`/postern`), or empty.
    prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |why: &str| ClientError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let trimmed = url.trim().trim_end_matches('/');
        let uri: http::Uri = trimmed.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("it needs a scheme, http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user information in the URL is not used; log in with a token",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("it must not have a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Endpoint {
            url: trimmed.to_string(),
            https,
            host,
            port,
            authority: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Trust for `https://` bastions: the system's roots, plus a private CA.
pub fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: a private CA may be all
    // there is.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_ca_pem {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("the CA file is not PEM certificates: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err("the CA file holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

pub(crate) struct Conn {
    pub endpoint: Endpoint,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

impl Conn {
    /// Sends one request and answers the response head with its body still
    /// to read (for streams); the connection lives as long as the body.
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let e = &self.endpoint;
        let unreachable = |why: String| ClientError::Unreachable {
            url: e.url.clone(),
            why,
        };
        let timed_out = || ClientError::Timeout {
            url: e.url.clone(),
            secs: self.timeout.as_secs(),
        };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect((e.host.as_str(), e.port)))
            .await
            .map_err(|_| timed_out())?
            .map_err(|err| unreachable(err.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", e.prefix))
            .header(http::header::HOST, &e.authority)
            .header(
                http::header::USER_AGENT,
                concat!("postern/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|err| ClientError::BadUrl {
                url: e.url.clone(),
                why: err.to_string(),
            })?;
        let exchange = async {
            if e.https {
                let cfg = match &self.tls {
                    Some(c) => c.clone(),
                    None => tls_config(None).map_err(|why| ClientError::Tls {
                        url: e.url.clone(),
                        why,
                    })?,
                };
                let name =
                    ServerName::try_from(e.host.clone()).map_err(|err| ClientError::Tls {
                        url: e.url.clone(),
                        why: err.to_string(),
                    })?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|err| {
                        let why = err.to_string();
                        // A plain-HTTP server answers a ClientHello with text,
                        // which rustls sees as a record of an unknown type.
                        if why.contains("InvalidContentType") || why.contains("corrupt message") {
                            ClientError::NotTls { url: e.url.clone() }
                        } else {
                            ClientError::Tls {
                                url: e.url.clone(),
                                why,
                            }
                        }
                    })?;
                exchange(TokioIo::new(tls), req, &e.url).await
            } else {
                exchange(TokioIo::new(tcp), req, &e.url).await
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| timed_out())?
    }

    /// Like [`Conn::send`], reading the whole body (at most `max` bytes).
    pub async fn send_read(
        &self,
        method: http::Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        max: usize,
    ) -> Result<(http::response::Parts, Bytes), ClientError> {
        let resp = self.send(method, path_and_query, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let url = self.endpoint.url.clone();
        let limited = http_body_util::Limited::new(body, max);
        let bytes = tokio::time::timeout(self.timeout, limited.collect())
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|err| ClientError::Decode {
                url,
                why: format!("reading the answer: {err}"),
            })?
            .to_bytes();
        Ok((parts, bytes))
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    req: http::Request<Full<Bytes>>,
    url: &str,
) -> Result<http::Response<Incoming>, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let broken = |why: String| ClientError::Unreachable {
        url: url.to_string(),
        why,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| broken(e.to_string()))?;
    // The connection task ends with the response body (or its error).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| {
        // A TLS server (the agent or Kubernetes port) answers plain HTTP with
        // a TLS alert, which hyper reads as a bad HTTP version.
        if e.is_parse() && e.to_string().contains("version") {
            ClientError::IsTls {
                url: url.to_string(),
            }
        } else {
            broken(format!("the connection broke: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_prefixes() {
        let e = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let e = Endpoint::parse("https://bastion.example.com/postern/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str(), e.https),
            ("bastion.example.com", 443, "/postern", true)
        );
        let e = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (e.host.as_str(), e.authority.as_str()),
            ("::1", "[::1]:8080")
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, why) in [
            ("127.0.0.1:8080", "scheme"),
            ("ftp://x", "http or https"),
            ("http://", "URL"),
            ("http://u:p@host", "token"),
            ("http://host/?a=b", "query"),
            ("not a url", "URL"),
        ] {
            let err = Endpoint::parse(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
