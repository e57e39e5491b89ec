//! Health, metrics, the demo page, configuration and shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    next_close, next_json, refused_at_start, spawn_app, spawn_binary, EventStream, PATIENCE,
};

#[tokio::test]
async fn healthz_and_readyz_answer_json() {
    let app = spawn_app(&[]).await;
    let health: Value = app.get("/healthz").await.json().await.unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready, serde_json::json!({"status": "ready"}));
}

#[tokio::test]
async fn metrics_count_callbacks_and_deliveries_without_ids_in_labels() {
    let app = spawn_app(&[]).await;
    let mut stream = app.push_pending("424242").await;
    app.callback("424242", None).await;
    app.callback("424242", None).await;
    stream.next_event().await.unwrap();
    let answer = app.get("/metrics").await;
    assert!(answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = answer.text().await.unwrap();
    assert!(
        text.contains(r#"paypush_callbacks_total{result="recorded",status="SUCCESS"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"paypush_callbacks_total{result="duplicate",status="SUCCESS"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("paypush_outcomes_delivered_total{transport=\"sse\"} 1"),
        "{text}"
    );
    assert!(text.contains("paypush_delivery_seconds_count 1"), "{text}");
    assert!(!text.contains("424242"), "no payRecordId in metrics");
}

#[tokio::test]
async fn root_serves_the_demo_page() {
    let app = spawn_app(&[]).await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("paypush"));
}

#[tokio::test]
async fn static_dir_serves_a_folder_instead() {
    let dir = std::env::temp_dir().join(format!("paypush-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<p>custom page</p>").unwrap();
    std::fs::write(dir.join("app.js"), "let x = 1;").unwrap();
    let app = spawn_app(&["--static-dir", dir.to_str().unwrap()]).await;
    assert_eq!(
        app.get("/").await.text().await.unwrap(),
        "<p>custom page</p>"
    );
    let js = app.get("/app.js").await;
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(app.get("/../Cargo.toml").await.status(), 404);
    assert_eq!(app.get("/%2e%2e/Cargo.toml").await.status(), 404);
    assert_eq!(app.get("/missing.css").await.status(), 404);
    std::fs::remove_dir_all(dir).unwrap();
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

#[tokio::test]
async fn bad_configuration_stops_start_up_with_one_line_and_exit_2() {
    for flags in [
        &["--push-timeout", "soon"][..],
        &["--max-streams", "0"],
        &["--bind", "nowhere"],
    ] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"));
        command.args(flags);
        let stderr = refused_at_start(command).await;
        assert!(stderr.starts_with("error:"), "{flags:?}: {stderr}");
    }
}

#[tokio::test]
async fn environment_variables_configure_the_server() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"))
        .env("PAYPUSH_KEEP_ALIVE", "never")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), output)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("keep-alive"));
}
