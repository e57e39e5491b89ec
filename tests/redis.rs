//! Scale-out over Redis: several real paypush instances on one real
//! `redis-server` (started by each test on a free loopback port and stopped
//! after it), and a deployment behind Debian's nginx.
//!
//! Without `redis-server` (or, for the nginx test, `nginx`) on `PATH`, each
//! test prints why and passes, unless `PAYPUSH_REQUIRE_REDIS=1`, when it fails.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

/// The hostile clients' patterns (see `tests/abuse.rs`), for any mode.
#[path = "abuse/patterns.rs"]
#[allow(dead_code)]
mod abuse_patterns;

/// The same on a real Redis Cluster (3 primaries, 3 replicas).
#[path = "redis/cluster.rs"]
mod cluster;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::{free_port, spawn_app, EventStream, Suite, TestApp, PATIENCE};

/// Without `redis-server` (or the proxy a test needs), its test skips,
/// unless `PAYPUSH_REQUIRE_REDIS=1`.
const REDIS: Suite = Suite {
    tests: "the Redis tests",
    required_by: Some("PAYPUSH_REQUIRE_REDIS"),
};

/// A `redis-server` of the test's own: no persistence, or an append-only
/// file in a folder of its own.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// With `appendonly yes`, where its append-only file lives.
    appendonly: Option<tempfile::TempDir>,
}

impl RedisServer {
    fn new() -> RedisServer {
        RedisServer {
            port: free_port(),
            child: None,
            appendonly: None,
        }
    }

    async fn start() -> RedisServer {
        let mut server = RedisServer::new();
        server.restart().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port (empty, unless it has an append-only
    /// file), and waits until it answers.
    async fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.appendonly {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "everysec"])
                .arg("--dir")
                .arg(dir.path()),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.command::<String>(&["PING"]).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut connection).await
    }
}

/// A redis-server of the test's own and `N` paypush instances on it, each
/// ready; `None` (after saying why) when the test is to skip.
async fn cluster<const N: usize>(
    test: &str,
    flags: &[&str],
) -> Option<(RedisServer, [TestApp; N])> {
    if !REDIS.require("redis-server", "redis-server", test) {
        return None;
    }
    let redis = RedisServer::start().await;
    let mut instances = Vec::with_capacity(N);
    for _ in 0..N {
        instances.push(instance(&redis.url(), flags).await);
    }
    let instances = instances.try_into().ok().expect("N instances");
    Some((redis, instances))
}

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

#[tokio::test]
async fn callback_on_one_instance_reaches_a_stream_on_another() {
    let Some((_redis, [a, b])) =
        cluster("callback_on_one_instance_reaches_a_stream_on_another", &[]).await
    else {
        return;
    };
    let mut stream = b.push_pending("1").await;

    let answer = a.callback("1", Some("FAILED")).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();

    let outcome = stream
        .next_event()
        .await
        .expect("the outcome on instance B");
    assert_eq!(outcome.json()["status"], "FAILED");
    assert_eq!(outcome.json()["completedAt"], answer["completedAt"]);
    assert!(stream.ends().await);
}

#[tokio::test]
async fn late_subscriber_on_another_instance_gets_the_outcome_at_once() {
    let Some((_redis, [a, b])) = cluster(
        "late_subscriber_on_another_instance_gets_the_outcome_at_once",
        &[],
    )
    .await
    else {
        return;
    };
    a.callback("2", Some("CLOSED")).await;

    let mut late = b.push("2").await;
    let first = late.next_event().await.unwrap();
    assert_eq!(first.event, None, "no pending: the outcome at once");
    assert_eq!(first.json()["status"], "CLOSED");
    // Both instances give the same event id, so Last-Event-ID works anywhere.
    let mut on_a = a.push("2").await;
    assert_eq!(on_a.next_event().await.unwrap().id, first.id);
    let stop = b
        .client
        .get(b.url("/push?payRecordId=2"))
        .header("last-event-id", first.id.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 204);
}

