//! A whole local cluster: bootstrap, ownership, registration, approval, consensus roles, and
//! the waits and faults end-to-end tests are made of, following upstream's e2e harness step
//! by step.
//!
//! * [`options`]: what a cluster is launched with;
//! * [`paths`]: where it lives on disk and where the node binary is;
//! * `bringup`: starting it up ([`Cluster::start`]) and adding consensus members;
//! * `wait`: waiting for states of its nodes;
//! * `fault`: rebooting, killing and restarting nodes;
//! * `describe`: rendering it as a table;
//! * this module: the [`Cluster`] handle itself, its accessors and its leader channel.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use identity::SigningKey;
use identity::files::{PRIVATE_MODE, PUBLIC_MODE, write_atomic};
use prost::Message as _;
use proto::api::node::Health;
use proto::api::node_parameters::{Cluster as ClusterParams, ClusterBootstrap, ClusterRegister};
use proto::api::{GetClusterInfoResponse, NodeParameters};
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::{ClusterConfiguration, NodeState};
use proto::curator_api::GetCurrentLeaderRequest;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use rpc::client_tls;
use rpc::{
    ClientCredentials, ClusterCrl, LeaderChannel, LeaderOptions, Management, ServerVerification,
};
use tokio::time::Instant;
use tonic::Code;

use crate::error::{Error, Result};
use crate::node::{Exit, Node, NodeConfig, RestartPolicy};
use crate::owner;

mod bringup;
mod describe;
mod fault;
pub mod options;
pub mod paths;
mod wait;

pub use describe::describe_nodes;
use options::env_flag;
pub use options::{ClusterOptions, NodeHost, Timeouts};
pub use paths::{
    CA_FILE, OWNER_CERT_FILE, OWNER_KEY_FILE, OWNER_PKCS8_KEY_FILE, PARAMETERS_FILE,
    find_node_binary,
};
use paths::{prepare_state_dir, set_parameters, write_file};
use wait::describe_result;

/// How often cluster state is polled while waiting (cheap calls; every wait of a launch is
/// on the path to a formed cluster).
const POLL: Duration = Duration::from_millis(200);

/// The longest a single GetNodes call inside a wait may be retried before the wait polls again.
const POLL_CALL_DEADLINE: Duration = Duration::from_secs(20);

/// The result of making a node a consensus member.
#[derive(Debug, Clone)]
pub struct ConsensusJoin {
    /// Whether the member was seen as a learner before it became a voter.
    pub saw_learner: bool,
    /// How long it took from the role change to a serving curator.
    pub took: Duration,
}

/// A running local cluster. Dropping it kills every node it started (SIGKILL); use
/// [`Cluster::shutdown`] for a clean stop.
pub struct Cluster {
    options: ClusterOptions,
    state_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    owner_key: SigningKey,
    owner_certificate: Vec<u8>,
    ca_certificate: Vec<u8>,
    /// The cluster CRL, shared by every leader channel of this cluster: fetched from the
    /// curators when a channel starts and kept current by it, so a deleted node is never
    /// taken for a curator.
    crl: ClusterCrl,
    leader: Mutex<LeaderChannel>,
    removed: Mutex<HashSet<usize>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("state_dir", &self.state_dir)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Cluster {
    /// The nodes of this cluster (including removed ones, whose processes may have exited).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index`. Panics on an index out of range, like slice indexing.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// The options it was launched with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The directory holding everything: `node<i>/` per node and the owner credentials (usable
    /// as metroctl's `--config`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// metroctl's owner key file.
    pub fn owner_key_path(&self) -> PathBuf {
        self.state_dir.join(OWNER_KEY_FILE)
    }

    /// The owner key as PKCS#8 PEM (for grpcurl and friends).
    pub fn owner_pkcs8_key_path(&self) -> PathBuf {
        self.state_dir.join(OWNER_PKCS8_KEY_FILE)
    }

    /// The owner certificate file.
    pub fn owner_cert_path(&self) -> PathBuf {
        self.state_dir.join(OWNER_CERT_FILE)
    }

    /// The cluster CA file.
    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join(CA_FILE)
    }

