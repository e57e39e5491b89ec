//! paypush on a real Redis Cluster: six `redis-server --cluster-enabled yes`
//! processes on free loopback ports (three primaries, three replicas, each
//! node with its own folder for `nodes.conf`), joined by
//! `redis-cli --cluster create`, and three paypush instances started with
//! `--redis-cluster`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::process::Command;

use crate::servers::{command, RedisCluster, CLUSTER_PATIENCE};
use crate::support::{refused_at_start, spawn_app, EventStream, TestApp, PATIENCE};
use crate::{assert_replay_refused_across, send_signed, status_and_body, wait_until_ready, REDIS};

/// A Redis Cluster of the test's own and `N` paypush instances on it, each
/// ready; `None` (after saying why) when the test is to skip.
async fn cluster<const N: usize>(
    test: &str,
    flags: &[&str],
) -> Option<(RedisCluster, [TestApp; N])> {
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("redis-cli", "redis-tools", test)
    {
        return None;
    }
    let redis = RedisCluster::start().await;
    let mut instances = Vec::with_capacity(N);
    for _ in 0..N {
        instances.push(instance(&redis, flags).await);
    }
    let instances = instances.try_into().ok().expect("N instances");
    Some((redis, instances))
}

async fn instance(redis: &RedisCluster, flags: &[&str]) -> TestApp {
    let seeds = redis.seeds();
    let mut all = vec!["--redis-cluster", &seeds];
    all.extend_from_slice(flags);
    let app = spawn_app(&all).await;
    wait_until_ready(&app, 200).await;
    app
}

