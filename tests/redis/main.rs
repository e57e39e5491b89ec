//! Scale-out over Redis: real paypush instances on a real `redis-server` of
//! each test's own (`single`), on a real Redis Cluster (`cluster`, with
//! pages closed mid-subscribe in `churn`), behind the shipped nginx and
//! HAProxy configurations (`proxies`), and the hostile clients' patterns in
//! both modes (`abuse`). The Redis processes are in `servers`.
//!
//! Without `redis-server` (or `redis-cli`, `nginx`, `haproxy` for the tests
//! that need them) on `PATH`, each test prints why and passes, unless
//! `PAYPUSH_REQUIRE_REDIS=1`, when it fails.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

/// The hostile clients' patterns (see `tests/abuse.rs`), for any mode.
#[path = "../abuse/patterns.rs"]
#[allow(dead_code)]
mod abuse_patterns;

mod abuse;
mod churn;
mod cluster;
mod proxies;
mod servers;
mod single;

use std::time::Duration;

use serde_json::Value;

use support::{spawn_app, Suite, TestApp};

/// Without `redis-server` (or the proxy a test needs), its test skips,
/// unless `PAYPUSH_REQUIRE_REDIS=1`.
const REDIS: Suite = Suite {
    tests: "the Redis tests",
    required_by: Some("PAYPUSH_REQUIRE_REDIS"),
};

/// A paypush instance on `redis_url`, ready (subscribed) before it is used.
async fn instance(redis_url: &str, flags: &[&str]) -> TestApp {
    let mut all = vec!["--redis-url", redis_url];
    all.extend_from_slice(flags);
    let app = spawn_app(&all).await;
    wait_until_ready(&app, 200).await;
    app
}

async fn wait_until_ready(app: &TestApp, status: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = app.get("/readyz").await.status().as_u16();
        if now == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {now}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A callback signed by `paypush sign` (secret `shared-secret`) is taken
/// by `a`, and the very same request replayed to `b` is `401`.
async fn assert_replay_refused_across(a: &TestApp, b: &TestApp, path: &str) {
    let headers = support::paypush_sign(None, &["--secret", "shared-secret", "--path", path]);
    let send = |app: &TestApp| {
        let mut request = app.client.get(app.url(path));
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        request.send()
    };
    assert_eq!(send(a).await.unwrap().status(), 200);
    let replay = send(b).await.unwrap();
    assert_eq!(replay.status(), 401);
    let body: Value = replay.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("already used"));
}

/// Sends the GET callback `path` with the signature `headers`, as a
/// provider (re)sends it: verbatim.
async fn send_signed(app: &TestApp, path: &str, headers: &[(String, String)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

/// Its status, and its body when it is not the expected one.
async fn status_and_body(answer: reqwest::Response) -> (u16, String) {
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}
