//! The client's tests, apart from it.

use super::*;

#[test]
fn error_answers_become_messages_that_say_what_to_do() {
    let e = api_error(
        401,
        br#"{"error":{"code":"unauthorized","message":"token expired"}}"#,
    );
    assert!(e.to_string().contains("postern login"), "{e}");
    let e = api_error(
        403,
        br#"{"error":{"code":"forbidden","message":"needs execute on demo"}}"#,
    );
    assert_eq!(e.to_string(), "permission denied: needs execute on demo");
    let e = api_error(502, b"<html>\x1b[31mBad gateway</html>");
    assert_eq!(
        e.to_string(),
        "the bastion answered 502: <html> [31mBad gateway</html>"
    );
    let e = api_error(500, &[b'x'; 2000]);
    assert!(e.to_string().chars().count() < 600);
}

/// A server that sends an SSE head, then `body` in pieces `gap` apart.
async fn sse_server(pieces: Vec<&'static str>, gap: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req).await;
        s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        for p in pieces {
            tokio::time::sleep(gap).await;
            let chunk = format!("{:x}\r\n{p}\r\n", p.len());
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    format!("http://{addr}")
}

const FINISHED: &str = "id: 7\nevent: execution_finished\ndata: {\"event\":\"execution_finished\",\"status\":\"succeeded\",\"node_counts\":{\"pending\":0,\"running\":0,\"succeeded\":1,\"failed\":0,\"timed_out\":0,\"unreachable\":0,\"not_approved\":0,\"lost\":0},\"at\":\"2026-11-30T00:00:00Z\"}\n\n";

#[tokio::test]
async fn keep_alives_keep_a_quiet_stream_alive_and_silence_ends_it() {
    // Keep-alive comments every 200 ms for 2 s, against an idle limit of
    // 500 ms: the event after them still arrives.
    let mut pieces = vec![": keep-alive\n\n"; 10];
    pieces.push(FINISHED);
    let url = sse_server(pieces, Duration::from_millis(200)).await;
    let c = Client::new(&url, Some("pat_x".into()), None)
        .unwrap()
        .with_stream_idle(Duration::from_millis(500));
    let mut s = c.events("p", "e", "x", None).await.unwrap().unwrap();
    let ev = s.next().await.unwrap().unwrap();
    assert_eq!(ev.id.as_deref(), Some("7"));
    assert_eq!(ev.event.name(), "execution_finished");

    // Nothing at all for longer than the limit: a timeout, not a hang.
    let url = sse_server(vec![], Duration::from_secs(0)).await;
    let c = Client::new(&url, None, None)
        .unwrap()
        .with_stream_idle(Duration::from_millis(300));
    let mut s = c.events("p", "e", "x", None).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let r = s.next().await.unwrap();
    assert!(matches!(r, Err(ClientError::Timeout { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
