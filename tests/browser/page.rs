//! The page as the tests see it: what it shows ([`PageState`], read by
//! `fixtures/read_state.js`) and what a test does with its tab ([`Page`]).

use fantoccini::{Client, Locator};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::chromium::target_dir;
use crate::support::TestApp;
use crate::{DEADLINE, POLL};

/// What the page shows, read in one script call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PageState {
    /// `data-state` of the status: connecting, waiting, reconnecting, success...
    pub(crate) state: String,
    pub(crate) title: String,
    pub(crate) detail: String,
    /// `data-stream`: connecting, open, reconnecting, closed.
    pub(crate) stream: String,
    pub(crate) stream_text: String,
    pub(crate) live: Option<String>,
    pub(crate) pay_record_id: String,
    /// How many callback answers the page has shown.
    pub(crate) answer_seq: u64,
    pub(crate) answer_status: u16,
    pub(crate) answer_text: String,
    /// The event log, newest first.
    pub(crate) log: Vec<LogLine>,
    /// `data-transport` of the status: sse, poll or ws.
    pub(crate) transport: String,
    /// The transport radio button checked.
    pub(crate) checked_transport: String,
    /// Whether the EventSource choice is disabled (no EventSource).
    pub(crate) sse_disabled: bool,
    /// Whether the "no EventSource, long-poll instead" note shows.
    pub(crate) fallback_note_shown: bool,
}

/// One line of the page's event log.
#[derive(Debug, Deserialize)]
pub(crate) struct LogLine {
    /// An SSE event type (`pending`, `message`, `timeout`) or a connection
    /// change (`connect`, `open`, `error`, `close`, `callback`).
    pub(crate) kind: String,
    pub(crate) text: String,
}

/// The script that reads a [`PageState`] off the page, in one call.
const READ_STATE: &str = include_str!("fixtures/read_state.js");

impl PageState {
    pub(crate) fn answer_json(&self) -> Value {
        serde_json::from_str(&self.answer_text)
            .unwrap_or_else(|e| panic!("callback answer is not JSON ({e}): {self:?}"))
    }

    /// True when a log line of this kind was written.
    pub(crate) fn log_has(&self, kind: &str) -> bool {
        self.count(kind) > 0
    }

    /// True when some log line contains `text`.
    pub(crate) fn log_mentions(&self, text: &str) -> bool {
        self.log.iter().any(|line| line.text.contains(text))
    }

    /// How many log lines of this kind were written.
    pub(crate) fn count(&self, kind: &str) -> usize {
        self.log.iter().filter(|line| line.kind == kind).count()
    }
}

/// A browser tab under test.
#[derive(Clone)]
pub(crate) struct Page {
    pub(crate) client: Client,
}

impl Page {
    pub(crate) async fn open(&self, app: &TestApp, path: &str) {
        self.client
            .goto(&app.url(path))
            .await
            .expect("open the page");
    }

    /// Runs `script` at the start of every document this tab loads, before
    /// the page's own scripts (Chrome DevTools `Page.addScriptToEvaluateOnNewDocument`
    /// through chromedriver).
    pub(crate) async fn before_every_document(&self, script: &str) {
        let command = DevTools {
            cmd: "Page.addScriptToEvaluateOnNewDocument",
            params: json!({ "source": script }),
        };
        self.client
            .issue_cmd(command)
            .await
            .expect("add a script to every new document");
    }

    pub(crate) async fn url(&self) -> String {
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
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        ready: impl Fn(&PageState) -> bool,
    ) -> PageState {
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

    pub(crate) async fn click(&self, selector: &str) {
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
    pub(crate) async fn send_callback(&self, status: &str, seq: u64) -> PageState {
        self.click(&format!(r#"label.choice[data-status="{status}"]"#))
            .await;
        self.click("#send-callback").await;
        self.wait_for(&format!("callback answer {seq}"), |s| s.answer_seq >= seq)
            .await
    }

    /// Resizes the window to `width` CSS pixels of page (height unchanged).
    pub(crate) async fn set_width(&self, width: u32) {
        let (_, height) = self.client.get_window_size().await.expect("window size");
        let chrome: u32 = self.number("window.outerWidth - window.innerWidth").await;
        let height = u32::try_from(height).expect("window height");
        self.client
            .set_window_size(width + chrome, height)
            .await
            .expect("resize the window");
    }

    /// A number computed by the page.
    pub(crate) async fn number(&self, expression: &str) -> u32 {
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
    pub(crate) async fn screenshot(&self, name: &str) {
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

impl Page {
    /// Opens any URL.
    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Waits until `document.body.dataset[key]` is `value`.
    pub(crate) async fn wait_for_body(&self, key: &str, value: &str) {
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
