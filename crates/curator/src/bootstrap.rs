//! Bootstrap finish (spec 4.10): what the first node writes into its fresh etcd before any
//! curator runs: the cluster CA, its own node certificate, and in one transaction — only if
//! none of them exists — its node record (UP, ConsensusMember + KubernetesController), its
//! join-key index entry, the initial owner and the cluster configuration. A re-run after a
//! crash writes nothing and still succeeds.

use identity::PublicKey;
use kv::Namespaced;
use kv::etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;
use proto::common::node_roles::{ConsensusMember, KubernetesController, consensus_member::Peer};
use proto::common::{ClusterConfiguration, NodeRoles, NodeState, NodeTpmUsage};
use proto::curator_private::{InitialOwner, Node};
use tonic::Status;

use crate::state::cluster::{CONFIGURATION_KEY, INITIAL_OWNER_KEY, validate_configuration};
use crate::state::node::{JOIN_KEYS_PREFIX, NodeRecord};

/// What the bootstrapping node contributes.
#[derive(Debug, Clone)]
pub struct BootstrapData {
    /// The node's public key.
    pub node_key: PublicKey,
    /// The node's join public key.
    pub join_key: PublicKey,
    /// Cluster unlock key (empty for INSECURE storage).
    pub cluster_unlock_key: Vec<u8>,
    /// The owner's public key, from NodeParameters.
    pub owner_key: Vec<u8>,
    /// The initial cluster configuration.
    pub configuration: ClusterConfiguration,
    /// The node's TPM usage under that configuration.
    pub tpm_usage: NodeTpmUsage,
    /// The node's own etcd membership (from consensus AddNode for itself).
    pub join_cluster: consensus::JoinCluster,
}

/// Converts consensus join data into the ConsensusMember role stored in node records.
pub fn consensus_role(jc: &consensus::JoinCluster) -> ConsensusMember {
    ConsensusMember {
        ca_certificate: jc.ca_certificate.clone(),
        peer_certificate: jc.node_certificate.clone(),
        initial_crl: jc.initial_crl.clone(),
        peers: jc
            .existing_nodes
            .iter()
            .map(|n| Peer {
                name: n.name.clone(),
                url: n.url.clone(),
            })
            .collect(),
    }
}

/// Runs bootstrap finish; returns (cluster CA DER, node certificate DER).
pub async fn finish(ns: &Namespaced, data: &BootstrapData) -> Result<(Vec<u8>, Vec<u8>), Status> {
    validate_configuration(&data.configuration).map_err(Status::invalid_argument)?;
    let ca = crate::state::pki::ensure_ca(ns).await?;
    let cert = crate::state::pki::ensure_node_certificate(ns, &data.node_key).await?;

    let record = NodeRecord::new(
        &data.node_key,
        Node {
            cluster_unlock_key: data.cluster_unlock_key.clone(),
            fsm_state: NodeState::Up as i32,
            roles: Some(NodeRoles {
                consensus_member: Some(consensus_role(&data.join_cluster)),
                kubernetes_controller: Some(KubernetesController {}),
                kubernetes_worker: None,
            }),
            join_key: data.join_key.as_bytes().to_vec(),
            tpm_usage: data.tpm_usage as i32,
            ..Default::default()
        },
    );
    let join_index = format!(
        "{JOIN_KEYS_PREFIX}{}",
        hex::encode(data.join_key.as_bytes())
    );
    let keys = [
        record.key(),
        INITIAL_OWNER_KEY.to_string(),
        join_index.clone(),
        CONFIGURATION_KEY.to_string(),
    ];
    let absent: Vec<Compare> = keys
        .iter()
        .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
        .collect();
    let txn = Txn::new().when(absent).and_then([
        TxnOp::put(record.key(), record.node.encode_to_vec(), None),
        TxnOp::put(
            INITIAL_OWNER_KEY,
            InitialOwner {
                public_key: data.owner_key.clone(),
            }
            .encode_to_vec(),
            None,
        ),
        TxnOp::put(join_index, record.id.clone(), None),
        TxnOp::put(CONFIGURATION_KEY, data.configuration.encode_to_vec(), None),
    ]);
    let resp = ns.txn(txn).await.map_err(crate::election::etcd_status)?;
    if !resp.succeeded() {
        tracing::info!("bootstrap data already present; not writing it again");
    }
    Ok((ca, cert))
}
