//! Server-Sent Events over HTTP/1.1: an incremental event parser, one
//! waiter per connection ([`run_stream`]), and the `--ready auto` probe
//! that finds out whether the server sends `event: pending`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};

use crate::args::Ready;
use crate::http1::{read_head, Body, READ_CHUNK};
use crate::net::{connect, source, Target, IO_TIMEOUT};
use crate::waiters::{fail, mark_ready, on_sse_event, state, Shared};

/// How long the `--ready auto` probe waits for a `pending` event.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(1);

/// What an SSE event was.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SseEvent {
    Pending,
    Timeout,
    Outcome,
    Other,
}

/// An incremental Server-Sent Events parser: only event names and whether
/// there was data matter here.
#[derive(Default)]
pub(crate) struct SseParser {
    pub(crate) line: Vec<u8>,
    pub(crate) event: Vec<u8>,
    pub(crate) has_data: bool,
}

impl SseParser {
    pub(crate) fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(SseEvent)) {
        for &b in input {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                if self.has_data {
                    on_event(match self.event.as_slice() {
                        b"pending" => SseEvent::Pending,
                        b"timeout" => SseEvent::Timeout,
                        b"" | b"message" => SseEvent::Outcome,
                        _ => SseEvent::Other,
                    });
                }
                self.event.clear();
                self.has_data = false;
            } else if let Some(name) = self.line.strip_prefix(b"event:") {
                self.event = name.strip_prefix(b" ").unwrap_or(name).to_vec();
            } else if self.line.starts_with(b"data:") {
                self.has_data = true;
            }
            self.line.clear();
        }
    }
}

/// One stream: subscribe, wait for the outcome, then close the connection,
/// as a checkout page does (`EventSource.close()` on the outcome): paypush
/// ends its streams after the outcome and nchan does not, so closing on the
/// client side makes both servers pay the same teardown. Events in the same
/// read as the outcome still count (a duplicate sent with it is seen).
pub(crate) async fn run_stream(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    sources: u8,
    ready_on: Ready,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let permit = permits.acquire().await;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        target.path_for(id),
        target.host
    );
    let mut io = match connect(target.addr, source(index, sources)).await {
        Ok(io) => io,
        Err(e) => return fail(&shared, slot, "connect", &e),
    };
    if let Err(e) = io.write_all(request.as_bytes()).await {
        return fail(&shared, slot, "write request", &e);
    }
    let mut buf = Vec::new();
    let head = match read_head(&mut io, &mut buf).await {
        Ok(head) => head,
        Err(e) => return fail(&shared, slot, "read response head", &e),
    };
    if head.status != 200 {
        slot.state.store(state::REFUSED, Ordering::Relaxed);
        shared.refused.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(head.status / 100).min(5);
        shared.refused_statuses[class].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut ready = false;
    if ready_on == Ready::Headers {
        mark_ready(&shared, slot, &mut ready);
    }
    drop(permit);
    let mut body = Body::new(head.framing);
    let mut sse = SseParser::default();
    let mut input = head.rest;
    let mut decoded = Vec::new();
    let mut ended_by = None;
    loop {
        let ended = body.decode(&input, &mut decoded);
        sse.feed(&decoded, |event| {
            on_sse_event(&shared, slot, &mut ready, event)
        });
        decoded.clear();
        if ended || slot.outcomes.load(Ordering::Relaxed) > 0 {
            break;
        }
        input.resize(READ_CHUNK, 0);
        match io.read(&mut input).await {
            Ok(0) => break,
            Err(e) => {
                ended_by = Some(e);
                break;
            }
            Ok(n) => input.truncate(n),
        }
    }
    if !ready {
        let e = ended_by.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
        return fail(&shared, slot, "wait for pending", &e);
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}

/// Opens one stream for a payment nobody else uses and says whether the
/// server sends `event: pending` on it.
pub(crate) async fn probe_ready_mode(subscribe: &Target, id: u64) -> Result<Ready, String> {
    let mut io = connect(subscribe.addr, source(0, 1))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", subscribe.addr))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        subscribe.path_for(id),
        subscribe.host
    );
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let head = timeout(IO_TIMEOUT, read_head(&mut io, &mut buf))
        .await
        .map_err(|_| "the probe stream got no response".to_string())?
        .map_err(|e| format!("probe stream: {e}"))?;
    if head.status != 200 {
        return Err(format!("the probe stream got status {}", head.status));
    }
    let mut body = Body::new(head.framing);
    let mut sse = SseParser::default();
    let mut input = head.rest;
    let mut decoded = Vec::new();
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        let mut pending = false;
        let ended = body.decode(&input, &mut decoded);
        sse.feed(&decoded, |event| pending |= event == SseEvent::Pending);
        decoded.clear();
        if pending {
            return Ok(Ready::Pending);
        }
        if ended {
            return Ok(Ready::Headers);
        }
        input.resize(READ_CHUNK, 0);
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            io.read(&mut input),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => input.truncate(n),
            _ => return Ok(Ready::Headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_names_events() {
        let mut parser = SseParser::default();
        let mut seen = Vec::new();
        parser.feed(
            b"retry: 3000\nevent: pending\ndata: {}\n\n: keep-alive\n\nid: 1\ndata: {\"status\":\"SUCCESS\"}\n\n",
            |e| seen.push(e),
        );
        assert_eq!(seen, vec![SseEvent::Pending, SseEvent::Outcome]);
    }
}
