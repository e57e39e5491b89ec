//! `/metrics`: callbacks and deliveries counted without payment ids, and
//! served on an address of its own with `--metrics-bind`.

use std::net::SocketAddr;

use crate::support::{spawn_app, spawn_binary};

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

/// The address logged after `marker` (`metrics on http://`) in `log`.
fn address_after(log: &str, marker: &str) -> Option<SocketAddr> {
    let rest = log.split(marker).nth(1)?;
    rest.split(['/', ' ', '\n']).next()?.parse().ok()
}

#[tokio::test]
async fn metrics_bind_serves_metrics_on_its_own_address_and_the_main_one_answers_404() {
    let paypush = spawn_binary(&["--metrics-bind", "127.0.0.1:0"]).await;
    let metrics = address_after(&paypush.logged(), "metrics on http://")
        .expect("the metrics address is logged");
    let client = reqwest::Client::new();
    let internal = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(internal.status(), 200);
    assert!(internal
        .text()
        .await
        .unwrap()
        .contains("paypush_callbacks_total"));
    let public = client
        .get(format!("http://{}/metrics", paypush.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let body: serde_json::Value = public.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
}
