//! The callbacks: each [`Publish`] request built from its template, the
//! [`Plan`] every connection draws from, and the keep-alive publisher
//! connections that send them at a fixed rate or flat out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

use crate::http1::{read_head, Body, Framing, READ_CHUNK};
use crate::net::{connect, source, Target, IO_TIMEOUT};
use crate::waiters::Shared;

/// The callback request of one payment, ready to write.
pub(crate) struct Publish {
    pub(crate) method: String,
    pub(crate) target: Target,
    pub(crate) body: Option<String>,
}

impl Publish {
    pub(crate) fn parse(spec: &str, body: &str) -> Result<Publish, String> {
        let (method, url) = spec
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("--publish {spec:?}: expected 'METHOD URL'"))?;
        let method = method.to_ascii_uppercase();
        Ok(Publish {
            body: (method == "POST").then(|| body.to_string()),
            method,
            target: Target::parse(url.trim())?,
        })
    }

    pub(crate) fn request(&self, id: u64) -> Vec<u8> {
        let id_text = id.to_string();
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method,
            self.target.path_for(id),
            self.target.host
        );
        match &self.body {
            Some(template) => {
                let body = template.replace("{id}", &id_text);
                request.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => request.push_str("\r\n"),
        }
        request.into_bytes()
    }
}

/// The callback plan every publisher connection draws from.
pub(crate) struct Plan {
    /// One per instance; publisher connection `n` uses the `n % len`-th.
    pub(crate) publish: Vec<Publish>,
    pub(crate) count: usize,
    pub(crate) next: AtomicUsize,
    /// Seconds between consecutive callbacks; 0: flat out.
    pub(crate) interval: f64,
    pub(crate) start: Instant,
    pub(crate) stop_at: Instant,
}

/// One keep-alive publisher connection: takes the next callback of the plan,
/// waits for its slot when a rate is set, sends it and reads the answer.
pub(crate) async fn run_publisher(shared: Arc<Shared>, plan: Arc<Plan>, n: usize, sources: u8) {
    let mut io: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let publish = &plan.publish[n % plan.publish.len()];
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.count {
            break;
        }
        if plan.interval > 0.0 {
            sleep_until(plan.start + Duration::from_secs_f64(plan.interval * i as f64)).await;
        }
        if Instant::now() >= plan.stop_at {
            break;
        }
        let id = shared.id_base + i as u64;
        let request = publish.request(id);
        let outcome = timeout(IO_TIMEOUT, async {
            if io.is_none() {
                io = Some(connect(publish.target.addr, source(n, sources)).await?);
            }
            let conn = io
                .as_mut()
                .ok_or_else(|| std::io::Error::other("not connected"))?;
            let sent = shared.now();
            if let Some(slot) = shared.streams.get(i) {
                slot.sent_at.store(sent, Ordering::Relaxed);
            }
            let _ =
                shared
                    .first_sent
                    .compare_exchange(0, sent, Ordering::Relaxed, Ordering::Relaxed);
            conn.write_all(&request).await?;
            let head = read_head(conn, &mut buf).await?;
            let mut body = Body::new(head.framing);
            let mut input = head.rest;
            let mut sink = Vec::new();
            let mut done = matches!(body.framing, Framing::Length(0));
            while !done {
                done = body.decode(&input, &mut sink);
                sink.clear();
                if done {
                    break;
                }
                if matches!(body.framing, Framing::Close) {
                    return Err(std::io::Error::other("close-delimited callback answer"));
                }
                input.resize(READ_CHUNK, 0);
                let read = conn.read(&mut input).await?;
                if read == 0 {
                    return Err(std::io::Error::other("closed mid-answer"));
                }
                input.truncate(read);
            }
            Ok::<_, std::io::Error>((head.status, head.close, sent))
        })
        .await;
        match outcome {
            Ok(Ok((status, close, sent))) => {
                let now = shared.now();
                shared.last_answered.fetch_max(now, Ordering::Relaxed);
                if let Ok(mut trips) = shared.round_trips.lock() {
                    trips.push(now - sent);
                }
                if (200..300).contains(&status) {
                    shared.callbacks_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.callbacks_rejected.fetch_add(1, Ordering::Relaxed);
                    if let Some(slot) = shared.streams.get(i) {
                        slot.sent_at.store(0, Ordering::Relaxed);
                    }
                }
                if close {
                    io = None;
                }
            }
            Ok(Err(_)) | Err(_) => {
                shared.callbacks_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = shared.streams.get(i) {
                    slot.sent_at.store(0, Ordering::Relaxed);
                }
                io = None;
                buf.clear();
            }
        }
    }
}
