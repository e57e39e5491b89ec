//! The demo checkout page in a real headless Chromium, against the real
//! server: Debian's `chromium` driven through `chromedriver` (WebDriver) with
//! fantoccini.
//!
//! Each test starts its own chromedriver on a free port, with a fresh empty
//! browser profile, and stops it afterwards; tests take turns so a small
//! machine runs one browser at a time. Every test saves a screenshot of the
//! page as it ended under `target/screenshots/`, and chromedriver's log under
//! `target/browser-logs/`.
//!
//! Without `chromium` or `chromedriver` on `PATH` (override them with
//! `PAYPUSH_CHROMIUM` and `PAYPUSH_CHROMEDRIVER`) each test prints why and
//! passes, unless `PAYPUSH_REQUIRE_BROWSER=1`, when it fails instead.
//!
//! The tests wait for what the page shows (polling up to [`DEADLINE`]) and
//! never for a fixed time, so a loaded machine makes them slower, not flaky.

mod chromium;
mod page;
mod servers;
#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use serde_json::json;

use chromium::with_page;
use servers::{buffering_proxy, serve_shop_page};
use support::{spawn_app, spawn_app_on};

/// How long a test waits for the page (or chromedriver) to get somewhere.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);
/// How often it looks.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// A common phone's screen width, in CSS pixels.
const PHONE_WIDTH: u32 = 390;

#[tokio::test]
async fn new_order_paid_through_the_form_shows_success_and_closes_the_stream() {
    with_page("new_order_paid_through_the_form", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        let waiting = page
            .wait_for("the pending event", |s| s.state == "waiting")
            .await;
        assert_eq!(
            waiting.live.as_deref(),
            Some("polite"),
            "status is aria-live"
        );
        page.screenshot("new_order_paid_through_the_form.1-waiting")
            .await;
        let url_before = page.url().await;

        page.send_callback("SUCCESS", 1).await;

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
        assert!(done.stream_text.contains("Stream closed"), "{done:?}");
        assert_eq!(done.answer_status, 200);
        let answer = done.answer_json();
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["payRecordId"], json!(done.pay_record_id));
        assert!(
            done.log_has("pending") && done.log_has("message"),
            "{done:?}"
        );
        assert_eq!(page.url().await, url_before, "the form did not navigate");
    })
    .await;
}

