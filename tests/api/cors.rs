//! What browsers may read across origins: listed origins get exactly
//! their CORS headers (preflights included) on every route, other origins
//! and requests without one get none; and every answer says `nosniff`.

use crate::support::spawn_app;

const LISTED: &str = "https://shop.example.com";
/// A second listed origin: each origin of the list gets itself back.
const LISTED_TOO: &str = "https://m.shop.example.com";
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

/// Sends `method path` with these headers to a server that lists [`LISTED`]
/// and [`LISTED_TOO`].
async fn cors_request(
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let origins = format!("{LISTED},{LISTED_TOO}");
    let app = spawn_app(&["--allow-origin", &origins]).await;
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
    for origin in [LISTED, LISTED_TOO] {
        for (path, status) in [
            ("/push?payRecordId=1301", 200),
            ("/pay-callback?payRecordId=1302", 200),
            // The page on that origin may read the JSON error too.
            ("/no-such-route", 404),
        ] {
            let answer = cors_request(reqwest::Method::GET, path, &[("origin", origin)]).await;
            assert_eq!(answer.status(), status, "{origin} {path}");
            assert_eq!(
                cors_headers(&answer),
                owned(&[
                    ("access-control-allow-credentials", "true"),
                    ("access-control-allow-origin", origin),
                ]),
                "{origin} {path}"
            );
        }
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
    for (path, status) in [
        ("/push?payRecordId=1303", 200),
        ("/pay-callback?payRecordId=1304", 200),
        ("/no-such-route", 404),
    ] {
        let answer = cors_request(reqwest::Method::GET, path, &[("origin", UNLISTED)]).await;
        // No CORS headers, but no refusal either.
        assert_eq!(answer.status(), status, "{path}");
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
async fn without_allow_origin_there_are_no_cors_headers() {
    let app = spawn_app(&[]).await;
    let answer = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(cors_headers(&answer), vec![]);
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
