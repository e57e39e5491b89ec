//! `/pay-callback`: recording outcomes.

use serde_json::{json, Value};

use crate::support::spawn_app;

#[tokio::test]
async fn callback_without_status_records_success() {
    let app = spawn_app(&[]).await;
    let answer = app.callback("1", None).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["payRecordId"], "1");
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["duplicate"], false);
}

#[tokio::test]
async fn lowercase_status_is_accepted_and_answered_in_upper_case() {
    let app = spawn_app(&[]).await;
    let body: Value = app
        .callback("2", Some("failed"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "FAILED");
}

#[tokio::test]
async fn repeated_callback_is_a_duplicate_and_sends_nothing_new() {
    let app = spawn_app(&[]).await;
    let mut stream = app.push_pending("3").await;
    app.callback("3", None).await;
    let again = app.callback("3", Some("success")).await;
    assert_eq!(again.status(), 200);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["duplicate"], true);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "SUCCESS"
    );
    assert!(stream.ends().await, "exactly one outcome event");
    assert_eq!(
        app.metric("paypush_outcomes_delivered_total{transport=\"sse\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn different_status_after_an_outcome_is_a_conflict_that_changes_nothing() {
    let app = spawn_app(&[]).await;
    app.callback("4", Some("SUCCESS")).await;
    let conflict = app.callback("4", Some("CLOSED")).await;
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["error"], "outcome_conflict");
    assert!(body["message"].as_str().unwrap().contains("SUCCESS"));
    assert_eq!(body["recordedStatus"], "SUCCESS");
    let mut late = app.push("4").await;
    assert_eq!(late.next_event().await.unwrap().json()["status"], "SUCCESS");
}

#[tokio::test]
async fn form_callback_is_delivered() {
    let app = spawn_app(&[]).await;
    let mut stream = app.push_pending("5").await;
    let answer = app
        .post_callback(
            "application/x-www-form-urlencoded; charset=UTF-8",
            "payRecordId=5&status=CLOSED",
        )
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "CLOSED"
    );
}

#[tokio::test]
async fn json_callback_takes_the_id_as_number_or_string() {
    let app = spawn_app(&[]).await;
    let mut stream = app.push_pending("6").await;
    let answer = app
        .post_callback("application/json", r#"{"payRecordId":6,"status":"failed"}"#)
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "FAILED"
    );

    let answer = app
        .post_callback("application/json; charset=utf-8", r#"{"payRecordId":"7"}"#)
        .await;
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["payRecordId"], "7");
    assert_eq!(body["status"], "SUCCESS");
}

#[tokio::test]
async fn largest_id_is_accepted_on_both_routes() {
    let app = spawn_app(&[]).await;
    let max = "9223372036854775807";
    let mut stream = app.push_pending(max).await;
    let body: Value = app.callback(max, None).await.json().await.unwrap();
    assert_eq!(body["payRecordId"], max);
    assert_eq!(
        stream.next_event().await.unwrap().json()["payRecordId"],
        max
    );
}

#[tokio::test]
async fn invalid_ids_are_refused_on_both_routes() {
    let app = spawn_app(&[]).await;
    let bad = [
        "abc",
        "0",
        "-1",
        "01",
        "+1",
        "%2B1",
        "1.5",
        "",
        "9223372036854775808",
        "%201",
    ];
    for id in bad {
        for route in ["/push", "/pay-callback"] {
            let answer = app.get(&format!("{route}?payRecordId={id}")).await;
            assert_eq!(answer.status(), 400, "{route} {id:?}");
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["error"], "invalid_pay_record_id", "{route} {id:?}");
            assert!(body["message"].is_string());
        }
    }
    for route in [
        "/push",
        "/pay-callback",
        "/push?other=1",
        "/pay-callback?payRecordId=1&payRecordId=2",
    ] {
        let answer = app.get(route).await;
        assert_eq!(answer.status(), 400, "{route}");
    }
    for body in [
        json!({}),
        json!({"payRecordId": 0}),
        json!({"payRecordId": "-1"}),
        json!({"payRecordId": 1.5}),
    ] {
        let answer = app
            .post_callback("application/json", &body.to_string())
            .await;
        assert_eq!(answer.status(), 400, "{body}");
    }
    assert_eq!(
        app.metric("paypush_outcomes_recorded").await,
        0.0,
        "nothing was recorded"
    );
}

#[tokio::test]
async fn invalid_status_is_refused_and_records_nothing() {
    let app = spawn_app(&[]).await;
    for status in ["PAID", "", "%20SUCCESS", "SUCCESS%20"] {
        let answer = app.callback("8", Some(status)).await;
        assert_eq!(answer.status(), 400, "{status:?}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_status");
    }
    let answer = app
        .post_callback("application/json", r#"{"payRecordId":8,"status":"PAID"}"#)
        .await;
    assert_eq!(answer.status(), 400);
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}

#[tokio::test]
async fn callback_for_a_payment_nobody_watches_is_kept_for_late_subscribers() {
    let app = spawn_app(&[]).await;
    app.post_callback("application/x-www-form-urlencoded", "payRecordId=9")
        .await;
    let mut late = app.push("9").await;
    assert_eq!(late.next_event().await.unwrap().json()["status"], "SUCCESS");
}

#[tokio::test]
async fn a_json_callback_with_a_repeated_key_is_400_invalid_body_and_records_nothing() {
    let app = spawn_app(&[]).await;
    for body in [
        r#"{"payRecordId":"1305","payRecordId":"1306"}"#,
        r#"{"payRecordId":"1305","status":"FAILED","status":"SUCCESS"}"#,
    ] {
        let answer = app.post_callback("application/json", body).await;
        assert_eq!(answer.status(), 400, "{body}");
        let json: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(json["error"], "invalid_body", "{body}");
    }
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}
