//! Errors: every non-2xx is `{"error","message"}` JSON.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::spawn_app;

async fn assert_json_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code);
    assert!(!body["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let app = spawn_app(&[]).await;
    assert_json_error(app.get("/nope").await, 404, "not_found").await;
    let post = app.client.post(app.url("/nope")).send().await.unwrap();
    assert_json_error(post, 404, "not_found").await;
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let app = spawn_app(&[]).await;
    for (method, path) in [
        ("POST", "/push?payRecordId=1"),
        ("DELETE", "/pay-callback"),
        ("PUT", "/healthz"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = app
            .client
            .request(method, app.url(path))
            .send()
            .await
            .unwrap();
        assert_json_error(answer, 405, "method_not_allowed").await;
    }
}

#[tokio::test]
async fn every_405_has_an_allow_header_listing_the_routes_methods() {
    let app = spawn_app(&[]).await;
    for (method, path, allow) in [
        ("POST", "/push?payRecordId=1", "GET"),
        ("HEAD", "/push?payRecordId=1", "GET"),
        ("POST", "/status?payRecordId=1", "GET"),
        ("PUT", "/ws?payRecordId=1", "GET"),
        ("DELETE", "/pay-callback", "GET, POST"),
        ("PUT", "/healthz", "GET"),
        ("POST", "/readyz", "GET"),
        ("POST", "/metrics", "GET"),
        ("POST", "/qr.svg?payRecordId=1", "GET"),
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/app.js", "GET, HEAD"),
        ("POST", "/paypush.js", "GET, HEAD"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405, "{method} {path}");
        assert_eq!(answer.headers()["allow"], allow, "{method} {path}");
        if method != reqwest::Method::HEAD {
            assert_json_error(answer, 405, "method_not_allowed").await;
        }
    }
}

#[tokio::test]
async fn other_content_types_are_415_json() {
    let app = spawn_app(&[]).await;
    for content_type in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        let answer = app.post_callback(content_type, "payRecordId=1").await;
        assert_json_error(answer, 415, "unsupported_media_type").await;
    }
    let none = app
        .client
        .post(app.url("/pay-callback"))
        .body("payRecordId=1")
        .send()
        .await
        .unwrap();
    assert_json_error(none, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn bodies_over_16_kib_are_413_json_declared_or_chunked() {
    let app = spawn_app(&[]).await;
    let big = format!("payRecordId=1&pad={}", "a".repeat(17 * 1024));
    let declared = app
        .post_callback("application/x-www-form-urlencoded", &big)
        .await;
    assert_json_error(declared, 413, "payload_too_large").await;

    let chunks = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 1024]))),
    );
    let chunked = app
        .client
        .post(app.url("/pay-callback"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_json_error(chunked, 413, "payload_too_large").await;
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}

#[tokio::test]
async fn malformed_json_is_400_json() {
    let app = spawn_app(&[]).await;
    for body in ["{", "[1]", "\"x\"", "{\"payRecordId\":\"1\"", "\u{0}"] {
        let answer = app.post_callback("application/json", body).await;
        assert_eq!(answer.status(), 400, "{body:?}");
    }
}

#[tokio::test]
async fn request_headers_over_16_kib_get_431_or_a_closed_connection() {
    let app = spawn_app(&[]).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // And the server keeps serving.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

/// Sends raw bytes and returns what came back before the server answered or closed.
async fn raw_exchange(app: &crate::support::TestApp, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let _ = tcp.write_all(request).await;
    let _ = tcp.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_4xx_or_a_close_and_the_server_keeps_serving() {
    let app = spawn_app(&[]).await;
    let json_with_bad_utf8 = b"{\"payRecordId\":\"\xff\xfe\"}";
    let mut bad_utf8_post = format!(
        "POST /pay-callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json_with_bad_utf8.len()
    )
    .into_bytes();
    bad_utf8_post.extend_from_slice(json_with_bad_utf8);
    let requests: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /push?payRecordId=%ZZ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /push?payRecordId=1\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n".to_vec(),
        b"GET /pay-callback?payRecordId=%FF%FE HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /pay-callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\npayRecordId=%Z".to_vec(),
        b"POST /pay-callback HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".to_vec(),
        b"POST /pay-callback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n".to_vec(),
        bad_utf8_post,
        format!("GET /push?payRecordId={} HTTP/1.1\r\nHost: x\r\n\r\n", "9".repeat(20_000)).into_bytes(),
        b"\xff\xfe\xfd\r\n\r\n".to_vec(),
    ];
    for request in &requests {
        let answer = raw_exchange(&app, request).await;
        let status = answer.get(9..12).unwrap_or("");
        assert!(
            answer.is_empty() || (answer.starts_with("HTTP/1.1 4") && status != "404"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
        if answer.contains("\r\n\r\n{") {
            assert!(
                answer
                    .to_lowercase()
                    .contains("content-type: application/json"),
                "{answer}"
            );
        }
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}
