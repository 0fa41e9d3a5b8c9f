//! `postern login URL --sso PROVIDER --org ORG`: single sign-on. With a
//! browser, the CLI listens on a loopback port, opens (or prints) the
//! bastion's start URL, and waits up to three minutes for the bastion to send
//! the browser back with a one-time code, which it exchanges for the session.
//! Headless (`--headless`), it prints a URL and a short code to open on any
//! device and polls the bastion until the person has signed in (ten
//! minutes at most).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_client::Client;
use tokio::sync::mpsc;

use crate::CliError;
use crate::context::{Global, tls};
use crate::output::safe;

/// How long the loopback listener waits for the browser.
const BROWSER_WAIT: Duration = Duration::from_secs(180);

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn sign_in(
    global: &Global,
    url: String,
    provider: String,
    org: String,
    headless: bool,
    no_ssh: bool,
) -> Result<(), CliError> {
    let client = Client::new(&url, None, tls(global.ca_file.as_ref())?)?;
    let session = if headless {
        device(&client, &org, &provider).await?
    } else {
        browser(&client, &org, &provider).await?
    };
    // A session of another org is someone else's sign-in reaching this CLI.
    if session.org != org {
        return Err(CliError::Usage(format!(
            "the bastion answered a session of org {} where {} was asked for: not keeping it; run postern login again",
            safe(&session.org),
            safe(&org)
        )));
    }
    let key = if no_ssh {
        None
    } else {
        Some(crate::login::new_ssh_key(&format!(
            "postern:{}",
            session.user
        ))?)
    };
    crate::login::keep_session(global, &client, &session, key).await
}

async fn browser(
    client: &Client,
    org: &str,
    provider: &str,
) -> Result<postern_api::identity::SessionCreated, CliError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot listen on a loopback port for the browser: {e}"
            ))
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .port();
    // Two secrets of this run: `state` comes back on the loopback redirect
    // (a request without it is not this sign-in's), and the verifier goes
    // only to the bastion, with the code (a code without it is worth
    // nothing, so a code some page delivers here, or ours sent elsewhere,
    // gets nobody a session).
    let mut raw = [0u8; 64];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| CliError::Usage("the system random number generator failed".into()))?;
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let state = b64(&raw[..24]);
    let verifier = b64(&raw[24..]);
    let challenge = b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    let cli_redirect = format!("http://127.0.0.1:{port}/callback?state={state}");
    let start = format!(
        "{}/api/v1/auth/sso/start?org={}&provider={}&cli_redirect={}&cli_challenge={challenge}",
        client.endpoint().url.trim_end_matches('/'),
        percent(org),
        percent(provider),
        percent(&cli_redirect)
    );
    eprintln!("Sign in with {provider} in your browser. If it does not open, open this URL:");
    // The URL on stdout alone, so a script (or a test) can follow it.
    crate::outln!("{start}");
    if std::env::var_os("DISPLAY").is_some() || std::env::var_os("BROWSER").is_some() {
        let _ = std::process::Command::new("xdg-open")
            .arg(&start)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let (tx, mut rx) = mpsc::channel::<Result<String, String>>(1);
    let serve = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    let state = state.clone();
                    async move {
                        let params: Vec<(String, String)> =
                            serde_urlencoded::from_str(req.uri().query().unwrap_or_default())
                                .unwrap_or_default();
                        let param = |name: &str| {
                            params
                                .iter()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.clone())
                        };
                        let ours = req.uri().path() == "/callback"
                            && param("state").as_deref() == Some(state.as_str());
                        let (status, text) = match (param("code"), param("error")) {
                            (Some(c), _) if ours && c.len() <= 256 => {
                                let _ = tx.try_send(Ok(c));
                                (
                                    200,
                                    "Signed in to Postern. You can close this window and go back to your terminal.",
                                )
                            }
                            (None, Some(e)) if ours => {
                                let _ = tx.try_send(Err(e));
                                (401, "The sign-in was refused; your terminal says why.")
                            }
                            _ => (404, "Not a Postern sign-in."),
                        };
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; charset=utf-8")
                            .header("cache-control", "no-store")
                            .body(Full::new(Bytes::from(text)))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                )
                .await;
            });
        }
    };
    let code = tokio::select! {
        c = rx.recv() => c,
        _ = serve => None,
        _ = tokio::time::sleep(BROWSER_WAIT) => None,
    }
    .ok_or_else(|| {
        CliError::Usage(format!(
            "no answer from the browser within {} s: run postern login again, or use --headless on a machine without a browser",
            BROWSER_WAIT.as_secs()
        ))
    })?
    .map_err(|why| CliError::Usage(format!("the sign-in was refused: {}", safe(&why))))?;
    collected(client.sso_collect(&code, Some(&verifier)).await?)
}

fn collected(
    c: postern_api::identity::Collected,
) -> Result<postern_api::identity::SessionCreated, CliError> {
    c.session.ok_or_else(|| {
        CliError::Usage(
            "the bastion has no session for this sign-in: run postern login again".into(),
        )
    })
}

async fn device(
    client: &Client,
    org: &str,
    provider: &str,
) -> Result<postern_api::identity::SessionCreated, CliError> {
    let d = client.sso_device(org, provider).await?;
    eprintln!(
        "On any device with a browser, open the URL below, type the code, and sign in with {provider} (valid {} minutes):",
        d.expires_in / 60
    );
    crate::outln!("{}", d.verification_url);
    crate::outln!("code: {}", safe(&d.user_code));
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(d.expires_in.clamp(1, 900) as u64);
    let every = Duration::from_secs(d.interval.clamp(1, 10) as u64);
    loop {
        tokio::time::sleep(every).await;
        let c = client.sso_collect(&d.poll_code, None).await?;
        if c.status == "done" {
            return collected(c);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Usage(
                "the code expired before anyone signed in: run postern login --headless again"
                    .into(),
            ));
        }
    }
}
