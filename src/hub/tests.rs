//! The hub's unit tests: every part through the handle, with tokio's
//! paused clock for deadlines.

use super::*;

/// The waiters' deadline in these tests.
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);
use crate::model::Status;

fn hub(max_streams: usize, per_payment: usize) -> Hub {
    Hub::new(Limits {
        max_streams,
        max_streams_per_payment: per_payment,
        outcome_ttl: Duration::from_secs(60),
        nonce_memory: Duration::from_secs(600),
        max_outcomes: 1_000,
        push_timeout: PUSH_TIMEOUT,
    })
}

fn id(n: u64) -> PayRecordId {
    PayRecordId::from_u64(n).unwrap()
}

fn waiting(sub: Result<Subscription, SubscribeError>) -> Waiting {
    match sub {
        Ok(Subscription::Waiting(w)) => w,
        other => panic!("expected a waiting subscription, got {other:?}"),
    }
}

#[tokio::test]
async fn every_waiting_stream_gets_the_outcome() {
    let hub = hub(10, 10);
    let mut a = waiting(hub.subscribe(id(1)));
    let mut b = waiting(hub.subscribe(id(1)));
    let completion = hub
        .complete(Outcome::new(id(1), Status::Success))
        .await
        .unwrap();
    assert!(matches!(
        completion,
        Completion::Recorded { notified: 2, .. }
    ));
    assert_eq!(
        a.outcome().await.into_outcome().unwrap().status,
        Status::Success
    );
    assert_eq!(
        b.outcome().await.into_outcome().unwrap().status,
        Status::Success
    );
}

#[tokio::test]
async fn delivered_outcomes_are_kept_only_where_streams_wait() {
    let hub = hub(10, 10);
    let mut a = waiting(hub.subscribe(id(1)));
    assert_eq!(hub.deliver(Outcome::new(id(1), Status::Success)), 1);
    assert_eq!(
        a.outcome().await.into_outcome().unwrap().status,
        Status::Success
    );
    assert_eq!(hub.deliver(Outcome::new(id(2), Status::Success)), 0);
    assert_eq!(hub.stats().recorded_outcomes, 1, "payment 2 is not kept");
}

#[tokio::test]
async fn dropped_streams_leave_nothing_behind() {
    let hub = hub(10, 10);
    for _ in 0..100 {
        drop(waiting(hub.subscribe(id(7))));
    }
    assert_eq!(hub.stats(), Stats::default());
}

#[tokio::test]
async fn first_outcome_wins() {
    let hub = hub(10, 10);
    hub.complete(Outcome::new(id(1), Status::Failed))
        .await
        .unwrap();
    assert!(matches!(
        hub.complete(Outcome::new(id(1), Status::Failed)).await.unwrap(),
        Completion::Duplicate(o) if o.status == Status::Failed
    ));
    assert!(matches!(
        hub.complete(Outcome::new(id(1), Status::Success)).await.unwrap(),
        Completion::Conflict(o) if o.status == Status::Failed
    ));
    assert!(
        matches!(hub.subscribe(id(1)), Ok(Subscription::Recorded(o)) if o.status == Status::Failed)
    );
}

#[tokio::test]
async fn limits_refuse_extra_streams() {
    let hub = hub(3, 2);
    let _a = waiting(hub.subscribe(id(1)));
    let _b = waiting(hub.subscribe(id(1)));
    assert_eq!(
        hub.subscribe(id(1)).unwrap_err(),
        SubscribeError::TooManyStreams
    );
    let _c = waiting(hub.subscribe(id(2)));
    assert_eq!(
        hub.subscribe(id(3)).unwrap_err(),
        SubscribeError::OverCapacity
    );
}

