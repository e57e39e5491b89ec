//! The servers a test puts beside paypush: a proxy that buffers event
//! streams, and a shop page on another origin.

/// A proxy in front of `upstream` that passes everything through but event
/// streams, which it holds back until they end, as a buffering proxy does.
pub(crate) async fn buffering_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay_holding_event_streams(client, upstream));
        }
    });
    addr
}

/// Relays one connection; from the first answer that is an event stream on,
/// what the server sends is held until the server closes.
async fn relay_holding_event_streams(
    client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut held = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
        let chunk = &buffer[..n];
        let stream_starts = chunk
            .windows(b"text/event-stream".len())
            .any(|w| w == b"text/event-stream");
        if !held.is_empty() || stream_starts {
            held.extend_from_slice(chunk);
        } else if client_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = client_write.write_all(&held).await;
    requests.abort();
}

/// A shop page on another origin that subscribes to paypush and posts a
/// callback to it, as a merchant's own checkout page would.
const SHOP_PAGE: &str = include_str!("fixtures/shop.html");

/// Serves [`SHOP_PAGE`] at `/shop.html` on a free loopback port, for the
/// rest of the test process; returns its origin.
pub(crate) async fn serve_shop_page() -> String {
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the shop");
    let origin = format!("http://{}", listener.local_addr().expect("shop address"));
    let page = warp::path!("shop.html").map(|| warp::reply::html(SHOP_PAGE));
    tokio::spawn(warp::serve(page).incoming(listener).run());
    origin
}