/// A callback retried while it is answered `503`, as a provider does
/// (a `WAIT` may time out on this busy machine); its final status and body.
async fn callback_until_answered(app: &TestApp, id: &str, status: &str) -> (u16, Value) {
    for _ in 0..20 {
        let answer = app.callback(id, Some(status)).await;
        let code = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        if code != 503 {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("callback {id} {status}: 503 twenty times");
}

/// Payment ids spread over the whole slot range.
fn payment(i: usize) -> String {
    (1_000_003 + i * 7_919).to_string()
}

async fn total(instances: &[TestApp], metric: &str) -> f64 {
    let mut sum = 0.0;
    for app in instances {
        sum += app.metric(metric).await;
    }
    sum
}

/// A waiter of any transport, registered and waiting.
enum Waiter {
    Sse(EventStream),
    Poll(tokio::task::JoinHandle<Value>),
    Ws(super::support::WsClient),
}

impl Waiter {
    /// Opens one, for payment `i`, of the transport `i` picks.
    async fn open(app: &TestApp, i: usize) -> Waiter {
        let id = payment(i);
        match (i / 3) % 3 {
            0 => Waiter::Sse(app.push_pending(&id).await),
            1 => {
                let request = app
                    .client
                    .get(app.url(&format!("/status?payRecordId={id}&wait=25")));
                Waiter::Poll(tokio::spawn(async move {
                    request.send().await.unwrap().json().await.unwrap()
                }))
            }
            _ => Waiter::Ws(app.ws_pending(&id).await),
        }
    }

    /// The outcome it gets; then it must end.
    async fn outcome(self) -> Value {
        match self {
            Waiter::Sse(mut stream) => {
                let outcome = stream.next_event().await.expect("an outcome").json();
                assert!(stream.ends().await, "exactly one outcome, then the end");
                outcome
            }
            Waiter::Poll(poll) => tokio::time::timeout(PATIENCE, poll)
                .await
                .expect("woken in time")
                .unwrap(),
            Waiter::Ws(mut socket) => {
                let outcome = super::support::next_json(&mut socket).await;
                assert_eq!(super::support::next_close(&mut socket).await.0, 1000);
                outcome
            }
        }
    }
}

#[tokio::test]
async fn cluster_streams_long_polls_and_websockets_get_callbacks_taken_by_another_instance() {
    let Some((redis, instances)) =
        cluster::<3>("cluster_waiters_get_callbacks_over_all_slots", &[]).await
    else {
        return;
    };
    const PAYMENTS: usize = 300;
    let mut waiters = Vec::new();
    for batch in (0..PAYMENTS).collect::<Vec<_>>().chunks(100) {
        let opened = join_all(batch.iter().map(|&i| {
            let app = &instances[i % 3];
            async move { (i, Waiter::open(app, i).await) }
        }))
        .await;
        waiters.extend(opened);
    }
    // Every waiter's channel is subscribed (a long-poll has no pending
    // answer to tell), and every primary holds some of them.
    for app in instances.iter() {
        app.wait_for_metric("paypush_redis_channels_subscribed", (PAYMENTS / 3) as f64)
            .await;
    }
    for port in redis.primaries().await {
        let channels: Vec<String> = command(port, &["PUBSUB", "SHARDCHANNELS"]).await.unwrap();
        assert!(!channels.is_empty(), "no channel on primary {port}");
    }

    let statuses = ["SUCCESS", "FAILED", "CLOSED"];
    join_all((0..PAYMENTS).map(|i| {
        let app = &instances[(i + 1) % 3];
        async move {
            let (code, _) = callback_until_answered(app, &payment(i), statuses[i % 3]).await;
            assert_eq!(code, 200);
        }
    }))
    .await;

    join_all(waiters.into_iter().map(|(i, waiter)| async move {
        let outcome = waiter.outcome().await;
        assert_eq!(outcome["payRecordId"], payment(i));
        assert_eq!(outcome["status"], statuses[i % 3]);
    }))
    .await;
    let mut delivered = 0.0;
    for transport in ["sse", "poll", "ws"] {
        let metric = format!("paypush_outcomes_delivered_total{{transport=\"{transport}\"}}");
        delivered += total(&instances, &metric).await;
    }
    assert_eq!(
        delivered, PAYMENTS as f64,
        "each waiter got its outcome once"
    );
    // Each outcome travelled to the one instance waiting for it.
    assert_eq!(
        total(&instances, "paypush_redis_pubsub_messages_total").await,
        PAYMENTS as f64
    );
}

#[tokio::test]
async fn cluster_late_subscribers_duplicates_and_conflicts_are_decided_once() {
    let Some((redis, [a, b, c])) = cluster("cluster_decided_once", &[]).await else {
        return;
    };
    let (_, first) = callback_until_answered(&a, "11", "CLOSED").await;
    assert_eq!(first["duplicate"], false);

    let mut late = b.push("11").await;
    let event = late.next_event().await.unwrap();
    assert_eq!(event.event, None, "no pending: the outcome at once");
    assert_eq!(event.json()["completedAt"], first["completedAt"]);
    let (_, again) = callback_until_answered(&c, "11", "closed").await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["completedAt"], first["completedAt"]);
    assert_eq!(c.callback("11", Some("SUCCESS")).await.status(), 409);

    // Concurrent callbacks for one payment to all three: exactly one recorded.
    for round in 0..20 {
        let id = payment(500 + round);
        let answers = join_all([(&a, "SUCCESS"), (&b, "FAILED"), (&c, "CLOSED")].map(
            |(app, status)| {
                let id = id.clone();
                async move { callback_until_answered(app, &id, status).await }
            },
        ))
        .await;
        let recorded = answers
            .iter()
            .filter(|(code, body)| *code == 200 && body["duplicate"] == false)
            .count();
        let conflicts = answers.iter().filter(|(code, _)| *code == 409).count();
        assert_eq!((recorded, conflicts), (1, 2), "{answers:?}");
    }
    // Every 200 (22 of them) waited for a replica, and so did any 503 retried.
    assert!(redis.waits().await >= 22);
}

#[tokio::test]
async fn cluster_fan_out_is_exact_and_channels_go_with_their_last_waiter() {
    let Some((redis, [a, b, _c])) = cluster("cluster_fan_out_is_exact", &[]).await else {
        return;
    };
    let mut streams = Vec::new();
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        streams.push(app.push_pending(&payment(900 + i)).await);
        // A second waiter on the same instance shares the subscription.
        if i < 4 {
            streams.push(app.push_pending(&payment(900 + i)).await);
        }
    }
    let primaries = redis.primaries().await;
    let mut channels = HashSet::new();
    for &port in &primaries {
        let on_node: Vec<String> = command(port, &["PUBSUB", "SHARDCHANNELS"]).await.unwrap();
        for channel in &on_node {
            let counts: Vec<(String, u64)> = command(port, &["PUBSUB", "SHARDNUMSUB", channel])
                .await
                .unwrap();
            assert_eq!(counts[0].1, 1, "{channel} has one subscriber");
        }
        channels.extend(on_node);
    }
    let expected: HashSet<String> = (0..20)
        .map(|i| format!("paypush:outcomes:{{{}}}", payment(900 + i)))
        .collect();
    assert_eq!(channels, expected, "one channel per waiting payment");
    for node in redis.nodes.iter() {
        let classic: Vec<String> = command(node.port, &["PUBSUB", "CHANNELS"]).await.unwrap();
        assert!(classic.is_empty(), "no classic channel: {classic:?}");
    }
    assert_eq!(a.metric("paypush_redis_channels_subscribed").await, 10.0);
    assert_eq!(b.metric("paypush_redis_channels_subscribed").await, 10.0);

    drop(streams);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut left = 0;
        for &port in &primaries {
            let on_node: Vec<String> = command(port, &["PUBSUB", "SHARDCHANNELS"]).await.unwrap();
            left += on_node.len();
        }
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} channels outlived their waiters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.wait_for_metric("paypush_redis_channels_subscribed", 0.0)
        .await;
}

