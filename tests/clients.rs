//! The client snippets of `docs/clients.md`, run as written with `node`
//! against a real paypush: the `fetch` long-poll loop, the WebSocket client,
//! and the two WeChat mini-program pages (with a small `wx` and `Page`
//! stand-in built on Node's own `fetch` and `WebSocket`: the server side is
//! real, only the mini-program runtime is replaced).
//!
//! Each server runs with a 1 s push timeout, so every client first sees its
//! wait end (`PENDING` or a `1000 timeout` close) and must ask again before
//! the callback comes.
//!
//! Without `node` on `PATH` each test prints why and passes, unless
//! `PAYPUSH_REQUIRE_NODE=1`, when it fails instead. Node 20 has `WebSocket`
//! behind `--experimental-websocket`, which is passed when needed.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use support::{on_path, spawn_app, Suite, TestApp, PATIENCE};

/// Without `node` (20 or later) these tests skip, or fail with
/// `PAYPUSH_REQUIRE_NODE=1`.
const NODE: Suite = Suite {
    tests: "the client tests",
    required_by: Some("PAYPUSH_REQUIRE_NODE"),
};
/// The push timeout of the test servers: short, so clients re-ask.
const PUSH_TIMEOUT: &str = "1s";

/// `wx` and `Page` for the mini-program snippets: `wx.request` over
/// `fetch`, `wx.connectSocket` over `WebSocket`, the snippets' example host
/// replaced by the test server. `Page` prints the page's data once its
/// status is no longer `PENDING`, and exits.
const MINI_PROGRAM_RUNTIME: &str = r#"
const [BASE, WS_BASE, ID] = process.argv.slice(2);
const wx = {
  request({ url, data, timeout, success, fail }) {
    const query = new URLSearchParams(Object.entries(data).map(([k, v]) => [k, String(v)]));
    fetch(url.replace('https://pay.example.com', BASE) + '?' + query, { signal: AbortSignal.timeout(timeout) })
      .then(async (res) => success({ statusCode: res.status, data: await res.json() }),
            (e) => fail({ errMsg: String(e) }));
  },
  connectSocket({ url }) {
    const socket = new WebSocket(url.replace('wss://pay.example.com', WS_BASE));
    return {
      onMessage(callback) { socket.onmessage = (e) => callback({ data: e.data }); },
      onClose(callback) { socket.onclose = (e) => callback({ code: e.code, reason: e.reason }); },
      close() { socket.close(1000); },
    };
  },
};
function Page(definition) {
  const page = { ...definition, data: { ...definition.data, payRecordId: ID } };
  page.setData = (changes) => {
    Object.assign(page.data, changes);
    if (page.data.status !== 'PENDING') {
      console.log(JSON.stringify(page.data));
      process.exit(0);
    }
  };
  page.onShow();
}
"#;

#[tokio::test]
async fn documented_fetch_loop_long_polls_until_the_outcome() {
    let script = format!(
        "{}\nwaitForOutcome(process.argv[2], process.argv[4]).then((o) => console.log(JSON.stringify(o)));",
        snippet("fetch-loop")
    );
    run_client("documented_fetch_loop", &script, "poll", "301").await;
}

#[tokio::test]
async fn documented_websocket_client_reconnects_until_the_outcome() {
    let script = format!(
        "{}\nwatchOverWebSocket(process.argv[3], process.argv[4]).then((o) => {{ console.log(JSON.stringify(o)); process.exit(0); }});",
        snippet("websocket")
    );
    run_client("documented_websocket_client", &script, "ws", "302").await;
}

#[tokio::test]
async fn documented_mini_program_request_loop_gets_the_outcome() {
    let script = format!("{MINI_PROGRAM_RUNTIME}\n{}", snippet("wx-request"));
    run_client(
        "documented_mini_program_request_loop",
        &script,
        "poll",
        "303",
    )
    .await;
}

#[tokio::test]
async fn documented_mini_program_socket_gets_the_outcome() {
    let script = format!("{MINI_PROGRAM_RUNTIME}\n{}", snippet("wx-socket"));
    run_client("documented_mini_program_socket", &script, "ws", "304").await;
}

/// Runs `script` with `node <script> <http base> <ws base> <id>` against a
/// fresh server; once the client has waited through one timeout and waits
/// again (on `transport`), sends a callback, and checks the client printed
/// that outcome.
async fn run_client(test: &str, script: &str, transport: &str, id: &str) {
    let Some(node) = node(test) else {
        return;
    };
    let app = spawn_app(&["--push-timeout", PUSH_TIMEOUT]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("client.js");
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(script.as_bytes()))
        .expect("write the client");
    let mut child = Command::new(&node.program)
        .args(&node.flags)
        .arg(&path)
        .args([
            format!("http://{}", app.addr),
            format!("ws://{}", app.addr),
            id.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");

    wait_through_one_timeout(&app, transport).await;
    let answer: Value = app.callback(id, Some("FAILED")).await.json().await.unwrap();

    let mut stdout = String::new();
    let mut out = child.stdout.take().expect("stdout");
    tokio::time::timeout(PATIENCE, out.read_to_string(&mut stdout))
        .await
        .expect("the client prints the outcome in time")
        .expect("read the client's output");
    let printed: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: the client printed {stdout:?}"));
    assert_eq!(printed["status"], "FAILED", "{printed}");
    assert_eq!(printed["message"], "支付失败", "{printed}");
    if printed.get("completedAt").is_some() {
        assert_eq!(printed["completedAt"], answer["completedAt"]);
    }
}

/// Waits until a waiter of `transport` has timed out and a new one waits.
async fn wait_through_one_timeout(app: &TestApp, transport: &str) {
    let timeouts = format!("paypush_push_timeouts_total{{transport=\"{transport}\"}}");
    let open = format!("paypush_waiters_open{{transport=\"{transport}\"}}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if app.metric(&timeouts).await >= 1.0 && app.metric(&open).await >= 1.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not wait again after a timeout"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The code block of `docs/clients.md` after `<!-- client-test: {name} -->`.
fn snippet(name: &str) -> String {
    let page = include_str!("../docs/clients.md");
    let marker = format!("<!-- client-test: {name} -->\n```js\n");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker:?} in docs/clients.md"))
        + marker.len();
    let length = page[start..].find("\n```").expect("the end of the block");
    page[start..start + length].to_string()
}

/// How to run node with `WebSocket` available.
struct Node {
    program: PathBuf,
    flags: Vec<&'static str>,
}

/// `node`, or `None` (after saying why) when the test should skip.
fn node(test: &str) -> Option<Node> {
    if !NODE.require("node", "nodejs", test) {
        return None;
    }
    let program = on_path("node")?;
    let has = |flags: &[&str]| {
        std::process::Command::new(&program)
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let flags = if has(&[]) {
        Some(vec![])
    } else if has(&["--experimental-websocket"]) {
        Some(vec!["--experimental-websocket"])
    } else {
        None
    };
    match flags {
        Some(flags) => Some(Node { program, flags }),
        None => {
            NODE.skip(&format!(
                "{test}: {} has no WebSocket, even with --experimental-websocket; \
                 install Node 20 or later",
                program.display()
            ));
            None
        }
    }
}
