//! What every test binary shares: a real paypush on 127.0.0.1:0
//! (in-process, or the built binary as a child process), an HTTP client, an
//! SSE reader and a WebSocket client (tokio-tungstenite) over real TCP, free
//! ports, and "this test needs that program, or it skips saying why".
//!
//! Each binary includes it with `#[path = ".../support/mod.rs"] mod support;`
//! (and `#[allow(dead_code)]`, as none uses all of it).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use paypush::app::App;
use paypush::config::Cli;
use paypush::server;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{self, Message};

/// A WebSocket client connected to a test server.
pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The open-file limit handed to in-process servers.
pub const TEST_OPEN_FILE_LIMIT: u64 = 20_000;
/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A free TCP port on 127.0.0.1, for a program that must be told its port
/// (redis-server, nginx, HAProxy): free when asked, so rarely taken by the
/// time the program binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Where `program` is on `PATH`, if it is.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Tests that need programs a machine may lack: without one, a test says why
/// and passes, unless the suite's variable is `1` (`scripts/test` sets it),
/// when it fails.
pub struct Suite {
    /// The suite, as a failure names it ("the Redis tests").
    pub tests: &'static str,
    /// Set to `1` to fail, instead of skip, when a program is missing;
    /// `None`: the suite always skips.
    pub required_by: Option<&'static str>,
}

impl Suite {
    /// True when `program` is on `PATH`; otherwise says on stderr that `test`
    /// is skipped and which Debian `package` to install (or fails it when
    /// the suite is required).
    pub fn require(&self, program: &str, package: &str, test: &str) -> bool {
        if on_path(program).is_some() {
            return true;
        }
        let mut why = format!("{test}: no {program} on PATH; install Debian's {package}");
        if self.required_by.is_some() {
            why.push_str(" (scripts/test-deps does)");
        }
        self.skip(&why)
    }

    /// Says on stderr that a test is skipped and `why` (which names the
    /// test), and returns false; or fails it when the suite is required.
    /// [`Suite::require`] is this for a program missing from `PATH`; call it
    /// directly for what `require` cannot see (a program too old, a path
    /// given in a variable that is no file).
    pub fn skip(&self, why: &str) -> bool {
        if let Some(variable) = self.required_by {
            if std::env::var(variable).is_ok_and(|v| v == "1") {
                panic!("{why} ({variable}=1 requires {})", self.tests);
            }
        }
        // Straight to stderr, past the test harness's capture.
        let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
        false
    }
}

/// A paypush served in this process until dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub stopped: Option<tokio::task::JoinHandle<()>>,
    /// The store's folder, unless the flags chose another or none.
    pub data_dir: Option<tempfile::TempDir>,
}

/// A fresh temporary folder, removed when dropped: every server a test
/// starts keeps its store (or its working directory) there, never in the
/// checkout.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("paypush-test-")
        .tempdir()
        .expect("a temporary folder")
}

/// Starts paypush on a free loopback port with these flags.
pub async fn spawn_app(flags: &[&str]) -> TestApp {
    spawn_app_on("127.0.0.1:0", flags).await
}

/// Starts paypush on `addr` (e.g. the port of a server just shut down).
pub async fn spawn_app_on(addr: &str, flags: &[&str]) -> TestApp {
    let chooses_store = flags.iter().any(|f| {
        [
            "--data-dir",
            "--in-memory",
            "--redis-url",
            "--redis-cluster",
        ]
        .contains(f)
    });
    let data_dir = (!chooses_store).then(temp_dir);
    let data_flags = data_dir
        .iter()
        .flat_map(|dir| ["--data-dir".to_string(), dir.path().display().to_string()]);
    let args = std::iter::once("paypush".to_string())
        .chain(flags.iter().map(|f| f.to_string()))
        .chain(data_flags);
    let config = Cli::try_parse_from(args).expect("valid test flags").serve;
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let app = App::new(config, TEST_OPEN_FILE_LIMIT).expect("app");
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run(listener, app, async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        stop: Some(stop),
        stopped: Some(handle),
        data_dir,
    }
}