#[tokio::test]
async fn every_transport_counts_against_the_same_limits() {
    let hub = hub(3, 2);
    let _sse = waiting(hub.subscribe_via(id(1), Transport::Sse, PUSH_TIMEOUT));
    let _ws = waiting(hub.subscribe_via(id(1), Transport::Ws, PUSH_TIMEOUT));
    assert_eq!(
        hub.subscribe_via(id(1), Transport::Poll, PUSH_TIMEOUT)
            .unwrap_err(),
        SubscribeError::TooManyStreams
    );
    let poll = waiting(hub.subscribe_via(id(2), Transport::Poll, PUSH_TIMEOUT));
    assert_eq!(hub.stats().open_by_transport, [1, 1, 1]);
    assert_eq!(
        hub.subscribe_via(id(3), Transport::Ws, PUSH_TIMEOUT)
            .unwrap_err(),
        SubscribeError::OverCapacity
    );
    drop(poll);
    assert_eq!(hub.stats().open_by_transport, [1, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn outcomes_expire_after_the_ttl() {
    let hub = hub(10, 10);
    hub.complete(Outcome::new(id(1), Status::Success))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(hub.stats().recorded_outcomes, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hub.stats(), Stats::default());
}

#[tokio::test(start_paused = true)]
async fn nonces_are_remembered_for_their_window_only() {
    let hub = hub(10, 10);
    assert_eq!(hub.remember_nonce("abcdefghijklmnop").0, NonceCheck::Fresh);
    assert_eq!(
        hub.remember_nonce("abcdefghijklmnop").0,
        NonceCheck::Replayed
    );
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert_eq!(hub.remember_nonce("abcdefghijklmnop").0, NonceCheck::Fresh);
}

#[tokio::test]
async fn shutdown_ends_waiting_streams_and_refuses_new_ones() {
    let hub = hub(10, 10);
    let mut a = waiting(hub.subscribe(id(1)));
    hub.shutdown();
    assert_eq!(a.outcome().await, Wake::Shutdown);
    assert_eq!(
        hub.subscribe(id(2)).unwrap_err(),
        SubscribeError::ShuttingDown
    );
}

#[tokio::test]
async fn new_outcomes_beyond_the_bound_are_refused_and_duplicates_still_answered() {
    let hub = Hub::new(Limits {
        max_outcomes: 2,
        ..hub(10, 10).limits()
    });
    for n in 1..=2 {
        hub.complete(Outcome::new(id(n), Status::Success))
            .await
            .unwrap();
    }
    assert!(matches!(
        hub.complete(Outcome::new(id(3), Status::Success)).await,
        Err(Refusal::Full)
    ));
    assert!(matches!(
        hub.complete(Outcome::new(id(1), Status::Success)).await,
        Ok(Completion::Duplicate(_))
    ));
    assert_eq!(hub.stats().recorded_outcomes, 2);
}

#[tokio::test]
async fn a_stream_waiting_through_a_refusal_stays_registered() {
    let hub = Hub::new(Limits {
        max_outcomes: 0,
        ..hub(10, 10).limits()
    });
    let _a = waiting(hub.subscribe(id(1)));
    assert!(hub
        .complete(Outcome::new(id(1), Status::Success))
        .await
        .is_err());
    assert_eq!(hub.stats().open_streams, 1);
    assert_eq!(hub.waiting_payments(), vec![id(1)]);
}

/// A hub whose store writes to a fresh folder (kept alive by the caller).
fn hub_with_store() -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::store::StoreConfig {
        dir: dir.path().to_path_buf(),
        durability: crate::store::Durability::Disk,
        outcome_ttl: Duration::from_secs(60),
        nonce_memory: Duration::from_secs(600),
    };
    let sync = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("s", "s"));
    let (store, replay) = Store::open(config, sync.unwrap()).unwrap();
    assert!(replay.records.is_empty());
    (
        Hub::with_store(hub(10, 10).limits(), store, Vec::new()),
        dir,
    )
}

/// Whether the folder's segments hold the outcome of payment `n`.
fn on_disk(dir: &std::path::Path, n: u64) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let mut record = Vec::new();
        Record::Outcome(Outcome {
            pay_record_id: id(n),
            status: Status::Success,
            completed_at: SystemTime::UNIX_EPOCH,
        })
        .encode(&mut record);
        // The id's bytes, right after the record's 8-byte header and tag.
        let id_bytes = &record[9..17];
        bytes.windows(8).any(|w| w == id_bytes)
    })
}

