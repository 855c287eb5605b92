//! Bootstrap finish: what the first node writes into its fresh etcd before any
//! curator runs: the cluster CA, its own node certificate, and in one transaction — only if
//! none of them exists — its node record (UP, ConsensusMember + KubernetesController), its
//! join-key index entry, the initial owner and the cluster configuration. A re-run after a
//! crash writes nothing and still succeeds.

use identity::PublicKey;
use kv::Namespaced;
use proto::common::node_roles::{ConsensusMember, KubernetesController, consensus_member::Peer};
use proto::common::{ClusterConfiguration, NodeRoles, NodeTpmUsage};
use proto::curator_private::Node;

use crate::state::cluster::{self, validate_configuration};
use crate::state::{NodeRecord, StateError, pki};

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
pub async fn finish(
    ns: &Namespaced,
    data: &BootstrapData,
) -> Result<(Vec<u8>, Vec<u8>), StateError> {
    // Checked before the PKI is touched, so a bad configuration leaves nothing behind.
    validate_configuration(&data.configuration).map_err(StateError::InvalidArgument)?;
    let ca = pki::ensure_ca(ns).await?;
    let cert = pki::ensure_node_certificate(ns, &data.node_key).await?;

    let record = NodeRecord::new(
        &data.node_key,
        Node {
            cluster_unlock_key: data.cluster_unlock_key.clone(),
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
    if !cluster::initialize(ns, record, &data.owner_key, &data.configuration).await? {
        tracing::info!("bootstrap data already present; not writing it again");
    }
    Ok((ca, cert))
}
