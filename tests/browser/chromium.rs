//! Headless Chromium under chromedriver, one test at a time: finding both
//! programs (or skipping), starting them with a fresh profile, and stopping
//! them after each test.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::page::Page;
use crate::support::{free_port, on_path, Suite};
use crate::POLL;

/// How long chromedriver and Chromium may take to start on a busy machine.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// The browser window: wide enough for the page's two-column layout.
const WINDOW_SIZE: &str = "1280,1000";
/// Without `chromium` and `chromedriver` these tests skip, or fail with
/// `PAYPUSH_REQUIRE_BROWSER=1`.
const BROWSER: Suite = Suite {
    tests: "the browser tests",
    required_by: Some("PAYPUSH_REQUIRE_BROWSER"),
};

/// One browser at a time: chromium is heavy for a 2-core machine.
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `test` with a fresh headless Chromium, then saves a screenshot and
/// stops the browser, whether the test passed or panicked. Skips (or fails,
/// with `PAYPUSH_REQUIRE_BROWSER=1`) when no browser is installed.
pub(crate) async fn with_page<F, Fut>(name: &str, test: F)
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
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
