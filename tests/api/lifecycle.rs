//! Health, readiness and shutdown: in process, and the built binary on
//! SIGTERM.

use std::time::Duration;

use serde_json::Value;

use crate::support::{next_close, next_json, spawn_app, spawn_binary, EventStream, PATIENCE};

#[tokio::test]
async fn healthz_and_readyz_answer_json() {
    let app = spawn_app(&[]).await;
    let health: Value = app.get("/healthz").await.json().await.unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready, serde_json::json!({"status": "ready"}));
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_refuses_new_connections() {
    let mut app = spawn_app(&[]).await;
    let mut stream = app.push_pending("50").await;
    app.shut_down().await;
    assert!(stream.ends().await);
    assert!(reqwest::get(app.url("/healthz")).await.is_err());
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_the_process_exits_0() {
    let mut binary = spawn_binary(&[]).await;
    let url = format!("http://{}/push?payRecordId=60", binary.addr);
    let mut stream = EventStream::new(reqwest::get(&url).await.unwrap());
    assert_eq!(
        stream.next_event().await.unwrap().event.as_deref(),
        Some("pending")
    );

    binary.signal("TERM");

    assert!(stream.ends().await, "the stream ends on shutdown");
    let status = tokio::time::timeout(PATIENCE, binary.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_answers_long_polls_pending() {
    let mut binary = spawn_binary(&[]).await;
    let url = format!("ws://{}/ws?payRecordId=61", binary.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_json(&mut socket).await["status"], "PENDING");
    let status_url = format!("http://{}/status?payRecordId=62&wait=25", binary.addr);
    let poll = tokio::spawn(async move { reqwest::get(status_url).await.unwrap().text().await });
    // Let the long-poll register before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;

    binary.signal("TERM");

    assert_eq!(next_close(&mut socket).await.0, 1001);
    let answer = tokio::time::timeout(PATIENCE, poll).await.unwrap().unwrap();
    assert!(answer.unwrap().contains("PENDING"));
    let status = tokio::time::timeout(PATIENCE, binary.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
