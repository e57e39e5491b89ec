//! Where the tool connects and from where: a parsed loopback URL template
//! ([`Target`]) and TCP connections spread over loopback source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// How long one connect or one callback exchange may take.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `http://host:port/path` template.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
}

impl Target {
    /// Parses `http://HOST[:PORT]/PATH`; HOST must be a loopback address.
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port {port}"))?,
            ),
            None => (authority, 80),
        };
        let ip: IpAddr = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            other => other
                .parse()
                .map_err(|_| format!("{url}: the host must be an IPv4 address or localhost"))?,
        };
        if !ip.is_loopback() || !ip.is_ipv4() {
            return Err(format!("{url}: only IPv4 loopback targets (127.0.0.0/8)"));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            path: path.to_string(),
        })
    }

    pub(crate) fn path_for(&self, id: u64) -> String {
        self.path.replace("{id}", &id.to_string())
    }
}

/// Picks the source address of connection `n`: 127.0.0.2, 127.0.0.3, ...
pub(crate) fn source(n: usize, sources: u8) -> SocketAddr {
    let last = 2 + u8::try_from(n % usize::from(sources)).unwrap_or(0);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0)
}

pub(crate) async fn connect(target: SocketAddr, from: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(from)?;
    let stream = timeout(IO_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_loopback() {
        assert!(Target::parse("http://127.0.0.1:8080/push?payRecordId={id}").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080/").is_err());
        assert!(Target::parse("https://127.0.0.1/").is_err());
    }
}
