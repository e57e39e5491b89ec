//! The OpenAPI document: served by the server, and naming every route of the
//! contract. (scripts/fuzz-api proves the server answers as it says.)

use crate::support::spawn_app;

const DOCUMENT: &str = include_str!("../../docs/openapi.yaml");

#[tokio::test]
async fn openapi_document_is_served_as_yaml() {
    let app = spawn_app(&[]).await;
    let answer = app.get("/openapi.yaml").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/yaml");
    assert_eq!(answer.text().await.unwrap(), DOCUMENT);
    let post = app
        .client
        .post(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[test]
fn openapi_document_describes_every_route_of_the_contract() {
    assert!(DOCUMENT.starts_with("openapi: 3.1."));
    for path in [
        "/push",
        "/status",
        "/ws",
        "/pay-callback",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.yaml",
        "/",
        "/qr.svg",
        "/paypush.js",
    ] {
        assert!(
            DOCUMENT.contains(&format!("\n  {path}:\n")),
            "{path} is not in docs/openapi.yaml"
        );
    }
}
