//! The WebSocket waiter: the upgrade, a frame reader (text, close and ping
//! are all it needs), and the `--ready auto` probe for a `PENDING` frame.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};

use crate::args::Ready;
use crate::http1::{find, read_head, Head, READ_CHUNK};
use crate::net::{connect, source, Target};
use crate::sse::PROBE_WAIT;
use crate::waiters::{fail, mark_ready, record_outcome, refuse, state, Shared};

/// The key of the WebSocket handshake: any 16 bytes, base64; the answer's
/// `Sec-WebSocket-Accept` is not checked (loopback servers under test).
pub(crate) const WS_KEY: &str = "cGF5cHVzaC1sb2FkZ2VuIQ==";
/// WebSocket opcodes.
pub(crate) const WS_TEXT: u8 = 0x1;
pub(crate) const WS_BINARY: u8 = 0x2;
pub(crate) const WS_CLOSE: u8 = 0x8;
pub(crate) const WS_PING: u8 = 0x9;

/// Opens a WebSocket: writes the upgrade request and reads the answer's head.
pub(crate) async fn ws_connect(
    target: &Target,
    id: u64,
    from: SocketAddr,
) -> Result<(TcpStream, Head), (&'static str, std::io::Error)> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n",
        target.path_for(id),
        target.host
    );
    let mut io = connect(target.addr, from)
        .await
        .map_err(|e| ("connect", e))?;
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| ("write request", e))?;
    let mut buf = Vec::new();
    let head = read_head(&mut io, &mut buf)
        .await
        .map_err(|e| ("read response head", e))?;
    Ok((io, head))
}

/// The first whole frame in `buf`: opcode, payload range, frame length.
pub(crate) fn ws_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let mut at = 2;
    let mut len = usize::from(second & 0x7f);
    if len == 126 {
        len = usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?));
        at = 4;
    } else if len == 127 {
        len = usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?;
        at = 10;
    }
    if second & 0x80 != 0 {
        at += 4; // a masked frame: servers do not send them
    }
    (buf.len() >= at + len).then_some((first & 0x0f, at..at + len, at + len))
}

/// One WebSocket waiter: subscribed after the `PENDING` frame (paypush) or
/// the `101` (nchan, `--ready headers`); done at the first other text frame,
/// then closes, as a checkout page does. Pings are answered.
pub(crate) async fn run_ws(
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
    let (mut io, head) = match ws_connect(&target, id, source(index, sources)).await {
        Ok(connected) => connected,
        Err((step, e)) => return fail(&shared, slot, step, &e),
    };
    if head.status != 101 {
        return refuse(&shared, slot, head.status);
    }
    let mut ready = false;
    if ready_on == Ready::Headers {
        mark_ready(&shared, slot, &mut ready);
    }
    drop(permit);
    let mut buf = head.rest;
    let mut ended_by = None;
    'read: loop {
        while let Some((opcode, payload, length)) = ws_frame(&buf) {
            let text = &buf[payload.clone()];
            match opcode {
                WS_TEXT | WS_BINARY if find(text, b"\"PENDING\"").is_some() => {
                    mark_ready(&shared, slot, &mut ready)
                }
                WS_TEXT | WS_BINARY => record_outcome(&shared, slot),
                WS_CLOSE => {
                    if find(text, b"timeout").is_some() {
                        slot.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    break 'read;
                }
                WS_PING => {
                    // A pong, masked (as client frames must be) with a zero key.
                    let mut pong = vec![0x8A, 0x80 | (payload.len() as u8 & 0x7f), 0, 0, 0, 0];
                    pong.extend_from_slice(text);
                    if io.write_all(&pong).await.is_err() {
                        break 'read;
                    }
                }
                _ => {}
            }
            buf.drain(..length);
        }
        if slot.outcomes.load(Ordering::Relaxed) > 0 {
            break;
        }
        let mut chunk = [0u8; READ_CHUNK];
        match io.read(&mut chunk).await {
            Ok(0) => break,
            Err(e) => {
                ended_by = Some(e);
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
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

/// Opens one WebSocket for a payment nobody else uses and says whether the
/// server sends a `PENDING` frame on it.
pub(crate) async fn probe_ws_ready_mode(subscribe: &Target, id: u64) -> Result<Ready, String> {
    let (mut io, head) = ws_connect(subscribe, id, source(0, 1))
        .await
        .map_err(|(step, e)| format!("probe socket, {step}: {e}"))?;
    if head.status != 101 {
        return Err(format!("the probe socket got status {}", head.status));
    }
    let mut buf = head.rest;
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        if let Some((opcode, payload, _)) = ws_frame(&buf) {
            let pending = opcode == WS_TEXT && find(&buf[payload], b"\"PENDING\"").is_some();
            return Ok(if pending {
                Ready::Pending
            } else {
                Ready::Headers
            });
        }
        let mut chunk = [0u8; READ_CHUNK];
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            io.read(&mut chunk),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Ok(Ready::Headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_frames_parse_with_each_length_form() {
        assert_eq!(ws_frame(&[0x81, 2, b'o', b'k']), Some((WS_TEXT, 2..4, 4)));
        assert_eq!(ws_frame(&[0x81, 2, b'o']), None, "incomplete");
        let mut medium = vec![0x81, 126, 0, 200];
        medium.extend(vec![b'x'; 200]);
        assert_eq!(ws_frame(&medium), Some((WS_TEXT, 4..204, 204)));
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0; 65536]);
        assert_eq!(ws_frame(&long), Some((WS_BINARY, 10..65546, 65546)));
        assert_eq!(ws_frame(&[0x88, 0]), Some((WS_CLOSE, 2..2, 2)));
    }
}
