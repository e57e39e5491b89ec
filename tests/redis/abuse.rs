//! The hostile patterns of `tests/abuse.rs` that reach the backplane
//! (waiters that subscribe and leave, callbacks during the attack), run
//! against paypush in Redis mode and on a Redis Cluster. The patterns that
//! only touch connections (one-byte connections held open, idle h2c) do
//! not depend on the mode and run once, in the single-process suite.

use crate::abuse_patterns as patterns;
use crate::servers::{RedisCluster, RedisServer};
use crate::REDIS;

async fn the_backplane_patterns(mode: &[&str]) {
    patterns::one_byte_connections_that_close_cost_almost_no_cpu(mode).await;
    patterns::settings_and_continuation_floods_and_rapid_resets_leave_the_service_whole(mode).await;
    patterns::slow_heads_and_bodies_and_crowded_payments_leave_the_service_whole(mode).await;
    patterns::a_websocket_that_floods_pings_and_never_reads_is_released_at_the_push_timeout(mode)
        .await;
    patterns::http2_streams_that_clients_never_read_are_bounded_across_connections(mode).await;
    patterns::waiters_whose_h2c_client_reads_nothing_are_released_at_the_push_timeout(mode).await;
}

#[tokio::test]
async fn hostile_clients_leave_a_redis_mode_paypush_whole() {
    let test = "hostile_clients_leave_a_redis_mode_paypush_whole";
    if !REDIS.require("redis-server", "redis-server", test) {
        return;
    }
    let redis = RedisServer::start().await;
    the_backplane_patterns(&["--redis-url", &redis.url()]).await;
}

#[tokio::test]
async fn hostile_clients_leave_a_redis_cluster_paypush_whole() {
    let test = "hostile_clients_leave_a_redis_cluster_paypush_whole";
    if !REDIS.require("redis-server", "redis-server", test)
        || !REDIS.require("redis-cli", "redis-tools", test)
    {
        return;
    }
    let redis = RedisCluster::start().await;
    the_backplane_patterns(&["--redis-cluster", &redis.seeds()]).await;
}