#[tokio::test]
async fn long_poll_on_one_instance_is_woken_by_a_callback_on_another() {
    let Some((_redis, [a, b])) = cluster(
        "long_poll_on_one_instance_is_woken_by_a_callback_on_another",
        &[],
    )
    .await
    else {
        return;
    };
    let url = b.url("/status?payRecordId=3&wait=25");
    let client = b.client.clone();
    let poll = tokio::spawn(async move {
        let answer = client.get(url).send().await.unwrap();
        answer.json::<Value>().await.unwrap()
    });
    b.wait_for_metric("paypush_waiters_open{transport=\"poll\"}", 1.0)
        .await;

    let answer: Value = a.callback("3", Some("FAILED")).await.json().await.unwrap();

    let outcome = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("woken in time")
        .unwrap();
    assert_eq!(outcome["status"], "FAILED");
    assert_eq!(outcome["completedAt"], answer["completedAt"]);
}

#[tokio::test]
async fn status_on_another_instance_answers_the_recorded_outcome_at_once() {
    let Some((_redis, [a, b])) = cluster(
        "status_on_another_instance_answers_the_recorded_outcome_at_once",
        &[],
    )
    .await
    else {
        return;
    };
    let answer: Value = a.callback("4", Some("CLOSED")).await.json().await.unwrap();
    let (status, outcome) = b.status("?payRecordId=4").await;
    assert_eq!(status, 200);
    assert_eq!(outcome["status"], "CLOSED");
    assert_eq!(outcome["completedAt"], answer["completedAt"]);
}

#[tokio::test]
async fn websocket_on_one_instance_gets_a_callback_on_another() {
    let Some((_redis, [a, b])) =
        cluster("websocket_on_one_instance_gets_a_callback_on_another", &[]).await
    else {
        return;
    };
    let mut socket = b.ws_pending("5").await;
    let answer: Value = a.callback("5", None).await.json().await.unwrap();
    let outcome = support::next_json(&mut socket).await;
    assert_eq!(outcome["status"], "SUCCESS");
    assert_eq!(outcome["completedAt"], answer["completedAt"]);
    assert_eq!(support::next_close(&mut socket).await.0, 1000);
    // A late socket on A gets the recorded outcome at once.
    let mut late = a.ws("/ws?payRecordId=5").await;
    assert_eq!(support::next_json(&mut late).await, outcome);
}

#[tokio::test]
async fn duplicates_and_conflicts_are_decided_once_across_instances() {
    let Some((_redis, [a, b])) = cluster(
        "duplicates_and_conflicts_are_decided_once_across_instances",
        &[],
    )
    .await
    else {
        return;
    };
    let first: Value = a.callback("3", None).await.json().await.unwrap();
    assert_eq!(first["duplicate"], false);

    let again = b.callback("3", Some("success")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["completedAt"], first["completedAt"]);

    let conflict = b.callback("3", Some("FAILED")).await;
    assert_eq!(conflict.status(), 409);
    let conflict: Value = conflict.json().await.unwrap();
    assert_eq!(conflict["recordedStatus"], "SUCCESS");
}

