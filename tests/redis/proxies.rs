//! The shipped proxy configurations in front of two instances on one Redis:
//! Debian's nginx running `deploy/nginx.conf`, and HAProxy running
//! `deploy/haproxy.cfg` (over h2c).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::servers::RedisServer;
use crate::support::{self, free_port, EventStream, TestApp, PATIENCE};
use crate::{instance, REDIS};

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
