//! `POST /v1/connect/{port}`: a full-duplex byte stream between the bastion and a
//! local TCP port, carried by one HTTP/2 stream (request body up, response body
//! down). Only the ports the agent was configured with can be reached; port 22
//! names the node's sshd, wherever `--sshd-port` puts it.
//!
//! Every relay belongs to the channel it arrived on: when that channel ends, the
//! relays it carried stop with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use postern_api::ErrorBody;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;

use crate::doctor::DoctorOptions;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// Which local port a requested port maps to, and what is known to stop
/// sshd from letting anyone in.
#[derive(Debug, Clone)]
pub struct Ports {
    pub sshd: u16,
    pub sshd_check: Option<Arc<SshdCheck>>,
}

/// How long a finding about sshd's keys helper is reused: a fixed helper is
/// noticed within this.
const CHECK_FRESH: Duration = Duration::from_secs(5);

/// `doctor::keys_helper_problem`, asked at most every few seconds however
/// many sessions open.
#[derive(Debug)]
pub struct SshdCheck {
    opts: DoctorOptions,
    last: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

impl SshdCheck {
    pub fn new(opts: DoctorOptions) -> SshdCheck {
        SshdCheck {
            opts,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn problem(&self) -> Option<String> {
        let mut last = self.last.lock().await;
        if let Some((at, found)) = &*last
            && at.elapsed() < CHECK_FRESH
        {
            return found.clone();
        }
        let found = crate::doctor::keys_helper_problem(&self.opts).await;
        if let Some(p) = &found {
            tracing::warn!(problem = %p, "SSH sessions to this node will fail");
        }
        *last = Some((Instant::now(), found.clone()));
        found
    }
}

impl Ports {
    pub fn local(&self, requested: u16) -> Option<u16> {
        (requested == 22).then_some(self.sshd)
    }
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(ErrorBody::new("connect_refused", msg))).into_response()
}

/// `channel_ended` is cancelled when the agent channel that carried `req` ends.
pub async fn connect(
    ports: Ports,
    channel_ended: CancellationToken,
    port: u16,
    req: Request,
) -> Response {
    let Some(local) = ports.local(port) else {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "port {port} is not open to the bastion on this node (only 22, the node's sshd)"
            ),
        );
    };
    if let Some(problem) = match &ports.sshd_check {
        Some(c) => c.problem().await,
        None => None,
    } {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, problem);
    }
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", local)))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("sshd at 127.0.0.1:{local} refused: {e}; is sshd running on the node?"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::GATEWAY_TIMEOUT,
                format!("sshd at 127.0.0.1:{local} did not accept within {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    let _ = tcp.set_nodelay(true);
    let (rd, mut wr) = tcp.into_split();
    let mut up = req.into_body();
    // Ends when the bastion ends the request body (client EOF), or with the
    // channel, even while a write to an sshd that stopped reading is pending.
    // No write deadline: a slow consumer on the node is legitimate, and flow
    // control already stops the client.
    tokio::spawn(async move {
        let copy = async {
            while let Some(frame) = up.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data()
                    && wr.write_all(&data).await.is_err()
                {
                    break;
                }
            }
        };
        tokio::select! {
            _ = copy => {}
            _ = channel_ended.cancelled() => {}
        }
        let _ = wr.shutdown().await;
    });
    Response::new(Body::from_stream(ReaderStream::with_capacity(
        rd, READ_CHUNK,
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;
    use tokio_util::io::ReaderStream;
    use tokio_util::sync::CancellationToken;

    use super::{Ports, connect};

    /// A request whose body stays open while the returned writer lives, as the
    /// bastion's does for a whole SSH session.
    fn open_request() -> (tokio::io::DuplexStream, Request) {
        let (writer, reader) = tokio::io::duplex(64 * 1024);
        let req = Request::builder()
            .method("POST")
            .body(Body::from_stream(ReaderStream::new(reader)))
            .unwrap();
        (writer, req)
    }

    async fn error_text(resp: axum::response::Response) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_relay_stops_when_its_channel_ends() {
        let sshd = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ports = Ports {
            sshd: sshd.local_addr().unwrap().port(),
            sshd_check: None,
        };
        let (mut client, req) = open_request();
        let ended = CancellationToken::new();
        let resp = connect(ports, ended.clone(), 22, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let (mut conn, _) = timeout(Duration::from_secs(5), sshd.accept())
            .await
            .unwrap()
            .unwrap();
        client.write_all(b"SSH-2.0-x\r\n").await.unwrap();
        let mut got = [0u8; 11];
        timeout(Duration::from_secs(5), conn.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"SSH-2.0-x\r\n");

        // The bastion never ends the body; the channel that carried it goes away.
        ended.cancel();
        let mut rest = Vec::new();
        let n = timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
            .await
            .expect("sshd's connection must be closed when the channel ends")
            .unwrap();
        assert_eq!(n, 0);
        drop(client);
        drop(resp);
    }

    #[tokio::test]
    async fn only_sshd_is_reachable_and_a_dead_sshd_is_named() {
        let sshd = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = sshd.local_addr().unwrap().port();
        let ports = Ports {
            sshd: port,
            sshd_check: None,
        };
        let (_client, req) = open_request();
        let resp = connect(ports.clone(), CancellationToken::new(), 80, req).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(error_text(resp).await.contains("port 80 is not open"));
        // Nothing was dialled for the refused port.
        assert!(
            timeout(Duration::from_millis(200), sshd.accept())
                .await
                .is_err()
        );

        drop(sshd);
        let (_client, req) = open_request();
        let resp = connect(ports, CancellationToken::new(), 22, req).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(
            error_text(resp)
                .await
                .contains("is sshd running on the node?")
        );
    }
}
