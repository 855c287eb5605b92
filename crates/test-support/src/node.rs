//! Real `metropolis-node` processes for tests, through launch's [`Node`]: the one process
//! harness of the project, which `launch-cluster` uses too. A [`Node`] starts the binary on a
//! state directory in its own process group, collects its stdout and stderr line by line
//! (stderr lines prefixed with [`STDERR_PREFIX`]), waits for lines (`NODE_ID=`, `NODE_READY`,
//! any other), and powers it off (SIGKILL to the group), stops it (SIGTERM), freezes and thaws
//! it (SIGSTOP/SIGCONT) and starts it again on the same state directory.
//!
//! What this module adds is the test's side: a configuration with the test defaults, and
//! [`TestNode`]: waits that fail the test with the node's own output, and the stderr of a
//! boot, which the node's refusals are checked against.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

pub use launch::node::{
    EXIT_CLEAN, EXIT_FATAL, EXIT_GONE, EXIT_REBOOT, NODE_ID_MARKER, READY_MARKER, STDERR_PREFIX,
};
pub use launch::{Exit, Node, NodeConfig, RestartPolicy};

/// `--leader-ttl` of test nodes, in seconds: shorter than the node's default so leadership
/// moves quickly when a test stops a leader.
pub const LEADER_TTL: u32 = 2;

/// A node `index` (used in messages only) on `address` with its state in `dir`: the
/// `metropolis-node` binary of this build (see [`launch::find_node_binary`]), [`LEADER_TTL`],
/// no restarts (a test sees every exit), output echoed to stderr if `LAUNCH_ECHO_LOGS` is set.
/// The node's output is also appended to `dir/node.log`.
#[track_caller]
pub fn config(
    index: usize,
    dir: &Path,
    address: Ipv4Addr,
    parameters: Option<&Path>,
) -> NodeConfig {
    let binary = launch::find_node_binary(None)
        .unwrap_or_else(|e| panic!("{e} (build it first: `cargo build -p node`)"));
    NodeConfig {
        index,
        address,
        dir: dir.to_path_buf(),
        binary,
        parameters: parameters.map(Path::to_path_buf),
        etcd: None,
        leader_ttl: Some(LEADER_TTL),
        // Test nodes share this host's loopback: they all connect to peers from 127.0.0.1.
        skip_peer_client_san_check: true,
        extra_args: Vec::new(),
        env: Vec::new(),
        wrapper: Vec::new(),
        echo: std::env::var("LAUNCH_ECHO_LOGS").is_ok_and(|v| !v.is_empty() && v != "0"),
        restart: RestartPolicy::Never,
    }
}

/// Starts node `index` with [`config`]; needs a tokio runtime (the node's output is collected
/// by tasks on it).
#[track_caller]
pub fn start(index: usize, dir: &Path, address: Ipv4Addr, parameters: Option<&Path>) -> Node {
    let node = Node::new(config(index, dir, address, parameters));
    if let Err(e) = node.start() {
        panic!("starting node {index}: {e}");
    }
    node
}

/// A [`Node`] as tests use it: every wait either returns what it waited for or fails the
/// test with launch's explanation (what was awaited, how the node ended, the tail of its
/// output).
// Tests await these in place and never spawn them, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait TestNode {
    /// Waits for an output line of the current boot containing `needle` and returns it.
    async fn expect_line(&self, needle: &str, timeout: Duration) -> String;
    /// Waits for the node to announce its ID (`NODE_ID=`) and returns it.
    async fn expect_id(&self, timeout: Duration) -> String;
    /// Waits for the node to exit by itself and returns how.
    async fn expect_exit(&self, timeout: Duration) -> Exit;
    /// Stops the node with SIGTERM and returns how it ended; SIGKILLs it if it is still running
    /// after `grace` (which then shows as a death by signal, not a clean exit).
    async fn expect_stop(&self, grace: Duration) -> Exit;
    /// The stdout lines of the current (or last) boot.
    fn stdout_lines(&self) -> Vec<String>;
    /// The stderr lines of the current (or last) boot, joined, without their prefix.
    fn stderr_text(&self) -> String;
}

impl TestNode for Node {
    async fn expect_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log(needle, timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn expect_id(&self, timeout: Duration) -> String {
        self.wait_id(timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn expect_exit(&self, timeout: Duration) -> Exit {
        self.wait_exit(timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn expect_stop(&self, grace: Duration) -> Exit {
        self.stop_within(grace)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn stdout_lines(&self) -> Vec<String> {
        self.boot_logs()
            .into_iter()
            .filter(|l| !l.starts_with(STDERR_PREFIX))
            .collect()
    }

    fn stderr_text(&self) -> String {
        self.boot_logs()
            .iter()
            .filter_map(|l| l.strip_prefix(STDERR_PREFIX))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