#[tokio::test]
async fn streams_and_duplicates_see_an_outcome_only_once_it_is_on_disk() {
    let (hub, dir) = hub_with_store();
    let mut stream = waiting(hub.subscribe(id(1)));
    let first = tokio::spawn({
        let hub = hub.clone();
        async move { hub.complete(Outcome::new(id(1), Status::Success)).await }
    });
    let again = tokio::spawn({
        let hub = hub.clone();
        async move { hub.complete(Outcome::new(id(1), Status::Success)).await }
    });
    let again = again.await.unwrap();
    assert!(on_disk(dir.path(), 1), "answered before it was stored");
    let outcome = stream.outcome().await.into_outcome().unwrap();
    assert_eq!(outcome.status, Status::Success);
    let results = [first.await.unwrap(), again];
    let recorded = results
        .iter()
        .filter(|r| matches!(r, Ok(Completion::Recorded { notified: 1, .. })))
        .count();
    let duplicates = results
        .iter()
        .filter(|r| matches!(r, Ok(Completion::Duplicate(_))))
        .count();
    assert_eq!((recorded, duplicates), (1, 1), "{results:?}");
}

#[tokio::test]
async fn a_restored_payment_keeps_its_latest_outcome() {
    let hub = hub(10, 10);
    let at = |seconds_ago: u64, status| {
        Record::Outcome(Outcome {
            pay_record_id: id(1),
            status,
            completed_at: SystemTime::now() - Duration::from_secs(seconds_ago),
        })
    };
    // Oldest first, as the store replays them: a refused outcome that
    // reached the disk anyway, then the one answered 200 after it.
    let limits = hub.limits();
    hub.lock()
        .restore(vec![at(2, Status::Failed), at(1, Status::Success)], &limits);
    assert_eq!(hub.recorded(id(1)).unwrap().status, Status::Success);
    assert_eq!(hub.lock().recorded_outcomes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_released_at_its_deadline_even_if_never_polled() {
    let hub = hub(1, 1);
    let (idle, mut went_idle) = mpsc::unbounded_channel();
    hub.notify_idle(idle);
    // Registered, then never polled: as a stream whose client reads nothing.
    let mut stalled = waiting(hub.subscribe(id(1)));
    assert_eq!(
        hub.subscribe(id(2)).unwrap_err(),
        SubscribeError::OverCapacity
    );
    tokio::time::sleep(PUSH_TIMEOUT + Duration::from_millis(1)).await;
    assert_eq!(
        hub.stats().open_streams,
        0,
        "the slot is free at the deadline"
    );
    assert_eq!(hub.stats().waiting_payments, 0);
    assert_eq!(went_idle.try_recv().ok(), Some(id(1)));
    let _next = waiting(hub.subscribe(id(2)));
    // The stalled transport, polled at last, learns it timed out, and
    // dropping it releases nothing twice.
    assert_eq!(stalled.outcome().await, Wake::Timeout);
    drop(stalled);
    assert_eq!(hub.stats().open_streams, 1);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_wait_ends_first_and_others_keep_waiting() {
    let hub = hub(10, 10);
    let mut long = waiting(hub.subscribe(id(1)));
    let start = Instant::now();
    let poll = hub.subscribe_via(id(1), Transport::Poll, Duration::from_secs(5));
    let mut poll = waiting(poll);
    assert_eq!(poll.outcome().await, Wake::Timeout);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(hub.stats().open_by_transport, [1, 0, 0]);
    hub.complete(Outcome::new(id(1), Status::Success))
        .await
        .unwrap();
    assert!(long.outcome().await.into_outcome().is_some());
}