impl TestApp {
    /// `http://127.0.0.1:port{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// `GET /pay-callback?payRecordId={id}[&status=...]`
    pub async fn callback(&self, id: &str, status: Option<&str>) -> reqwest::Response {
        let path = match status {
            Some(status) => format!("/pay-callback?payRecordId={id}&status={status}"),
            None => format!("/pay-callback?payRecordId={id}"),
        };
        self.get(&path).await
    }

    /// POST `/pay-callback` with this content type and body.
    pub async fn post_callback(&self, content_type: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url("/pay-callback"))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("POST")
    }

    /// Opens `/push?payRecordId={id}`.
    pub async fn push(&self, id: &str) -> EventStream {
        EventStream::new(self.get(&format!("/push?payRecordId={id}")).await)
    }

    /// Opens `/push` and reads its `pending` event: the stream is registered.
    pub async fn push_pending(&self, id: &str) -> EventStream {
        let mut stream = self.push(id).await;
        assert_eq!(stream.response_status, 200);
        let pending = stream.next_event().await.expect("pending event");
        assert_eq!(pending.event.as_deref(), Some("pending"), "{pending:?}");
        stream
    }

    /// `GET /status{query}` as JSON, with its HTTP status.
    pub async fn status(&self, query: &str) -> (u16, serde_json::Value) {
        let answer = self.get(&format!("/status{query}")).await;
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("JSON answer"))
    }

    /// Opens a WebSocket on `path` (e.g. `/ws?payRecordId=1`), with these
    /// extra request headers; `Err` holds a refusal's status and JSON body.
    pub async fn try_ws(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, (u16, serde_json::Value)> {
        use tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}{}", self.addr, path)
            .into_client_request()
            .expect("ws request");
        for (name, value) in headers {
            request.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((client, _)) => Ok(client),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().clone().unwrap_or_default();
                Err((status, serde_json::from_slice(&body).expect("JSON refusal")))
            }
            Err(e) => panic!("ws connect: {e}"),
        }
    }

    /// Tries a WebSocket on `path`, which must be refused: status and body.
    pub async fn ws_refused(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        match self.try_ws(path, headers).await {
            Ok(_) => panic!("{path} was accepted"),
            Err(refusal) => refusal,
        }
    }

    /// Opens a WebSocket on `path`, which must be accepted.
    pub async fn ws(&self, path: &str) -> WsClient {
        self.try_ws(path, &[]).await.expect("ws accepted")
    }

    /// Opens `/ws?payRecordId={id}` and reads its `PENDING` frame.
    pub async fn ws_pending(&self, id: &str) -> WsClient {
        let mut client = self.ws(&format!("/ws?payRecordId={id}")).await;
        let pending = next_json(&mut client).await;
        assert_eq!(pending["status"], "PENDING", "{pending}");
        client
    }

    /// A metric's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Waits until `metric` reads `value`, or fails after [`PATIENCE`].
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting and ends open streams, as SIGTERM does.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.stopped.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One Server-Sent Event, or a comment line (`comment` set).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// Reads events from a streaming response, as EventSource would.
pub struct EventStream {
    pub response_status: u16,
    pub headers: reqwest::header::HeaderMap,
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    pub fn new(response: reqwest::Response) -> EventStream {
        EventStream {
            response_status: response.status().as_u16(),
            headers: response.headers().clone(),
            response,
            buffer: String::new(),
        }
    }

    /// The next event or comment; `None` at the end of the stream. Fails if
    /// nothing comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(PATIENCE)
            .await
            .expect("an event or the end in time")
    }

    /// The next event, skipping keep-alive comments.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match self.next().await {
                Some(event) if event.comment.is_some() => continue,
                other => return other,
            }
        }
    }

    /// The next event or comment, or `Err` when nothing came in `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<SseEvent>, ()> {
        tokio::time::timeout(wait, self.read_block())
            .await
            .map_err(|_| ())
    }

    /// True when the stream ends (not just stalls) within [`PATIENCE`].
    pub async fn ends(&mut self) -> bool {
        self.next().await.is_none()
    }

    async fn read_block(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines().filter(|l| !l.is_empty()) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "" => event.comment = Some(value.to_string()),
            "event" => event.event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            "id" => event.id = Some(value.to_string()),
            "retry" => event.retry = value.parse().ok(),
            _ => {}
        }
    }
    event.data = data.join("\n");
    event
}

