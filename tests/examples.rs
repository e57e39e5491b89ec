//! The merchant-backend examples of `examples/merchant/` (Java, Python, Node,
//! Go, PHP), run with their own runtimes against the built binary in signed
//! mode: each one's signed GET and form POST callbacks get `200`, its
//! subscribe token opens `/push`, and its signatures equal `paypush sign`'s
//! for fixed timestamps, nonces and bodies.
//!
//! Without a language's runtime on `PATH` its test prints why and passes,
//! unless `PAYPUSH_REQUIRE_EXAMPLES=1` (set by `scripts/test`), when it fails.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

use support::{spawn_binary, Binary, EventStream, Suite};

/// Without a runtime, an example's test skips, unless
/// `PAYPUSH_REQUIRE_EXAMPLES=1`.
const EXAMPLES: Suite = Suite {
    tests: "the example tests",
    required_by: Some("PAYPUSH_REQUIRE_EXAMPLES"),
};
const CALLBACK_SECRET: &str = "merchant-callback-secret";
const SUBSCRIBE_SECRET: &str = "merchant-subscribe-secret";

/// Requests signed by both `paypush sign` and each example, with fixed
/// inputs: method, path and query, Content-Type, body, timestamp, nonce.
const FIXED: [[&str; 6]; 4] = [
    [
        "GET",
        "/pay-callback?payRecordId=123&status=SUCCESS",
        "",
        "",
        "1700000000",
        "abcdefghijklmnop",
    ],
    [
        "POST",
        "/pay-callback",
        "application/x-www-form-urlencoded",
        "payRecordId=124&status=FAILED",
        "1700000001",
        "0123456789abcdef0123456789abcdef",
    ],
    [
        "POST",
        "/pay-callback",
        "Application/JSON; charset=UTF-8",
        r#"{"payRecordId":"125","note":"支付 x&payRecordId=9"}"#,
        "1700000002",
        "nonce_with-dashes_and_underscores",
    ],
    [
        "POST",
        "/pay-callback?x=1",
        "application/json",
        "line one\nline two",
        "1800000000",
        "ZZZZZZZZZZZZZZZZZZZZ",
    ],
];

/// One example: how to run it, and the Debian package of its runtime.
struct Example {
    language: &'static str,
    runtime: &'static str,
    package: &'static str,
}

const JAVA: Example = Example {
    language: "java",
    runtime: "java",
    package: "default-jdk-headless",
};
const PYTHON: Example = Example {
    language: "python",
    runtime: "python3",
    package: "python3",
};
const NODE: Example = Example {
    language: "node",
    runtime: "node",
    package: "nodejs",
};
const GO: Example = Example {
    language: "go",
    runtime: "go",
    package: "golang-go",
};
const PHP: Example = Example {
    language: "php",
    runtime: "php",
    package: "php-cli",
};

fn example_dir(language: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/merchant")
        .join(language)
}

/// An example ready to run: its command line, in a scratch folder.
struct Runner {
    program: PathBuf,
    args: Vec<PathBuf>,
    scratch: tempfile::TempDir,
}

impl Runner {
    fn new(example: &Example) -> Runner {
        let scratch = tempfile::tempdir().unwrap();
        let dir = example_dir(example.language);
        let (program, args) = match example.language {
            // As docs/security.md says: the JDK's single-file source launcher.
            "java" => ("java".into(), vec![dir.join("Paypush.java")]),
            "python" => ("python3".into(), vec![dir.join("paypush.py")]),
            "node" => ("node".into(), vec![dir.join("paypush.js")]),
            "php" => ("php".into(), vec![dir.join("paypush.php")]),
            // Built once (what `go run` does every time).
            "go" => {
                let binary = scratch.path().join("paypush-go");
                let built = std::process::Command::new("go")
                    .arg("build")
                    .arg("-o")
                    .arg(&binary)
                    .arg(dir.join("paypush.go"))
                    .env("GOCACHE", scratch.path().join("gocache"))
                    .env("GOPATH", scratch.path().join("gopath"))
                    .env("GOFLAGS", "-mod=mod")
                    .output()
                    .unwrap();
                assert!(built.status.success(), "go build: {built:?}");
                (binary, vec![])
            }
            other => unreachable!("no example in {other}"),
        };
        Runner {
            program,
            args,
            scratch,
        }
    }

