//! Helpers shared by the curator service tests (`curator_*.rs`, `aaa.rs`): clients, nodes
//! written straight into etcd, and waiting on streams with a deadline.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use curator::state::NodeRecord;
use curator::state::node;
use curator::testing::TestLeader;
use identity::SigningKey;
use proto::api::management_client::ManagementClient;
use proto::common::{NodeRoles, NodeState, NodeStatus, NodeTpmUsage};
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_private::Node;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(500);

/// A Curator client on `ch`.
pub fn curator(ch: Channel) -> CuratorClient<Channel> {
    CuratorClient::new(ch)
}

/// A Management client on `ch`.
pub fn management(ch: Channel) -> ManagementClient<Channel> {
    ManagementClient::new(ch)
}

/// The gRPC code of a result (OK for success).
pub fn code<T>(r: Result<T, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A fresh Ed25519 key.
pub fn key() -> SigningKey {
    SigningKey::generate().expect("key generation")
}

/// The node ID of a key.
pub fn id_of(key: &SigningKey) -> String {
    identity::node_id(&key.public_key())
}

/// A node written straight into etcd in `state` (no roles, no status, TPM not present),
/// with a join key. Returns (node key, join key).
pub async fn add_node(t: &TestLeader, state: NodeState, cuk: &[u8]) -> (SigningKey, SigningKey) {
    let (node_key, join_key) = (key(), key());
    let record = NodeRecord::new(
        &node_key.public_key(),
        Node {
            cluster_unlock_key: cuk.to_vec(),
            fsm_state: state as i32,
            join_key: join_key.public_key().as_bytes().to_vec(),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent as i32,
            ..Default::default()
        },
    );
    t.put_node(&record).await;
    (node_key, join_key)
}

/// Loads a node record straight from etcd.
pub async fn load(t: &TestLeader, id: &str) -> NodeRecord {
    node::load(&t.leader.leadership, id)
        .await
        .expect("loading node")
}

/// Changes a node record straight in etcd (any field, the state too: a fixture, not walked
/// through the lifecycle).
pub async fn modify(t: &TestLeader, id: &str, f: impl FnOnce(&mut NodeRecord)) {
    let mut record = load(t, id).await;
    f(&mut record);
    t.put_node(&record).await;
}

/// Gives a node the KubernetesWorker role, straight in etcd.
pub async fn make_worker(t: &TestLeader, id: &str) {
    modify(t, id, |r| {
        let roles = r.node.roles.get_or_insert_with(NodeRoles::default);
        roles.kubernetes_worker = Some(Default::default());
    })
    .await;
}

/// A status with this external address.
pub fn status(address: &str) -> NodeStatus {
    NodeStatus {
        external_address: address.to_string(),
        ..Default::default()
    }
}

/// The register ticket, from Management.GetRegisterTicket as the owner.
pub async fn register_ticket(t: &TestLeader) -> Vec<u8> {
    let mut mgmt = management(t.owner().await);
    mgmt.get_register_ticket(proto::api::GetRegisterTicketRequest {})
        .await
        .expect("GetRegisterTicket")
        .into_inner()
        .ticket
}

/// The next message of a server stream within [`WAIT`]; panics on timeout.
pub async fn next<T>(s: &mut tonic::Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("timed out waiting for a stream message")
}

/// Whether the stream stays silent (no message, no end, no error) for [`QUIET`].
pub async fn stays_quiet<T>(s: &mut tonic::Streaming<T>) -> bool {
    tokio::time::timeout(QUIET, s.message()).await.is_err()
}
