//! Management service of the leader: what a cluster manager (the owner, through
//! metroctl) calls to admit nodes, read the cluster, assign roles and labels and remove
//! nodes. One submodule per concern: `cluster` (register ticket, cluster info), `nodes`
//! (listing, approval, decommissioning, deletion), `roles` and `labels`.
//!
//! Permissions are enforced by the authorization layer before a handler runs; the
//! handlers check the RPC's preconditions and leave every record access to the state layer.
//! Read-modify-write sequences on node records are optimistic (`crate::leader::optimistic`;
//! upstream holds `muNodes`): a write lands only on the record as read, else the handler
//! reads again, so concurrent calls cannot interleave. Where this implementation goes beyond upstream (ticket
//! rotation, decommissioning, revocation on delete, etcd membership changes), the handler
//! says so and why.
//!
//! Error messages name the node, its state, what was expected and, where there is one, the
//! metroctl command that fixes it.

use std::net::IpAddr;
use std::sync::Arc;

use identity::PublicKey;
use proto::api::management_server::Management;
use proto::api::{
    self, ApproveNodeRequest, ApproveNodeResponse, DecommissionNodeRequest,
    DecommissionNodeResponse, DeleteNodeRequest, DeleteNodeResponse, GetClusterInfoRequest,
    GetClusterInfoResponse, GetNodesRequest, GetRegisterTicketRequest, GetRegisterTicketResponse,
    RotateRegisterTicketRequest, RotateRegisterTicketResponse, UpdateNodeLabelsRequest,
    UpdateNodeLabelsResponse, UpdateNodeRolesRequest, UpdateNodeRolesResponse,
};
use proto::common::{NodeRoles, NodeState};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::Leader;
use crate::state::NodeRecord;

mod cluster;
mod labels;
mod nodes;
mod roles;

pub(crate) use nodes::finish_deletion;

/// The Management service.
#[derive(Debug, Clone)]
pub struct ManagementService(pub Arc<Leader>);

#[tonic::async_trait]
impl Management for ManagementService {
    async fn get_register_ticket(
        &self,
        _: Request<GetRegisterTicketRequest>,
    ) -> Result<Response<GetRegisterTicketResponse>, Status> {
        cluster::get_register_ticket(&self.0)
            .await
            .map(Response::new)
    }

    async fn rotate_register_ticket(
        &self,
        _: Request<RotateRegisterTicketRequest>,
    ) -> Result<Response<RotateRegisterTicketResponse>, Status> {
        cluster::rotate_register_ticket(&self.0)
            .await
            .map(Response::new)
    }

    async fn get_cluster_info(
        &self,
        _: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        cluster::get_cluster_info(&self.0).await.map(Response::new)
    }

    async fn get_nodes(
        &self,
        req: Request<GetNodesRequest>,
    ) -> Result<Response<BoxStream<api::Node>>, Status> {
        nodes::get_nodes(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn approve_node(
        &self,
        req: Request<ApproveNodeRequest>,
    ) -> Result<Response<ApproveNodeResponse>, Status> {
        nodes::approve_node(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_node_roles(
        &self,
        req: Request<UpdateNodeRolesRequest>,
    ) -> Result<Response<UpdateNodeRolesResponse>, Status> {
        roles::update_node_roles(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn decommission_node(
        &self,
        req: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DecommissionNodeResponse>, Status> {
        nodes::decommission_node(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_node(
        &self,
        req: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        nodes::delete_node(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_node_labels(
        &self,
        req: Request<UpdateNodeLabelsRequest>,
    ) -> Result<Response<UpdateNodeLabelsResponse>, Status> {
        labels::update_node_labels(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
}

/// The node a request names, by public key (32 bytes) or by ID.
fn node_id(pubkey: Option<&[u8]>, id: Option<&str>) -> Result<String, Status> {
    match (pubkey, id) {
        (Some(pk), _) => {
            let key = PublicKey::from_slice(pk).map_err(|_| {
                Status::invalid_argument(format!("public key must be 32 bytes, got {}", pk.len()))
            })?;
            Ok(identity::node_id(&key))
        }
        (None, Some(id)) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(Status::invalid_argument(
            "node must be given by pubkey or id",
        )),
    }
}

/// Whether a node has entered decommissioning (ours, see DecommissionNode).
fn is_decommissioning(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::DecommissionRequested | NodeState::Decommissioning | NodeState::Decommissioned
    )
}

/// The address the node reported in its status, if any and if it is an IP.
fn reported_address(record: &NodeRecord) -> Option<IpAddr> {
    record
        .node
        .status
        .as_ref()
        .and_then(|s| s.external_address.parse().ok())
}

/// Role names for messages, in metroctl's spelling.
fn role_names(roles: Option<&NodeRoles>) -> String {
    let Some(r) = roles else {
        return "none".to_string();
    };
    let names: Vec<&str> = [
        (r.consensus_member.is_some(), "ConsensusMember"),
        (r.kubernetes_controller.is_some(), "KubernetesController"),
        (r.kubernetes_worker.is_some(), "KubernetesWorker"),
    ]
    .into_iter()
    .filter_map(|(has, name)| has.then_some(name))
    .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// `UP`, `DECOMMISSION_REQUESTED`, … (or the raw number of an unknown state).
fn state_name(record: &NodeRecord) -> String {
    match NodeState::try_from(record.node.fsm_state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("NODE_STATE_")
            .to_string(),
        Err(_) => format!("unknown state {}", record.node.fsm_state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_by_key_or_id() {
        let key = [7u8; 32];
        assert_eq!(
            node_id(Some(&key), Some("ignored")).ok(),
            Some(identity::node_id(&PublicKey::from_bytes(key)))
        );
        assert_eq!(
            node_id(None, Some("metropolis-ab")).ok().as_deref(),
            Some("metropolis-ab")
        );
        for (pk, id) in [(Some(&key[..3]), None), (None, Some("")), (None, None)] {
            assert_eq!(
                node_id(pk, id).map_err(|s| s.code()),
                Err(tonic::Code::InvalidArgument)
            );
        }
    }
}
