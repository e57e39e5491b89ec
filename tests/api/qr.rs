//! The demo page's payment QR code: `GET /qr.svg?payRecordId=N`.

use serde_json::Value;

use crate::support::spawn_app;

#[tokio::test]
async fn qr_svg_encodes_the_callback_url_of_the_payment() {
    let app = spawn_app(&[]).await;
    let answer = app.get("/qr.svg?payRecordId=9007199254740993").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "image/svg+xml");
    let body = answer.text().await.unwrap();
    assert!(body.contains("<svg"), "{body}");
    let url = format!(
        "http://{}/pay-callback?payRecordId=9007199254740993&status=SUCCESS",
        app.addr
    );
    assert_eq!(Some(body), paypush::qr::svg(&url));
}

#[tokio::test]
async fn qr_svg_without_a_valid_pay_record_id_is_400_json() {
    let app = spawn_app(&[]).await;
    for path in [
        "/qr.svg",
        "/qr.svg?payRecordId=0",
        "/qr.svg?payRecordId=1&payRecordId=2",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status(), 400, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_pay_record_id", "{path}");
    }
}

#[tokio::test]
async fn qr_svg_refuses_other_methods_with_405_json() {
    let app = spawn_app(&[]).await;
    let answer = app
        .client
        .post(app.url("/qr.svg?payRecordId=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
}
