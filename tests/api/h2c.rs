//! HTTP/2 with prior knowledge (h2c), as a proxy speaks it upstream, on the
//! same listener as HTTP/1.1: the contract holds on both.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Version;
use serde_json::Value;

use crate::support::{spawn_app, EventStream, TestApp};

/// A client that speaks only HTTP/2, without a TLS handshake first.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client")
}

async fn h2c_push(app: &TestApp, client: &reqwest::Client, id: &str) -> EventStream {
    let response = client
        .get(app.url(&format!("/push?payRecordId={id}")))
        .send()
        .await
        .expect("push over h2c");
    assert_eq!(response.version(), Version::HTTP_2);
    let mut stream = EventStream::new(response);
    assert_eq!(stream.response_status, 200);
    assert_eq!(
        stream.headers["content-type"], "text/event-stream",
        "{:?}",
        stream.headers
    );
    let pending = stream.next_event().await.expect("pending");
    assert_eq!(pending.event.as_deref(), Some("pending"));
    stream
}

#[tokio::test]
async fn a_stream_over_h2c_gets_its_outcome_and_ends() {
    let app = spawn_app(&[]).await;
    let client = h2c();
    let mut stream = h2c_push(&app, &client, "31").await;
    assert!(
        !stream.headers.contains_key("connection"),
        "no connection-specific header over HTTP/2"
    );
    let answer = client
        .get(app.url("/pay-callback?payRecordId=31&status=FAILED"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    let outcome = stream.next_event().await.expect("the outcome");
    assert_eq!(outcome.json()["status"], "FAILED");
    assert_eq!(outcome.json()["completedAt"], answer["completedAt"]);
    assert!(outcome.id.is_some());
    assert!(stream.ends().await);
}

#[tokio::test]
async fn hundreds_of_streams_share_one_h2c_connection() {
    let app = spawn_app(&["--max-streams-per-payment", "500"]).await;
    let client = h2c();
    let streams = join_all((0..300).map(|n| {
        let (app, client) = (&app, &client);
        async move { h2c_push(app, client, &(1000 + n % 3).to_string()).await }
    }))
    .await;
    assert_eq!(app.metric("paypush_streams_open").await, 300.0);
    for id in 1000..1003 {
        let answer = client
            .get(app.url(&format!("/pay-callback?payRecordId={id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    for mut stream in streams {
        assert_eq!(
            stream.next_event().await.unwrap().json()["status"],
            "SUCCESS"
        );
        assert!(stream.ends().await);
    }
}

#[tokio::test]
async fn errors_over_h2c_are_the_same_json() {
    let app = spawn_app(&[]).await;
    let client = h2c();
    for (path, status, code) in [
        ("/push?payRecordId=0", 400, "invalid_pay_record_id"),
        ("/nowhere", 404, "not_found"),
        (
            "/pay-callback?payRecordId=1&status=PAID",
            400,
            "invalid_status",
        ),
    ] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"], code, "{path}");
    }
    let response = client
        .post(app.url("/pay-callback"))
        .header("content-type", "text/plain")
        .body("payRecordId=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = client
        .post(app.url("/pay-callback"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x".repeat(17 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn http1_and_h2c_share_the_listener_and_the_hub() {
    let app = spawn_app(&[]).await;
    let mut over_h2 = h2c_push(&app, &h2c(), "32").await;
    let mut over_h1 = app.push_pending("32").await;
    assert_eq!(app.callback("32", None).await.status(), 200);
    for stream in [&mut over_h2, &mut over_h1] {
        assert_eq!(
            stream.next_event().await.unwrap().json()["status"],
            "SUCCESS"
        );
    }
}

#[tokio::test]
async fn shutdown_ends_h2c_streams() {
    let mut app = spawn_app(&[]).await;
    let client = h2c();
    let mut streams = Vec::new();
    for id in 40..45 {
        streams.push(h2c_push(&app, &client, &id.to_string()).await);
    }
    let stopping = tokio::spawn(async move {
        app.shut_down().await;
    });
    for mut stream in streams {
        assert!(stream.ends().await, "a stream stayed open");
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops in time")
        .unwrap();
}
