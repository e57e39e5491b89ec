//! Subscribe tokens: with a subscribe secret, `/push` needs the payment's
//! own token, and `paypush token` prints exactly that token.

use paypush::model::PayRecordId;
use paypush::signature::{subscribe_token, Secret};

use crate::signatures::assert_refused;
use crate::support::spawn_app;

#[tokio::test]
async fn push_requires_the_payment_token_when_a_subscribe_secret_is_set() {
    let app = spawn_app(&["--subscribe-secret", "sub-secret"]).await;
    assert_refused(
        app.get("/push?payRecordId=13").await,
        403,
        "invalid_token",
        "token",
    )
    .await;
    let wrong = app.get("/push?payRecordId=13&token=00ff").await;
    assert_refused(wrong, 403, "invalid_token", "token").await;
    let secret: Secret = "sub-secret".parse().unwrap();
    let others = subscribe_token(&secret, PayRecordId::parse("14").unwrap());
    let borrowed = app
        .get(&format!("/push?payRecordId=13&token={others}"))
        .await;
    assert_eq!(borrowed.status(), 403, "a token is bound to its payment");

    let token = subscribe_token(&secret, PayRecordId::parse("13").unwrap());
    let mut stream = crate::support::EventStream::new(
        app.get(&format!("/push?payRecordId=13&token={token}"))
            .await,
    );
    assert_eq!(stream.response_status, 200);
    assert_eq!(
        stream.next_event().await.unwrap().event.as_deref(),
        Some("pending")
    );
}

#[tokio::test]
async fn token_subcommand_prints_only_the_token() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_paypush"))
        .args(["token", "--pay-record-id", "123"])
        .env("PAYPUSH_SUBSCRIBE_SECRET", "sub-secret")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let secret: Secret = "sub-secret".parse().unwrap();
    let expected = subscribe_token(&secret, PayRecordId::parse("123").unwrap());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("{expected}\n")
    );
}
