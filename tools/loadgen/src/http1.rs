//! HTTP/1.1 responses, read by hand over tokio TCP: the response head, and
//! bodies framed by length, by chunks or by the connection's close. The
//! tool should cost as little CPU and memory as possible, since it shares
//! the machine with the server it measures.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The largest response head read (status line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bytes read at a time from a stream or a publisher connection.
pub(crate) const READ_CHUNK: usize = 2048;

/// How a response body is framed.
#[derive(Debug)]
pub(crate) enum Framing {
    Length(usize),
    Chunked(Chunked),
    Close,
}

/// A response head: status and body framing, plus whatever body bytes came
/// with it.
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    pub(crate) close: bool,
    pub(crate) rest: Vec<u8>,
}

/// Reads a response head from `io`; `buf` holds bytes already read.
pub(crate) async fn read_head(io: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("response head too large"));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut framing = Framing::Close;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(value.parse().map_err(|_| invalid("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked(Chunked::default());
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let rest = buf[end + 4..].to_vec();
    buf.clear();
    Ok(Head {
        status,
        framing,
        close,
        rest,
    })
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    pub(crate) step: ChunkStep,
    pub(crate) size: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum ChunkStep {
    /// Reading the hexadecimal size.
    #[default]
    Size,
    /// Skipping extensions up to the line feed.
    SizeLine,
    /// `size` data bytes left.
    Data,
    /// Skipping the CRLF after the data.
    DataEnd,
    /// The last chunk was read.
    End,
}

impl Chunked {
    /// Feeds raw bytes; data bytes go to `out`. Returns true at the end of the body.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        while !input.is_empty() {
            match self.step {
                ChunkStep::Size => {
                    let b = input[0];
                    input = &input[1..];
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            self.size = self.size.saturating_mul(16).saturating_add(d as usize)
                        }
                        None if b == b'\n' => self.start_data(),
                        None => self.step = ChunkStep::SizeLine,
                    }
                }
                ChunkStep::SizeLine => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.start_data();
                    }
                }
                ChunkStep::Data => {
                    let n = self.size.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.size -= n;
                    if self.size == 0 {
                        self.step = ChunkStep::DataEnd;
                    }
                }
                ChunkStep::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.step = ChunkStep::Size;
                    }
                }
                ChunkStep::End => return true,
            }
        }
        self.step == ChunkStep::End
    }

    pub(crate) fn start_data(&mut self) {
        self.step = if self.size == 0 {
            ChunkStep::End
        } else {
            ChunkStep::Data
        };
    }
}

/// A response body being decoded.
pub(crate) struct Body {
    pub(crate) framing: Framing,
}

impl Body {
    pub(crate) fn new(framing: Framing) -> Body {
        Body { framing }
    }

    /// Decodes `input` into `out`; true when the body is complete.
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(input.len());
                out.extend_from_slice(&input[..n]);
                *left -= n;
                *left == 0
            }
            Framing::Chunked(chunked) => chunked.feed(input, out),
            Framing::Close => {
                out.extend_from_slice(input);
                false
            }
        }
    }
}

/// Reads the rest of a response body framed by `head`.
pub(crate) async fn read_body(io: &mut TcpStream, head: Head) -> std::io::Result<Vec<u8>> {
    let mut body = Body::new(head.framing);
    let mut input = head.rest;
    let mut out = Vec::new();
    loop {
        if body.decode(&input, &mut out) {
            return Ok(out);
        }
        input.resize(READ_CHUNK, 0);
        match io.read(&mut input).await? {
            0 if matches!(body.framing, Framing::Close) => return Ok(out),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => input.truncate(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let mut chunked = Chunked::default();
        let mut out = Vec::new();
        assert!(!chunked.feed(b"5\r\nhel", &mut out));
        assert!(!chunked.feed(b"lo\r\n3;x=1\r\n, w\r\n", &mut out));
        assert!(chunked.feed(b"0\r\n\r\n", &mut out));
        assert_eq!(out, b"hello, w");
    }
}
