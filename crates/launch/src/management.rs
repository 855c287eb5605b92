//! A leader-following client for the cluster API, as an operator (or a test) uses it.
//!
//! Only the curator leader serves Management and Curator; it moves when nodes restart. Every
//! call here goes through [`rpc::LeaderChannel`] (which follows `GetCurrentLeader`) and is
//! re-issued while the cluster answers "not now" — Unavailable (a follower, a lost leadership,
//! a broken connection, no leader yet) and, briefly, Unimplemented (a just-demoted leader) —
//! until a deadline. Each attempt has its own timeout: a leader whose etcd lost quorum may
//! hold a call until etcd gives up, and the next leader should get the retry instead.
//!
//! A call whose connection broke mid-way (tonic: Unknown "transport error", or Cancelled for a
//! stream reset by a server tearing itself down) is treated like Unavailable: the leader went
//! away.
//!
//! Definite answers (NotFound, FailedPrecondition, PermissionDenied, …) are returned at once.

use std::future::Future;
use std::time::Duration;

use proto::api::management_client::ManagementClient;
use proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, DeleteNodeRequest, GetClusterInfoRequest,
    GetClusterInfoResponse, GetNodesRequest, GetRegisterTicketRequest, UpdateNodeLabelsRequest,
    UpdateNodeRolesRequest, decommission_node_request, delete_node_request,
    update_node_labels_request, update_node_roles_request,
};
use proto::common::node_labels::Pair;
use proto::curator_api::GetConsensusStatusRequest;
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::get_consensus_status_response::EtcdMember;
use rpc::LeaderChannel;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// How long a call may keep being retried by default: longer than any leader failover (leader
/// TTL plus an election) on a loaded machine.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(60);
/// How long one attempt may take before it is abandoned (and retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between rounds when the leader channel itself gave up (no leader known).
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// Rounds ending in Unimplemented that are retried: a demoted leader answers Unimplemented for
/// as long as the channel has not learned the new leader (a few seconds); a method the server
/// really lacks must not be retried for a whole deadline.
const UNIMPLEMENTED_ROUNDS: usize = 20;

/// Whether a call failed because its connection or stream broke (the server went away
/// mid-call), not because the server answered: tonic reports a severed connection as Unknown
/// "transport error" (with the transport error as source), and a stream reset by a server
/// tearing itself down on a leadership change as Cancelled (we never cancel our own calls
/// here). Both mean "ask again, maybe elsewhere", like Unavailable; rpc's `call_with_retry`
/// retries the first but not the second.
fn is_connection_failure(status: &Status) -> bool {
    if status.code() == Code::Cancelled {
        return true;
    }
    if status.code() != Code::Unknown {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The safety bypasses of DeleteNode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteBypass {
    /// Delete a node that still has roles.
    pub has_roles: bool,
    /// Delete a node that was not decommissioned (e.g. UP).
    pub not_decommissioned: bool,
}

/// A leader-following client for Management and Curator calls; cheap to clone.
#[derive(Clone, Debug)]
pub struct Management {
    leader: LeaderChannel,
    deadline: Duration,
}

impl Management {
    /// A client over this leader channel, retrying calls for [`DEFAULT_CALL_DEADLINE`].
    pub fn new(leader: LeaderChannel) -> Self {
        Self {
            leader,
            deadline: DEFAULT_CALL_DEADLINE,
        }
    }

    /// The same client with another retry deadline per call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The leader channel underneath.
    pub fn leader(&self) -> &LeaderChannel {
        &self.leader
    }

    /// The node ID of the leader currently followed, if one is known.
    pub fn current_leader(&self) -> Option<String> {
        self.leader.current_leader().map(|l| l.node_id)
    }

    /// Runs `f` on the leader's channel until it succeeds, fails definitely or the deadline
    /// passes (see the module documentation). `what` names the call in errors.
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let deadline = start + self.deadline;
        let mut unimplemented = 0;
        let mut last: Option<Status> = None;
        loop {
            let round = self.leader.call_with_retry(usize::MAX, |channel| {
                let attempt = f(channel);
                async move {
                    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                        Ok(Err(status)) if is_connection_failure(&status) => {
                            Err(Status::unavailable(format!("connection failed: {status}")))
                        }
                        Ok(result) => result,
                        Err(_) => Err(Status::unavailable(format!(
                            "no answer within {ATTEMPT_TIMEOUT:?}"
                        ))),
                    }
                }
            });
            let status = match tokio::time::timeout_at(deadline, round).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => status,
                Err(_) => {
                    return Err(Error::Timeout {
                        what: what.to_string(),
                        after: self.deadline,
                        last: last.map_or_else(
                            || "no answer".to_string(),
                            |s| format!("{:?}: {}", s.code(), s.message()),
                        ),
                    });
                }
            };
            let retry = match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
                Code::Unimplemented => {
                    unimplemented += 1;
                    unimplemented <= UNIMPLEMENTED_ROUNDS
                }
                _ => false,
            };
            if !retry || Instant::now() + ROUND_PAUSE >= deadline {
                return Err(Error::rpc(what, &status));
            }
            tracing::debug!(
                "{what}: {:?} ({}), retrying",
                status.code(),
                status.message()
            );
            last = Some(status);
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// Management.GetNodes with a CEL filter ("" for all nodes).
    pub async fn get_nodes(&self, filter: &str) -> Result<Vec<proto::api::Node>> {
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
    pub async fn get_node(&self, id: &str) -> Result<Option<proto::api::Node>> {
        Ok(self.get_nodes("").await?.into_iter().find(|n| n.id == id))
    }

    /// Management.GetClusterInfo.
    pub async fn cluster_info(&self) -> Result<GetClusterInfoResponse> {
        self.call("GetClusterInfo", |channel| async move {
            Ok(ManagementClient::new(channel)
                .get_cluster_info(GetClusterInfoRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Management.GetRegisterTicket.
    pub async fn register_ticket(&self) -> Result<Vec<u8>> {
        self.call("GetRegisterTicket", |channel| async move {
            Ok(ManagementClient::new(channel)
                .get_register_ticket(GetRegisterTicketRequest {})
                .await?
                .into_inner()
                .ticket)
        })
        .await
    }

    /// Management.ApproveNode (idempotent).
    pub async fn approve(&self, pubkey: &[u8]) -> Result<()> {
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
    pub async fn update_roles(&self, request: UpdateNodeRolesRequest) -> Result<()> {
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
    ) -> Result<()> {
        self.update_roles(UpdateNodeRolesRequest {
            node: Some(update_node_roles_request::Node::Id(id.to_string())),
            kubernetes_worker,
            kubernetes_controller,
            consensus_member,
        })
        .await
    }

    /// Management.DecommissionNode (idempotent).
    pub async fn decommission(&self, id: &str) -> Result<()> {
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

    /// Management.DeleteNode. A NotFound after an attempt that got no answer counts as
    /// success: that attempt may well have deleted the node.
    pub async fn delete(&self, id: &str, bypass: DeleteBypass) -> Result<()> {
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
    ) -> Result<()> {
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
    pub async fn consensus_status(&self) -> Result<Vec<EtcdMember>> {
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
