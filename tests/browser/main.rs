//! The demo checkout page in a real headless Chromium, against the real
//! server: Debian's `chromium` driven through `chromedriver` (WebDriver) with
//! fantoccini.
//!
//! Each test starts its own chromedriver on a free port, with a fresh empty
//! browser profile, and stops it afterwards; tests take turns so a small
//! machine runs one browser at a time. Every test saves a screenshot of the
//! page as it ended under `target/screenshots/`, and chromedriver's log under
//! `target/browser-logs/`.
//!
//! Without `chromium` or `chromedriver` on `PATH` (override them with
//! `PAYPUSH_CHROMIUM` and `PAYPUSH_CHROMEDRIVER`) each test prints why and
//! passes, unless `PAYPUSH_REQUIRE_BROWSER=1`, when it fails instead.
//!
//! The tests wait for what the page shows (polling up to [`DEADLINE`]) and
//! never for a fixed time, so a loaded machine makes them slower, not flaky.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{json, Value};

use support::{free_port, on_path, spawn_app, spawn_app_on, Suite, TestApp};

/// How long a test waits for the page (or chromedriver) to get somewhere.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long chromedriver and Chromium may take to start on a busy machine.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How often it looks.
const POLL: Duration = Duration::from_millis(100);
/// The browser window: wide enough for the page's two-column layout.
const WINDOW_SIZE: &str = "1280,1000";
/// A common phone's screen width, in CSS pixels.
const PHONE_WIDTH: u32 = 390;
/// Without `chromium` and `chromedriver` these tests skip, or fail with
/// `PAYPUSH_REQUIRE_BROWSER=1`.
const BROWSER: Suite = Suite {
    tests: "the browser tests",
    required_by: Some("PAYPUSH_REQUIRE_BROWSER"),
};

/// One browser at a time: chromium is heavy for a 2-core machine.
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn new_order_paid_through_the_form_shows_success_and_closes_the_stream() {
    with_page("new_order_paid_through_the_form", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        let waiting = page
            .wait_for("the pending event", |s| s.state == "waiting")
            .await;
        assert_eq!(
            waiting.live.as_deref(),
            Some("polite"),
            "status is aria-live"
        );
        page.screenshot("new_order_paid_through_the_form.1-waiting")
            .await;
        let url_before = page.url().await;

        page.send_callback("SUCCESS", 1).await;

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
        assert!(done.stream_text.contains("Stream closed"), "{done:?}");
        assert_eq!(done.answer_status, 200);
        let answer = done.answer_json();
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["payRecordId"], json!(done.pay_record_id));
        assert!(
            done.log_has("pending") && done.log_has("message"),
            "{done:?}"
        );
        assert_eq!(page.url().await, url_before, "the form did not navigate");
    })
    .await;
}

