//! The demo page's payment QR code: `GET /qr.svg?payRecordId=N`.

use serde_json::Value;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{spawn_app, PATIENCE};

#[tokio::test]
async fn qr_svg_encodes_the_callback_url_of_the_payment() {
    let app = spawn_app(&[]).await;
    let answer = app.get("/qr.svg?payRecordId=9007199254740993").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "image/svg+xml");
    let body = answer.text().await.unwrap();
    assert!(body.contains("<svg"), "{body}");
    let url = format!(
        "http://{}/pay-callback?payRecordId=9007199254740993&status=SUCCESS",
        app.addr
    );
    assert_eq!(Some(body), paypush::qr::svg(&url));
}

#[tokio::test]
async fn qr_svg_without_a_valid_pay_record_id_is_400_json() {
    let app = spawn_app(&[]).await;
    for path in [
        "/qr.svg",
        "/qr.svg?payRecordId=0",
        "/qr.svg?payRecordId=1&payRecordId=2",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status(), 400, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_pay_record_id", "{path}");
    }
}

#[tokio::test]
async fn qr_svg_refuses_other_methods_with_405_json() {
    let app = spawn_app(&[]).await;
    let answer = app
        .client
        .post(app.url("/qr.svg?payRecordId=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
}

/// A `Host` over the 255 bytes `/qr.svg` encodes.
fn long_host() -> String {
    format!("{}.example.com", "a".repeat(288))
}

/// `GET path` over raw TCP with this `Host`; the whole answer as text.
async fn get_with_host(app: &crate::support::TestApp, path: &str, host: &str) -> String {
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn qr_svg_refuses_a_host_over_255_bytes_with_400_json() {
    let app = spawn_app(&[]).await;
    let answer = get_with_host(&app, "/qr.svg?payRecordId=1308", &long_host()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""error":"invalid_request""#), "{answer}");
}

#[tokio::test]
async fn qr_svg_encodes_the_public_url_whatever_the_host() {
    let app = spawn_app(&["--public-url", "https://pay.example.com/"]).await;
    let answer = get_with_host(&app, "/qr.svg?payRecordId=1309", &long_host()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let expected =
        paypush::qr::svg("https://pay.example.com/pay-callback?payRecordId=1309&status=SUCCESS")
            .unwrap();
    assert!(answer.ends_with(&expected), "{answer}");
}
