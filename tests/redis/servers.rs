//! The Redis processes the tests start: one `redis-server` of a test's own
//! ([`RedisServer`]), or a Redis Cluster of six ([`RedisCluster`]), on free
//! loopback ports, stopped when dropped.

use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::{free_port, PATIENCE};

/// A `redis-server` of the test's own: no persistence, or an append-only
/// file in a folder of its own.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    child: Option<Child>,
    /// With `appendonly yes`, where its append-only file lives.
    pub(crate) appendonly: Option<tempfile::TempDir>,
}

impl RedisServer {
    pub(crate) fn new() -> RedisServer {
        RedisServer {
            port: free_port(),
            child: None,
            appendonly: None,
        }
    }

    pub(crate) async fn start() -> RedisServer {
        let mut server = RedisServer::new();
        server.restart().await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port (empty, unless it has an append-only
    /// file), and waits until it answers.
    pub(crate) async fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.appendonly {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "everysec"])
                .arg("--dir")
                .arg(dir.path()),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        let child = self.child.insert(child);
        assert!(
            answers(self.port, child).await,
            "redis-server did not start"
        );
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut connection).await
    }
}

/// A cluster node's bus port is its port + 10 000.
const BUS_PORT_OFFSET: u16 = 10_000;
/// Cluster nodes' ports. They and their bus ports stay below the kernel's
/// ephemeral range (32 768 and up by default), so no client socket of a
/// test running beside can take one between the check and the start.
const NODE_PORTS: std::ops::Range<u16> = 16_000..22_700;
/// Ports a node may try before a test gives up.
const NODE_START_ATTEMPTS: usize = 20;
/// Short, so a failover takes a couple of seconds, not the default 15 s.
const NODE_TIMEOUT_MS: &str = "1000";
/// How long the cluster may take to form, or to fail over.
pub(crate) const CLUSTER_PATIENCE: Duration = Duration::from_secs(30);

/// A port of [`NODE_PORTS`] that is free, its bus port too; each call in
/// this process gets another.
fn free_node_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in NODE_PORTS {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % NODE_PORTS.len() as u16;
        let port = NODE_PORTS.start + offset;
        if free(port) && free(port + BUS_PORT_OFFSET) {
            return port;
        }
    }
    panic!("no free port for a cluster node in {NODE_PORTS:?}");
}

/// Waits until the `redis-server` on `port` answers: false if it exited
/// first (its port was taken); panics after [`PATIENCE`].
async fn answers(port: u16, child: &mut Child) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while command::<String>(port, &["PING"]).await.is_err() {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// One `redis-server --cluster-enabled yes`.
pub(crate) struct Node {
    pub(crate) port: u16,
    child: Option<Child>,
    /// Where its `nodes.conf` lives.
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node, on another port if one was taken meanwhile.
    async fn start() -> Node {
        for _ in 0..NODE_START_ATTEMPTS {
            if let Some(node) = Node::try_start(free_node_port()).await {
                return node;
            }
        }
        panic!("redis-server did not start on any of {NODE_START_ATTEMPTS} ports");
    }

    /// `None` if the server exited before it answered: its port or its bus
    /// port was taken between the check and the start.
    async fn try_start(port: u16) -> Option<Node> {
        let dir = tempfile::tempdir().expect("a folder for nodes.conf");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        answers(port, &mut child).await.then(|| Node {
            port,
            child: Some(child),
            _dir: dir,
        })
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A command to one node (not cluster-aware: exactly that node answers).
pub(crate) async fn command<T: redis::FromRedisValue>(
    port: u16,
    args: &[&str],
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "timeout")))??;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut connection).await
}

/// Three primaries and three replicas, formed and in sync.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<Node>,
}

impl RedisCluster {
    pub(crate) async fn start() -> RedisCluster {
        let cluster = RedisCluster::create().await;
        cluster.wait_until_formed().await;
        cluster
    }

    /// Joined by `redis-cli --cluster create`, but not waited for: the
    /// replicas may still be syncing.
    pub(crate) async fn create() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Node::start().await);
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Node::address))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        RedisCluster { nodes }
    }

    /// Until every live node says `cluster_state:ok`, knows the others, and
    /// every replica's link to its primary is up.
    pub(crate) async fn wait_until_formed(&self) {
        let deadline = tokio::time::Instant::now() + CLUSTER_PATIENCE;
        loop {
            let mut formed = true;
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let info: String = command(node.port, &["CLUSTER", "INFO"])
                    .await
                    .unwrap_or_default();
                let replication: String = command(node.port, &["INFO", "replication"])
                    .await
                    .unwrap_or_default();
                formed &= info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"));
            }
            if formed {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster did not form"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Seed nodes for `--redis-cluster`: two of them (the rest are found).
    pub(crate) fn seeds(&self) -> String {
        format!(
            "redis://{},redis://{}",
            self.nodes[0].address(),
            self.nodes[1].address()
        )
    }

    /// The ports of the live primaries.
    pub(crate) async fn primaries(&self) -> Vec<u16> {
        let mut primaries = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let replication: String = command(node.port, &["INFO", "replication"])
                .await
                .unwrap_or_default();
            if replication.contains("role:master") {
                primaries.push(node.port);
            }
        }
        primaries
    }

    /// `WAIT` commands run by the live primaries since they started.
    pub(crate) async fn waits(&self) -> u64 {
        let mut waits = 0;
        for port in self.primaries().await {
            let stats: String = command(port, &["INFO", "commandstats"]).await.unwrap();
            waits += stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        waits
    }

    /// SIGKILLs the node on `port`.
    pub(crate) async fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl RedisCluster {
    /// Sends `signal` (`STOP`, `CONT`) to the node on `port`.
    pub(crate) fn signal(&self, port: u16, signal: &str) {
        let pid = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref()?.id())
            .expect("a live node");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// The port of the replica of the primary on `port`.
    pub(crate) async fn replica_of(&self, port: u16) -> u16 {
        let replication: String = command(port, &["INFO", "replication"]).await.unwrap();
        replication
            .lines()
            .find_map(|l| l.strip_prefix("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("port=")))
            .and_then(|p| p.parse().ok())
            .expect("a replica")
    }

    /// Runs `ACL SETUSER default <rules>` on every live node.
    pub(crate) async fn set_default_user(&self, rules: &[&str]) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let mut args = vec!["ACL", "SETUSER", "default"];
            args.extend_from_slice(rules);
            let _: String = command(node.port, &args).await.unwrap();
        }
    }
}
