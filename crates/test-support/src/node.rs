//! Real `metropolis-node` processes for tests, through launch's [`Node`]: the one process
//! harness of the project, which `launch-cluster` uses too. A [`Node`] starts the binary on a
//! state directory in its own process group, collects its stdout and stderr line by line
//! (stderr lines prefixed with [`STDERR_PREFIX`]), waits for lines (`NODE_ID=`, `NODE_READY`,
//! any other), and powers it off (SIGKILL to the group), stops it (SIGTERM), freezes and thaws
//! it (SIGSTOP/SIGCONT) and starts it again on the same state directory.
//!
//! What this module adds is the test's side: a configuration with the test defaults, and
//! the stderr of a boot, which the node's refusals are checked against.

use std::net::Ipv4Addr;
use std::path::Path;

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
        extra_args: Vec::new(),
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

/// The stderr lines of the node's current (or last) boot, joined; without their prefix.
pub fn stderr(node: &Node) -> String {
    node.boot_logs()
        .iter()
        .filter_map(|l| l.strip_prefix(STDERR_PREFIX))
        .collect::<Vec<_>>()
        .join("\n")
}
