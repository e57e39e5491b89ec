//! The fixes of the security review (issue 13): stalled bodies, duplicate
//! JSON keys, CORS for unlisted origins, log floods, `/qr.svg` with a long
//! `Host`, the demo page switch, `/metrics` on its own address, redacted
//! Redis URLs, start-up warnings and the browser-side headers.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app;

/// The contract's deadline for a body, plus room for a loaded machine.
const BODY_DEADLINE_AND_SLACK: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_its_connection_closed() {
    let app = spawn_app(&[]).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(
        b"POST /pay-callback HTTP/1.1\r\nHost: paypush\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\np",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(BODY_DEADLINE_AND_SLACK, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within the body deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "not before 10 s"
    );
}