    /// The cluster CA certificate (DER).
    pub fn ca_certificate(&self) -> &[u8] {
        &self.ca_certificate
    }

    /// The cluster CRL as this launcher knows it.
    pub fn crl(&self) -> &ClusterCrl {
        &self.crl
    }

    /// Owner credentials for clients.
    pub fn owner_credentials(&self) -> ClientCredentials {
        ClientCredentials::Authenticated {
            certificate: self.owner_certificate.clone(),
            key: self.owner_key.clone(),
        }
    }

    /// Index of the node with this ID.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.id().as_deref() == Some(id))
    }

    /// `host:7835` of every node not removed from the cluster.
    pub fn curator_endpoints(&self) -> Vec<String> {
        let removed = self.removed();
        self.nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .map(Node::curator_endpoint)
            .collect()
    }

    /// The leader-following channel (owner credentials) all calls of [`Cluster::management`]
    /// share.
    pub fn leader_channel(&self) -> LeaderChannel {
        lock(&self.leader).clone()
    }

    /// A leader-following Management/Curator client with the owner's credentials.
    pub fn management(&self) -> Management {
        Management::new(self.leader_channel())
    }

    /// Rebuilds the leader channel seeded with the curator address of every node not removed
    /// and a local override for every known node ID (a leader that has not reported an
    /// address yet is still reachable). Clients made before keep their old channel.
    pub fn refresh_leader_channel(&self) -> Result<()> {
        let removed = self.removed();
        let live: Vec<Node> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .cloned()
            .collect();
        let channel = leader_channel(&live, &self.owner_key, &self.owner_certificate, &self.crl)?;
        *lock(&self.leader) = channel;
        Ok(())
    }

    fn removed(&self) -> HashSet<usize> {
        lock(&self.removed).clone()
    }

    /// Marks node `index` as no longer part of the cluster (deleted or decommissioned): waits
    /// no longer expect it, and its exit is no failure.
    pub fn mark_removed(&self, index: usize) {
        lock(&self.removed).insert(index);
    }

    /// The IDs of the nodes expected in the cluster (not removed).
    pub fn expected_ids(&self) -> Result<Vec<String>> {
        let removed = self.removed();
        self.nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .map(|n| {
                n.id().ok_or_else(|| {
                    Error::Invalid(format!("node {} never announced its ID", n.index()))
                })
            })
            .collect()
    }

    /// The ID node `index` announced.
    pub fn id_of(&self, index: usize) -> Result<String> {
        self.nodes
            .get(index)
            .and_then(Node::id)
            .ok_or_else(|| Error::Invalid(format!("node {index} has no known ID")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in &self.nodes {
            if panicking {
                eprintln!(
                    "--- node {} ({}) log tail, full log: {}\n{}",
                    node.index(),
                    node.id().unwrap_or_default(),
                    node.log_path().display(),
                    node.tail(40)
                );
            }
            node.kill_now();
        }
        if (panicking || env_flag("LAUNCH_KEEP_STATE"))
            && let Some(temp) = self.temp.take()
        {
            let kept = temp.keep();
            eprintln!("cluster state kept in {}", kept.display());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A leader channel with owner credentials seeded with these nodes' curator endpoints,
/// refusing curators `crl` revokes.
fn leader_channel(
    nodes: &[Node],
    owner_key: &SigningKey,
    owner_certificate: &[u8],
    crl: &ClusterCrl,
) -> Result<LeaderChannel> {
    let seeds = nodes.iter().map(Node::curator_endpoint).collect();
    let local_overrides = nodes
        .iter()
        .filter_map(|n| n.id().map(|id| (id, n.curator_endpoint())))
        .collect();
    LeaderChannel::new(
        seeds,
        ClientCredentials::Authenticated {
            certificate: owner_certificate.to_vec(),
            key: owner_key.clone(),
        },
        crl.ca().to_vec(),
        LeaderOptions {
            local_overrides,
            crl: Some(crl.clone()),
            ..LeaderOptions::default()
        },
    )
    .map_err(|source| Error::Client {
        what: "building the leader channel",
        source,
    })
}
