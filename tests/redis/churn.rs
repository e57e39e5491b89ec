//! Ordinary churn on a Redis Cluster: pages closed within milliseconds of
//! opening `/push`, so that their request is cancelled at any point of its
//! subscription (before, during or after its `SSUBSCRIBE`). Nothing of them
//! may stay behind: no busy loop, no channel on Redis, no poisoned payment.
//! The server is the built binary, so that its CPU time is its own.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::abuse_patterns::{cpu_seconds, metric};
use crate::servers::{command, RedisCluster, CLUSTER_PATIENCE};
use crate::support::{paypush_command, start_binary, temp_dir, Binary, EventStream};
use crate::REDIS;

/// Requests cancelled mid-subscribe.
const ABORTED: u64 = 3000;
/// Of them, the payments whose next waiter is checked.
const CHECKED: u64 = 60;
/// Server CPU per second that counts as idle.
const IDLE_CPU: f64 = 0.05;

/// Opens `/push` for `id` on a raw connection and closes it after `after`
/// (0: right after sending the head).
async fn abort_push(server: &Binary, id: u64, after: Duration) {
    let Ok(mut stream) = TcpStream::connect(server.addr).await else {
        return;
    };
    let head = format!("GET /push?payRecordId={id} HTTP/1.1\r\nHost: x\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if !after.is_zero() {
        let mut some = [0; 256];
        let _ = tokio::time::timeout(after, stream.read(&mut some)).await;
    }
    // Closed with the answer unread: the kernel resets the connection.
}

/// Shard channels subscribed on every primary.
async fn channels_on_redis(redis: &RedisCluster) -> usize {
    let mut count = 0;
    for port in redis.primaries().await {
        let channels: Vec<String> = command(port, &["PUBSUB", "SHARDCHANNELS"]).await.unwrap();
        count += channels.len();
    }
    count
}

#[tokio::test]
async fn cluster_pages_closed_mid_subscribe_leave_nothing_behind() {
    let test = "cluster_pages_closed_mid_subscribe_leave_nothing_behind";
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("redis-cli", "redis-tools", test)
    {
        return;
    }
    let redis = RedisCluster::start().await;
    let dir = temp_dir();
    let seeds = redis.seeds();
    let server = start_binary(paypush_command(dir.path()), &["--redis-cluster", &seeds]).await;
    let deadline = Instant::now() + CLUSTER_PATIENCE;
    while reqwest::get(server.url("/readyz")).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each request is cut at another point: 0 to 3 ms after its head.
    futures_util::stream::iter(1..=ABORTED)
        .map(|id| {
            let after = Duration::from_micros((id * 7_919) % 3_000);
            abort_push(&server, 4_000_000 + id, after)
        })
        .buffer_unordered(100)
        .collect::<Vec<()>>()
        .await;

    // The server goes back to idle...
    let idle_by = Instant::now() + Duration::from_secs(15);
    loop {
        let before = cpu_seconds(&server);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_seconds(&server) - before;
        if used <= IDLE_CPU {
            break;
        }
        assert!(
            Instant::now() < idle_by,
            "the server still uses {used:.2} CPU-s per s after the churn"
        );
    }
    // ...with no waiter, and no channel left, here or on Redis.
    let released_by = Instant::now() + Duration::from_secs(15);
    loop {
        let gauge = metric(&server, "paypush_redis_channels_subscribed").await;
        let on_redis = channels_on_redis(&redis).await;
        let open = metric(&server, "paypush_streams_open").await;
        if gauge == 0.0 && on_redis == 0 && open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < released_by,
            "after the churn: {open} waiters, {gauge} channels by the gauge, {on_redis} on Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every such payment's next waiter gets its outcome.
    let checked: Vec<u64> = (1..=CHECKED)
        .map(|n| 4_000_000 + n * (ABORTED / CHECKED))
        .collect();
    let server = &server;
    let waiters = join_all(checked.iter().map(|id| async move {
        let answer = reqwest::get(server.url(&format!("/push?payRecordId={id}")))
            .await
            .unwrap();
        let mut stream = EventStream::new(answer);
        let pending = stream.next_event().await.expect("pending");
        assert_eq!(pending.event.as_deref(), Some("pending"), "payment {id}");
        stream
    }))
    .await;
    for id in &checked {
        let url = server.url(&format!("/pay-callback?payRecordId={id}"));
        let mut status = 0;
        for _ in 0..20 {
            status = reqwest::get(&url).await.unwrap().status().as_u16();
            if status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 200, "callback {id}");
    }
    for (id, mut stream) in checked.iter().zip(waiters) {
        let outcome = stream.next_event().await.expect("the outcome");
        assert_eq!(outcome.json()["payRecordId"], id.to_string());
    }
    let long_poll = reqwest::get(server.url(&format!("/status?payRecordId={}&wait=5", checked[0])))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(long_poll["status"], "SUCCESS");
    drop(dir);
}
