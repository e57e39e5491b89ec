//! `floor`: the shape the user fixed for paypush and nothing more, to
//! measure what the shape itself costs against nginx + nchan
//! (`docs/experiments.md`, "The design's floor").
//!
//! warp filters compose a shared `Arc<Mutex<HashMap>>` of per-payment
//! oneshot senders; `GET /push?payRecordId=N` sends `event: pending` and
//! awaits its oneshot inside a `warp::sse` reply (with `Connection: close`,
//! as paypush ends a stream's connection with it); `GET
//! /pay-callback?payRecordId=N` fires every sender of that payment and
//! answers a small JSON body. No store, no deadlines, no limits, no
//! metrics, no tokens, no replay: not a server to run, a yardstick.
//!
//! ```text
//! cargo run --release -p floor -- 127.0.0.1:18090 1   # address, runtime threads
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{stream, StreamExt};
use serde::Deserialize;
use tokio::sync::oneshot;
use warp::sse::Event;
use warp::Filter;

type Waiters = Arc<Mutex<HashMap<u64, Vec<oneshot::Sender<&'static str>>>>>;

#[derive(Deserialize)]
struct Query {
    #[serde(rename = "payRecordId")]
    pay_record_id: u64,
}

fn with_waiters(waiters: Waiters) -> impl Filter<Extract = (Waiters,), Error = Infallible> + Clone {
    warp::any().map(move || waiters.clone())
}

/// GET /push?payRecordId=123
fn push(
    waiters: Waiters,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    warp::path!("push")
        .and(warp::get())
        .and(warp::query::<Query>())
        .and(with_waiters(waiters))
        .map(|query: Query, waiters: Waiters| {
            let (sender, receiver) = oneshot::channel();
            if let Ok(mut map) = waiters.lock() {
                map.entry(query.pay_record_id).or_default().push(sender);
            }
            let pending = stream::once(async { Event::default().event("pending").data("{}") });
            let outcome = stream::once(async move {
                let status = receiver.await.unwrap_or("SHUTDOWN");
                Event::default().data(format!("{{\"status\":\"{status}\"}}"))
            });
            let events = pending.chain(outcome).map(Ok::<_, Infallible>);
            warp::reply::with_header(warp::sse::reply(events), "connection", "close")
        })
}

/// GET /pay-callback?payRecordId=123
fn callback(
    waiters: Waiters,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    warp::path!("pay-callback")
        .and(warp::get())
        .and(warp::query::<Query>())
        .and(with_waiters(waiters))
        .map(|query: Query, waiters: Waiters| {
            let senders = waiters
                .lock()
                .ok()
                .and_then(|mut map| map.remove(&query.pay_record_id))
                .unwrap_or_default();
            let delivered = senders
                .into_iter()
                .filter(|sender| !sender.is_closed())
                .map(|sender| sender.send("SUCCESS"))
                .filter(Result::is_ok)
                .count();
            warp::reply::json(&serde_json::json!({ "delivered": delivered }))
        })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18090".into())
        .parse()?;
    let threads: usize = args.next().unwrap_or_else(|| "1".into()).parse()?;
    let waiters = Waiters::default();
    let routes = push(waiters.clone()).or(callback(waiters));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(warp::serve(routes).run(addr));
    Ok(())
}
