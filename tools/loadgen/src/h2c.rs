//! Event streams over HTTP/2 cleartext (prior knowledge): a few shared
//! connections carry many streams, as a proxy does upstream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::args::Ready;
use crate::net::{connect, Target};
use crate::sse::SseParser;
use crate::waiters::{fail, mark_ready, on_sse_event, refuse, state, Shared};

/// How much framing overhead of small DATA frames waiting to be read one
/// connection may hold (h2's guard against a peer flooding it with tiny
/// frames). Every stream's first event is a small frame: with thousands of
/// streams per connection and a busy load tool, h2's default budget ran
/// out at a million streams and it ended every connection with
/// `ENHANCE_YOUR_CALM`. The tool trusts the server it measures.
const SMALL_DATA_FRAME_BUDGET: usize = 1 << 30;

/// Opens an h2c connection (HTTP/2 with prior knowledge) from `from` and
/// drives it in its own task; its streams are opened with the handle.
pub(crate) async fn h2c_connect(
    target: &Target,
    from: SocketAddr,
) -> Result<h2::client::SendRequest<bytes::Bytes>, String> {
    let io = connect(target.addr, from)
        .await
        .map_err(|e| format!("h2c connect: {e}"))?;
    let (send, connection) = h2::client::Builder::new()
        .data_frame_budget(SMALL_DATA_FRAME_BUDGET)
        .handshake(io)
        .await
        .map_err(|e| format!("h2c handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("loadgen: an h2c connection ended: {e}");
        }
    });
    Ok(send)
}

/// One event stream over a shared h2c connection: the same life as
/// [`run_stream`]'s (subscribe, wait for the outcome, then close the stream
/// with a reset, as `EventSource.close()` does).
pub(crate) async fn run_h2c_stream(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    connection: h2::client::SendRequest<bytes::Bytes>,
    ready_on: Ready,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let permit = permits.acquire().await;
    let h2_error = |e: h2::Error| std::io::Error::other(e.to_string());
    let request = http::Request::get(format!("http://{}{}", target.host, target.path_for(id)))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(());
    let Ok(request) = request else {
        return fail(
            &shared,
            slot,
            "build request",
            &std::io::ErrorKind::InvalidInput.into(),
        );
    };
    // Waits while the connection carries as many streams as the server allows.
    let mut connection = match connection.ready().await {
        Ok(connection) => connection,
        Err(e) => return fail(&shared, slot, "h2c ready", &h2_error(e)),
    };
    let response = match connection.send_request(request, true) {
        Ok((response, _)) => response.await,
        Err(e) => return fail(&shared, slot, "h2c request", &h2_error(e)),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => return fail(&shared, slot, "h2c response head", &h2_error(e)),
    };
    if response.status() != 200 {
        return refuse(&shared, slot, response.status().as_u16());
    }
    let mut ready = false;
    if ready_on == Ready::Headers {
        mark_ready(&shared, slot, &mut ready);
    }
    drop(permit);
    let mut body = response.into_body();
    let mut sse = SseParser::default();
    let mut ended_by = None;
    while slot.outcomes.load(Ordering::Relaxed) == 0 {
        let chunk = match body.data().await {
            None => break,
            Some(Err(e)) => {
                ended_by = Some(h2_error(e));
                break;
            }
            Some(Ok(chunk)) => chunk,
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        sse.feed(&chunk, |event| {
            on_sse_event(&shared, slot, &mut ready, event)
        });
    }
    if !ready {
        let e = ended_by.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
        return fail(&shared, slot, "wait for pending", &e);
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}
