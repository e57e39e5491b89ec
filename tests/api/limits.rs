//! Limits that keep one client from holding the service: a stalled body
//! gets `408`, a flood of callbacks does not starve another client's,
//! streams are capped, and a store at `--max-outcomes` says so on
//! `/readyz`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{spawn_app, PATIENCE};

/// The contract's deadline for a body, plus room for a loaded machine.
const BODY_DEADLINE_AND_SLACK: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_its_connection_closed() {
    let app = spawn_app(&[]).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(
        b"POST /pay-callback HTTP/1.1\r\nHost: paypush\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\np",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(BODY_DEADLINE_AND_SLACK, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within the body deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "not before 10 s"
    );
}

#[tokio::test]
async fn a_body_that_stalls_over_h2c_gets_408_json() {
    let app = spawn_app(&[]).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let first_byte = futures_util::stream::once(async { Ok::<_, std::io::Error>("{") });
    let stalled = futures_util::StreamExt::chain(first_byte, futures_util::stream::pending());
    let answer = tokio::time::timeout(
        BODY_DEADLINE_AND_SLACK,
        h2c.post(app.url("/pay-callback"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stalled))
            .send(),
    )
    .await
    .expect("an answer within the body deadline")
    .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 408);
    assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "request_timeout");
}

/// The callback flood's connections, from one client ...
const FLOODERS: u64 = 32;
/// ... each sending this many callbacks, one after the other.
const FLOOD_PER_FLOODER: u64 = 150;
/// The longest another client's payment (open `/push`, its callback, the
/// outcome on the stream: three exchanges) may take during that flood.
/// Measured on a shared 2-core machine, debug build, alone and beside the
/// rest of the suite: the payment 15-215 ms, the flood 3-7 s (every
/// callback recorded in the store), the payment never over 6 % of the
/// flood. A server that served the flood before it would keep it waiting
/// most of the flood. 2 s is ten times the slowest payment seen, for a busy
/// CI machine; as a slower machine slows the flood too, the payment must
/// also take under a quarter of the flood (four times the worst ratio
/// seen) and be through before the flood is.
const PROBE_BOUND: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_flood_of_callbacks_from_one_client_does_not_starve_another() {
    let app = spawn_app(&[]).await;
    let flooder = reqwest::Client::builder()
        .pool_max_idle_per_host(FLOODERS as usize)
        .build()
        .unwrap();
    let base = app.url("");
    let answered = Arc::new(AtomicU64::new(0));
    let flood_started = Instant::now();
    let flood: Vec<_> = (0..FLOODERS)
        .map(|worker| {
            let (flooder, base, answered) = (flooder.clone(), base.clone(), answered.clone());
            tokio::spawn(async move {
                for i in 0..FLOOD_PER_FLOODER {
                    let url = format!(
                        "{base}/pay-callback?payRecordId={}",
                        1_000_000 + worker * 1000 + i
                    );
                    let _ = flooder.get(url).send().await;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Once the flood is under way ...
    let total = FLOODERS * FLOOD_PER_FLOODER;
    while answered.load(Ordering::Relaxed) < FLOODERS {
        assert!(
            flood_started.elapsed() < PATIENCE,
            "the flood never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ... another customer's payment goes through, promptly.
    let probe = Instant::now();
    let mut stream = app.push_pending("19").await;
    assert_eq!(app.callback("19", None).await.status(), 200);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "SUCCESS"
    );
    let probe_took = probe.elapsed();
    let answered_by_then = answered.load(Ordering::Relaxed);
    for worker in flood {
        worker.await.unwrap();
    }
    let flood_took = flood_started.elapsed();
    eprintln!(
        "probe {probe_took:?} with {answered_by_then} of {total} flood callbacks answered; flood {flood_took:?}"
    );
    assert!(
        probe_took < PROBE_BOUND,
        "another client's payment took {probe_took:?} during the flood (which took {flood_took:?})"
    );
    assert!(
        probe_took < flood_took / 4,
        "another client's payment took {probe_took:?}, over a quarter of the flood ({flood_took:?})"
    );
    assert!(
        answered_by_then < total,
        "the payment went through only after the flood ({probe_took:?}, flood {flood_took:?})"
    );
    assert_eq!(
        app.metric("paypush_outcomes_recorded").await,
        total as f64 + 1.0
    );
}

#[tokio::test]
async fn a_flood_of_streams_is_bounded_and_others_are_still_served() {
    let app = spawn_app(&["--max-streams", "50"]).await;
    let mut held = Vec::new();
    for i in 0..50 {
        held.push(app.push_pending(&format!("{}", 2_000 + i)).await);
    }
    assert_eq!(app.get("/push?payRecordId=3000").await.status(), 503);
    // Callbacks, health and late subscribers still work at the cap.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.callback("2000", None).await.status(), 200);
    assert_eq!(
        held[0].next_event().await.unwrap().json()["status"],
        "SUCCESS"
    );
    let late = app.push("2000").await;
    assert_eq!(late.response_status, 200);
}

#[tokio::test]
async fn readyz_is_503_naming_max_outcomes_while_every_new_outcome_is_refused() {
    for store in [&[][..], &["--in-memory"]] {
        let mut flags = vec!["--max-outcomes", "2", "--outcome-ttl", "1s"];
        flags.extend_from_slice(store);
        let app = spawn_app(&flags).await;
        assert_eq!(app.get("/readyz").await.status(), 200, "{flags:?}");
        for id in ["1", "2"] {
            assert_eq!(app.callback(id, None).await.status(), 200);
        }
        let full = app.get("/readyz").await;
        assert_eq!(full.status(), 503, "{flags:?}");
        let json: serde_json::Value = full.json().await.unwrap();
        assert_eq!(json["error"], "not_ready");
        assert!(
            json["message"].as_str().unwrap().contains("--max-outcomes"),
            "{flags:?}: {json}"
        );
        // Ready again once the outcomes expire and make room.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(app.get("/readyz").await.status(), 200, "{flags:?}");
    }
}
