//! What a manager needs to bring new nodes in: the register ticket (GetRegisterTicket,
//! RotateRegisterTicket) and the cluster's directory, CA and configuration (GetClusterInfo).

use proto::api::{GetClusterInfoResponse, GetRegisterTicketResponse, RotateRegisterTicketResponse};
use proto::common::cluster_directory::{self, node::Address};
use proto::common::{ClusterDirectory, NodeState};
use tonic::Status;

use crate::leader::Leader;
use crate::state::{NodeRecord, cluster, node};

/// Most nodes listed in the cluster directory of GetClusterInfo (upstream constant): enough
/// to find the cluster, small enough for NodeParameters on a registering node's ESP.
const MAX_DIRECTORY_NODES: usize = 15;

/// The register ticket, created on first use (upstream: under `muRegisterTicket`, so two
/// first calls cannot create two tickets).
pub(super) async fn get_register_ticket(
    leader: &Leader,
) -> Result<GetRegisterTicketResponse, Status> {
    let _guard = leader.ticket_lock.lock().await;
    let ticket = cluster::ensure_register_ticket(&leader.leadership).await?;
    Ok(GetRegisterTicketResponse { ticket })
}

/// Ours: upstream cannot rotate the ticket although its documentation promises it "can be
/// regenerated at any time in case it leaks". Same lock as GetRegisterTicket, so a concurrent
/// first GetRegisterTicket cannot overwrite the rotated ticket.
pub(super) async fn rotate_register_ticket(
    leader: &Leader,
) -> Result<RotateRegisterTicketResponse, Status> {
    let _guard = leader.ticket_lock.lock().await;
    let ticket = cluster::rotate_register_ticket(&leader.leadership).await?;
    tracing::info!("register ticket rotated; the previous ticket is no longer accepted");
    Ok(RotateRegisterTicketResponse { ticket })
}

/// Directory of UP nodes, the cluster CA and the configuration.
pub(super) async fn get_cluster_info(leader: &Leader) -> Result<GetClusterInfoResponse, Status> {
    let nodes = node::load_all(&leader.leadership).await?;
    // Upstream omits the configuration silently when it cannot be loaded; the directory and
    // CA are what registering nodes need, so keep answering but leave a trace.
    let cluster_configuration = match cluster::configuration(&leader.leadership).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("GetClusterInfo: omitting the cluster configuration: {e}");
            None
        }
    };
    Ok(GetClusterInfoResponse {
        cluster_directory: Some(directory(&nodes)),
        ca_certificate: leader.credentials.ca().to_vec(),
        cluster_configuration,
    })
}

/// The cluster directory: UP nodes sorted by raw public key, at most
/// [`MAX_DIRECTORY_NODES`], each with its reported address if any.
fn directory(nodes: &[NodeRecord]) -> ClusterDirectory {
    let mut up: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state() == NodeState::Up)
        .collect();
    up.sort_by(|a, b| a.node.public_key.cmp(&b.node.public_key));
    ClusterDirectory {
        nodes: up
            .into_iter()
            .take(MAX_DIRECTORY_NODES)
            .map(|n| cluster_directory::Node {
                public_key: n.node.public_key.clone(),
                addresses: n
                    .node
                    .status
                    .iter()
                    .filter(|s| !s.external_address.is_empty())
                    .map(|s| Address {
                        host: s.external_address.clone(),
                    })
                    .collect(),
                // A field of later upstream Monogon (not in the 8456ddf0 baseline); harmless for
                // baseline clients, which skip it.
                id: n.id.clone(),
            })
            .collect(),
    }
}