#[tokio::test]
async fn a_thousand_payments_over_three_instances_each_get_their_outcome_once() {
    let Some((_redis, instances)) =
        cluster::<3>("a_thousand_payments_over_three_instances", &[]).await
    else {
        return;
    };
    const PAYMENTS: usize = 1000;
    let mut streams = Vec::new();
    for batch in (0..PAYMENTS).collect::<Vec<_>>().chunks(100) {
        let opened = join_all(batch.iter().map(|&i| {
            let app = &instances[i % 3];
            async move { (i, app.push_pending(&(10_000 + i).to_string()).await) }
        }))
        .await;
        streams.extend(opened);
    }
    // Callbacks to a pseudo-random instance, a different one than the stream's
    // for two thirds of them.
    let statuses = ["SUCCESS", "FAILED", "CLOSED"];
    join_all((0..PAYMENTS).map(|i| {
        let app = &instances[(i * 7 + i / 3) % 3];
        async move {
            let answer = app
                .callback(&(10_000 + i).to_string(), Some(statuses[i % 3]))
                .await;
            assert_eq!(answer.status(), 200);
        }
    }))
    .await;

    let received = join_all(streams.into_iter().map(|(i, mut stream)| async move {
        let outcome = stream.next_event().await.expect("an outcome");
        assert_eq!(outcome.json()["payRecordId"], (10_000 + i).to_string());
        assert_eq!(outcome.json()["status"], statuses[i % 3]);
        assert!(stream.ends().await, "exactly one outcome, then the end");
        1
    }))
    .await;
    assert_eq!(received.len(), PAYMENTS);
    let mut delivered = 0.0;
    for app in &instances {
        delivered += app
            .metric("paypush_outcomes_delivered_total{transport=\"sse\"}")
            .await;
    }
    assert_eq!(
        delivered, PAYMENTS as f64,
        "each stream got its outcome once"
    );
}

#[tokio::test]
async fn redis_outage_gives_503_keeps_streams_and_recovers() {
    let Some((mut redis, [a, b])) =
        cluster("redis_outage_gives_503_keeps_streams_and_recovers", &[]).await
    else {
        return;
    };
    let mut before = b.push_pending("4").await;

    redis.stop().await;
    let refused = a.callback("4", None).await;
    assert_eq!(refused.status(), 503, "never a 200 that is not recorded");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    wait_until_ready(&a, 503).await;
    let not_ready: Value = a.get("/readyz").await.json().await.unwrap();
    assert_eq!(not_ready["error"], "not_ready");
    // New streams are still accepted, open ones stay open.
    let mut during = b.push_pending("5").await;
    assert!(
        before
            .next_within(Duration::from_millis(300))
            .await
            .is_err(),
        "still waiting"
    );

    redis.restart().await;
    wait_until_ready(&a, 200).await;
    wait_until_ready(&b, 200).await;
    assert_eq!(a.callback("4", None).await.status(), 200);
    assert_eq!(a.callback("5", Some("CLOSED")).await.status(), 200);
    assert_eq!(
        before.next_event().await.unwrap().json()["status"],
        "SUCCESS"
    );
    assert_eq!(
        during.next_event().await.unwrap().json()["status"],
        "CLOSED"
    );
}

#[tokio::test]
async fn callback_during_a_subscriber_drop_is_still_delivered() {
    if !REDIS.require(
        "redis-server",
        "redis-server",
        "callback_during_a_subscriber_drop_is_still_delivered",
    ) {
        return;
    }
    let redis = RedisServer::start().await;
    // B connects as its own ACL user, so the test can cut B's subscriber off
    // (revoking its channels drops its subscription) and keep it off while A
    // records and publishes.
    let _: String = redis
        .command(&[
            "ACL",
            "SETUSER",
            "bee",
            "on",
            ">bee-pass",
            "~*",
            "&*",
            "+@all",
        ])
        .await
        .unwrap();
    let b_url = format!("redis://bee:bee-pass@127.0.0.1:{}", redis.port);
    let a = instance(&redis.url(), &[]).await;
    let b = instance(&b_url, &[]).await;
    let mut stream = b.push_pending("6").await;

    let _: String = redis
        .command(&["ACL", "SETUSER", "bee", "resetchannels"])
        .await
        .unwrap();
    wait_until_ready(&b, 503).await;
    assert_eq!(
        a.callback("6", Some("FAILED")).await.status(),
        200,
        "published while B is away"
    );
    assert!(
        stream
            .next_within(Duration::from_millis(500))
            .await
            .is_err(),
        "B missed the message"
    );

    let _: String = redis
        .command(&["ACL", "SETUSER", "bee", "allchannels"])
        .await
        .unwrap();
    let outcome = stream
        .next_event()
        .await
        .expect("caught up after reconnecting");
    assert_eq!(outcome.json()["status"], "FAILED");
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

#[tokio::test]
async fn replayed_nonce_is_caught_on_another_instance() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((_redis, [a, b])) =
        cluster("replayed_nonce_is_caught_on_another_instance", &secret).await
    else {
        return;
    };
    let path = "/pay-callback?payRecordId=7";
    assert_replay_refused_across(&a, &b, path).await;
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

#[tokio::test]
async fn a_signed_callback_answered_503_is_recorded_when_retried_verbatim() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((redis, [a, b])) = cluster(
        "a_signed_callback_answered_503_is_recorded_when_retried_verbatim",
        &secret,
    )
    .await
    else {
        return;
    };
    let mut stream = b.push_pending("8").await;
    let path = "/pay-callback?payRecordId=8&status=SUCCESS";
    let headers = support::paypush_sign(None, &["--secret", "shared-secret", "--path", path]);

    // The nonce's SET is allowed, the record script is not: a real failure
    // of the record step after the nonce was remembered.
    let _: String = redis
        .command(&["ACL", "SETUSER", "default", "-eval", "-evalsha"])
        .await
        .unwrap();
    let (status, body) = status_and_body(send_signed(&a, path, &headers).await).await;
    assert_eq!(status, 503, "{body}");

    let _: String = redis
        .command(&["ACL", "SETUSER", "default", "+eval", "+evalsha"])
        .await
        .unwrap();
    let (status, body) = status_and_body(send_signed(&a, path, &headers).await).await;
    assert_eq!(status, 200, "the verbatim retry: {body}");
    let outcome = stream.next_event().await.expect("the outcome on B");
    assert_eq!(outcome.json()["status"], "SUCCESS");
}

