//! The fixes of the security review (issue 13): stalled bodies, duplicate
//! JSON keys, CORS for unlisted origins, log floods, `/qr.svg` with a long
//! `Host`, the demo page switch, `/metrics` on its own address, redacted
//! Redis URLs, start-up warnings and the browser-side headers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    paypush_command, spawn_app, spawn_binary, start_binary, temp_dir, Binary, PATIENCE,
};

/// The contract's deadline for a body, plus room for a loaded machine.
const BODY_DEADLINE_AND_SLACK: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_its_connection_closed() {
    let app = spawn_app(&[]).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(
        b"POST /pay-callback HTTP/1.1\r\nHost: paypush\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\np",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(BODY_DEADLINE_AND_SLACK, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within the body deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "not before 10 s"
    );
}

const LISTED: &str = "https://shop.example.com";
const UNLISTED: &str = "https://evil.example.net";

/// Every `Access-Control-*` header of an answer, name and value, sorted.
fn cors_headers(answer: &reqwest::Response) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = answer
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("access-control-"))
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    headers.sort();
    headers
}

/// Sends `method path` with these headers to a server that lists [`LISTED`].
async fn cors_request(
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let app = spawn_app(&["--allow-origin", LISTED]).await;
    let mut request = app.client.request(method, app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_listed_origin_gets_exactly_its_origin_and_credentials_on_every_route() {
    for (path, status) in [
        ("/push?payRecordId=1301", 200),
        ("/pay-callback?payRecordId=1302", 200),
        // The page on that origin may read the JSON error too.
        ("/no-such-route", 404),
    ] {
        let answer = cors_request(reqwest::Method::GET, path, &[("origin", LISTED)]).await;
        assert_eq!(answer.status(), status, "{path}");
        assert_eq!(
            cors_headers(&answer),
            owned(&[
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-origin", LISTED),
            ]),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_listed_origins_preflight_gets_exactly_the_preflight_headers() {
    let answer = cors_request(
        reqwest::Method::OPTIONS,
        "/pay-callback",
        &[
            ("origin", LISTED),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
    )
    .await;
    assert!(answer.status().is_success());
    assert_eq!(
        cors_headers(&answer),
        owned(&[
            ("access-control-allow-credentials", "true"),
            (
                "access-control-allow-headers",
                "content-type,cache-control,last-event-id,paypush-timestamp,paypush-nonce,paypush-signature"
            ),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-origin", LISTED),
            ("access-control-max-age", "600"),
        ])
    );
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_header_on_push_callbacks_or_unknown_routes() {
    for path in [
        "/push?payRecordId=1303",
        "/pay-callback?payRecordId=1304",
        "/no-such-route",
    ] {
        let answer = cors_request(reqwest::Method::GET, path, &[("origin", UNLISTED)]).await;
        assert_eq!(cors_headers(&answer), vec![], "{path}");
        // So that a shared cache never gives this answer to a listed origin.
        assert_eq!(answer.headers()["vary"], "origin", "{path}");
    }
}

#[tokio::test]
async fn an_unlisted_origins_preflight_is_a_plain_405_json_without_cors_headers() {
    let answer = cors_request(
        reqwest::Method::OPTIONS,
        "/pay-callback",
        &[
            ("origin", UNLISTED),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(answer.status(), 405);
    assert_eq!(cors_headers(&answer), vec![]);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
}

#[tokio::test]
async fn options_without_origin_is_a_plain_404_json_without_cors_headers() {
    let answer = cors_request(reqwest::Method::OPTIONS, "/anything", &[]).await;
    assert_eq!(answer.status(), 404);
    assert_eq!(cors_headers(&answer), vec![]);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn a_json_callback_with_a_repeated_key_is_400_invalid_body_and_records_nothing() {
    let app = spawn_app(&[]).await;
    for body in [
        r#"{"payRecordId":"1305","payRecordId":"1306"}"#,
        r#"{"payRecordId":"1305","status":"FAILED","status":"SUCCESS"}"#,
    ] {
        let answer = app.post_callback("application/json", body).await;
        assert_eq!(answer.status(), 400, "{body}");
        let json: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(json["error"], "invalid_body", "{body}");
    }
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let app = spawn_app(&["--allow-origin", LISTED]).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/pay-callback"))
        .header("origin", LISTED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    let mut answers = vec![("preflight".to_string(), preflight)];
    for path in [
        "/",
        "/app.js",
        "/paypush.js",
        "/healthz",
        "/metrics",
        "/qr.svg?payRecordId=1",
        "/push?payRecordId=0",
        "/pay-callback?payRecordId=1307",
        "/no-such-route",
    ] {
        answers.push((path.to_string(), app.get(path).await));
    }
    for (what, answer) in answers {
        assert_eq!(
            answer.headers().get("x-content-type-options").unwrap(),
            "nosniff",
            "{what}"
        );
    }
}

#[tokio::test]
async fn the_demo_page_allows_only_its_own_origin_and_sends_no_referrer() {
    let app = spawn_app(&[]).await;
    for path in ["/", "/app.js", "/app.css"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status(), 200, "{path}");
        let csp = answer.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(answer.headers()["referrer-policy"], "no-referrer", "{path}");
    }
}

/// A `Host` over the 255 bytes `/qr.svg` encodes.
fn long_host() -> String {
    format!("{}.example.com", "a".repeat(288))
}

/// `GET path` over raw TCP with this `Host`; the whole answer as text.
async fn get_with_host(app: &crate::helpers::TestApp, path: &str, host: &str) -> String {
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn qr_svg_refuses_a_host_over_255_bytes_with_400_json() {
    let app = spawn_app(&[]).await;
    let answer = get_with_host(&app, "/qr.svg?payRecordId=1308", &long_host()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""error":"invalid_request""#), "{answer}");
}

#[tokio::test]
async fn qr_svg_encodes_the_public_url_whatever_the_host() {
    let app = spawn_app(&["--public-url", "https://pay.example.com/"]).await;
    let answer = get_with_host(&app, "/qr.svg?payRecordId=1309", &long_host()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let expected =
        paypush::qr::svg("https://pay.example.com/pay-callback?payRecordId=1309&status=SUCCESS")
            .unwrap();
    assert!(answer.ends_with(&expected), "{answer}");
}

#[tokio::test]
async fn no_demo_page_turns_the_page_its_files_and_the_qr_code_off() {
    let app = spawn_app(&["--no-demo-page"]).await;
    for path in ["/", "/index.html", "/app.js", "/qr.svg?payRecordId=1310"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status(), 404, "{path}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.callback("1310", None).await.status(), 200);
}

/// The built binary with these flags and environment, in a fresh temporary
/// working directory, once it listens.
async fn binary_with_env(flags: &[&str], env: &[(&str, &str)]) -> Binary {
    let dir = temp_dir();
    let mut command = paypush_command(dir.path());
    command.envs(env.iter().copied());
    let mut binary = start_binary(command, flags).await;
    binary.dir = Some(dir);
    binary
}

/// The address logged after `marker` (`metrics on http://`) in `log`.
fn address_after(log: &str, marker: &str) -> Option<SocketAddr> {
    let rest = log.split(marker).nth(1)?;
    rest.split(['/', ' ', '\n']).next()?.parse().ok()
}

#[tokio::test]
async fn metrics_bind_serves_metrics_on_its_own_address_and_the_main_one_answers_404() {
    let paypush = spawn_binary(&["--metrics-bind", "127.0.0.1:0"]).await;
    let metrics = address_after(&paypush.logged(), "metrics on http://")
        .expect("the metrics address is logged");
    let client = reqwest::Client::new();
    let internal = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(internal.status(), 200);
    assert!(internal
        .text()
        .await
        .unwrap()
        .contains("paypush_callbacks_total"));
    let public = client
        .get(format!("http://{}/metrics", paypush.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let body: serde_json::Value = public.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn an_invalid_redis_url_is_reported_with_its_password_hidden() {
    let url = "redis://admin:hunter2-redis@127.0.0.1:notaport/0";
    for (flags, env) in [
        (vec!["--redis-url", url], vec![]),
        (vec![], vec![("PAYPUSH_REDIS_URL", url)]),
    ] {
        let dir = temp_dir();
        let output = paypush_command(dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .args(&flags)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(
            stderr.contains("redis://admin:***@127.0.0.1:notaport/0"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn an_invalid_redis_cluster_node_list_is_reported_with_every_password_hidden() {
    let nodes = "redis://u:goodsecret@127.0.0.1:7000,redis://u:badsecret@127.0.0.1:x";
    for (flags, env) in [
        (vec!["--redis-cluster", nodes], vec![]),
        (vec![], vec![("PAYPUSH_REDIS_CLUSTER", nodes)]),
    ] {
        let dir = temp_dir();
        let output = paypush_command(dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .args(&flags)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("goodsecret") && !stderr.contains("badsecret"),
            "{stderr}"
        );
        assert!(stderr.contains("redis://u:***@127.0.0.1:x"), "{stderr}");
    }
}

/// The start-up warning about a missing subscribe secret.
const OPEN_STREAMS_WARNING: &str = "no subscribe secret";

#[tokio::test]
async fn a_callback_secret_without_a_subscribe_secret_warns_at_start_up() {
    let paypush = binary_with_env(&[], &[("PAYPUSH_CALLBACK_SECRET", "cb-secret")]).await;
    let log = paypush.logged();
    assert!(log.contains(OPEN_STREAMS_WARNING), "{log}");
    assert!(log.contains("PAYPUSH_SUBSCRIBE_SECRET"), "{log}");
}

#[tokio::test]
async fn both_secrets_start_without_the_open_streams_warning() {
    let paypush = binary_with_env(
        &[],
        &[
            ("PAYPUSH_CALLBACK_SECRET", "cb-secret"),
            ("PAYPUSH_SUBSCRIBE_SECRET", "sub-secret"),
        ],
    )
    .await;
    let log = paypush.logged();
    assert!(!log.contains(OPEN_STREAMS_WARNING), "{log}");
}

/// How many refused requests the log-flood test sends.
const FLOOD: usize = 1_500;

/// The refusals a log line accounts for: 1 for a single one, else its "N more".
fn refusals_in(line: &str) -> u64 {
    let more = line
        .split(" more ")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    match more {
        Some(n) if line.contains(" more in the last second") => n,
        Some(n) => n + 1,
        None => 1,
    }
}

#[tokio::test]
async fn a_flood_of_refused_callbacks_writes_one_log_line_a_second_with_the_count() {
    let paypush = binary_with_env(&[], &[("PAYPUSH_CALLBACK_SECRET", "cb-secret")]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/pay-callback?payRecordId=1311", paypush.addr);
    let started = Instant::now();
    let senders: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..FLOOD / 10 {
                    let answer = client.get(&url).send().await.unwrap();
                    assert_eq!(answer.status(), 401);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let lines = || -> Vec<String> {
        paypush
            .logged()
            .lines()
            .filter(|line| line.contains("refused: invalid_signature"))
            .map(str::to_string)
            .collect()
    };
    // The last second's summary comes when that second is over.
    let deadline = Instant::now() + PATIENCE;
    while lines().iter().map(|line| refusals_in(line)).sum::<u64>() < FLOOD as u64 {
        assert!(Instant::now() < deadline, "{:#?}", lines());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = lines();
    // Every second that has begun since the flood started, its last
    // summary included: the first refusal at once, then one line a second.
    let seconds = started.elapsed().as_secs_f64().ceil() as u64;
    assert_eq!(
        lines.iter().map(|line| refusals_in(line)).sum::<u64>(),
        FLOOD as u64,
        "{lines:#?}"
    );
    assert!(
        lines.len() as u64 <= seconds + 1,
        "{} lines in {seconds} s: {lines:#?}",
        lines.len()
    );
}

#[tokio::test]
async fn a_body_that_stalls_over_h2c_gets_408_json() {
    let app = spawn_app(&[]).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let first_byte = futures_util::stream::once(async { Ok::<_, std::io::Error>("{") });
    let stalled = futures_util::StreamExt::chain(first_byte, futures_util::stream::pending());
    let answer = tokio::time::timeout(
        BODY_DEADLINE_AND_SLACK,
        h2c.post(app.url("/pay-callback"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stalled))
            .send(),
    )
    .await
    .expect("an answer within the body deadline")
    .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 408);
    assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "request_timeout");
}

#[tokio::test]
async fn readyz_is_503_naming_max_outcomes_while_every_new_outcome_is_refused() {
    for store in [&[][..], &["--in-memory"]] {
        let mut flags = vec!["--max-outcomes", "2", "--outcome-ttl", "1s"];
        flags.extend_from_slice(store);
        let app = spawn_app(&flags).await;
        assert_eq!(app.get("/readyz").await.status(), 200, "{flags:?}");
        for id in ["1", "2"] {
            assert_eq!(app.callback(id, None).await.status(), 200);
        }
        let full = app.get("/readyz").await;
        assert_eq!(full.status(), 503, "{flags:?}");
        let json: serde_json::Value = full.json().await.unwrap();
        assert_eq!(json["error"], "not_ready");
        assert!(
            json["message"].as_str().unwrap().contains("--max-outcomes"),
            "{flags:?}: {json}"
        );
        // Ready again once the outcomes expire and make room.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(app.get("/readyz").await.status(), 200, "{flags:?}");
    }
}