/// How many times the primaries ran `command` since their last
/// `CONFIG RESETSTAT`, from `INFO commandstats`.
async fn calls(primaries: &[u16], command_name: &str) -> u64 {
    let mut sum = 0;
    for &port in primaries {
        let stats: String = command(port, &["INFO", "commandstats"]).await.unwrap();
        let prefix = format!("cmdstat_{command_name}:calls=");
        sum += stats
            .lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    sum
}

#[tokio::test]
async fn cluster_concurrent_callbacks_share_a_wait_per_batch() {
    let Some((redis, [app])) = cluster::<1>("cluster_callbacks_share_a_wait", &[]).await else {
        return;
    };
    const PAYMENTS: usize = 200;
    let primaries = redis.primaries().await;
    for &port in &primaries {
        command::<()>(port, &["CONFIG", "RESETSTAT"]).await.unwrap();
    }
    let streams = join_all((0..PAYMENTS).map(|i| {
        let app = &app;
        async move { app.push_pending(&payment(2_000 + i)).await }
    }))
    .await;
    app.wait_for_metric("paypush_redis_channels_subscribed", PAYMENTS as f64)
        .await;
    // One subscription and one read per checkout.
    assert_eq!(calls(&primaries, "ssubscribe").await, PAYMENTS as u64);
    assert_eq!(calls(&primaries, "get").await, PAYMENTS as u64);

    join_all((0..PAYMENTS).map(|i| {
        let app = &app;
        async move {
            let (code, _) = callback_until_answered(app, &payment(2_000 + i), "SUCCESS").await;
            assert_eq!(code, 200);
        }
    }))
    .await;
    for (i, mut stream) in streams.into_iter().enumerate() {
        let event = stream.next_event().await.expect("the outcome");
        assert!(event.data.contains(&payment(2_000 + i)), "{event:?}");
    }
    // Every callback ran its script (a retried one more than once), but
    // they shared WAITs: a batch pays one per shard.
    let scripts = calls(&primaries, "eval").await;
    let waits = calls(&primaries, "wait").await;
    assert!(scripts >= PAYMENTS as u64, "{scripts} scripts");
    println!("{waits} WAITs for {scripts} scripts");
    assert!(
        waits > 0 && waits < scripts,
        "{waits} WAITs for {scripts} scripts"
    );
}

#[tokio::test]
async fn cluster_replayed_nonce_is_refused_on_another_instance() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((_redis, [a, b])) = cluster("cluster_replayed_nonce", &secret).await else {
        return;
    };
    let path = "/pay-callback?payRecordId=77";
    assert_replay_refused_across(&a, &b, path).await;
}

