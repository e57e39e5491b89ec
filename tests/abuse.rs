//! Hostile clients and ordinary churn against the real binary: every
//! pattern runs for a few seconds against a paypush child process (its own
//! data folder, loopback only, bounded loops), and then the service must be
//! whole: `/healthz` answered promptly during the attack, the server's CPU
//! back to idle after it, the waiter gauges back to 0, and every callback
//! answered `200` during the attack delivered to the waiters opened before
//! it.
//!
//! Each test prints the server CPU the pattern cost per 1 000 hostile
//! connections, for the security documentation's table.
//! `PAYPUSH_ABUSE_BINARY=path` runs the same patterns against another build
//! (an older one, to measure "before").

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

#[path = "abuse/patterns.rs"]
mod patterns;

#[tokio::test]
async fn one_byte_connections_that_close_cost_almost_no_cpu() {
    patterns::one_byte_connections_that_close_cost_almost_no_cpu(&[]).await;
}

#[tokio::test]
async fn one_byte_connections_held_open_cost_almost_no_cpu_and_close_at_the_head_deadline() {
    patterns::one_byte_connections_held_open_cost_almost_no_cpu_and_close_at_the_head_deadline(&[])
        .await;
}

#[tokio::test]
async fn idle_h2c_connections_are_closed_after_the_idle_deadline() {
    patterns::idle_h2c_connections_are_closed_after_the_idle_deadline(&[]).await;
}

#[tokio::test]
async fn waiters_whose_h2c_client_reads_nothing_are_released_at_the_push_timeout() {
    patterns::waiters_whose_h2c_client_reads_nothing_are_released_at_the_push_timeout(&[]).await;
}

#[tokio::test]
async fn a_websocket_that_floods_pings_and_never_reads_is_released_at_the_push_timeout() {
    patterns::a_websocket_that_floods_pings_and_never_reads_is_released_at_the_push_timeout(&[])
        .await;
}

#[tokio::test]
async fn settings_and_continuation_floods_and_rapid_resets_leave_the_service_whole() {
    patterns::settings_and_continuation_floods_and_rapid_resets_leave_the_service_whole(&[]).await;
}

#[tokio::test]
async fn slow_heads_and_bodies_and_crowded_payments_leave_the_service_whole() {
    patterns::slow_heads_and_bodies_and_crowded_payments_leave_the_service_whole(&[]).await;
}

#[tokio::test]
async fn http2_streams_that_clients_never_read_are_bounded_across_connections() {
    patterns::http2_streams_that_clients_never_read_are_bounded_across_connections(&[]).await;
}

#[tokio::test]
async fn a_full_descriptor_table_is_logged_at_most_once_a_second() {
    patterns::a_full_descriptor_table_is_logged_at_most_once_a_second(&[]).await;
}
