//! `POST /v1/connect/{port}`: a full-duplex byte stream between the bastion and a
//! local TCP port, carried by one HTTP/2 stream (request body up, response body
//! down). Only the ports the agent was configured with can be reached; port 22
//! names the node's sshd, wherever `--sshd-port` puts it.

use std::time::Duration;

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

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// Which local port a requested port maps to.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub sshd: u16,
}

impl Ports {
    pub fn local(&self, requested: u16) -> Option<u16> {
        (requested == 22).then_some(self.sshd)
    }
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(ErrorBody::new("connect_refused", msg))).into_response()
}

pub async fn connect(ports: Ports, port: u16, req: Request) -> Response {
    let Some(local) = ports.local(port) else {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "port {port} is not open to the bastion on this node (only 22, the node's sshd)"
            ),
        );
    };
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
    // Ends when the bastion ends the request body (client EOF) or the channel dies.
    tokio::spawn(async move {
        while let Some(frame) = up.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && wr.write_all(&data).await.is_err()
            {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    Response::new(Body::from_stream(ReaderStream::with_capacity(
        rd, READ_CHUNK,
    )))
}