/// The built `paypush` binary running as a child process.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Its temporary working directory, when [`spawn_binary`] made one.
    pub dir: Option<tempfile::TempDir>,
}

impl Binary {
    /// `http://127.0.0.1:port{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends `signal` (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Sends `signal` and waits for the process to exit.
    pub async fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits in time")
            .expect("exit status")
    }

    /// What it has logged so far.
    pub fn logged(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

/// The built binary, to run in `dir` (its default data folder is there).
pub fn paypush_command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paypush"));
    command.current_dir(dir).kill_on_drop(true);
    command
}

/// The headers `paypush sign <args>` prints (a `Name: value` line each),
/// with `secret_env` as `PAYPUSH_CALLBACK_SECRET` (`None`: the variable is
/// unset, and `args` carry `--secret`).
pub fn paypush_sign(secret_env: Option<&str>, args: &[&str]) -> Vec<(String, String)> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_paypush"));
    command.arg("sign").args(args);
    match secret_env {
        Some(secret) => command.env("PAYPUSH_CALLBACK_SECRET", secret),
        None => command.env_remove("PAYPUSH_CALLBACK_SECRET"),
    };
    let output = command.output().expect("runs paypush sign");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a header: {line:?}"));
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// Starts the built binary on a free port, in a temporary working
/// directory, and waits for its start-up line.
pub async fn spawn_binary(flags: &[&str]) -> Binary {
    spawn_binary_with_env(flags, &[]).await
}

/// [`spawn_binary`] with these environment variables too.
pub async fn spawn_binary_with_env(flags: &[&str], env: &[(&str, &str)]) -> Binary {
    let dir = temp_dir();
    let mut command = paypush_command(dir.path());
    command.envs(env.iter().copied());
    let mut binary = start_binary(command, flags).await;
    binary.dir = Some(dir);
    binary
}

/// Starts `command` (from [`paypush_command`]) on a free port with these
/// flags, and waits for its start-up line.
pub async fn start_binary(mut command: Command, flags: &[&str]) -> Binary {
    let mut child = command
        .args(["--bind", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn paypush");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = |line: &str| log.lock().expect("log").push_str(&format!("{line}\n"));
    let addr = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            keep(&line);
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                return addr.parse().expect("socket address");
            }
        }
        panic!(
            "paypush exited before listening: {}",
            log.lock().expect("log")
        );
    })
    .await
    .expect("paypush starts in time");
    // Keep reading its log so it never blocks on a full pipe.
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().expect("log").push_str(&format!("{line}\n"));
        }
    });
    Binary {
        child,
        addr,
        log,
        dir: None,
    }
}

/// The next message other than a ping or pong; `None` once the socket has
/// closed without a close frame. Fails if nothing comes within [`PATIENCE`].
pub async fn next_message(client: &mut WsClient) -> Option<Message> {
    use futures_util::StreamExt;
    tokio::time::timeout(PATIENCE, async {
        loop {
            match client.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("a WebSocket message in time")
}

/// The next text frame, as JSON.
pub async fn next_json(client: &mut WsClient) -> serde_json::Value {
    match next_message(client).await {
        Some(Message::Text(text)) => serde_json::from_str(&text).expect("JSON frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next message, which must be a close frame: its code and reason.
pub async fn next_close(client: &mut WsClient) -> (u16, String) {
    match next_message(client).await {
        Some(Message::Close(Some(frame))) => (frame.code.into(), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Runs `command` (a server start that must be refused) and returns what it
/// wrote to stderr, after checking that it exited with code 2 within
/// [`PATIENCE`] and said so in one line.
pub async fn refused_at_start(mut command: Command) -> String {
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("exits in time")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    stderr
}
