//! Real multi-process clusters for the scenarios that need node processes (failover,
//! restart, follower memory), through `launch::Cluster`, plus what the baselines need from
//! them: a raw etcd client on a member's unix socket and the pids of a node and its etcd.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use launch::{Cluster, ClusterOptions};

use crate::procfs;

/// Where a node's etcd member listens for clients, relative to its state directory (node
/// crate's layout: `<state>/ephemeral/consensus/client.sock:0`). The bench's state
/// directories are short temporary ones, so the node never relocates it to /tmp.
const ETCD_SOCKET: &str = "ephemeral/consensus/client.sock:0";

/// Launches `nodes` nodes on `block`, nodes 1..=`consensus` made consensus members.
pub async fn start(block: &str, nodes: usize, consensus: usize) -> Result<Cluster> {
    let mut options = ClusterOptions::new(nodes, block);
    options.consensus_members = consensus;
    launch::find_node_binary(None).context(
        "metropolis-node not found next to the bench binary; build it with \
         `cargo build --release -p node` (make bench does)",
    )?;
    Cluster::start(options)
        .await
        .with_context(|| format!("launching a {nodes}-node cluster on {block}.0/24"))
}

/// Index of the current curator leader (asks the cluster first, so the leader-following
/// channel has resolved it).
pub async fn leader_index(cluster: &Cluster) -> Result<usize> {
    let management = cluster.management();
    management.get_nodes("").await?;
    let id = management
        .current_leader()
        .ok_or_else(|| anyhow!("no curator leader known"))?;
    cluster
        .index_of(&id)
        .ok_or_else(|| anyhow!("leader {id} is not one of the launched nodes"))
}

/// The etcd client socket of node `index`.
pub fn etcd_socket(cluster: &Cluster, index: usize) -> PathBuf {
    let dir = cluster.node(index).dir();
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .join(ETCD_SOCKET)
}

/// A raw etcd client on node `index`'s member.
pub async fn etcd_client(cluster: &Cluster, index: usize) -> Result<kv::etcd_client::Client> {
    let socket = etcd_socket(cluster, index);
    tokio::time::timeout(Duration::from_secs(10), kv::connect_unix(&socket))
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
        .with_context(|| format!("connecting to etcd of node {index}"))
}

/// The pid of node `index`'s `metropolis-node` process and of its etcd child, if running.
pub fn pids(cluster: &Cluster, index: usize) -> (Option<u32>, Option<u32>) {
    let dir = cluster.node(index).dir().display().to_string();
    let node = procfs::find_processes(&["--state-dir", &dir])
        .into_iter()
        .find(|p| procfs::comm(*p).is_some_and(|c| c.starts_with("metropolis")));
    let etcd = node.and_then(|n| {
        procfs::children(n)
            .into_iter()
            .find(|c| procfs::comm(*c).as_deref() == Some("etcd"))
    });
    (node, etcd)
}