#[tokio::test]
async fn watched_payment_shows_success_after_a_callback_over_http() {
    with_page("watched_payment_callback_over_http", |page| async move {
        let app = spawn_app(&[]).await;
        // Above 2^53: the page must keep the id as a string.
        let id = "9007199254740993";
        page.open(&app, &format!("/?payRecordId={id}")).await;
        let waiting = page
            .wait_for("the pending event", |s| s.state == "waiting")
            .await;
        assert_eq!(waiting.pay_record_id, id);

        assert_eq!(app.callback(id, None).await.status(), 200);

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
        assert!(
            done.log_mentions(&format!("id: {id}-SUCCESS-")),
            "outcome id: {done:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn failed_and_closed_outcomes_show_their_messages() {
    with_page("failed_and_closed_outcomes", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        let first = page
            .wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.send_callback("FAILED", 1).await;
        let failed = page.wait_for("FAILED", |s| s.state == "failed").await;
        assert_eq!(failed.title, "支付失败");
        assert_eq!(failed.stream, "closed");

        page.click("#new-order").await;
        let second = page
            .wait_for("a new order", |s| {
                s.state == "waiting" && s.pay_record_id != first.pay_record_id
            })
            .await;
        page.send_callback("CLOSED", 1).await;
        let closed = page.wait_for("CLOSED", |s| s.state == "closed").await;
        assert_eq!(closed.title, "订单已关闭");
        assert_eq!(closed.stream, "closed");
        assert_eq!(closed.pay_record_id, second.pay_record_id);
    })
    .await;
}

#[tokio::test]
async fn repeated_submit_shows_duplicate_and_conflicting_submit_shows_409() {
    with_page("duplicate_and_conflict", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;

        let repeat = page.send_callback("SUCCESS", 2).await;
        assert_eq!(repeat.answer_status, 200);
        assert_eq!(repeat.answer_json()["duplicate"], true);
        assert!(repeat.answer_text.contains(r#""duplicate": true"#));

        let conflict = page.send_callback("FAILED", 3).await;
        assert_eq!(conflict.answer_status, 409);
        let answer = conflict.answer_json();
        assert_eq!(answer["error"], "outcome_conflict");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("first outcome wins"),
            "{answer}"
        );
        assert_eq!(conflict.title, "支付成功", "the first outcome stays");
    })
    .await;
}

#[tokio::test]
async fn page_reconnects_after_a_server_restart_and_shows_the_outcome() {
    with_page("reconnects_after_server_restart", |page| async move {
        let mut app = spawn_app(&[]).await;
        let addr = app.addr.to_string();
        let id = "31415926";
        page.open(&app, &format!("/?payRecordId={id}")).await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;

        app.shut_down().await;
        page.wait_for("reconnecting", |s| s.state == "reconnecting")
            .await;
        page.screenshot("reconnects_after_server_restart.1-reconnecting")
            .await;

        let app = spawn_app_on(&addr, &[]).await;
        page.wait_for("pending from the new server", |s| {
            s.state == "waiting" && s.count("pending") >= 2
        })
        .await;
        assert_eq!(app.callback(id, None).await.status(), 200);

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
    })
    .await;
}

#[tokio::test]
async fn page_fits_a_phone_width_screen_without_sideways_scrolling() {
    with_page("phone_width", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.set_width(PHONE_WIDTH).await;
        assert_eq!(page.number("window.innerWidth").await, PHONE_WIDTH);
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;
        let page_width = page.number("document.documentElement.scrollWidth").await;
        assert!(
            page_width <= PHONE_WIDTH,
            "the page is {page_width} px wide on a {PHONE_WIDTH} px screen"
        );
    })
    .await;
}

#[tokio::test]
async fn transport_long_poll_chosen_on_the_page_pays_through_the_form() {
    with_page("transport_long_poll", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.click(r#"label.choice[data-transport="poll"]"#).await;
        let waiting = page
            .wait_for("a long-poll", |s| {
                s.transport == "poll" && s.state == "waiting" && s.log_mentions("wait=25")
            })
            .await;
        assert!(
            waiting.log_mentions("GET /status?payRecordId="),
            "{waiting:?}"
        );

        page.send_callback("SUCCESS", 1).await;

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
        assert!(
            done.log_mentions(r#"200 {"payRecordId""#),
            "raw answer: {done:?}"
        );
        assert_eq!(
            app.metric("paypush_outcomes_delivered_total{transport=\"poll\"}")
                .await,
            1.0
        );
    })
    .await;
}

#[tokio::test]
async fn transport_websocket_chosen_on_the_page_pays_through_the_form() {
    with_page("transport_websocket", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.click(r#"label.choice[data-transport="ws"]"#).await;
        page.wait_for("the PENDING frame", |s| {
            s.transport == "ws" && s.state == "waiting" && s.log_mentions("new WebSocket(")
        })
        .await;

        page.send_callback("FAILED", 1).await;

        let done = page.wait_for("the outcome", |s| s.state == "failed").await;
        assert_eq!(done.title, "支付失败");
        assert_eq!(done.stream, "closed");
        let closed = page
            .wait_for("the close frame", |s| {
                s.log_mentions("close frame 1000 outcome")
            })
            .await;
        assert!(closed.log_mentions(r#""status":"FAILED""#), "{closed:?}");
    })
    .await;
}

#[tokio::test]
async fn transport_query_parameter_opens_the_page_on_that_transport() {
    with_page("transport_query_parameter", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/?transport=ws").await;
        let waiting = page
            .wait_for("the PENDING frame", |s| s.state == "waiting")
            .await;
        assert_eq!(waiting.transport, "ws");
        assert_eq!(waiting.checked_transport, "ws");
        page.send_callback("CLOSED", 1).await;
        page.wait_for("the outcome", |s| s.state == "closed").await;
    })
    .await;
}

#[tokio::test]
async fn transport_falls_back_to_long_poll_without_event_source() {
    with_page(
        "transport_fallback_without_event_source",
        |page| async move {
            let app = spawn_app(&[]).await;
            page.before_every_document("delete window.EventSource;")
                .await;
            page.open(&app, "/").await;
            let waiting = page
                .wait_for("the long-poll fallback", |s| s.state == "waiting")
                .await;
            assert_eq!(waiting.transport, "poll");
            assert!(waiting.log_has("fallback"), "{waiting:?}");
            assert!(!waiting.log_mentions("EventSource(\""), "{waiting:?}");
            assert!(waiting.sse_disabled, "EventSource cannot be chosen");
            assert!(waiting.fallback_note_shown);

            page.send_callback("SUCCESS", 1).await;

            let done = page.wait_for("the outcome", |s| s.state == "success").await;
            assert_eq!(done.title, "支付成功");
        },
    )
    .await;
}

#[tokio::test]
async fn page_watches_through_the_client_library_served_at_paypush_js() {
    with_page("page_uses_paypush_js", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        let loaded = page
            .client
            .execute(
                "return performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname);",
                vec![],
            )
            .await
            .expect("read the page's resources");
        assert!(
            loaded
                .as_array()
                .is_some_and(|paths| paths.iter().any(|p| p == "/paypush.js")),
            "{loaded}"
        );
    })
    .await;
}

#[tokio::test]
async fn every_transport_waits_again_after_the_servers_timeout_then_shows_the_outcome() {
    with_page("every_transport_after_a_timeout", |page| async move {
        let app = spawn_app(&["--push-timeout", "1s"]).await;
        for (transport, status, state, waits) in [
            ("sse", "SUCCESS", "success", 2),
            ("ws", "FAILED", "failed", 2),
            // The first long-poll is answered at once, then each waits 1 s.
            ("poll", "CLOSED", "closed", 3),
        ] {
            page.open(&app, &format!("/?transport={transport}")).await;
            let waiting = page
                .wait_for("a second wait after the timeout", |s| {
                    s.transport == transport && s.state == "waiting" && s.count("pending") >= waits
                })
                .await;
            assert!(!waiting.log_has("fallback"), "{waiting:?}");
            let id = waiting.pay_record_id.clone();
            assert_eq!(app.callback(&id, Some(status)).await.status(), 200);
            let done = page.wait_for("the outcome", |s| s.state == state).await;
            assert_eq!(done.stream, "closed", "{transport}");
            assert_eq!(done.transport, transport);
        }
    })
    .await;
}

#[tokio::test]
async fn transport_falls_back_to_long_poll_without_websocket() {
    with_page("transport_fallback_without_websocket", |page| async move {
        let app = spawn_app(&[]).await;
        page.before_every_document("delete window.WebSocket;").await;
        page.open(&app, "/?transport=ws").await;
        let waiting = page
            .wait_for("the long-poll fallback", |s| s.state == "waiting")
            .await;
        assert_eq!(waiting.transport, "poll");
        assert_eq!(waiting.checked_transport, "poll");
        assert!(waiting.log_mentions("no WebSocket here"), "{waiting:?}");
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;
    })
    .await;
}

#[tokio::test]
async fn a_wrong_token_shows_the_servers_refusal_on_every_transport() {
    with_page("a_wrong_token", |page| async move {
        let app = spawn_app(&["--subscribe-secret", "browser test secret"]).await;
        for transport in ["sse", "ws", "poll"] {
            page.open(
                &app,
                &format!("/?payRecordId=5&token=00&transport={transport}"),
            )
            .await;
            let refused = page.wait_for("the refusal", |s| s.state == "error").await;
            assert!(refused.detail.contains("403 invalid_token"), "{refused:?}");
            assert_eq!(refused.stream, "closed");
            assert!(!refused.log_has("fallback"), "{refused:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_buffering_proxy_makes_the_page_fall_back_to_long_poll() {
    with_page("fallback_behind_a_buffering_proxy", |page| async move {
        let app = spawn_app(&[]).await;
        let proxy = buffering_proxy(app.addr).await;
        page.goto(&format!("http://{proxy}/")).await;
        let waiting = page
            .wait_for("the long-poll fallback", |s| {
                s.state == "waiting" && s.transport == "poll"
            })
            .await;
        assert!(waiting.log_mentions("no PENDING within"), "{waiting:?}");
        assert_eq!(waiting.checked_transport, "poll");
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;
    })
    .await;
}

/// A proxy in front of `upstream` that passes everything through but event
/// streams, which it holds back until they end, as a buffering proxy does.
async fn buffering_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
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

// ---------------------------------------------------------------------------
// The page, as the tests see it

/// What the page shows, read in one script call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageState {
    /// `data-state` of the status: connecting, waiting, reconnecting, success...
    state: String,
    title: String,
    detail: String,
    /// `data-stream`: connecting, open, reconnecting, closed.
    stream: String,
    stream_text: String,
    live: Option<String>,
    pay_record_id: String,
    /// How many callback answers the page has shown.
    answer_seq: u64,
    answer_status: u16,
    answer_text: String,
    /// The event log, newest first.
    log: Vec<LogLine>,
    /// `data-transport` of the status: sse, poll or ws.
    transport: String,
    /// The transport radio button checked.
    checked_transport: String,
    /// Whether the EventSource choice is disabled (no EventSource).
    sse_disabled: bool,
    /// Whether the "no EventSource, long-poll instead" note shows.
    fallback_note_shown: bool,
}

/// One line of the page's event log.
#[derive(Debug, Deserialize)]
struct LogLine {
    /// An SSE event type (`pending`, `message`, `timeout`) or a connection
    /// change (`connect`, `open`, `error`, `close`, `callback`).
    kind: String,
    text: String,
}

/// The script that reads a [`PageState`] off the page, in one call.
const READ_STATE: &str = include_str!("fixtures/read_state.js");

impl PageState {
    fn answer_json(&self) -> Value {
        serde_json::from_str(&self.answer_text)
            .unwrap_or_else(|e| panic!("callback answer is not JSON ({e}): {self:?}"))
    }

    /// True when a log line of this kind was written.
    fn log_has(&self, kind: &str) -> bool {
        self.count(kind) > 0
    }

    /// True when some log line contains `text`.
    fn log_mentions(&self, text: &str) -> bool {
        self.log.iter().any(|line| line.text.contains(text))
    }

    /// How many log lines of this kind were written.
    fn count(&self, kind: &str) -> usize {
        self.log.iter().filter(|line| line.kind == kind).count()
    }
}

/// A browser tab under test.
#[derive(Clone)]
struct Page {
    client: Client,
}

impl Page {
    async fn open(&self, app: &TestApp, path: &str) {
        self.client
            .goto(&app.url(path))
            .await
            .expect("open the page");
    }

    /// Runs `script` at the start of every document this tab loads, before
    /// the page's own scripts (Chrome DevTools `Page.addScriptToEvaluateOnNewDocument`
    /// through chromedriver).
    async fn before_every_document(&self, script: &str) {
        let command = DevTools {
            cmd: "Page.addScriptToEvaluateOnNewDocument",
            params: json!({ "source": script }),
        };
        self.client
            .issue_cmd(command)
            .await
            .expect("add a script to every new document");
    }

    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current URL")
            .to_string()
    }

    async fn state(&self) -> PageState {
        let value = self
            .client
            .execute(READ_STATE, vec![])
            .await
            .expect("read the page");
        serde_json::from_value(value).expect("page state")
    }

    /// Polls the page until `ready` holds, or fails after [`DEADLINE`].
    async fn wait_for(&self, what: &str, ready: impl Fn(&PageState) -> bool) -> PageState {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let state = self.state().await;
            if ready(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {DEADLINE:?} for {what}; the page shows {state:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn click(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("find {selector}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
    }

    /// Chooses `status` in the callback form, submits it, and waits for the
    /// page to show answer number `seq`.
    async fn send_callback(&self, status: &str, seq: u64) -> PageState {
        self.click(&format!(r#"label.choice[data-status="{status}"]"#))
            .await;
        self.click("#send-callback").await;
        self.wait_for(&format!("callback answer {seq}"), |s| s.answer_seq >= seq)
            .await
    }

    /// Resizes the window to `width` CSS pixels of page (height unchanged).
    async fn set_width(&self, width: u32) {
        let (_, height) = self.client.get_window_size().await.expect("window size");
        let chrome: u32 = self.number("window.outerWidth - window.innerWidth").await;
        let height = u32::try_from(height).expect("window height");
        self.client
            .set_window_size(width + chrome, height)
            .await
            .expect("resize the window");
    }

    /// A number computed by the page.
    async fn number(&self, expression: &str) -> u32 {
        let value = self
            .client
            .execute(&format!("return Math.ceil({expression});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("evaluate {expression}: {e}"));
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_else(|| panic!("{expression} is {value}"))
    }

    /// Saves the whole page (the window grown to fit it) as
    /// `target/screenshots/{name}.png`; never fails the test.
    async fn screenshot(&self, name: &str) {
        let dir = target_dir().join("screenshots");
        self.fit_page().await;
        match self.client.screenshot().await {
            Ok(png) => {
                let path = dir.join(format!("{name}.png"));
                std::fs::create_dir_all(&dir).expect("create target/screenshots");
                std::fs::write(&path, png).expect("write screenshot");
                eprintln!("screenshot: {}", path.display());
            }
            Err(e) => eprintln!("no screenshot for {name}: {e}"),
        }
    }

    /// Grows the window to show the whole page, for a full-page screenshot.
    async fn fit_page(&self) {
        let Ok((width, height)) = self.client.get_window_size().await else {
            return;
        };
        let page = self
            .client
            .execute(
                "return [window.innerHeight, document.documentElement.scrollHeight];",
                vec![],
            )
            .await;
        let page: Option<(u64, u64)> = page.ok().and_then(|v| serde_json::from_value(v).ok());
        let Some((viewport, content)) = page else {
            return;
        };
        let fitted = (height + content).saturating_sub(viewport);
        let (Ok(width), Ok(fitted)) = (u32::try_from(width), u32::try_from(fitted)) else {
            return;
        };
        if let Err(e) = self.client.set_window_size(width, fitted).await {
            eprintln!("cannot fit the window to the page: {e}");
        }
    }
}

/// A Chrome DevTools command sent through chromedriver's
/// `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct DevTools {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session}/goog/cdp/execute"))
    }

    fn method_and_body(&self, _: &url::Url) -> (warp::http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (warp::http::Method::POST, Some(body.to_string()))
    }
}

/// A shop page on another origin that subscribes to paypush and posts a
/// callback to it, as a merchant's own checkout page would.
const SHOP_PAGE: &str = include_str!("fixtures/shop.html");

/// Records every Content-Security-Policy violation of the page in
/// `document.body.dataset.blocked`, then opens a WebSocket to the page's own
/// origin and, half a second later, one to another origin (the control).
const OPEN_WEBSOCKETS: &str = include_str!("fixtures/open_websockets.js");

#[tokio::test]
async fn the_demo_pages_csp_lets_it_open_its_own_websocket_and_nothing_elsewhere() {
    with_page("the_demo_pages_csp", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.client
            .execute(OPEN_WEBSOCKETS, vec![])
            .await
            .expect("open the sockets");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let blocked = loop {
            let blocked = page
                .client
                .execute("return document.body.dataset.blocked || '';", vec![])
                .await
                .expect("read the page");
            let blocked = blocked.as_str().unwrap_or_default().to_string();
            if blocked.contains("127.0.0.2") {
                break blocked;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the other origin's WebSocket was not blocked: {blocked:?}"
            );
            tokio::time::sleep(POLL).await;
        };
        assert!(blocked.contains("connect-src"), "{blocked}");
        assert!(!blocked.contains(&app.addr.to_string()), "{blocked}");
    })
    .await;
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_subscribes_and_posts_across_origins() {
    with_page("a_page_on_an_allowed_origin", |page| async move {
        // The shop is a plain web server of its own: paypush's demo-page
        // CSP (its own origin only, no inline script) would rightly block
        // this page if paypush served it.
        let shop_origin = serve_shop_page().await;
        let paypush = spawn_app(&["--allow-origin", &shop_origin]).await;
        let closed = spawn_app(&[]).await;

        // Allowed: the stream opens, and the JSON callback passes its preflight.
        page.goto(&format!(
            "{shop_origin}/shop.html?id=81&paypush=http://{}",
            paypush.addr
        ))
        .await;
        page.wait_for_body("state", "waiting").await;
        page.client
            .execute("window.pay('FAILED');", vec![])
            .await
            .expect("pay");
        page.wait_for_body("answer", "FAILED").await;
        page.wait_for_body("state", "done").await;
        page.wait_for_body("message", "支付失败").await;

        // Not allowed: the browser refuses both.
        page.goto(&format!(
            "{shop_origin}/shop.html?id=82&paypush=http://{}",
            closed.addr
        ))
        .await;
        page.wait_for_body("state", "error").await;
        page.client
            .execute("window.pay('SUCCESS');", vec![])
            .await
            .expect("pay");
        page.wait_for_body("answer", "blocked").await;
    })
    .await;
}

/// Serves [`SHOP_PAGE`] at `/shop.html` on a free loopback port, for the
/// rest of the test process; returns its origin.
async fn serve_shop_page() -> String {
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the shop");
    let origin = format!("http://{}", listener.local_addr().expect("shop address"));
    let page = warp::path!("shop.html").map(|| warp::reply::html(SHOP_PAGE));
    tokio::spawn(warp::serve(page).incoming(listener).run());
    origin
}

impl Page {
    /// Opens any URL.
    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Waits until `document.body.dataset[key]` is `value`.
    async fn wait_for_body(&self, key: &str, value: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let now = self
                .client
                .execute(
                    &format!("return document.body.dataset.{key} || '';"),
                    vec![],
                )
                .await
                .expect("read the page");
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {DEADLINE:?} for {key} = {value}; it is {now}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The browser

/// Runs `test` with a fresh headless Chromium, then saves a screenshot and
/// stops the browser, whether the test passed or panicked. Skips (or fails,
/// with `PAYPUSH_REQUIRE_BROWSER=1`) when no browser is installed.
async fn with_page<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Page) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(tools) = Tools::find(name) else {
        return;
    };
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let driver = Driver::start(&tools.chromedriver, name).await;
    let client = driver.session(&tools.chromium).await;
    let page = Page { client };
    let outcome = AssertUnwindSafe(test(page.clone())).catch_unwind().await;
    page.screenshot(name).await;
    if let Err(e) = page.client.close().await {
        eprintln!("closing the browser session: {e}");
    }
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The two programs the tests need.
struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Tools {
    /// Both programs, or `None` (after saying why) when a test should skip.
    fn find(test: &str) -> Option<Tools> {
        let chromium = program(
            "PAYPUSH_CHROMIUM",
            &["chromium", "chromium-browser"],
            "chromium",
            test,
        );
        let chromedriver = program(
            "PAYPUSH_CHROMEDRIVER",
            &["chromedriver"],
            "chromium-driver",
            test,
        );
        Some(Tools {
            chromium: chromium?,
            chromedriver: chromedriver?,
        })
    }
}

/// The file `env` names, when it is set; otherwise the first of `names` on
/// `PATH`. `None` (after [`BROWSER`] said why, or failed the test) when
/// there is none: Debian's `package` has it.
fn program(env: &str, names: &[&str], package: &str, test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
        BROWSER.skip(&format!("{test}: {env}={} is no file", path.display()));
        return None;
    }
    let name = names
        .iter()
        .copied()
        .find(|name| on_path(name).is_some())
        .unwrap_or(names[0]);
    if !BROWSER.require(name, package, test) {
        return None;
    }
    on_path(name)
}

/// A chromedriver child process, killed when dropped, and the browser
/// profile directory it uses, removed when dropped.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
    log: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it is ready.
    async fn start(chromedriver: &Path, name: &str) -> Driver {
        let port = free_port();
        let logs = target_dir().join("browser-logs");
        std::fs::create_dir_all(&logs).expect("create target/browser-logs");
        let log = logs.join(format!("{name}.chromedriver.log"));
        let profile = std::env::temp_dir().join(format!(
            "paypush-chromium-{}-{name}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let mut driver = Driver {
            child,
            port,
            profile,
            log,
        };
        driver.wait_until_ready().await;
        driver
    }

    async fn wait_until_ready(&mut self) {
        let status = format!("http://127.0.0.1:{}/status", self.port);
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(answer) = client.get(&status).send().await {
                if let Ok(body) = answer.json::<Value>().await {
                    if body["value"]["ready"] == true {
                        return;
                    }
                }
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited ({exit}) before it was ready; see {}",
                    self.log.display()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver was not ready within {STARTUP_DEADLINE:?}; see {}",
                self.log.display()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Opens a WebDriver session: headless Chromium with a fresh profile.
    async fn session(&self, chromium: &Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .map(String::from)
        .into_iter()
        .chain([
            format!("--window-size={WINDOW_SIZE}"),
            format!("--user-data-dir={}", self.profile.display()),
        ])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal");
        };
        let webdriver = format!("http://127.0.0.1:{}", self.port);
        tokio::time::timeout(
            STARTUP_DEADLINE,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&webdriver),
        )
        .await
        .unwrap_or_else(|_| panic!("no browser session within {STARTUP_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("start a browser session ({}): {e}", self.log.display()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where cargo builds: screenshots and logs go there.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