#[tokio::test]
async fn cluster_signed_callback_answered_503_is_recorded_when_retried_verbatim() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((redis, [a, b])) = cluster("cluster_signed_callback_retried", &secret).await else {
        return;
    };
    let id = payment(3_000);
    let mut stream = b.push_pending(&id).await;
    let path = format!("/pay-callback?payRecordId={id}&status=CLOSED");
    let headers =
        super::support::paypush_sign(None, &["--secret", "shared-secret", "--path", &path]);

    // The nonce's SET is allowed, the record script is not.
    redis.set_default_user(&["-eval", "-evalsha"]).await;
    let (status, body) = status_and_body(send_signed(&a, &path, &headers).await).await;
    assert_eq!(status, 503, "{body}");

    redis.set_default_user(&["+eval", "+evalsha"]).await;
    // Retried as a provider does while it is 503 (a WAIT may time out on
    // this busy machine): never a 401.
    let mut answer = (503, String::new());
    for _ in 0..20 {
        answer = status_and_body(send_signed(&a, &path, &headers).await).await;
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, 200, "the verbatim retry: {}", answer.1);
    let outcome = stream.next_event().await.expect("the outcome on B");
    assert_eq!(outcome.json()["status"], "CLOSED");
}

#[tokio::test]
async fn cluster_ready_right_after_start_means_callbacks_across_all_slots_are_200() {
    let test = "cluster_ready_right_after_start";
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("redis-cli", "redis-tools", test)
    {
        return;
    }
    // paypush starts as soon as the cluster is joined: its replicas are
    // still syncing, which /readyz must see.
    let redis = RedisCluster::create().await;
    let seeds = redis.seeds();
    let flags = ["--redis-cluster", seeds.as_str()];
    let instances = join_all((0..3).map(|_| spawn_app(&flags))).await;
    const PER_INSTANCE: usize = 60;
    let answers = join_all(instances.iter().enumerate().map(|(n, app)| async move {
        // Polled closely, and the callbacks sent the moment it says 200.
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        while app.get("/readyz").await.status() != 200 {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        join_all((0..PER_INSTANCE).map(|i| async move {
            let id = payment(5_000 + n * PER_INSTANCE + i);
            let answer = app.callback(&id, Some("SUCCESS")).await;
            let code = answer.status().as_u16();
            (id, code, answer.text().await.unwrap_or_default())
        }))
        .await
    }))
    .await;
    let refused: Vec<_> = answers
        .iter()
        .flatten()
        .filter(|(_, code, _)| *code != 200)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} callbacks refused right after ready, e.g. {:?}",
        refused.len(),
        3 * PER_INSTANCE,
        refused.first()
    );
}

