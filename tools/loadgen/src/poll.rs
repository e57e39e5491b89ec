//! The long-poll waiter: `GET` again on the same connection after each
//! `PENDING` answer, until the outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::http1::{find, read_body, read_head};
use crate::net::{connect, source, Target};
use crate::waiters::{fail, mark_ready, record_outcome, refuse, state, Shared};

/// One long-poll waiter: `GET` until an answer that is not `PENDING` (each
/// `PENDING` counts as a timeout and is asked again on the same
/// connection). Counts as subscribed once its first request is written.
pub(crate) async fn run_poll(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    sources: u8,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let mut permit = permits.acquire().await.ok();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        target.path_for(id),
        target.host
    );
    let mut io = match connect(target.addr, source(index, sources)).await {
        Ok(io) => io,
        Err(e) => return fail(&shared, slot, "connect", &e),
    };
    let mut ready = false;
    let mut first_answer = true;
    let mut buf = Vec::new();
    loop {
        if let Err(e) = io.write_all(request.as_bytes()).await {
            return fail(&shared, slot, "write request", &e);
        }
        if !ready {
            mark_ready(&shared, slot, &mut ready);
            permit.take();
        }
        let head = match read_head(&mut io, &mut buf).await {
            Ok(head) => head,
            Err(_) => break,
        };
        let (status, close) = (head.status, head.close);
        let Ok(body) = read_body(&mut io, head).await else {
            break;
        };
        if status != 200 {
            if first_answer {
                // Refused (429, 503...) after counting as subscribed: undo that.
                shared.ready.fetch_sub(1, Ordering::Relaxed);
                refuse(&shared, slot, status);
                return;
            }
            break;
        }
        first_answer = false;
        if find(&body, b"\"PENDING\"").is_none() {
            record_outcome(&shared, slot);
            break;
        }
        slot.timeouts.fetch_add(1, Ordering::Relaxed);
        if close {
            break;
        }
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}
