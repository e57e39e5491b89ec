//! What a new connection speaks: HTTP/1.1, or HTTP/2 with prior knowledge
//! (h2c, what a proxy such as HAProxy or Envoy sends upstream), told apart
//! by its first bytes.
//!
//! The bytes are *read*, not peeked: a peek finds the same unread byte
//! again and again, so a connection that sent one byte and closed, or sends
//! nothing more, made a peek loop spin (1 000 one-byte connections cost 22
//! CPU-seconds). A read waits for the socket to have something new, ends
//! at EOF, and has a deadline. The bytes read are then put back in front of
//! the connection ([`Prefixed`]) for hyper, which parses them as if never
//! taken.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Anything that is not the HTTP/2 preface: hyper's HTTP/1.1 parser
    /// answers it (or closes it, when it is not HTTP either).
    Http1,
    /// The whole HTTP/2 preface.
    Http2,
}

/// Why a connection showed no protocol.
#[derive(Debug)]
pub(crate) enum NoProtocol {
    /// It closed (or failed) first.
    Closed(io::Error),
    /// It sent too little within the deadline.
    TimedOut,
}

/// Reads a connection's first bytes, at most the preface's length, until
/// they differ from the HTTP/2 preface or are all of it, within `deadline`.
/// Returns the protocol and the connection with those bytes put back.
pub(crate) async fn read_protocol<S>(
    mut stream: S,
    deadline: Duration,
) -> Result<(Protocol, Prefixed<S>), NoProtocol>
where
    S: AsyncRead + Unpin,
{
    let mut start = [0; H2_PREFACE.len()];
    let mut filled = 0;
    let protocol = tokio::time::timeout(deadline, async {
        loop {
            let n = stream
                .read(&mut start[filled..])
                .await
                .map_err(NoProtocol::Closed)?;
            if n == 0 {
                return Err(NoProtocol::Closed(io::ErrorKind::UnexpectedEof.into()));
            }
            filled += n;
            if start[..filled] != H2_PREFACE[..filled] {
                return Ok(Protocol::Http1);
            }
            if filled == H2_PREFACE.len() {
                return Ok(Protocol::Http2);
            }
        }
    })
    .await
    .map_err(|_| NoProtocol::TimedOut)??;
    let prefixed = Prefixed {
        start,
        // At most the preface's 24 bytes: fits a `u8`.
        filled: filled as u8,
        given: 0,
        inner: stream,
    };
    Ok((protocol, prefixed))
}

/// A connection with its first bytes, already read, put back in front.
/// They live inline (24 bytes), so a waiting connection carries no extra
/// allocation for them.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    start: [u8; H2_PREFACE.len()],
    filled: u8,
    /// How many of `start[..filled]` reads have given back already.
    given: u8,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let left = &this.start[usize::from(this.given)..usize::from(this.filled)];
        if left.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        // n <= 24.
        this.given += n as u8;
        if this.given == this.filled && buf.remaining() > 0 {
            // And what the socket holds after them, in the same read: hyper
            // then gets the request head in one piece, as it would without
            // the sniff. Given 24 bytes alone, it read again into a buffer
            // it had to grow, and kept for the connection's life (measured:
            // 20.8 instead of 8.8 KiB per waiting stream). Nothing there
            // yet (`Pending`, the waker is registered) or an error (the
            // next read sees it again) leaves the bytes given so far.
            let _ = Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniff(sent: &[u8]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(sent).await.unwrap();
        drop(client);
        let (protocol, mut prefixed) = read_protocol(server, Duration::from_secs(1)).await.unwrap();
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        (protocol, all)
    }

    #[tokio::test]
    async fn a_request_head_is_http1_and_reads_back_whole() {
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(sniff(head).await, (Protocol::Http1, head.to_vec()));
        // POST shares its first letter with the preface.
        let post = b"POST /pay-callback HTTP/1.1\r\n\r\n";
        assert_eq!(sniff(post).await, (Protocol::Http1, post.to_vec()));
    }

    #[tokio::test]
    async fn the_first_read_gives_the_bytes_taken_and_what_follows_at_once() {
        let head = b"GET /push?payRecordId=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(256);
        client.write_all(head).await.unwrap();
        let (_, mut prefixed) = read_protocol(server, Duration::from_secs(1)).await.unwrap();
        let mut first = [0; 1024];
        let n = prefixed.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], head, "one read, as hyper would get it");
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_reads_back_whole() {
        let mut sent = H2_PREFACE.to_vec();
        sent.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(sniff(&sent).await, (Protocol::Http2, sent));
    }

    #[tokio::test]
    async fn a_connection_that_closes_mid_preface_shows_nothing() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HT").await.unwrap();
        drop(client);
        let result = read_protocol(server, Duration::from_secs(1)).await;
        assert!(matches!(result, Err(NoProtocol::Closed(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_one_byte_times_out() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"P").await.unwrap();
        let result = read_protocol(server, Duration::from_secs(30)).await;
        assert!(matches!(result, Err(NoProtocol::TimedOut)));
        drop(client);
    }
}