#[tokio::test]
async fn a_signed_callback_whose_client_went_away_can_be_retried_verbatim() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((redis, [a])) = cluster(
        "a_signed_callback_whose_client_went_away_can_be_retried_verbatim",
        &secret,
    )
    .await
    else {
        return;
    };
    let mut stream = a.push_pending("9").await;
    let path = "/pay-callback?payRecordId=9&status=FAILED";
    let headers = support::paypush_sign(None, &["--secret", "shared-secret", "--path", path]);

    // Writes wait (shorter than paypush's Redis timeout, so no 503): the
    // nonce's SET is sent and waits in Redis while the client gives up
    // and closes; it runs once the pause ends.
    let _: String = redis
        .command(&["CLIENT", "PAUSE", "800", "WRITE"])
        .await
        .unwrap();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), send_signed(&a, path, &headers)).await;
    assert!(gave_up.is_err(), "answered while Redis was paused");
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let (status, body) = status_and_body(send_signed(&a, path, &headers).await).await;
    assert_eq!(status, 200, "the verbatim retry: {body}");
    let outcome = stream.next_event().await.expect("the outcome");
    assert_eq!(outcome.json()["status"], "FAILED");
}

/// The shipped proxy example `deploy/<file>` with its ports swapped: the
/// two upstreams for these instances, the listener for `port`.
fn deploy_config(file: &str, upstreams: [&TestApp; 2], port: u16) -> String {
    let path = format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(path).unwrap();
    let config = example
        .replace("127.0.0.1:8080", &upstreams[0].addr.to_string())
        .replace("127.0.0.1:8081", &upstreams[1].addr.to_string())
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    assert_ne!(config, example, "the example names its ports");
    config
}