#[tokio::test]
async fn watched_payment_shows_success_after_a_callback_over_http() {
    with_page("watched_payment_callback_over_http", |page| async move {
        let app = spawn_app(&[]).await;
        // Above 2^53: the page must keep the id as a string.
        let id = "9007199254740993";
        page.open(&app, &format!("/?payRecordId={id}")).await;
        let waiting = page
            .wait_for("the pending event", |s| s.state == "waiting")
            .await;
        assert_eq!(waiting.pay_record_id, id);

        assert_eq!(app.callback(id, None).await.status(), 200);

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
        assert!(
            done.log_mentions(&format!("id: {id}-SUCCESS-")),
            "outcome id: {done:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn failed_and_closed_outcomes_show_their_messages() {
    with_page("failed_and_closed_outcomes", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        let first = page
            .wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.send_callback("FAILED", 1).await;
        let failed = page.wait_for("FAILED", |s| s.state == "failed").await;
        assert_eq!(failed.title, "支付失败");
        assert_eq!(failed.stream, "closed");

        page.click("#new-order").await;
        let second = page
            .wait_for("a new order", |s| {
                s.state == "waiting" && s.pay_record_id != first.pay_record_id
            })
            .await;
        page.send_callback("CLOSED", 1).await;
        let closed = page.wait_for("CLOSED", |s| s.state == "closed").await;
        assert_eq!(closed.title, "订单已关闭");
        assert_eq!(closed.stream, "closed");
        assert_eq!(closed.pay_record_id, second.pay_record_id);
    })
    .await;
}

#[tokio::test]
async fn repeated_submit_shows_duplicate_and_conflicting_submit_shows_409() {
    with_page("duplicate_and_conflict", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;

        let repeat = page.send_callback("SUCCESS", 2).await;
        assert_eq!(repeat.answer_status, 200);
        assert_eq!(repeat.answer_json()["duplicate"], true);
        assert!(repeat.answer_text.contains(r#""duplicate": true"#));

        let conflict = page.send_callback("FAILED", 3).await;
        assert_eq!(conflict.answer_status, 409);
        let answer = conflict.answer_json();
        assert_eq!(answer["error"], "outcome_conflict");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("first outcome wins"),
            "{answer}"
        );
        assert_eq!(conflict.title, "支付成功", "the first outcome stays");
    })
    .await;
}

#[tokio::test]
async fn page_reconnects_after_a_server_restart_and_shows_the_outcome() {
    with_page("reconnects_after_server_restart", |page| async move {
        let mut app = spawn_app(&[]).await;
        let addr = app.addr.to_string();
        let id = "31415926";
        page.open(&app, &format!("/?payRecordId={id}")).await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;

        app.shut_down().await;
        page.wait_for("reconnecting", |s| s.state == "reconnecting")
            .await;
        page.screenshot("reconnects_after_server_restart.1-reconnecting")
            .await;

        let app = spawn_app_on(&addr, &[]).await;
        page.wait_for("pending from the new server", |s| {
            s.state == "waiting" && s.count("pending") >= 2
        })
        .await;
        assert_eq!(app.callback(id, None).await.status(), 200);

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
    })
    .await;
}

#[tokio::test]
async fn page_fits_a_phone_width_screen_without_sideways_scrolling() {
    with_page("phone_width", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.set_width(PHONE_WIDTH).await;
        assert_eq!(page.number("window.innerWidth").await, PHONE_WIDTH);
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;
        let page_width = page.number("document.documentElement.scrollWidth").await;
        assert!(
            page_width <= PHONE_WIDTH,
            "the page is {page_width} px wide on a {PHONE_WIDTH} px screen"
        );
    })
    .await;
}

#[tokio::test]
async fn transport_long_poll_chosen_on_the_page_pays_through_the_form() {
    with_page("transport_long_poll", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.click(r#"label.choice[data-transport="poll"]"#).await;
        let waiting = page
            .wait_for("a long-poll", |s| {
                s.transport == "poll" && s.state == "waiting" && s.log_mentions("wait=25")
            })
            .await;
        assert!(
            waiting.log_mentions("GET /status?payRecordId="),
            "{waiting:?}"
        );

        page.send_callback("SUCCESS", 1).await;

        let done = page.wait_for("the outcome", |s| s.state == "success").await;
        assert_eq!(done.title, "支付成功");
        assert_eq!(done.stream, "closed");
        assert!(
            done.log_mentions(r#"200 {"payRecordId""#),
            "raw answer: {done:?}"
        );
        assert_eq!(
            app.metric("paypush_outcomes_delivered_total{transport=\"poll\"}")
                .await,
            1.0
        );
    })
    .await;
}

#[tokio::test]
async fn transport_websocket_chosen_on_the_page_pays_through_the_form() {
    with_page("transport_websocket", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.click(r#"label.choice[data-transport="ws"]"#).await;
        page.wait_for("the PENDING frame", |s| {
            s.transport == "ws" && s.state == "waiting" && s.log_mentions("new WebSocket(")
        })
        .await;

        page.send_callback("FAILED", 1).await;

        let done = page.wait_for("the outcome", |s| s.state == "failed").await;
        assert_eq!(done.title, "支付失败");
        assert_eq!(done.stream, "closed");
        let closed = page
            .wait_for("the close frame", |s| {
                s.log_mentions("close frame 1000 outcome")
            })
            .await;
        assert!(closed.log_mentions(r#""status":"FAILED""#), "{closed:?}");
    })
    .await;
}

#[tokio::test]
async fn transport_query_parameter_opens_the_page_on_that_transport() {
    with_page("transport_query_parameter", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/?transport=ws").await;
        let waiting = page
            .wait_for("the PENDING frame", |s| s.state == "waiting")
            .await;
        assert_eq!(waiting.transport, "ws");
        assert_eq!(waiting.checked_transport, "ws");
        page.send_callback("CLOSED", 1).await;
        page.wait_for("the outcome", |s| s.state == "closed").await;
    })
    .await;
}

#[tokio::test]
async fn transport_falls_back_to_long_poll_without_event_source() {
    with_page(
        "transport_fallback_without_event_source",
        |page| async move {
            let app = spawn_app(&[]).await;
            page.before_every_document("delete window.EventSource;")
                .await;
            page.open(&app, "/").await;
            let waiting = page
                .wait_for("the long-poll fallback", |s| s.state == "waiting")
                .await;
            assert_eq!(waiting.transport, "poll");
            assert!(waiting.log_has("fallback"), "{waiting:?}");
            assert!(!waiting.log_mentions("EventSource(\""), "{waiting:?}");
            assert!(waiting.sse_disabled, "EventSource cannot be chosen");
            assert!(waiting.fallback_note_shown);

            page.send_callback("SUCCESS", 1).await;

            let done = page.wait_for("the outcome", |s| s.state == "success").await;
            assert_eq!(done.title, "支付成功");
        },
    )
    .await;
}

#[tokio::test]
async fn page_watches_through_the_client_library_served_at_paypush_js() {
    with_page("page_uses_paypush_js", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        let loaded = page
            .client
            .execute(
                "return performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname);",
                vec![],
            )
            .await
            .expect("read the page's resources");
        assert!(
            loaded
                .as_array()
                .is_some_and(|paths| paths.iter().any(|p| p == "/paypush.js")),
            "{loaded}"
        );
    })
    .await;
}

#[tokio::test]
async fn every_transport_waits_again_after_the_servers_timeout_then_shows_the_outcome() {
    with_page("every_transport_after_a_timeout", |page| async move {
        let app = spawn_app(&["--push-timeout", "1s"]).await;
        for (transport, status, state, waits) in [
            ("sse", "SUCCESS", "success", 2),
            ("ws", "FAILED", "failed", 2),
            // The first long-poll is answered at once, then each waits 1 s.
            ("poll", "CLOSED", "closed", 3),
        ] {
            page.open(&app, &format!("/?transport={transport}")).await;
            let waiting = page
                .wait_for("a second wait after the timeout", |s| {
                    s.transport == transport && s.state == "waiting" && s.count("pending") >= waits
                })
                .await;
            assert!(!waiting.log_has("fallback"), "{waiting:?}");
            let id = waiting.pay_record_id.clone();
            assert_eq!(app.callback(&id, Some(status)).await.status(), 200);
            let done = page.wait_for("the outcome", |s| s.state == state).await;
            assert_eq!(done.stream, "closed", "{transport}");
            assert_eq!(done.transport, transport);
        }
    })
    .await;
}

#[tokio::test]
async fn transport_falls_back_to_long_poll_without_websocket() {
    with_page("transport_fallback_without_websocket", |page| async move {
        let app = spawn_app(&[]).await;
        page.before_every_document("delete window.WebSocket;").await;
        page.open(&app, "/?transport=ws").await;
        let waiting = page
            .wait_for("the long-poll fallback", |s| s.state == "waiting")
            .await;
        assert_eq!(waiting.transport, "poll");
        assert_eq!(waiting.checked_transport, "poll");
        assert!(waiting.log_mentions("no WebSocket here"), "{waiting:?}");
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;
    })
    .await;
}

#[tokio::test]
async fn a_wrong_token_shows_the_servers_refusal_on_every_transport() {
    with_page("a_wrong_token", |page| async move {
        let app = spawn_app(&["--subscribe-secret", "browser test secret"]).await;
        for transport in ["sse", "ws", "poll"] {
            page.open(
                &app,
                &format!("/?payRecordId=5&token=00&transport={transport}"),
            )
            .await;
            let refused = page.wait_for("the refusal", |s| s.state == "error").await;
            assert!(refused.detail.contains("403 invalid_token"), "{refused:?}");
            assert_eq!(refused.stream, "closed");
            assert!(!refused.log_has("fallback"), "{refused:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_buffering_proxy_makes_the_page_fall_back_to_long_poll() {
    with_page("fallback_behind_a_buffering_proxy", |page| async move {
        let app = spawn_app(&[]).await;
        let proxy = buffering_proxy(app.addr).await;
        page.goto(&format!("http://{proxy}/")).await;
        let waiting = page
            .wait_for("the long-poll fallback", |s| {
                s.state == "waiting" && s.transport == "poll"
            })
            .await;
        assert!(waiting.log_mentions("no PENDING within"), "{waiting:?}");
        assert_eq!(waiting.checked_transport, "poll");
        page.send_callback("SUCCESS", 1).await;
        page.wait_for("the outcome", |s| s.state == "success").await;
    })
    .await;
}

/// Records every Content-Security-Policy violation of the page in
/// `document.body.dataset.blocked`, then opens a WebSocket to the page's own
/// origin and, half a second later, one to another origin (the control).
const OPEN_WEBSOCKETS: &str = include_str!("fixtures/open_websockets.js");

#[tokio::test]
async fn the_demo_pages_csp_lets_it_open_its_own_websocket_and_nothing_elsewhere() {
    with_page("the_demo_pages_csp", |page| async move {
        let app = spawn_app(&[]).await;
        page.open(&app, "/").await;
        page.wait_for("the pending event", |s| s.state == "waiting")
            .await;
        page.client
            .execute(OPEN_WEBSOCKETS, vec![])
            .await
            .expect("open the sockets");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let blocked = loop {
            let blocked = page
                .client
                .execute("return document.body.dataset.blocked || '';", vec![])
                .await
                .expect("read the page");
            let blocked = blocked.as_str().unwrap_or_default().to_string();
            if blocked.contains("127.0.0.2") {
                break blocked;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the other origin's WebSocket was not blocked: {blocked:?}"
            );
            tokio::time::sleep(POLL).await;
        };
        assert!(blocked.contains("connect-src"), "{blocked}");
        assert!(!blocked.contains(&app.addr.to_string()), "{blocked}");
    })
    .await;
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_subscribes_and_posts_across_origins() {
    with_page("a_page_on_an_allowed_origin", |page| async move {
        // The shop is a plain web server of its own: paypush's demo-page
        // CSP (its own origin only, no inline script) would rightly block
        // this page if paypush served it.
        let shop_origin = serve_shop_page().await;
        let paypush = spawn_app(&["--allow-origin", &shop_origin]).await;
        let closed = spawn_app(&[]).await;

        // Allowed: the stream opens, and the JSON callback passes its preflight.
        page.goto(&format!(
            "{shop_origin}/shop.html?id=81&paypush=http://{}",
            paypush.addr
        ))
        .await;
        page.wait_for_body("state", "waiting").await;
        page.client
            .execute("window.pay('FAILED');", vec![])
            .await
            .expect("pay");
        page.wait_for_body("answer", "FAILED").await;
        page.wait_for_body("state", "done").await;
        page.wait_for_body("message", "支付失败").await;

        // Not allowed: the browser refuses both.
        page.goto(&format!(
            "{shop_origin}/shop.html?id=82&paypush=http://{}",
            closed.addr
        ))
        .await;
        page.wait_for_body("state", "error").await;
        page.client
            .execute("window.pay('SUCCESS');", vec![])
            .await
            .expect("pay");
        page.wait_for_body("answer", "blocked").await;
    })
    .await;
}
