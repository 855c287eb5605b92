//! Which curator a node accepts as its leader.
//!
//! A node acts on what its curator leader tells it: it wipes itself when its record says
//! DECOMMISSION_REQUESTED, drops its etcd data when it loses ConsensusMember, stops for good
//! when it is deleted, rewrites its etcd peer PKI from its ConsensusMember role. Upstream's
//! client accepts as leader any server holding a node certificate of the cluster that a
//! discovery answer names, so a deleted node (whose certificate still verifies), or any node at
//! all, can pose as the leader and destroy consensus members. Here a leader must pass two
//! checks before the node's leader channel (`rpc::LeaderChannel`) uses it:
//!
//! 1. **Not revoked.** The node holds the cluster CRL (`rpc::ClusterCrl`): persisted in its
//!    encrypted data directory (`node/cluster-crl.der`), fetched from every known curator when
//!    a leader channel starts and from every curator asked for the leader, refreshed when the
//!    cluster directory worker sees a node deleted and every minute (see `super::crl`).
//!    Only CRLs signed by the cluster CA, and only newer ones, are taken, so whoever delivers
//!    a CRL cannot make the node forget a revocation. DeleteNode revokes the deleted node's
//!    certificate, so a deleted node is refused.
//! 2. **A consensus member** ([`ConsensusMembers`]). Only nodes with the ConsensusMember role
//!    run a curator, so only they can lead. The node decides this without asking the leader:
//!    * while its own etcd member runs (it is a consensus member itself), from the leader's
//!      node record in that member: a linearizable read of the cluster state the curators
//!      themselves use, so nothing the candidate says enters the decision;
//!    * otherwise from its cluster directory (`esp/metropolis/cluster_directory.pb`): the
//!      `clusterdirectory` worker keeps node IDs there only for current consensus members
//!      (learned from a leader that passed these checks; a node that loses the role or is
//!      deleted keeps its address as a discovery seed but loses its ID, and only if the other
//!      listed members back that leader), so the leader's ID must be listed. Until that
//!      worker's first complete view, the directory is the one the node enrolled with
//!      (bootstrap: itself; register: the cluster's UP nodes from GetClusterInfo, which the
//!      operator supplied).
//!
//! Neither check can tell a stale view from the truth: a node that was down while a consensus
//! member was deleted may still list it and not know its revocation. That is what
//! [`super::confirm`] covers: a destructive order is acted on only once it is confirmed
//! independently of the curator that gave it. A genuine consensus member that is compromised
//! is out of reach of any of this: it holds the whole cluster state, the cluster CA's private
//! key included, in its etcd files.

use futures::future::BoxFuture;
use proto::common::ClusterDirectory;
use rpc::{LeaderCheck, LeaderInfo};
use tokio::sync::watch;

use crate::storage::Esp;

/// The leader check of a node: the leader must hold the ConsensusMember role (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct ConsensusMembers {
    source: Source,
    consensus: watch::Receiver<Option<consensus::Status>>,
}

/// Where the list of consensus members comes from when the node has no etcd member.
#[derive(Debug, Clone)]
enum Source {
    /// The cluster directory on the ESP, read at every check (the `clusterdirectory` worker
    /// keeps it current).
    Esp(Esp),
    /// A fixed directory: the one in the register parameters, before anything is on the ESP.
    Fixed(ClusterDirectory),
}

impl ConsensusMembers {
    /// Checks against the local etcd member while it runs, else the ESP's cluster directory.
    pub fn new(esp: Esp, consensus: watch::Receiver<Option<consensus::Status>>) -> Self {
        Self {
            source: Source::Esp(esp),
            consensus,
        }
    }

    /// Checks against a fixed directory (a registering node has nothing else).
    pub fn fixed(directory: ClusterDirectory) -> Self {
        let (_, consensus) = watch::channel(None);
        Self {
            source: Source::Fixed(directory),
            consensus,
        }
    }

    /// `Ok` if `node_id` holds the ConsensusMember role as far as this node can tell without
    /// asking it; otherwise why not.
    pub async fn is_member(&self, node_id: &str) -> Result<(), String> {
        let local = self.consensus.borrow().clone();
        if let Some(status) = local {
            match local_roles(&status, node_id).await {
                Ok(Some(true)) => return Ok(()),
                Ok(Some(false)) => {
                    return Err(format!(
                        "node {node_id} does not hold the ConsensusMember role (per this \
                         node's etcd member)"
                    ));
                }
                Ok(None) => {
                    return Err(format!(
                        "node {node_id} is not a node of this cluster (per this node's etcd \
                         member)"
                    ));
                }
                // The member may be stopping (removed from the cluster); the directory is the
                // next best source.
                Err(e) => tracing::debug!("cannot read {node_id} from the local etcd member: {e}"),
            }
        }
        let directory = match &self.source {
            Source::Fixed(directory) => directory.clone(),
            Source::Esp(esp) => esp
                .cluster_directory()
                .map_err(|e| format!("cannot read the cluster directory: {e}"))?
                .unwrap_or_default(),
        };
        if member_ids(&directory).any(|id| id == node_id) {
            Ok(())
        } else {
            Err(format!(
                "node {node_id} is not a consensus member according to this node's cluster \
                 directory (members: {})",
                member_ids(&directory).collect::<Vec<_>>().join(", ")
            ))
        }
    }
}

impl LeaderCheck for ConsensusMembers {
    fn check<'a>(&'a self, leader: &'a LeaderInfo) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.is_member(&leader.node_id))
    }
}

/// The consensus members a cluster directory names (entries with a node ID).
pub fn member_ids(directory: &ClusterDirectory) -> impl Iterator<Item = &str> {
    directory
        .nodes
        .iter()
        .filter(|n| !n.id.is_empty())
        .map(|n| n.id.as_str())
}

/// Whether `node_id` holds ConsensusMember in the local etcd member; `None` if it has no
/// record there.
async fn local_roles(status: &consensus::Status, node_id: &str) -> Result<Option<bool>, String> {
    let record = local_record(status, node_id).await?;
    Ok(record.map(|r| r.roles().consensus_member.is_some()))
}

/// A node's record in the local etcd member (a linearizable read), `None` if absent.
pub async fn local_record(
    status: &consensus::Status,
    node_id: &str,
) -> Result<Option<curator::state::NodeRecord>, String> {
    let ns = status
        .namespaced(&[curator::KEYSPACE])
        .map_err(|e| e.to_string())?;
    curator::state::node::load_unguarded(&ns, node_id)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use proto::common::cluster_directory::{Node, node::Address};

    use super::*;

    fn entry(id: &str, host: &str) -> Node {
        Node {
            public_key: Vec::new(),
            addresses: vec![Address {
                host: host.to_string(),
            }],
            id: id.to_string(),
        }
    }

    #[tokio::test]
    async fn only_listed_members_lead() {
        let check = ConsensusMembers::fixed(ClusterDirectory {
            nodes: vec![entry("metropolis-a", "10.0.0.1"), entry("", "10.0.0.2")],
        });
        check.is_member("metropolis-a").await.expect("listed");
        let err = check
            .is_member("metropolis-b")
            .await
            .expect_err("not listed");
        assert!(
            err.contains("metropolis-b") && err.contains("metropolis-a"),
            "{err}"
        );
        assert!(
            check.is_member("").await.is_err(),
            "an address-only entry names nobody"
        );
    }
}
