//! Several real paypush instances on one real `redis-server` of the test's
//! own: delivery across instances for every transport, duplicates and
//! conflicts decided once, Redis outages and restarts, replayed nonces and
//! retried callbacks.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::servers::RedisServer;
use crate::support::{self, spawn_app, TestApp, PATIENCE};
use crate::{
    assert_replay_refused_across, instance, send_signed, status_and_body, wait_until_ready, REDIS,
};

/// A redis-server of the test's own and `N` paypush instances on it, each
/// ready; `None` (after saying why) when the test is to skip.
async fn redis_and_instances<const N: usize>(
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

#[tokio::test]
async fn callback_on_one_instance_reaches_a_stream_on_another() {
    let Some((_redis, [a, b])) =
        redis_and_instances("callback_on_one_instance_reaches_a_stream_on_another", &[]).await
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
    let Some((_redis, [a, b])) = redis_and_instances(
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
    let Some((_redis, [a, b])) = redis_and_instances(
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
    let Some((_redis, [a, b])) = redis_and_instances(
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
        redis_and_instances("websocket_on_one_instance_gets_a_callback_on_another", &[]).await
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
    let Some((_redis, [a, b])) = redis_and_instances(
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
        redis_and_instances::<3>("a_thousand_payments_over_three_instances", &[]).await
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
        redis_and_instances("redis_outage_gives_503_keeps_streams_and_recovers", &[]).await
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

#[tokio::test]
async fn replayed_nonce_is_caught_on_another_instance() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((_redis, [a, b])) =
        redis_and_instances("replayed_nonce_is_caught_on_another_instance", &secret).await
    else {
        return;
    };
    let path = "/pay-callback?payRecordId=7";
    assert_replay_refused_across(&a, &b, path).await;
}

#[tokio::test]
async fn a_signed_callback_answered_503_is_recorded_when_retried_verbatim() {
    let secret = ["--callback-secret", "shared-secret"];
    let Some((redis, [a, b])) = redis_and_instances(
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
    let Some((redis, [a])) = redis_and_instances(
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

#[tokio::test]
async fn during_a_redis_outage_status_is_503_and_a_long_poll_waits_for_the_outcome() {
    let Some((mut redis, [a, b])) = redis_and_instances(
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
