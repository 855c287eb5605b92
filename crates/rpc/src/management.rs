//! A typed client of the cluster API as operators and tests use it: Management calls and the
//! Curator calls an operator makes (consensus status), one method each, with requests built
//! from plain arguments and streams collected.
//!
//! A [`Management`] client talks either to the curator leader through a [`LeaderChannel`],
//! each call retried under a [`RetryPolicy`] (default: [`RetryPolicy::default`], overridable
//! per client with [`Management::with_policy`] or [`Management::with_deadline`]), or to a
//! fixed channel, each call made once (benchmarks measure single calls to one server; a
//! retry would hide what they measure).
//!
//! Failures are a [`CallError`]: the method that failed and the last status.

use std::future::Future;
use std::time::Duration;

use proto::api::management_client::ManagementClient;
use proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, DeleteNodeRequest, GetClusterInfoRequest,
    GetClusterInfoResponse, GetNodesRequest, GetRegisterTicketRequest, Node,
    RotateRegisterTicketRequest, UpdateNodeLabelsRequest, UpdateNodeRolesRequest,
    decommission_node_request, delete_node_request, update_node_labels_request,
    update_node_roles_request,
};
use proto::common::node_labels::Pair;
use proto::curator_api::GetConsensusStatusRequest;
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::get_consensus_status_response::EtcdMember;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::leader::LeaderChannel;
use crate::retry::RetryPolicy;

/// A failed cluster API call: which method, and the last status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method}: {:?}: {}", status.code(), status.message())]
pub struct CallError {
    /// The gRPC method, e.g. `GetNodes`.
    pub method: &'static str,
    /// The status of the last attempt.
    pub status: Status,
}

impl CallError {
    /// The code of the last attempt.
    pub fn code(&self) -> Code {
        self.status.code()
    }
}

/// The safety bypasses of DeleteNode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteBypass {
    /// Delete a node that still has roles.
    pub has_roles: bool,
    /// Delete a node that was not decommissioned (e.g. UP).
    pub not_decommissioned: bool,
}

/// Where calls go.
#[derive(Debug, Clone)]
enum Target {
    Leader(LeaderChannel),
    Fixed(Channel),
}

/// A typed cluster API client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Management {
    target: Target,
    policy: RetryPolicy,
}

impl Management {
    /// A client following the leader on `leader`, retrying under [`RetryPolicy::default`].
    pub fn new(leader: LeaderChannel) -> Self {
        Self {
            target: Target::Leader(leader),
            policy: RetryPolicy::default(),
        }
    }

    /// A client calling exactly `channel`, once per call.
    pub fn direct(channel: Channel) -> Self {
        Self {
            target: Target::Fixed(channel),
            policy: RetryPolicy::once(),
        }
    }

