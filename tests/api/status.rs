//! `GET /status`: the JSON long-poll.

use std::time::Duration;

use paypush::model::PayRecordId;
use paypush::signature::{subscribe_token, Secret};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{spawn_app, TestApp, PATIENCE};

const POLL_WAITERS: &str = "paypush_waiters_open{transport=\"poll\"}";

/// Starts a long-poll in the background and waits until it is registered.
async fn start_long_poll(
    app: &TestApp,
    query: &str,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let before = app.metric(POLL_WAITERS).await;
    let url = app.url(&format!("/status{query}"));
    let client = app.client.clone();
    let poll = tokio::spawn(async move {
        let answer = client.get(url).send().await.expect("GET /status");
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("JSON"))
    });
    app.wait_for_metric(POLL_WAITERS, before + 1.0).await;
    poll
}

#[tokio::test]
async fn status_answers_pending_at_once_and_is_never_cached() {
    let app = spawn_app(&[]).await;
    let answer = app.get("/status?payRecordId=123").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body, json!({"payRecordId": "123", "status": "PENDING"}));
}

#[tokio::test]
async fn status_after_a_callback_is_the_outcome_with_its_completed_at() {
    let app = spawn_app(&[]).await;
    let answer: serde_json::Value = app
        .callback("124", Some("FAILED"))
        .await
        .json()
        .await
        .unwrap();
    let (status, body) = app.status("?payRecordId=124").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "payRecordId": "124",
            "status": "FAILED",
            "message": "支付失败",
            "completedAt": answer["completedAt"],
        })
    );
}

#[tokio::test]
async fn long_poll_is_woken_by_a_callback_within_milliseconds() {
    let app = spawn_app(&[]).await;
    let poll = start_long_poll(&app, "?payRecordId=125&wait=25").await;
    let sent = Instant::now();
    let answer: serde_json::Value = app.callback("125", None).await.json().await.unwrap();
    let (status, body) = poll.await.unwrap();
    let elapsed = sent.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["completedAt"], answer["completedAt"]);
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
    app.wait_for_metric("paypush_outcomes_delivered_total{transport=\"poll\"}", 1.0)
        .await;
}

#[tokio::test]
async fn long_poll_answers_pending_once_its_wait_has_passed() {
    let app = spawn_app(&[]).await;
    let started = Instant::now();
    let (status, body) = app.status("?payRecordId=126&wait=1").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body, json!({"payRecordId": "126", "status": "PENDING"}));
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
    app.wait_for_metric(POLL_WAITERS, 0.0).await;
}

#[tokio::test]
async fn long_poll_for_a_recorded_outcome_answers_at_once() {
    let app = spawn_app(&[]).await;
    app.callback("127", Some("CLOSED")).await;
    let started = Instant::now();
    let (_, body) = app.status("?payRecordId=127&wait=25").await;
    assert_eq!(body["status"], "CLOSED");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn every_bad_wait_is_400_invalid_request() {
    let app = spawn_app(&[]).await;
    for wait in ["-1", "1.5", "abc", "", "%2B1", "1&wait=1", "1s"] {
        let (status, body) = app.status(&format!("?payRecordId=1&wait={wait}")).await;
        assert_eq!(status, 400, "wait={wait}");
        assert_eq!(body["error"], "invalid_request", "wait={wait}");
    }
}

#[tokio::test]
async fn every_bad_pay_record_id_is_400() {
    let app = spawn_app(&[]).await;
    for query in [
        "",
        "?payRecordId=",
        "?payRecordId=0",
        "?payRecordId=01",
        "?payRecordId=-1",
        "?payRecordId=9223372036854775808",
        "?payRecordId=1&payRecordId=2",
    ] {
        let (status, body) = app.status(query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"], "invalid_pay_record_id", "{query}");
    }
}

#[tokio::test]
async fn status_requires_the_subscribe_token_when_a_secret_is_set() {
    let app = spawn_app(&["--subscribe-secret", "s3cret"]).await;
    let secret: Secret = "s3cret".parse().unwrap();
    let token = subscribe_token(&secret, PayRecordId::parse("128").unwrap());
    let (status, body) = app.status("?payRecordId=128").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("invalid_token"))
    );
    let (status, _) = app.status("?payRecordId=128&token=00").await;
    assert_eq!(status, 403);
    let (status, body) = app.status(&format!("?payRecordId=128&token={token}")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("PENDING")));
}

#[tokio::test]
async fn long_polls_share_the_per_payment_limit_with_sse_and_websockets() {
    let app = spawn_app(&["--max-streams-per-payment", "2"]).await;
    let _sse = app.push_pending("129").await;
    let _ws = app.ws_pending("129").await;
    let (status, body) = app.status("?payRecordId=129&wait=5").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_streams"))
    );
    let (status, body) = app.status("?payRecordId=129").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("PENDING")),
        "an answer given at once counts against no limit"
    );
}

#[tokio::test]
async fn long_polls_share_the_total_limit_with_sse_and_websockets() {
    let app = spawn_app(&["--max-streams", "2"]).await;
    let _sse = app.push_pending("130").await;
    let poll = start_long_poll(&app, "?payRecordId=131&wait=25").await;
    let answer = app.get("/status?payRecordId=132&wait=5").await;
    assert_eq!(answer.status(), 503);
    assert!(answer.headers().contains_key("retry-after"));
    let (status, _) = app.ws_refused("/ws?payRecordId=133", &[]).await;
    assert_eq!(status, 503);
    poll.abort();
}

#[tokio::test]
async fn shutdown_answers_a_waiting_long_poll_pending_at_once() {
    let mut app = spawn_app(&[]).await;
    let poll = start_long_poll(&app, "?payRecordId=134&wait=25").await;
    let started = Instant::now();
    app.shut_down().await;
    let (status, body) = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, json!({"payRecordId": "134", "status": "PENDING"}));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_long_poll_whose_client_goes_away_is_forgotten() {
    let app = spawn_app(&[]).await;
    let poll = start_long_poll(&app, "?payRecordId=135&wait=25").await;
    poll.abort();
    app.wait_for_metric(POLL_WAITERS, 0.0).await;
    app.wait_for_metric("paypush_streams_open", 0.0).await;
}