/// Waits until a proxy started on `port` answers `/healthz`.
async fn wait_for_proxy(name: &str, port: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx with the shipped example configuration, ports swapped for free ones.
struct Nginx {
    /// A std child: dropping the test must stop nginx gracefully (SIGQUIT),
    /// as killing its master would leave its workers behind.
    child: std::process::Child,
    port: u16,
    _dir: PathBuf,
}

impl Nginx {
    async fn start(upstreams: [&TestApp; 2]) -> Nginx {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("paypush-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = deploy_config("nginx.conf", upstreams, port);
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .args(["-c", "nginx.conf", "-g", "daemon off; user root;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        wait_for_proxy("nginx", port).await;
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[tokio::test]
async fn two_instances_behind_nginx_deliver_across_and_unbuffered() {
    let test = "two_instances_behind_nginx_deliver_across_and_unbuffered";
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("nginx", "nginx", test)
    {
        return;
    }
    let redis = RedisServer::start().await;
    let a = instance(&redis.url(), &[]).await;
    let b = instance(&redis.url(), &[]).await;
    let nginx = Nginx::start([&a, &b]).await;
    let client = reqwest::Client::new();

    // The pending event comes through at once: nginx does not buffer it.
    let mut stream = EventStream::new(
        client
            .get(nginx.url("/push?payRecordId=8"))
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(stream.response_status, 200);
    assert_eq!(
        stream.next_event().await.unwrap().event.as_deref(),
        Some("pending")
    );

    let answer = client
        .get(nginx.url("/pay-callback?payRecordId=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "SUCCESS"
    );

    // Round-robin sent the stream and the callback to different instances.
    let stream_on_a = a
        .metric("paypush_outcomes_delivered_total{transport=\"sse\"}")
        .await
        == 1.0;
    let callback_on_a = a
        .metric(r#"paypush_callbacks_total{result="recorded",status="SUCCESS"}"#)
        .await
        == 1.0;
    assert_ne!(
        stream_on_a, callback_on_a,
        "stream and callback on different instances"
    );
}

#[tokio::test]
async fn during_a_redis_outage_status_is_503_and_a_long_poll_waits_for_the_outcome() {
    let Some((mut redis, [a, b])) = cluster(
        "during_a_redis_outage_status_is_503_and_a_long_poll_waits_for_the_outcome",
        &[],
    )
    .await
    else {
        return;
    };
    redis.stop().await;
    let (status, body) = b.status("?payRecordId=6").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    let url = b.url("/status?payRecordId=7&wait=25");
    let poll = tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await });
    b.wait_for_metric("paypush_waiters_open{transport=\"poll\"}", 1.0)
        .await;

    redis.restart().await;
    wait_until_ready(&a, 200).await;
    wait_until_ready(&b, 200).await;
    assert_eq!(a.callback("7", Some("FAILED")).await.status(), 200);

    let outcome = tokio::time::timeout(PATIENCE, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome["status"], "FAILED");
}

#[tokio::test]
async fn websocket_and_long_poll_work_through_nginx() {
    let test = "websocket_and_long_poll_work_through_nginx";
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("nginx", "nginx", test)
    {
        return;
    }
    let redis = RedisServer::start().await;
    let a = instance(&redis.url(), &[]).await;
    let b = instance(&redis.url(), &[]).await;
    let nginx = Nginx::start([&a, &b]).await;

    // A page served through nginx opens /ws: its Origin is nginx's.
    let origin = format!("http://127.0.0.1:{}", nginx.port);
    let mut request = format!("ws://127.0.0.1:{}/ws?payRecordId=11", nginx.port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade passes through nginx");
    assert_eq!(support::next_json(&mut socket).await["status"], "PENDING");
    let url = nginx.url("/status?payRecordId=11&wait=25");
    let poll = tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let answer: Value = reqwest::get(nginx.url("/pay-callback?payRecordId=11"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let outcome = support::next_json(&mut socket).await;
    assert_eq!(outcome["completedAt"], answer["completedAt"]);
    assert_eq!(support::next_close(&mut socket).await.0, 1000);
    let polled = tokio::time::timeout(PATIENCE, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(polled, outcome);
}

#[tokio::test]
async fn paypush_started_before_redis_becomes_ready_when_redis_appears() {
    if !REDIS.require(
        "redis-server",
        "redis-server",
        "paypush_started_before_redis_becomes_ready_when_redis_appears",
    ) {
        return;
    }
    let mut redis = RedisServer::new();
    let app = spawn_app(&["--redis-url", &redis.url()]).await;
    wait_until_ready(&app, 503).await;
    assert_eq!(app.callback("9", None).await.status(), 503);
    let mut stream = app.push_pending("9").await;

    redis.restart().await;
    wait_until_ready(&app, 200).await;
    assert_eq!(app.callback("9", None).await.status(), 200);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "SUCCESS"
    );
}

#[tokio::test]
async fn outcomes_answered_200_survive_a_sigkilled_redis_with_appendonly() {
    let test = "outcomes_answered_200_survive_a_sigkilled_redis_with_appendonly";
    if !REDIS.require("redis-server", "redis-server", test) {
        return;
    }
    let mut redis = RedisServer::new();
    redis.appendonly = Some(support::temp_dir());
    redis.restart().await;
    let a = instance(&redis.url(), &[]).await;
    let mut answered = Vec::new();
    for id in 1..=50 {
        let answer = a.callback(&id.to_string(), Some("CLOSED")).await;
        assert_eq!(answer.status(), 200);
        let answer: Value = answer.json().await.unwrap();
        answered.push((id, answer["completedAt"].clone()));
    }

    redis.stop().await; // SIGKILL
    redis.restart().await;
    wait_until_ready(&a, 200).await;
    let b = instance(&redis.url(), &[]).await;
    for (id, completed_at) in answered {
        let again: Value = a
            .callback(&id.to_string(), Some("CLOSED"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["duplicate"], true, "payment {id} was lost");
        assert_eq!(again["completedAt"], completed_at);
        let mut late = b.push(&id.to_string()).await;
        let outcome = late.next_event().await.unwrap();
        assert_eq!(outcome.json()["completedAt"], completed_at);
    }
}

/// Debian's HAProxy running `deploy/haproxy.cfg` in front of two instances
/// (over h2c), on a free port; stopped when dropped.
struct HaProxy {
    _child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    async fn start(upstreams: [&TestApp; 2]) -> HaProxy {
        let port = free_port();
        let dir = support::temp_dir();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, deploy_config("haproxy.cfg", upstreams, port)).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        wait_for_proxy("haproxy", port).await;
        HaProxy {
            _child: child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

#[tokio::test]
async fn two_instances_behind_haproxy_over_h2c_deliver_across_and_unbuffered() {
    let test = "two_instances_behind_haproxy_over_h2c_deliver_across_and_unbuffered";
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("haproxy", "haproxy", test)
    {
        return;
    }
    let redis = RedisServer::start().await;
    let a = instance(&redis.url(), &[]).await;
    let b = instance(&redis.url(), &[]).await;
    let haproxy = HaProxy::start([&a, &b]).await;
    let client = reqwest::Client::new();

    // Browser-style HTTP/1.1 streams through HAProxy, carried to paypush as
    // h2c streams: each gets its pending event at once (nothing buffered),
    // then its outcome, whichever instance takes the callback.
    let mut streams = Vec::new();
    for id in 1..=10 {
        let response = client
            .get(haproxy.url(&format!("/push?payRecordId={id}")))
            .send()
            .await
            .unwrap();
        let mut stream = EventStream::new(response);
        assert_eq!(stream.response_status, 200);
        let pending = stream.next_event().await.unwrap();
        assert_eq!(pending.event.as_deref(), Some("pending"));
        streams.push(stream);
    }
    for id in 1..=10 {
        let answer = client
            .get(haproxy.url(&format!("/pay-callback?payRecordId={id}&status=CLOSED")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    for mut stream in streams {
        let outcome = stream.next_event().await.unwrap();
        assert_eq!(outcome.json()["status"], "CLOSED");
        assert!(stream.ends().await);
    }
    // Both instances took part, and some outcomes crossed between them.
    let (on_a, on_b) = (
        a.metric("paypush_outcomes_delivered_total{transport=\"sse\"}")
            .await,
        b.metric("paypush_outcomes_delivered_total{transport=\"sse\"}")
            .await,
    );
    assert_eq!(on_a + on_b, 10.0);
    assert!(on_a > 0.0 && on_b > 0.0, "a: {on_a}, b: {on_b}");
}