    /// The same client retrying under `policy` (leader-following clients only: a fixed
    /// channel has nowhere else to go, but the policy's timeouts apply to it too).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same client with another overall deadline per call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.policy.deadline = Some(deadline);
        self
    }

    /// The retry policy of every call.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The leader channel underneath, if this client follows the leader.
    pub fn leader(&self) -> Option<&LeaderChannel> {
        match &self.target {
            Target::Leader(leader) => Some(leader),
            Target::Fixed(_) => None,
        }
    }

    /// The node ID of the leader currently followed, if one is known.
    pub fn current_leader(&self) -> Option<String> {
        self.leader()
            .and_then(|l| l.current_leader())
            .map(|l| l.node_id)
    }

    /// Runs `f` on the target's channel under the client's policy; any call, typed or not.
    pub async fn call<T, F, Fut>(&self, method: &'static str, mut f: F) -> Result<T, CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let result = match &self.target {
            Target::Leader(leader) => leader.call(&self.policy, f).await,
            Target::Fixed(channel) => {
                crate::retry::retry(&self.policy, || f(channel.clone())).await
            }
        };
        result.map_err(|status| CallError { method, status })
    }

    /// Management.GetNodes with a CEL filter ("" for all nodes).
    pub async fn get_nodes(&self, filter: &str) -> Result<Vec<Node>, CallError> {
        self.call("GetNodes", |channel| {
            let filter = filter.to_string();
            async move {
                let mut stream = ManagementClient::new(channel)
                    .get_nodes(GetNodesRequest { filter })
                    .await?
                    .into_inner();
                let mut nodes = Vec::new();
                while let Some(node) = stream.message().await? {
                    nodes.push(node);
                }
                Ok(nodes)
            }
        })
        .await
    }

    /// The node with this ID, if the cluster has it.
    pub async fn get_node(&self, id: &str) -> Result<Option<Node>, CallError> {
        Ok(self.get_nodes("").await?.into_iter().find(|n| n.id == id))
    }

    /// Management.GetClusterInfo.
    pub async fn cluster_info(&self) -> Result<GetClusterInfoResponse, CallError> {
        self.call("GetClusterInfo", |channel| async move {
            Ok(ManagementClient::new(channel)
                .get_cluster_info(GetClusterInfoRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Management.GetRegisterTicket.
    pub async fn register_ticket(&self) -> Result<Vec<u8>, CallError> {
        self.call("GetRegisterTicket", |channel| async move {
            Ok(ManagementClient::new(channel)
                .get_register_ticket(GetRegisterTicketRequest {})
                .await?
                .into_inner()
                .ticket)
        })
        .await
    }

    /// Management.RotateRegisterTicket; returns the new ticket. A retried rotation rotates
    /// again, which is harmless: the last ticket returned is the valid one.
    pub async fn rotate_register_ticket(&self) -> Result<Vec<u8>, CallError> {
        self.call("RotateRegisterTicket", |channel| async move {
            Ok(ManagementClient::new(channel)
                .rotate_register_ticket(RotateRegisterTicketRequest {})
                .await?
                .into_inner()
                .ticket)
        })
        .await
    }

    /// Management.ApproveNode (idempotent).
    pub async fn approve(&self, pubkey: &[u8]) -> Result<(), CallError> {
        self.call("ApproveNode", |channel| {
            let pubkey = pubkey.to_vec();
            async move {
                ManagementClient::new(channel)
                    .approve_node(ApproveNodeRequest { pubkey })
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// Management.UpdateNodeRoles with a request as given.
    pub async fn update_roles(&self, request: UpdateNodeRolesRequest) -> Result<(), CallError> {
        self.call("UpdateNodeRoles", |channel| {
            let request = request.clone();
            async move {
                ManagementClient::new(channel)
                    .update_node_roles(request)
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// Sets or drops one node's roles; `None` leaves a role as it is.
    pub async fn set_roles(
        &self,
        id: &str,
        consensus_member: Option<bool>,
        kubernetes_controller: Option<bool>,
        kubernetes_worker: Option<bool>,
    ) -> Result<(), CallError> {
        self.update_roles(UpdateNodeRolesRequest {
            node: Some(update_node_roles_request::Node::Id(id.to_string())),
            kubernetes_worker,
            kubernetes_controller,
            consensus_member,
        })
        .await
    }

    /// Management.DecommissionNode (idempotent).
    pub async fn decommission(&self, id: &str) -> Result<(), CallError> {
        self.call("DecommissionNode", |channel| {
            let node = Some(decommission_node_request::Node::Id(id.to_string()));
            async move {
                ManagementClient::new(channel)
                    .decommission_node(DecommissionNodeRequest { node })
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// Management.DeleteNode. A NotFound after an earlier attempt counts as success: that
    /// attempt may well have deleted the node before its answer was lost.
    pub async fn delete(&self, id: &str, bypass: DeleteBypass) -> Result<(), CallError> {
        let mut attempts = 0;
        self.call("DeleteNode", |channel| {
            attempts += 1;
            let retried = attempts > 1;
            let request = DeleteNodeRequest {
                node: Some(delete_node_request::Node::Id(id.to_string())),
                safety_bypass_has_roles: bypass
                    .has_roles
                    .then_some(delete_node_request::SafetyBypassHasRoles {}),
                safety_bypass_not_decommissioned: bypass
                    .not_decommissioned
                    .then_some(delete_node_request::SafetyBypassNotDecommissioned {}),
            };
            async move {
                match ManagementClient::new(channel).delete_node(request).await {
                    Ok(_) => Ok(()),
                    Err(status) if retried && status.code() == Code::NotFound => Ok(()),
                    Err(status) => Err(status),
                }
            }
        })
        .await
    }

    /// Management.UpdateNodeLabels: upserts `(key, value)` pairs and deletes keys.
    pub async fn update_labels(
        &self,
        id: &str,
        upsert: &[(&str, &str)],
        delete: &[&str],
    ) -> Result<(), CallError> {
        let request = UpdateNodeLabelsRequest {
            node: Some(update_node_labels_request::Node::Id(id.to_string())),
            upsert: upsert
                .iter()
                .map(|(key, value)| Pair {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            delete: delete.iter().map(|k| k.to_string()).collect(),
        };
        self.call("UpdateNodeLabels", |channel| {
            let request = request.clone();
            async move {
                ManagementClient::new(channel)
                    .update_node_labels(request)
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// Curator.GetConsensusStatus: the etcd members and whether each is a learner.
    pub async fn consensus_status(&self) -> Result<Vec<EtcdMember>, CallError> {
        self.call("GetConsensusStatus", |channel| async move {
            Ok(CuratorClient::new(channel)
                .get_consensus_status(GetConsensusStatusRequest {})
                .await?
                .into_inner()
                .etcd_member)
        })
        .await
    }
}
