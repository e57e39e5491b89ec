//! `GET /ws`: the WebSocket, with a real client library (tokio-tungstenite).

use futures_util::{SinkExt, StreamExt};
use paypush::model::PayRecordId;
use paypush::signature::{subscribe_token, Secret};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{next_close, next_json, next_message, spawn_app, PATIENCE};

#[tokio::test]
async fn websocket_gets_pending_then_the_outcome_then_close_1000() {
    let app = spawn_app(&[]).await;
    let mut client = app.ws("/ws?payRecordId=200").await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"payRecordId": "200", "status": "PENDING"})
    );
    let answer: serde_json::Value = app.callback("200", None).await.json().await.unwrap();
    assert_eq!(
        next_json(&mut client).await,
        json!({
            "payRecordId": "200",
            "status": "SUCCESS",
            "message": "支付成功",
            "completedAt": answer["completedAt"],
        })
    );
    assert_eq!(next_close(&mut client).await, (1000, "outcome".into()));
    app.wait_for_metric("paypush_outcomes_delivered_total{transport=\"ws\"}", 1.0)
        .await;
    app.wait_for_metric("paypush_waiters_open{transport=\"ws\"}", 0.0)
        .await;
}

#[tokio::test]
async fn websocket_for_a_recorded_outcome_gets_it_and_the_close_at_once() {
    let app = spawn_app(&[]).await;
    app.callback("201", Some("FAILED")).await;
    let mut client = app.ws("/ws?payRecordId=201").await;
    let outcome = next_json(&mut client).await;
    assert_eq!(outcome["status"], "FAILED");
    assert_eq!(outcome["message"], "支付失败");
    assert_eq!(next_close(&mut client).await, (1000, "outcome".into()));
}

#[tokio::test]
async fn websocket_closes_1000_timeout_at_the_push_timeout() {
    let app = spawn_app(&["--push-timeout", "300ms"]).await;
    let mut client = app.ws_pending("202").await;
    assert_eq!(next_close(&mut client).await, (1000, "timeout".into()));
    app.wait_for_metric("paypush_push_timeouts_total{transport=\"ws\"}", 1.0)
        .await;
}

#[tokio::test]
async fn waiting_websocket_is_pinged_every_keep_alive_interval() {
    let app = spawn_app(&["--keep-alive", "200ms"]).await;
    let mut client = app.ws_pending("203").await;
    for _ in 0..2 {
        let message = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("a ping in time");
        assert!(matches!(message, Some(Ok(Message::Ping(_)))), "{message:?}");
    }
}

#[tokio::test]
async fn small_client_messages_are_ignored() {
    let app = spawn_app(&[]).await;
    let mut client = app.ws_pending("204").await;
    client.send(Message::text("hello")).await.unwrap();
    client.send(Message::binary(vec![0u8; 1024])).await.unwrap();
    app.callback("204", None).await;
    assert_eq!(next_json(&mut client).await["status"], "SUCCESS");
    assert_eq!(next_close(&mut client).await, (1000, "outcome".into()));
}

#[tokio::test]
async fn a_client_message_over_1_kib_closes_with_1009() {
    let app = spawn_app(&[]).await;
    for size in [1025, 200_000] {
        let mut client = app.ws_pending("205").await;
        client.send(Message::text("x".repeat(size))).await.unwrap();
        let (code, _) = next_close(&mut client).await;
        assert_eq!(code, 1009, "a {size}-byte message");
    }
    app.wait_for_metric("paypush_waiters_open{transport=\"ws\"}", 0.0)
        .await;
}

