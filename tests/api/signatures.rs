//! Signed callbacks: what the server accepts and refuses (the key, the
//! timestamp, the nonce, and the method, path, media type and body signed),
//! and `paypush sign`, whose headers it accepts for any request.

use std::time::{SystemTime, UNIX_EPOCH};

use paypush::signature::{media_type, signature_of, Secret, SignedParts};
use serde_json::Value;

use crate::support::{spawn_app, TestApp};

const SECRET: &str = "callback-secret-for-tests";
const NONCE: &str = "nonce-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A callback request with explicit signature inputs.
#[derive(Clone, Copy)]
struct Signed<'a> {
    method: &'a str,
    path: &'a str,
    /// The `Content-Type` sent, and signed; empty: none.
    content_type: &'a str,
    body: &'a str,
    timestamp: i64,
    nonce: &'a str,
    secret: &'a str,
}

impl<'a> Signed<'a> {
    fn get(path: &'a str) -> Self {
        Signed {
            method: "GET",
            path,
            content_type: "",
            body: "",
            timestamp: now(),
            nonce: NONCE,
            secret: SECRET,
        }
    }

    /// A JSON POST.
    fn post(body: &'a str) -> Self {
        Signed {
            method: "POST",
            path: "/pay-callback",
            content_type: "application/json",
            body,
            ..Signed::get("")
        }
    }

    fn signature(&self) -> String {
        let secret: Secret = self.secret.parse().unwrap();
        let media_type = media_type(self.content_type);
        let parts = SignedParts {
            method: self.method,
            path_and_query: self.path,
            media_type: &media_type,
            body: self.body.as_bytes(),
        };
        signature_of(&secret, &self.timestamp.to_string(), self.nonce, parts)
    }

    /// Sends it, signed as described, with the body `sent_body` and path `sent_path`.
    async fn send_as(&self, app: &TestApp, sent_path: &str, sent_body: &str) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut request = app
            .client
            .request(method, app.url(sent_path))
            .header("Paypush-Timestamp", self.timestamp.to_string())
            .header("Paypush-Nonce", self.nonce)
            .header("Paypush-Signature", self.signature());
        if !self.content_type.is_empty() {
            request = request.header("content-type", self.content_type);
        }
        if self.method == "POST" {
            request = request.body(sent_body.to_string());
        }
        request.send().await.unwrap()
    }

    /// Sends it with another `Content-Type` than the one signed.
    async fn send_with_type(&self, app: &TestApp, content_type: &str) -> reqwest::Response {
        Signed {
            content_type,
            ..*self
        }
        .send_as_signed_by(app, self)
        .await
    }

    /// Sends this request carrying `signer`'s signature headers.
    async fn send_as_signed_by(&self, app: &TestApp, signer: &Signed<'_>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut request = app
            .client
            .request(method, app.url(self.path))
            .header("Paypush-Timestamp", signer.timestamp.to_string())
            .header("Paypush-Nonce", signer.nonce)
            .header("Paypush-Signature", signer.signature());
        if !self.content_type.is_empty() {
            request = request.header("content-type", self.content_type);
        }
        request.body(self.body.to_string()).send().await.unwrap()
    }

    async fn send(&self, app: &TestApp) -> reqwest::Response {
        self.send_as(app, self.path, self.body).await
    }
}

async fn signed_app() -> TestApp {
    spawn_app(&["--callback-secret", SECRET]).await
}

/// A refusal: its status, its JSON error code, and a message that says `says`.
pub(crate) async fn assert_refused(
    response: reqwest::Response,
    status: u16,
    code: &str,
    says: &str,
) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

#[tokio::test]
async fn signed_get_and_post_callbacks_are_accepted() {
    let app = signed_app().await;
    let mut stream = app.push_pending("1").await;
    let get = Signed::get("/pay-callback?payRecordId=1&status=FAILED")
        .send(&app)
        .await;
    assert_eq!(get.status(), 200);
    assert_eq!(
        stream.next_event().await.unwrap().json()["status"],
        "FAILED"
    );

    let body = r#"{"payRecordId":"2","status":"CLOSED"}"#;
    let post = Signed {
        nonce: "another-nonce-0123456",
        ..Signed::post(body)
    }
    .send(&app)
    .await;
    assert_eq!(post.status(), 200);
    assert_eq!(post.json::<Value>().await.unwrap()["status"], "CLOSED");
}