#[tokio::test]
async fn cluster_callback_no_replica_acknowledges_is_503_saying_so() {
    let Some((redis, [a])) = cluster("cluster_callback_no_replica_acknowledges", &[]).await else {
        return;
    };
    let primary = redis.primaries().await[0];
    let replica = redis.replica_of(primary).await;
    // A payment whose slot that primary holds (the others answer MOVED).
    let mut id = None;
    for i in 0.. {
        let key = format!("paypush:outcome:{{{}}}", payment(6_000 + i));
        if command::<Option<String>>(primary, &["GET", &key])
            .await
            .is_ok()
        {
            id = Some(payment(6_000 + i));
            break;
        }
    }
    let id = id.expect("a payment of that primary");

    // The replica stops answering (before the cluster could call it failed).
    redis.signal(replica, "STOP");
    let answer = a.callback(&id, Some("SUCCESS")).await;
    redis.signal(replica, "CONT");
    let (status, body) = status_and_body(answer).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("replica"), "says why: {body}");
    assert!(!body.contains("cannot be reached"), "{body}");
}

#[tokio::test]
async fn cluster_failover_under_load_loses_no_200() {
    let Some((mut redis, instances)) = cluster::<3>("cluster_failover_under_load", &[]).await
    else {
        return;
    };
    let instances = Arc::new(instances);
    // Streams that wait through the failover for payments paid after it.
    const WAITING: usize = 30;
    let mut waiting = Vec::new();
    for i in 0..WAITING {
        waiting.push(instances[i % 3].push_pending(&payment(2_000 + i)).await);
    }

    // Callbacks flow from four workers until told to stop (bounded anyway).
    const MAX_CALLBACKS: usize = 4_000;
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<Mutex<HashMap<String, (u16, Value)>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (instances, stop, answered) = (instances.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                for n in (w..MAX_CALLBACKS).step_by(4) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = payment(10_000 + n);
                    let answer = instances[n % 3].callback(&id, Some("SUCCESS")).await;
                    let code = answer.status().as_u16();
                    let body: Value = answer.json().await.unwrap_or_default();
                    answered.lock().unwrap().insert(id, (code, body));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = redis.primaries().await[0];
    redis.kill(victim).await;
    // While the victim's slots have no reachable primary, paypush is not ready.
    let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
    while instances[0].get("/readyz").await.status() != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.wait_until_formed().await;
    for app in instances.iter() {
        wait_until_ready(app, 200).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let answered = std::mem::take(&mut *answered.lock().unwrap());
    let codes: HashMap<u16, usize> = answered.values().fold(HashMap::new(), |mut m, (c, _)| {
        *m.entry(*c).or_default() += 1;
        m
    });
    assert!(
        codes.keys().all(|c| [200, 503].contains(c)),
        "only 200 and 503: {codes:?}"
    );
    assert!(codes.get(&200).copied().unwrap_or(0) > 0, "{codes:?}");
    for (id, (code, body)) in &answered {
        if *code != 200 {
            continue;
        }
        let (code, again) = callback_until_answered(&instances[1], id, "SUCCESS").await;
        assert_eq!(code, 200, "payment {id}");
        assert_eq!(
            again["duplicate"], true,
            "payment {id} answered 200 was lost"
        );
        assert_eq!(again["completedAt"], body["completedAt"]);
    }

    // The streams that waited through it get their outcomes now.
    for i in 0..WAITING {
        let (code, _) =
            callback_until_answered(&instances[(i + 1) % 3], &payment(2_000 + i), "CLOSED").await;
        assert_eq!(code, 200);
    }
    join_all(
        waiting
            .iter_mut()
            .map(|stream: &mut EventStream| async move {
                let outcome = stream
                    .next_event()
                    .await
                    .expect("an outcome after failover");
                assert_eq!(outcome.json()["status"], "CLOSED");
            }),
    )
    .await;
    eprintln!("failover under load: {codes:?}");
}

#[tokio::test]
async fn cluster_flag_with_redis_url_or_a_bad_node_exits_2_with_one_line() {
    for flags in [
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-cluster",
            "redis://127.0.0.1:2",
        ][..],
        &["--redis-cluster", "redis://127.0.0.1:2,not a url"],
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_paypush"));
        command.args(flags);
        let stderr = refused_at_start(command).await;
        assert!(stderr.starts_with("error:"), "{flags:?}: {stderr}");
    }
}
