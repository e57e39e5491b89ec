//! `GET /paypush.js`: the client library, served from clients/js/paypush.js
//! with an ETag, revalidation and a cache lifetime, demo page or not.

use crate::support::spawn_app;

const LIBRARY: &str = include_str!("../../clients/js/paypush.js");

#[tokio::test]
async fn client_library_is_served_as_javascript_with_an_etag_and_a_cache_lifetime() {
    let app = spawn_app(&[]).await;
    let answer = app.get("/paypush.js").await;
    assert_eq!(answer.status(), 200);
    let headers = answer.headers().clone();
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["cache-control"], "public, max-age=300");
    let etag = headers["etag"].to_str().unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );
    assert_eq!(answer.text().await.unwrap(), LIBRARY);
    assert_eq!(app.get("/paypush.js").await.headers()["etag"], etag);
}

#[tokio::test]
async fn client_library_request_naming_its_etag_gets_304_without_a_body() {
    let app = spawn_app(&[]).await;
    let etag = app.get("/paypush.js").await.headers()["etag"].clone();
    let etag = etag.to_str().unwrap();
    for tags in [
        etag.to_string(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_string(),
    ] {
        let answer = app
            .client
            .get(app.url("/paypush.js"))
            .header("if-none-match", &tags)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 304, "{tags}");
        assert_eq!(answer.headers()["etag"], etag);
        assert_eq!(answer.headers()["cache-control"], "public, max-age=300");
        assert!(answer.bytes().await.unwrap().is_empty());
    }
    let stale = app
        .client
        .get(app.url("/paypush.js"))
        .header("if-none-match", "\"0123\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.text().await.unwrap(), LIBRARY);
}

#[tokio::test]
async fn client_library_is_served_without_the_demo_page() {
    let app = spawn_app(&["--no-demo-page"]).await;
    assert_eq!(app.get("/").await.status(), 404);
    let answer = app.get("/paypush.js").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), LIBRARY);
}

#[tokio::test]
async fn client_library_answers_head_with_its_headers_only() {
    let app = spawn_app(&[]).await;
    let answer = app
        .client
        .head(app.url("/paypush.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(answer.headers().contains_key("etag"));
    assert!(answer.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_listed_origin_may_import_the_client_library_and_others_get_no_cors_header() {
    let shop = "https://shop.example.com";
    let app = spawn_app(&["--allow-origin", shop]).await;
    let listed = app
        .client
        .get(app.url("/paypush.js"))
        .header("origin", shop)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], shop);
    let other = app
        .client
        .get(app.url("/paypush.js"))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}