    /// Runs the example with these arguments against `base_url`; its stdout.
    async fn run(&self, base_url: &str, args: &[&str]) -> String {
        let output = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .args(args)
            .current_dir(self.scratch.path())
            .env("PAYPUSH_URL", base_url)
            .env("PAYPUSH_CALLBACK_SECRET", CALLBACK_SECRET)
            .env("PAYPUSH_SUBSCRIBE_SECRET", SUBSCRIBE_SECRET)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{:?} {args:?}: {}",
            self.program,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// `paypush sign`'s signature for fixed inputs.
async fn paypush_signature(
    [method, path, content_type, body, timestamp, nonce]: [&str; 6],
) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"))
        .arg("sign")
        .arg(format!("--method={method}"))
        .arg(format!("--path={path}"))
        .arg(format!("--content-type={content_type}"))
        .arg(format!("--body={body}"))
        .arg(format!("--timestamp={timestamp}"))
        .arg(format!("--nonce={nonce}"))
        .env("PAYPUSH_CALLBACK_SECRET", CALLBACK_SECRET)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let signature = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Paypush-Signature: "))
        .unwrap_or_else(|| panic!("no signature in {stdout:?}"));
    signature.to_string()
}

/// `"200 {json}"` -> (200, json)
fn answer(line: &str) -> (u16, Value) {
    let (status, body) = line.trim_end().split_once(' ').unwrap_or((line, ""));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status.parse().unwrap_or(0), json)
}

/// The whole check of one example; `first_id` keeps payments apart.
async fn example_works_against_the_real_server(example: Example, first_id: u64) {
    let test = format!("{} example", example.language);
    if !EXAMPLES.require(example.runtime, example.package, &test) {
        return;
    }
    let runner = Runner::new(&example);
    let server: Binary = spawn_binary(&[
        "--callback-secret",
        CALLBACK_SECRET,
        "--subscribe-secret",
        SUBSCRIBE_SECRET,
    ])
    .await;
    let base_url = format!("http://{}", server.addr);
    let language = example.language;

    // The same signature as paypush sign, for fixed inputs.
    for fixed in FIXED {
        let mut args = vec!["sign"];
        args.extend(fixed);
        let theirs = runner.run(&base_url, &args).await;
        assert_eq!(
            theirs.trim_end(),
            paypush_signature(fixed).await,
            "{language} signs {fixed:?} differently"
        );
    }

    // A signed GET and a signed form POST are accepted.
    let (get_id, form_id) = (first_id.to_string(), (first_id + 1).to_string());
    let get = runner
        .run(&base_url, &["callback-get", &get_id, "SUCCESS"])
        .await;
    let (status, json) = answer(&get);
    assert_eq!(status, 200, "{language} GET: {get}");
    assert_eq!(
        (json["payRecordId"].as_str(), json["status"].as_str()),
        (Some(get_id.as_str()), Some("SUCCESS")),
        "{language} GET: {get}"
    );
    let form = runner
        .run(&base_url, &["callback-form", &form_id, "FAILED"])
        .await;
    let (status, json) = answer(&form);
    assert_eq!(status, 200, "{language} form POST: {form}");
    assert_eq!(
        (json["payRecordId"].as_str(), json["status"].as_str()),
        (Some(form_id.as_str()), Some("FAILED")),
        "{language} form POST: {form}"
    );

    // Its token opens /push (which refuses a request without one).
    let client = reqwest::Client::new();
    let push = |query: String| client.get(format!("{base_url}/push?{query}")).send();
    let refused = push(format!("payRecordId={form_id}")).await.unwrap();
    assert_eq!(refused.status(), 403);
    let token = runner.run(&base_url, &["token", &form_id]).await;
    let token = token.trim_end();
    let mut stream = EventStream::new(
        push(format!("payRecordId={form_id}&token={token}"))
            .await
            .unwrap(),
    );
    assert_eq!(stream.response_status, 200, "{language} token {token}");
    let outcome = stream.next_event().await.expect("the recorded outcome");
    assert_eq!(outcome.json()["status"], "FAILED", "{outcome:?}");
    assert_eq!(outcome.json()["message"], "支付失败", "{outcome:?}");
}

#[tokio::test]
async fn java_example_signs_sends_and_mints_tokens() {
    example_works_against_the_real_server(JAVA, 100).await;
}

#[tokio::test]
async fn python_example_signs_sends_and_mints_tokens() {
    example_works_against_the_real_server(PYTHON, 200).await;
}

#[tokio::test]
async fn node_example_signs_sends_and_mints_tokens() {
    example_works_against_the_real_server(NODE, 300).await;
}

#[tokio::test]
async fn go_example_signs_sends_and_mints_tokens() {
    example_works_against_the_real_server(GO, 400).await;
}

#[tokio::test]
async fn php_example_signs_sends_and_mints_tokens() {
    example_works_against_the_real_server(PHP, 500).await;
}