#[tokio::test]
async fn refusals_come_before_the_upgrade_as_json_errors() {
    let app = spawn_app(&[
        "--max-streams",
        "2",
        "--max-streams-per-payment",
        "1",
        "--subscribe-secret",
        "s3cret",
    ])
    .await;
    let secret: Secret = "s3cret".parse().unwrap();
    let token = |id: &str| subscribe_token(&secret, PayRecordId::parse(id).unwrap());
    let refusal = |path: String| {
        let app = &app;
        async move { app.ws_refused(&path, &[]).await }
    };

    let (status, body) = refusal("/ws?payRecordId=0".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_pay_record_id"))
    );
    let (status, body) = refusal("/ws?payRecordId=206".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("invalid_token"))
    );

    let _first = app
        .ws(&format!("/ws?payRecordId=206&token={}", token("206")))
        .await;
    let (status, body) = refusal(format!("/ws?payRecordId=206&token={}", token("206"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_streams"))
    );

    let _second = app
        .ws(&format!("/ws?payRecordId=207&token={}", token("207")))
        .await;
    let (status, body) = refusal(format!("/ws?payRecordId=208&token={}", token("208"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("over_capacity"))
    );
}

#[tokio::test]
async fn a_plain_get_without_upgrade_is_400_json() {
    let app = spawn_app(&[]).await;
    let answer = app.get("/ws?payRecordId=209").await;
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(app.metric("paypush_streams_open").await, 0.0);
}

#[tokio::test]
async fn a_foreign_origin_is_403_forbidden_origin() {
    let app = spawn_app(&["--allow-origin", "https://shop.example.com"]).await;
    let path = "/ws?payRecordId=210";
    for origin in ["https://evil.example.com", "null", "http://127.0.0.1:1"] {
        let (status, body) = app.ws_refused(path, &[("origin", origin)]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden_origin")),
            "{origin}"
        );
    }
}

#[tokio::test]
async fn own_origin_allowed_origins_and_no_origin_are_accepted() {
    let app = spawn_app(&["--allow-origin", "https://shop.example.com"]).await;
    let own = format!("http://{}", app.addr);
    let path = "/ws?payRecordId=211";
    for origin in [Some(own.as_str()), Some("https://shop.example.com"), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let mut client = app.try_ws(path, &headers).await.expect("accepted");
        assert_eq!(next_json(&mut client).await["status"], "PENDING");
    }
}

#[tokio::test]
async fn the_origin_of_the_public_url_is_accepted() {
    let app = spawn_app(&["--public-url", "https://pay.example.com/checkout"]).await;
    let path = "/ws?payRecordId=216";
    let headers = [("origin", "https://pay.example.com")];
    let mut client = app.try_ws(path, &headers).await.expect("accepted");
    assert_eq!(next_json(&mut client).await["status"], "PENDING");
    let (status, _) = app
        .ws_refused(path, &[("origin", "https://pay.example.com.evil.test")])
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn shutdown_closes_waiting_websockets_with_1001() {
    let mut app = spawn_app(&[]).await;
    let mut client = app.ws_pending("212").await;
    app.shut_down().await;
    let (code, _) = next_close(&mut client).await;
    assert_eq!(code, 1001);
}

#[tokio::test]
async fn a_websocket_whose_client_goes_away_is_forgotten() {
    let app = spawn_app(&[]).await;
    let client = app.ws_pending("213").await;
    assert_eq!(
        app.metric("paypush_waiters_open{transport=\"ws\"}").await,
        1.0
    );
    drop(client);
    app.wait_for_metric("paypush_waiters_open{transport=\"ws\"}", 0.0)
        .await;
}

#[tokio::test]
async fn sse_long_poll_and_websocket_on_one_payment_get_the_same_outcome_object() {
    let app = spawn_app(&[]).await;
    let mut sse = app.push_pending("214").await;
    let mut ws = app.ws_pending("214").await;
    let url = app.url("/status?payRecordId=214&wait=25");
    let client = app.client.clone();
    let poll = tokio::spawn(async move {
        let answer = client.get(url).send().await.unwrap();
        answer.json::<serde_json::Value>().await.unwrap()
    });
    app.wait_for_metric("paypush_streams_open", 3.0).await;

    app.callback("214", Some("CLOSED")).await;

    let from_sse = sse.next_event().await.expect("outcome").json();
    let from_ws = next_json(&mut ws).await;
    let from_poll = poll.await.unwrap();
    assert_eq!(from_sse["status"], "CLOSED");
    assert_eq!(from_ws, from_sse);
    assert_eq!(from_poll, from_sse);
    assert_eq!(
        next_message(&mut ws).await.map(|m| m.is_close()),
        Some(true)
    );
}

#[tokio::test]
async fn waiters_are_counted_by_transport() {
    let app = spawn_app(&[]).await;
    let _sse = app.push_pending("215").await;
    let _ws = app.ws_pending("215").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for line in [
        "paypush_waiters_open{transport=\"sse\"} 1",
        "paypush_waiters_open{transport=\"ws\"} 1",
        "paypush_waiters_open{transport=\"poll\"} 0",
        "paypush_streams_open 2",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}
