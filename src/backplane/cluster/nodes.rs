//! The Redis Cluster's seed nodes as given on the command line
//! (`--redis-cluster`), checked at start-up and never printed whole.
//!
//! A leaf: imports nothing from the rest of `cluster/`, nor from
//! `cluster/mod.rs` or the backplane's door.

use std::fmt;
use std::str::FromStr;

/// Some nodes of a Redis Cluster, checked at start-up; they may hold a
/// password, so they never print whole.
#[derive(Clone)]
pub struct RedisNodes(Vec<String>);

impl RedisNodes {
    /// The nodes' URLs, for the cluster client only.
    pub(super) fn urls(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for RedisNodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nodes: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        if nodes.is_empty() {
            return Err("no node given".into());
        }
        for (n, node) in nodes.iter().enumerate() {
            // Which one, by place: the node itself may hold a password.
            redis::Client::open(node.as_str())
                .map_err(|e| format!("node {} is not a Redis URL: {e}", n + 1))?;
        }
        Ok(RedisNodes(nodes))
    }
}

impl fmt::Debug for RedisNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisNodes({} nodes, [redacted])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_never_print() {
        let nodes: RedisNodes = "redis://:hunter2@127.0.0.1:7000, redis://127.0.0.1:7001"
            .parse()
            .unwrap();
        assert_eq!(nodes.0.len(), 2);
        assert!(!format!("{nodes:?}").contains("hunter2"));
        assert!("".parse::<RedisNodes>().is_err());
        assert!("redis://127.0.0.1:7000,nope".parse::<RedisNodes>().is_err());
    }
}