#[tokio::test]
async fn unsigned_callback_is_refused_and_records_nothing() {
    let app = signed_app().await;
    assert_refused(
        app.callback("3", None).await,
        401,
        "invalid_signature",
        "Paypush-Timestamp",
    )
    .await;
    let no_nonce = app
        .client
        .get(app.url("/pay-callback?payRecordId=3"))
        .header("Paypush-Timestamp", now().to_string())
        .header("Paypush-Signature", "00")
        .send()
        .await
        .unwrap();
    assert_refused(no_nonce, 401, "invalid_signature", "Paypush-Nonce").await;
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}

#[tokio::test]
async fn bad_or_wrongly_keyed_signatures_are_refused() {
    let app = signed_app().await;
    let path = "/pay-callback?payRecordId=4";
    let wrong_secret = Signed {
        secret: "not-the-secret",
        ..Signed::get(path)
    };
    assert_refused(
        wrong_secret.send(&app).await,
        401,
        "invalid_signature",
        "does not match",
    )
    .await;
    let garbage = app
        .client
        .get(app.url(path))
        .header("Paypush-Timestamp", now().to_string())
        .header("Paypush-Nonce", NONCE)
        .header("Paypush-Signature", "not-hex")
        .send()
        .await
        .unwrap();
    assert_refused(garbage, 401, "invalid_signature", "does not match").await;
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}

