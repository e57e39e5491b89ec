//! `GET /push`: the event stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{spawn_app, PATIENCE};

#[tokio::test]
async fn waiting_stream_gets_pending_then_the_outcome_then_ends() {
    let app = spawn_app(&[]).await;
    let mut stream = app.push("123").await;
    assert_eq!(stream.response_status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");

    let pending = stream.next_event().await.expect("pending");
    assert_eq!(pending.event.as_deref(), Some("pending"));
    assert_eq!(pending.retry, Some(3000));
    assert_eq!(
        pending.json(),
        serde_json::json!({"payRecordId": "123", "status": "PENDING"})
    );

    let answer = app.callback("123", None).await;
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();

    let outcome = stream.next_event().await.expect("outcome");
    assert_eq!(
        outcome.event, None,
        "the outcome is unnamed so onmessage gets it"
    );
    assert!(outcome.id.as_deref().is_some_and(|id| !id.is_empty()));
    let data = outcome.json();
    assert_eq!(data["payRecordId"], "123");
    assert_eq!(data["status"], "SUCCESS");
    assert_eq!(data["message"], "支付成功");
    assert_eq!(data["completedAt"], answer["completedAt"]);
    let completed_at = data["completedAt"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(completed_at).is_ok() && completed_at.ends_with('Z'));
    assert!(stream.ends().await);
}

#[tokio::test]
async fn the_server_closes_the_connection_once_the_stream_has_ended() {
    let app = spawn_app(&[]).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /push?payRecordId=124 HTTP/1.1\r\nHost: {}\r\n\r\n",
        app.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut bytes = [0; 1024];
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut bytes))
            .await
            .expect("the head in time")
            .unwrap();
        assert!(n > 0, "the connection closed before the head");
        head.extend_from_slice(&bytes[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");

    assert_eq!(app.callback("124", None).await.status(), 200);
    // Read to the end without closing our side: only the server's close ends it.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection after the outcome")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"status\":\"SUCCESS\""), "{rest}");
    assert!(rest.ends_with("0\r\n\r\n"), "the chunked body ends: {rest}");
}

#[tokio::test]
async fn late_subscriber_gets_recorded_outcome_at_once_without_pending() {
    let app = spawn_app(&[]).await;
    assert_eq!(app.callback("77", Some("FAILED")).await.status(), 200);

    let mut stream = app.push("77").await;
    assert_eq!(stream.response_status, 200);
    let outcome = stream.next_event().await.expect("outcome");
    assert_eq!(outcome.event, None);
    assert_eq!(outcome.json()["status"], "FAILED");
    assert_eq!(outcome.json()["message"], "支付失败");
    assert!(stream.ends().await);
}

#[tokio::test]
async fn every_stream_of_a_payment_gets_the_outcome() {
    let app = spawn_app(&[]).await;
    let mut phone = app.push_pending("5").await;
    let mut desktop = app.push_pending("5").await;
    let mut other = app.push_pending("6").await;

    app.callback("5", Some("closed")).await;

    for stream in [&mut phone, &mut desktop] {
        let outcome = stream.next_event().await.expect("outcome");
        assert_eq!(outcome.json()["status"], "CLOSED");
        assert_eq!(outcome.json()["message"], "订单已关闭");
        assert!(stream.ends().await);
    }
    assert!(
        other.next_within(Duration::from_millis(300)).await.is_err(),
        "payment 6 still waits"
    );
}

#[tokio::test]
async fn last_event_id_of_the_recorded_outcome_gets_204() {
    let app = spawn_app(&[]).await;
    app.callback("9", None).await;
    let mut first = app.push("9").await;
    let id = first.next_event().await.unwrap().id.unwrap();

    let again = app
        .client
        .get(app.url("/push?payRecordId=9"))
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);

    let stale = app
        .client
        .get(app.url("/push?payRecordId=9"))
        .header("last-event-id", "something-else")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
}

#[tokio::test]
async fn stream_times_out_with_a_timeout_event_then_ends() {
    let app = spawn_app(&["--push-timeout", "300ms"]).await;
    let mut stream = app.push_pending("11").await;
    let timeout = stream.next_event().await.expect("timeout event");
    assert_eq!(timeout.event.as_deref(), Some("timeout"));
    assert_eq!(
        timeout.json(),
        serde_json::json!({"payRecordId": "11", "status": "PENDING"})
    );
    assert!(stream.ends().await);
    app.wait_for_metric("paypush_push_timeouts_total{transport=\"sse\"}", 1.0)
        .await;
    app.wait_for_metric("paypush_streams_open", 0.0).await;
}

#[tokio::test]
async fn waiting_stream_sends_keep_alive_comments() {
    let app = spawn_app(&["--keep-alive", "100ms"]).await;
    let mut stream = app.push_pending("12").await;
    let comment = stream.next().await.expect("a keep-alive");
    assert!(comment.comment.is_some(), "{comment:?}");
    let another = stream.next().await.expect("another keep-alive");
    assert!(another.comment.is_some(), "{another:?}");
}

#[tokio::test]
async fn outcome_is_forgotten_after_the_ttl() {
    let app = spawn_app(&["--outcome-ttl", "200ms"]).await;
    app.callback("13", None).await;
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 1.0);
    app.wait_for_metric("paypush_outcomes_recorded", 0.0).await;
    // A late subscriber now waits again, and a new outcome may be recorded.
    let _stream = app.push_pending("13").await;
    let answer: serde_json::Value = app
        .callback("13", Some("FAILED"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["duplicate"], false);
}

#[tokio::test]
async fn streams_over_the_per_payment_limit_get_429() {
    let app = spawn_app(&["--max-streams-per-payment", "2"]).await;
    let _a = app.push_pending("20").await;
    let _b = app.push_pending("20").await;
    let refused = app.get("/push?payRecordId=20").await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams");
    // Another payment is not affected.
    let _c = app.push_pending("21").await;
}

#[tokio::test]
async fn streams_over_the_total_limit_get_503_with_retry_after() {
    let app = spawn_app(&["--max-streams", "2"]).await;
    let _a = app.push_pending("30").await;
    let _b = app.push_pending("31").await;
    let refused = app.get("/push?payRecordId=32").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse::<u32>()
        .is_ok());
    assert_eq!(refused.headers()["content-type"], "application/json");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "over_capacity");
}

#[tokio::test]
async fn recorded_outcome_is_served_even_when_streams_are_full() {
    let app = spawn_app(&["--max-streams", "1"]).await;
    let _a = app.push_pending("40").await;
    app.callback("41", None).await;
    let mut late = app.push("41").await;
    assert_eq!(late.response_status, 200);
    assert_eq!(late.next_event().await.unwrap().json()["status"], "SUCCESS");
}

#[tokio::test]
async fn abandoned_streams_leave_the_hub_empty() {
    let app = spawn_app(&[]).await;
    for round in 0..5 {
        let mut streams = Vec::new();
        for i in 0..20 {
            streams.push(app.push_pending(&format!("{}", 100 + i % 7 + round)).await);
        }
        assert_eq!(app.metric("paypush_streams_open").await, 20.0);
        drop(streams);
        app.wait_for_metric("paypush_streams_open", 0.0).await;
        app.wait_for_metric("paypush_payments_waiting", 0.0).await;
    }
}
