//! The demo page: served at `/` (or a folder of one's own with
//! `--static-dir`), allowed only its own origin, sending no referrer, and
//! turned off, QR code included, by `--no-demo-page`.

use crate::support::spawn_app;

#[tokio::test]
async fn root_serves_the_demo_page() {
    let app = spawn_app(&[]).await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("paypush"));
}

#[tokio::test]
async fn static_dir_serves_a_folder_instead() {
    let dir = std::env::temp_dir().join(format!("paypush-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<p>custom page</p>").unwrap();
    std::fs::write(dir.join("app.js"), "let x = 1;").unwrap();
    let app = spawn_app(&["--static-dir", dir.to_str().unwrap()]).await;
    assert_eq!(
        app.get("/").await.text().await.unwrap(),
        "<p>custom page</p>"
    );
    let js = app.get("/app.js").await;
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(app.get("/../Cargo.toml").await.status(), 404);
    assert_eq!(app.get("/%2e%2e/Cargo.toml").await.status(), 404);
    assert_eq!(app.get("/missing.css").await.status(), 404);
    std::fs::remove_dir_all(dir).unwrap();
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