#[tokio::test]
async fn signature_in_upper_case_hex_is_accepted() {
    let app = signed_app().await;
    let signed = Signed::get("/pay-callback?payRecordId=5");
    let answer = app
        .client
        .get(app.url(signed.path))
        .header("Paypush-Timestamp", signed.timestamp.to_string())
        .header("Paypush-Nonce", signed.nonce)
        .header("Paypush-Signature", signed.signature().to_uppercase())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn stale_and_future_timestamps_are_refused() {
    let app = signed_app().await;
    for timestamp in [now() - 301, now() + 301] {
        let signed = Signed {
            timestamp,
            ..Signed::get("/pay-callback?payRecordId=6")
        };
        assert_refused(signed.send(&app).await, 401, "invalid_signature", "300 s").await;
    }
    let within = Signed {
        timestamp: now() - 250,
        ..Signed::get("/pay-callback?payRecordId=6")
    };
    assert_eq!(within.send(&app).await.status(), 200);
}

#[tokio::test]
async fn replayed_nonce_is_refused() {
    let app = signed_app().await;
    let signed = Signed::get("/pay-callback?payRecordId=7");
    assert_eq!(signed.send(&app).await.status(), 200);
    assert_refused(
        signed.send(&app).await,
        401,
        "invalid_signature",
        "already used",
    )
    .await;
    // The same nonce on another payment is a replay too.
    let other = Signed::get("/pay-callback?payRecordId=8");
    assert_refused(
        other.send(&app).await,
        401,
        "invalid_signature",
        "already used",
    )
    .await;
}

#[tokio::test]
async fn nonce_of_a_refused_request_is_not_remembered() {
    let app = signed_app().await;
    let forged = Signed {
        secret: "forger",
        ..Signed::get("/pay-callback?payRecordId=9")
    };
    assert_eq!(forged.send(&app).await.status(), 401);
    let genuine = Signed::get("/pay-callback?payRecordId=9");
    assert_eq!(genuine.send(&app).await.status(), 200);
}

#[tokio::test]
async fn short_or_strange_nonces_are_refused() {
    let app = signed_app().await;
    for nonce in [
        "short",
        "has spaces in it 0123",
        "x".repeat(65).as_str(),
        "ünïcödé-nonce-0123456",
    ] {
        let signed = Signed {
            nonce,
            ..Signed::get("/pay-callback?payRecordId=10")
        };
        let answer = signed.send(&app).await;
        assert_eq!(answer.status(), 401, "{nonce:?}");
    }
}

#[tokio::test]
async fn tampered_body_or_query_is_refused() {
    let app = signed_app().await;
    let signed = Signed::post(r#"{"payRecordId":"11","status":"FAILED"}"#);
    let tampered = signed
        .send_as(
            &app,
            "/pay-callback",
            r#"{"payRecordId":"11","status":"SUCCESS"}"#,
        )
        .await;
    assert_refused(tampered, 401, "invalid_signature", "does not match").await;

    let signed = Signed::get("/pay-callback?payRecordId=12&status=FAILED");
    let tampered = signed
        .send_as(&app, "/pay-callback?payRecordId=12&status=SUCCESS", "")
        .await;
    assert_refused(tampered, 401, "invalid_signature", "does not match").await;
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
}

#[tokio::test]
async fn signatures_cover_each_media_type_as_sent() {
    let app = signed_app().await;
    let cases = [
        (
            "application/json",
            r#"{"payRecordId":"30","status":"FAILED"}"#,
        ),
        ("application/json; charset=utf-8", r#"{"payRecordId":"31"}"#),
        ("Application/JSON", r#"{"payRecordId":"32"}"#),
        (
            "application/x-www-form-urlencoded",
            "payRecordId=33&status=CLOSED",
        ),
        (
            "application/x-www-form-urlencoded; charset=UTF-8",
            "payRecordId=34",
        ),
    ];
    for (i, (content_type, body)) in cases.into_iter().enumerate() {
        let nonce = format!("media-type-nonce-{i:04}");
        let signed = Signed {
            content_type,
            nonce: &nonce,
            ..Signed::post(body)
        };
        let answer = signed.send(&app).await;
        assert_eq!(answer.status(), 200, "{content_type}");
        assert_eq!(
            answer.json::<Value>().await.unwrap()["payRecordId"],
            format!("{}", 30 + i),
            "{content_type}"
        );
    }
    // A GET signs an empty media type; with a Content-Type, it signs that.
    let get = Signed::get("/pay-callback?payRecordId=35");
    assert_eq!(get.send(&app).await.status(), 200);
    let get_typed = Signed {
        content_type: "text/plain",
        nonce: "get-with-a-type-0123",
        ..Signed::get("/pay-callback?payRecordId=36")
    };
    assert_refused(
        get_typed.send_with_type(&app, "").await,
        401,
        "invalid_signature",
        "does not match",
    )
    .await;
    assert_eq!(get_typed.send(&app).await.status(), 200);
}

#[tokio::test]
async fn a_body_signed_as_json_cannot_be_replayed_as_a_form() {
    // Issue 13: as JSON this body is payment 21 SUCCESS, as a form 22 FAILED.
    let app = signed_app().await;
    let body = r#"{"payRecordId":"21","note":"x&payRecordId=22&status=FAILED&y="}"#;
    let as_json = Signed::post(body);
    assert_refused(
        as_json
            .send_with_type(&app, "application/x-www-form-urlencoded")
            .await,
        401,
        "invalid_signature",
        "does not match",
    )
    .await;
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 0.0);
    // Payment 22 has no outcome: its stream starts with `pending`.
    drop(app.push_pending("22").await);

    // The genuine request still goes through (its nonce was not spent).
    let answer = as_json.send(&app).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        (answer["payRecordId"].as_str(), answer["status"].as_str()),
        (Some("21"), Some("SUCCESS"))
    );
    assert_eq!(app.metric("paypush_outcomes_recorded").await, 1.0);

    // And the other way round: signed as a form, sent as JSON.
    let as_form = Signed {
        content_type: "application/x-www-form-urlencoded",
        nonce: "signed-as-a-form-0123",
        ..Signed::post(body)
    };
    assert_refused(
        as_form.send_with_type(&app, "application/json").await,
        401,
        "invalid_signature",
        "does not match",
    )
    .await;
}

#[tokio::test]
async fn sign_subcommand_prints_headers_the_server_accepts() {
    let app = signed_app().await;
    let path = "/pay-callback?payRecordId=15&status=CLOSED";
    let headers = crate::support::paypush_sign(Some(SECRET), &["--path", path]);
    assert_eq!(headers.len(), 3, "{headers:?}");
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn sign_subcommand_signs_post_bodies() {
    let app = signed_app().await;
    let body = "payRecordId=16&status=FAILED";
    let mut request = app
        .client
        .post(app.url("/pay-callback"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (name, value) in signed_headers("POST", "/pay-callback", None, body) {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn sign_subcommand_signs_the_content_type_it_is_given() {
    let app = signed_app().await;
    let body = r#"{"payRecordId":"17","status":"CLOSED"}"#;
    let send = |content_type: Option<&str>| {
        let mut request = app
            .client
            .post(app.url("/pay-callback"))
            .header("content-type", "application/json; charset=utf-8")
            .body(body);
        for (name, value) in signed_headers("POST", "/pay-callback", content_type, body) {
            request = request.header(name, value);
        }
        request.send()
    };
    // The default, a form, does not match a JSON request.
    assert_eq!(send(None).await.unwrap().status(), 401);
    let answer = send(Some("application/json")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<Value>().await.unwrap()["status"], "CLOSED");
}

/// A `Content-Type` as a client might write it: any token type/subtype, in
/// any case, with or without parameters and spaces.
fn content_types() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("application/json".to_string()),
        Just("application/x-www-form-urlencoded".to_string()),
        "[A-Za-z][A-Za-z0-9.+-]{0,12}/[A-Za-z][A-Za-z0-9.+-]{0,12}( ?; ?charset=[A-Za-z0-9-]{1,8})?",
        "(Application/JSON|APPLICATION/X-WWW-FORM-URLENCODED)(; charset=UTF-8)?",
    ]
}

/// The headers `paypush sign` prints for this request.
fn signed_headers(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Vec<(String, String)> {
    let mut args = vec![
        format!("--method={method}"),
        format!("--path={path}"),
        format!("--body={body}"),
    ];
    if let Some(content_type) = content_type {
        args.push(format!("--content-type={content_type}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::support::paypush_sign(Some(SECRET), &args)
}

#[test]
fn paypush_sign_and_the_server_agree_for_any_method_path_media_type_and_body() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(signed_app());
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    let requests = (
        prop_oneof![Just("GET"), Just("POST")],
        "(\\?[A-Za-z0-9=&._~-]{0,30})?",
        proptest::option::of(content_types()),
        "\\PC{0,48}",
    );
    let result = runner.run(&requests, |(method, query, content_type, body)| {
        let path = format!("/pay-callback{query}");
        let body = if method == "GET" { String::new() } else { body };
        let headers = signed_headers(method, &path, content_type.as_deref(), &body);
        // What is sent: the given type, else paypush sign's default.
        let sent_type = content_type.unwrap_or_else(|| match method {
            "POST" => "application/x-www-form-urlencoded".into(),
            _ => String::new(),
        });
        let send = |content_type: &str| {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = app
                .client
                .request(method, app.url(&path))
                .body(body.clone());
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            runtime.block_on(async {
                let answer = request.send().await.unwrap();
                let status = answer.status().as_u16();
                (status, answer.text().await.unwrap())
            })
        };
        // Another media type than the signed one is refused (and, refused,
        // does not spend the nonce) ...
        let (status, text) = send("application/x-paypush-other");
        prop_assert_eq!(status, 401, "{}", text);
        prop_assert!(text.contains("does not match"), "{}", text);
        // ... and the signed one passes the signature check, whatever the
        // fields then say (200, 400, 409, 415).
        let (status, text) = send(&sent_type);
        prop_assert!(
            status != 401,
            "{} {:?} {:?}: {} {}",
            method,
            path,
            sent_type,
            status,
            text
        );
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
