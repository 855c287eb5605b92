//! Management service of the leader (spec 4.8): what a cluster manager (the owner, through
//! metroctl) calls to admit nodes, read the cluster, assign roles and remove nodes.
//!
//! Permissions are enforced by the authorization layer before a handler runs (spec 3); the
//! handlers check the node lifecycle (spec 4.6) and role rules. Read-modify-write sequences on
//! node records hold `nodes_lock` (upstream `muNodes`) so concurrent calls cannot interleave,
//! and every etcd access goes through the leadership guard. Where this implementation goes
//! beyond upstream (ticket rotation, decommissioning, revocation on delete, etcd membership
//! changes), the handler says so and why.
//!
//! Error messages name the node, its state, what was expected and, where there is one, the
//! metroctl command that fixes it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use proto::api::management_server::Management;
use proto::api::{
    self, ApproveNodeRequest, ApproveNodeResponse, DecommissionNodeRequest,
    DecommissionNodeResponse, DeleteNodeRequest, DeleteNodeResponse, GetClusterInfoRequest,
    GetClusterInfoResponse, GetNodesRequest, GetRegisterTicketRequest, GetRegisterTicketResponse,
    RotateRegisterTicketRequest, RotateRegisterTicketResponse, UpdateNodeLabelsRequest,
    UpdateNodeLabelsResponse, UpdateNodeRolesRequest, UpdateNodeRolesResponse,
};
use proto::common::cluster_directory::{self, node::Address};
use proto::common::node_labels::Pair;
use proto::common::node_roles::{ConsensusMember, KubernetesController, KubernetesWorker};
use proto::common::{ClusterDirectory, NodeLabels, NodeRoles, NodeState};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::Leader;
use super::filter::NodeFilter;
use crate::health::{self, Heartbeats};
use crate::state::node::{self, NodeRecord};
use crate::state::{cluster, pki};

/// Most nodes listed in the cluster directory of GetClusterInfo (upstream constant): enough
/// to find the cluster, small enough for NodeParameters on a registering node's ESP.
const MAX_DIRECTORY_NODES: usize = 15;

/// Most labels a node may carry (upstream HEAD `MaxLabelsPerNode`).
pub const MAX_LABELS_PER_NODE: usize = 128;

/// Longest label name or value (upstream HEAD, as Kubernetes).
const MAX_LABEL_LENGTH: usize = 63;

/// Longest DNS-name prefix of a label key (a DNS subdomain, RFC 1123).
const MAX_LABEL_PREFIX_LENGTH: usize = 253;

/// The Management service.
#[derive(Debug, Clone)]
pub struct ManagementService(pub Arc<Leader>);

#[tonic::async_trait]
impl Management for ManagementService {
    /// The register ticket, created on first use (upstream: under `muRegisterTicket`, so two
    /// first calls cannot create two tickets).
    async fn get_register_ticket(
        &self,
        _: Request<GetRegisterTicketRequest>,
    ) -> Result<Response<GetRegisterTicketResponse>, Status> {
        let _guard = self.0.ticket_lock.lock().await;
        let ticket = cluster::ensure_register_ticket(&self.0.leadership).await?;
        Ok(Response::new(GetRegisterTicketResponse { ticket }))
    }

    /// Ours: upstream cannot rotate the ticket although its documentation promises it "can be
    /// regenerated at any time in case it leaks". Same lock as GetRegisterTicket, so a
    /// concurrent first GetRegisterTicket cannot overwrite the rotated ticket.
    async fn rotate_register_ticket(
        &self,
        _: Request<RotateRegisterTicketRequest>,
    ) -> Result<Response<RotateRegisterTicketResponse>, Status> {
        let _guard = self.0.ticket_lock.lock().await;
        let ticket = cluster::rotate_register_ticket(&self.0.leadership).await?;
        tracing::info!("register ticket rotated; the previous ticket is no longer accepted");
        Ok(Response::new(RotateRegisterTicketResponse { ticket }))
    }

    /// Directory of UP nodes, the cluster CA and the configuration.
    async fn get_cluster_info(
        &self,
        _: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        let nodes = node::load_all(&self.0.leadership).await?;
        // Upstream omits the configuration silently when it cannot be loaded; the directory
        // and CA are what registering nodes need, so keep answering but leave a trace.
        let cluster_configuration = match cluster::configuration(&self.0.leadership).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "GetClusterInfo: omitting the cluster configuration: {}",
                    e.message()
                );
                None
            }
        };
        Ok(Response::new(GetClusterInfoResponse {
            cluster_directory: Some(directory(&nodes)),
            ca_certificate: self.0.credentials.ca().to_vec(),
            cluster_configuration,
        }))
    }

    /// Every node (or those the CEL filter selects) with its health, from one read.
    async fn get_nodes(
        &self,
        req: Request<GetNodesRequest>,
    ) -> Result<Response<BoxStream<api::Node>>, Status> {
        // Compile first: a broken filter costs no etcd read.
        let filter = NodeFilter::compile(&req.get_ref().filter)?;
        let records = {
            let _guard = self.0.nodes_lock.lock().await;
            node::load_all(&self.0.leadership).await?
        };
        // One instant for all nodes, as upstream, so their heartbeat ages are comparable.
        let now = self.0.heartbeats.now();
        let nodes = records
            .iter()
            .map(|r| api_node(r, &self.0.heartbeats, now))
            .collect();
        // Evaluated before streaming, so a filter error is the call's status rather than a
        // stream cut off halfway.
        let selected = filter.select(nodes)?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            selected.into_iter().map(Ok),
        ))))
    }

    /// NEW → STANDBY; STANDBY and UP are already approved (idempotent).
    async fn approve_node(
        &self,
        req: Request<ApproveNodeRequest>,
    ) -> Result<Response<ApproveNodeResponse>, Status> {
        let id = node::id_from_request(Some(&req.get_ref().pubkey), None)?;
        let _guard = self.0.nodes_lock.lock().await;
        let mut record = node::load(&self.0.leadership, &id).await?;
        match record.state() {
            NodeState::Standby | NodeState::Up => {}
            NodeState::New => {
                record.set_state(NodeState::Standby);
                node::save(&self.0.leadership, &record).await?;
                tracing::info!("approved node {id} (NEW → STANDBY)");
            }
            _ => {
                return Err(Status::failed_precondition(format!(
                    "node {id} is {}; only a NEW node can be approved (STANDBY and UP nodes already are)",
                    state_name(&record)
                )));
            }
        }
        Ok(Response::new(ApproveNodeResponse {}))
    }

    /// Sets or drops roles. Order as upstream: ConsensusMember first (KubernetesController
    /// depends on it), then KubernetesController, then KubernetesWorker. All preconditions
    /// are checked before anything changes, so a refused request leaves etcd membership
    /// untouched (upstream could add an etcd member and then refuse the controller part).
    async fn update_node_roles(
        &self,
        req: Request<UpdateNodeRolesRequest>,
    ) -> Result<Response<UpdateNodeRolesResponse>, Status> {
        use api::update_node_roles_request::Node as Which;
        let req = req.into_inner();
        let id = match &req.node {
            Some(Which::Pubkey(pk)) => node::id_from_request(Some(pk), None)?,
            Some(Which::Id(id)) => node::id_from_request(None, Some(id))?,
            None => node::id_from_request(None, None)?,
        };
        let _guard = self.0.nodes_lock.lock().await;
        // Upstream maps load errors other than NotFound to InvalidArgument; an etcd failure
        // is not the caller's mistake, so it stays Unavailable here.
        let record = node::load(&self.0.leadership, &id).await?;
        let delta = RoleDelta::new(&record.roles(), &req);
        check_role_change(&record, &req, &delta)?;
        if delta.is_empty() {
            // The proto promises no change when the values match the current roles.
            return Ok(Response::new(UpdateNodeRolesResponse {}));
        }
        self.apply_role_change(record, delta).await?;
        Ok(Response::new(UpdateNodeRolesResponse {}))
    }

    /// Ours (upstream: Unimplemented): UP and role-less → DECOMMISSION_REQUESTED. The node
    /// sees that through Curator.Watch, wipes itself and reports progress with
    /// Curator.ReportDecommission (DECOMMISSIONING, then DECOMMISSIONED).
    async fn decommission_node(
        &self,
        req: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DecommissionNodeResponse>, Status> {
        use api::decommission_node_request::Node as Which;
        let id = match &req.get_ref().node {
            Some(Which::Pubkey(pk)) => node::id_from_request(Some(pk), None)?,
            Some(Which::Id(id)) => node::id_from_request(None, Some(id))?,
            None => node::id_from_request(None, None)?,
        };
        let _guard = self.0.nodes_lock.lock().await;
        let mut record = node::load(&self.0.leadership, &id).await?;
        if is_decommissioning(record.state()) {
            // Idempotent: the request has already been made.
            return Ok(Response::new(DecommissionNodeResponse {}));
        }
        check_decommissionable(&record)?;
        record.set_state(NodeState::DecommissionRequested);
        node::save(&self.0.leadership, &record).await?;
        tracing::info!("decommissioning of node {id} requested (UP → DECOMMISSION_REQUESTED)");
        Ok(Response::new(DecommissionNodeResponse {}))
    }

    /// Removes a node: its record and join-key index entry in one transaction. Beyond
    /// upstream, which leaves a deleted node able to authenticate: its certificate is revoked
    /// (and the issued copy dropped), its heartbeats forgotten and its etcd member removed.
    async fn delete_node(
        &self,
        req: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        use api::delete_node_request::Node as Which;
        let req = req.into_inner();
        let id = match &req.node {
            Some(Which::Pubkey(pk)) => node::id_from_request(Some(pk), None)?,
            Some(Which::Id(id)) => node::id_from_request(None, Some(id))?,
            None => node::id_from_request(None, None)?,
        };
        self.refuse_leader_deletion(&id)?;
        let _guard = self.0.nodes_lock.lock().await;
        let record = node::load(&self.0.leadership, &id).await?;
        check_deletable(
            &record,
            req.safety_bypass_has_roles.is_some(),
            req.safety_bypass_not_decommissioned.is_some(),
        )?;

        // Revoke before deleting (upstream revokes nothing): revocation is idempotent, so if
        // the deletion then fails the caller's retry revokes again (a no-op) and deletes. In
        // the other order a failed revocation after a successful deletion could not be
        // retried (the retry finds no node) and the node would keep authenticating.
        let serial = pki::revoke_node(self.0.ns(), &record.public_key()?).await?;
        node::delete(&self.0.leadership, &record).await?;
        // Refuse the node here from its very next call; other curators learn it from the
        // CRL watch within milliseconds.
        if let Some(serial) = serial {
            self.0.revocations.revoke_serial(&serial);
        }
        self.0.heartbeats.forget(&id);
        tracing::info!(
            "deleted node {id} (was {}); its certificate is revoked",
            state_name(&record)
        );

        // Also called for nodes without the ConsensusMember role: it removes a learner left
        // behind by an interrupted UpdateNodeRoles, and is a no-op for non-members. Failures
        // are only logged: the record is already gone, so failing the call would make the
        // caller retry into NotFound. A stale member is visible in etcd's member list and can
        // be removed by hand; a dead learner only blocks new learners, a dead voter counts
        // against quorum.
        match self
            .0
            .consensus
            .remove_node(&id, reported_address(&record))
            .await
        {
            Ok(true) => tracing::info!("removed the etcd member of deleted node {id}"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("deleted node {id}, but could not remove its etcd member: {e}")
            }
        }
        Ok(Response::new(DeleteNodeResponse {}))
    }

    /// [HEAD] Upserts and deletes labels, in any node state.
    async fn update_node_labels(
        &self,
        req: Request<UpdateNodeLabelsRequest>,
    ) -> Result<Response<UpdateNodeLabelsResponse>, Status> {
        use api::update_node_labels_request::Node as Which;
        let req = req.into_inner();
        check_label_request(&req.upsert, &req.delete)?;
        let id = match &req.node {
            Some(Which::Pubkey(pk)) => node::id_from_request(Some(pk), None)?,
            Some(Which::Id(id)) => node::id_from_request(None, Some(id))?,
            None => node::id_from_request(None, None)?,
        };
        let _guard = self.0.nodes_lock.lock().await;
        let mut record = node::load(&self.0.leadership, &id).await?;
        let pairs = apply_labels(
            record
                .node
                .labels
                .take()
                .map(|l| l.pairs)
                .unwrap_or_default(),
            &req.upsert,
            &req.delete,
        );
        if pairs.len() > MAX_LABELS_PER_NODE {
            return Err(Status::out_of_range(format!(
                "node {id} would have {} labels; at most {MAX_LABELS_PER_NODE} are allowed",
                pairs.len()
            )));
        }
        record.node.labels = Some(NodeLabels { pairs });
        node::save(&self.0.leadership, &record).await?;
        Ok(Response::new(UpdateNodeLabelsResponse {}))
    }
}

impl ManagementService {
    /// Deleting the node that serves this call is refused (ours; upstream only refuses it
    /// indirectly, through the leader's roles, and not at all with the has-roles bypass). It
    /// would revoke the certificate the leader serves with and remove the etcd member its
    /// leadership lives on, mid-call, with nobody in charge to finish the cleanup.
    fn refuse_leader_deletion(&self, id: &str) -> Result<(), Status> {
        if id == self.0.credentials.node_id() {
            return Err(Status::failed_precondition(format!(
                "node {id} is the current curator leader and cannot delete itself; remove its roles \
                 (metroctl node remove role KubernetesController {id}, then ConsensusMember) so \
                 another node leads, then delete it"
            )));
        }
        Ok(())
    }

    /// Carries out a checked, non-empty role change and saves it.
    async fn apply_role_change(
        &self,
        mut record: NodeRecord,
        delta: RoleDelta,
    ) -> Result<(), Status> {
        let before = record.clone();
        let id = record.id.clone();
        let mut roles = record.roles();
        // The leader's own member is removed only after the record is saved: removing it
        // stops the leader's etcd, so a save afterwards could not succeed (spec HEAD removes
        // first, which is right for every other node: a failed removal keeps the role).
        let own_removal = delta.consensus == Some(false) && id == self.0.credentials.node_id();
        let mut added_member = false;
        match delta.consensus {
            Some(true) => {
                roles.consensus_member = Some(self.add_member(&record).await?);
                added_member = true;
            }
            Some(false) => {
                if !own_removal {
                    self.remove_member(&record).await?;
                }
                roles.consensus_member = None;
            }
            None => {}
        }
        set_role(
            &mut roles.kubernetes_controller,
            delta.controller,
            KubernetesController {},
        );
        set_role(
            &mut roles.kubernetes_worker,
            delta.worker,
            KubernetesWorker {},
        );
        record.node.roles = Some(roles);

        if let Err(e) = node::save(&self.0.leadership, &record).await {
            if added_member {
                // Leave no learner without a role behind: etcd admits one learner at a time,
                // so an orphan would block every later ConsensusMember addition.
                if let Err(re) = self.remove_member(&record).await {
                    tracing::warn!(
                        "could not roll back the etcd learner of node {id}: {}",
                        re.message()
                    );
                }
            }
            return Err(e);
        }
        if own_removal && let Err(e) = self.remove_member(&record).await {
            // Put the role back: the member is still there.
            if let Err(re) = node::save(&self.0.leadership, &before).await {
                tracing::warn!(
                    "could not restore the ConsensusMember role of node {id}: {}",
                    re.message()
                );
            }
            return Err(e);
        }
        tracing::info!(
            "roles of node {id} are now {}",
            role_names(record.node.roles.as_ref())
        );
        Ok(())
    }

    /// Adds the node to etcd as a learner at its reported address; the role data it needs
    /// to start its member.
    async fn add_member(&self, record: &NodeRecord) -> Result<ConsensusMember, Status> {
        let id = &record.id;
        let address = reported_address(record).ok_or_else(|| no_address(record))?;
        let key = record.public_key()?;
        let join = self
            .0
            .consensus
            .add_node(&key, address)
            .await
            .map_err(|e| consensus_status(id, e))?;
        Ok(crate::bootstrap::consensus_role(&join))
    }

    /// Removes the node's etcd member (a no-op if it has none).
    async fn remove_member(&self, record: &NodeRecord) -> Result<(), Status> {
        self.0
            .consensus
            .remove_node(&record.id, reported_address(record))
            .await
            .map(|_| ())
            .map_err(|e| consensus_status(&record.id, e))
    }
}

/// The role changes a request really makes: a field equal to the current role is no change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RoleDelta {
    consensus: Option<bool>,
    controller: Option<bool>,
    worker: Option<bool>,
}

impl RoleDelta {
    fn new(current: &NodeRoles, req: &UpdateNodeRolesRequest) -> Self {
        let change = |want: Option<bool>, has: bool| want.filter(|w| *w != has);
        Self {
            consensus: change(req.consensus_member, current.consensus_member.is_some()),
            controller: change(
                req.kubernetes_controller,
                current.kubernetes_controller.is_some(),
            ),
            worker: change(req.kubernetes_worker, current.kubernetes_worker.is_some()),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn adds_any(&self) -> bool {
        [self.consensus, self.controller, self.worker].contains(&Some(true))
    }
}

/// The preconditions of UpdateNodeRoles (spec 4.8), on the request as given (so removing
/// ConsensusMember and KubernetesController in one request fails, as upstream).
fn check_role_change(
    record: &NodeRecord,
    req: &UpdateNodeRolesRequest,
    delta: &RoleDelta,
) -> Result<(), Status> {
    let id = &record.id;
    let roles = record.roles();
    // The DecommissionNode contract: "none may be added to it while it is decommissioning".
    // Roles are otherwise not state-checked (upstream allows them on NEW nodes).
    if delta.adds_any() && is_decommissioning(record.state()) {
        return Err(Status::failed_precondition(format!(
            "node {id} is {}: no role may be added to a node that is being decommissioned; once it is \
             DECOMMISSIONED remove it with metroctl node delete {id}",
            state_name(record)
        )));
    }
    if req.consensus_member == Some(false) && roles.kubernetes_controller.is_some() {
        return Err(Status::failed_precondition(format!(
            "node {id} is a KubernetesController, which needs ConsensusMember; remove that role first: \
             metroctl node remove role KubernetesController {id}"
        )));
    }
    let consensus_after = delta.consensus.unwrap_or(roles.consensus_member.is_some());
    if req.kubernetes_controller == Some(true) && !consensus_after {
        return Err(Status::failed_precondition(format!(
            "node {id} is not a ConsensusMember, which KubernetesController needs; add it first (or in the \
             same request): metroctl node add role ConsensusMember {id}"
        )));
    }
    if delta.consensus == Some(true) && reported_address(record).is_none() {
        return Err(no_address(record));
    }
    Ok(())
}

/// DecommissionNode's preconditions: UP, no roles.
fn check_decommissionable(record: &NodeRecord) -> Result<(), Status> {
    let id = &record.id;
    if record.state() != NodeState::Up {
        let hint = match record.state() {
            NodeState::New | NodeState::Standby => {
                format!(
                    "; a node that never joined needs no decommissioning: metroctl node delete {id}"
                )
            }
            _ => String::new(),
        };
        return Err(Status::failed_precondition(format!(
            "node {id} is {}; only an UP node can be decommissioned{hint}",
            state_name(record)
        )));
    }
    if record.has_roles() {
        let roles = role_names(record.node.roles.as_ref());
        return Err(Status::failed_precondition(format!(
            "node {id} still has roles ({roles}); a node must have none to be decommissioned. Remove them \
             first: metroctl node remove role <role> {id}"
        )));
    }
    Ok(())
}

/// DeleteNode's preconditions (spec 4.8) with the safety bypasses.
fn check_deletable(
    record: &NodeRecord,
    bypass_has_roles: bool,
    bypass_not_decommissioned: bool,
) -> Result<(), Status> {
    let id = &record.id;
    if !bypass_has_roles {
        let roles = record.roles();
        // Upstream's order: the most dangerous role is named.
        let held = [
            (roles.consensus_member.is_some(), "ConsensusMember"),
            (
                roles.kubernetes_controller.is_some(),
                "KubernetesController",
            ),
            (roles.kubernetes_worker.is_some(), "KubernetesWorker"),
        ];
        if let Some((_, role)) = held.iter().find(|(has, _)| *has) {
            return Err(Status::failed_precondition(format!(
                "node {id} still has the {role} role; remove it first (metroctl node remove role {role} {id}) \
                 or, for a node that is gone for good, delete with --bypass-has-roles"
            )));
        }
    }
    match record.state() {
        NodeState::New | NodeState::Standby | NodeState::Decommissioned => Ok(()),
        NodeState::Up if bypass_not_decommissioned => Ok(()),
        NodeState::Up => Err(Status::failed_precondition(format!(
            "node {id} is UP and must be decommissioned first (metroctl node decommission {id}, then wait for \
             DECOMMISSIONED); for a node that is unreachable, delete with --bypass-not-decommissioned"
        ))),
        // Ours: the node is wiping itself; deleting it now would cut it off before it reports
        // DECOMMISSIONED, so wait unless told otherwise.
        NodeState::DecommissionRequested | NodeState::Decommissioning
            if bypass_not_decommissioned =>
        {
            Ok(())
        }
        NodeState::DecommissionRequested | NodeState::Decommissioning => {
            Err(Status::failed_precondition(format!(
                "node {id} is {}: decommissioning in progress; wait until it is DECOMMISSIONED, or delete with \
             --bypass-not-decommissioned if it will never finish",
                state_name(record)
            )))
        }
        NodeState::Invalid => Err(Status::internal(format!(
            "node {id} has an invalid state ({})",
            state_name(record)
        ))),
    }
}

/// Whether a node has entered decommissioning (ours, see DecommissionNode).
fn is_decommissioning(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::DecommissionRequested | NodeState::Decommissioning | NodeState::Decommissioned
    )
}

/// Sets or drops one marker role.
fn set_role<T>(slot: &mut Option<T>, change: Option<bool>, marker: T) {
    match change {
        Some(true) => *slot = Some(marker),
        Some(false) => *slot = None,
        None => {}
    }
}

/// The address the node reported in its status, if any and if it is an IP.
fn reported_address(record: &NodeRecord) -> Option<IpAddr> {
    record
        .node
        .status
        .as_ref()
        .and_then(|s| s.external_address.parse().ok())
}

fn no_address(record: &NodeRecord) -> Status {
    let id = &record.id;
    Status::failed_precondition(format!(
        "node {id} ({}) has not reported its address yet; a node becomes a ConsensusMember at the address it \
         reports once UP and running, so wait for it (metroctl node describe {id} shows the address)",
        state_name(record)
    ))
}

/// Maps a consensus membership failure.
fn consensus_status(id: &str, e: consensus::Error) -> Status {
    match e {
        // Spec HEAD says Unavailable, but retrying cannot help: the cluster first needs more
        // healthy voters. FailedPrecondition tells the caller to change something.
        consensus::Error::QuorumWouldBreak { reason, .. } => Status::failed_precondition(format!(
            "removing the etcd member of node {id} would break etcd quorum ({reason}); add or repair \
             ConsensusMember nodes first"
        )),
        consensus::Error::Etcd(e) if e.to_string().contains("too many learner") => {
            Status::unavailable(format!(
                "cannot add node {id} to etcd yet: etcd admits one learner at a time and another new member is \
             not yet promoted; retry once it is ({e})"
            ))
        }
        e => Status::unavailable(format!("changing the etcd membership of node {id}: {e}")),
    }
}

/// The node as GetNodes shows it: roles reduced to presence markers (no certificates or
/// peers), health at `now`, labels sorted by key.
fn api_node(r: &NodeRecord, heartbeats: &Heartbeats, now: Instant) -> api::Node {
    let (health, since) = heartbeats.health(&r.id, r.state(), now);
    api::Node {
        pubkey: r.node.public_key.clone(),
        id: r.id.clone(),
        state: r.node.fsm_state,
        status: r.node.status.clone(),
        roles: Some(presence(&r.roles())),
        health: health as i32,
        time_since_heartbeat: Some(health::to_proto(since)),
        tpm_usage: r.node.tpm_usage,
        labels: Some(NodeLabels {
            pairs: sorted(
                r.node
                    .labels
                    .as_ref()
                    .map(|l| l.pairs.clone())
                    .unwrap_or_default(),
            ),
        }),
    }
}

/// Roles with the ConsensusMember data stripped: managers see who holds which role, not the
/// etcd certificates.
fn presence(roles: &NodeRoles) -> NodeRoles {
    NodeRoles {
        kubernetes_worker: roles.kubernetes_worker,
        consensus_member: roles
            .consensus_member
            .as_ref()
            .map(|_| ConsensusMember::default()),
        kubernetes_controller: roles.kubernetes_controller,
    }
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
                // [HEAD] field; harmless for baseline clients, which skip it.
                id: n.id.clone(),
            })
            .collect(),
    }
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

/// Checks an UpdateNodeLabels request (spec 4.8 [HEAD]): valid keys and values, no key
/// upserted or deleted twice, none both upserted and deleted.
fn check_label_request(upsert: &[Pair], delete: &[String]) -> Result<(), Status> {
    let mut upserted = std::collections::HashSet::new();
    for p in upsert {
        validate_label_key(&p.key)
            .map_err(|e| Status::invalid_argument(format!("label key {:?}: {e}", p.key)))?;
        validate_label_value(&p.value).map_err(|e| {
            Status::invalid_argument(format!("value {:?} of label {:?}: {e}", p.value, p.key))
        })?;
        if !upserted.insert(p.key.as_str()) {
            return Err(Status::invalid_argument(format!(
                "label {:?} is upserted twice",
                p.key
            )));
        }
    }
    let mut deleted = std::collections::HashSet::new();
    for k in delete {
        validate_label_key(k)
            .map_err(|e| Status::invalid_argument(format!("label key {k:?}: {e}")))?;
        if !deleted.insert(k.as_str()) {
            return Err(Status::invalid_argument(format!(
                "label {k:?} is deleted twice"
            )));
        }
        if upserted.contains(k.as_str()) {
            return Err(Status::invalid_argument(format!(
                "label {k:?} is both upserted and deleted"
            )));
        }
    }
    Ok(())
}

/// The labels after deleting and upserting, sorted by key.
fn apply_labels(mut pairs: Vec<Pair>, upsert: &[Pair], delete: &[String]) -> Vec<Pair> {
    pairs.retain(|p| !delete.contains(&p.key) && !upsert.iter().any(|u| u.key == p.key));
    pairs.extend(upsert.iter().cloned());
    sorted(pairs)
}

fn sorted(mut pairs: Vec<Pair>) -> Vec<Pair> {
    pairs.sort_by(|a, b| a.key.cmp(&b.key));
    pairs
}

/// A label key (upstream HEAD `ValidateLabelKey`): an optional DNS-subdomain prefix and `/`,
/// then a name as [`validate_label_value`] but non-empty.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            validate_label_prefix(prefix)?;
            if name.contains('/') {
                return Err("at most one '/' (after the prefix) is allowed".to_string());
            }
            name
        }
    };
    if name.is_empty() {
        return Err("name is empty".to_string());
    }
    validate_label_value(name)
}

/// A label value (upstream HEAD `ValidateLabelValue`): up to 63 of `[a-zA-Z0-9._-]`, starting
/// and ending alphanumeric; may be empty.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > MAX_LABEL_LENGTH {
        return Err(format!("longer than {MAX_LABEL_LENGTH} characters"));
    }
    let bytes = v.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return Err("must start and end with a letter or digit".to_string());
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed".to_string());
    }
    Ok(())
}

/// A label key prefix: a DNS subdomain (RFC 1123: dot-separated labels of 1–63 letters,
/// digits and '-', not starting or ending with '-').
fn validate_label_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("prefix before '/' is empty".to_string());
    }
    if prefix.len() > MAX_LABEL_PREFIX_LENGTH {
        return Err(format!(
            "prefix longer than {MAX_LABEL_PREFIX_LENGTH} characters"
        ));
    }
    for part in prefix.split('.') {
        let ok = !part.is_empty()
            && part.len() <= MAX_LABEL_LENGTH
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(format!("prefix {prefix:?} is not a DNS name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        for ok in [
            "a",
            "a.b_c-d",
            "example.com/x",
            "sub.example.com/a1",
            &"a".repeat(63),
        ] {
            assert!(validate_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "/a",
            "ex ample/a",
            "a/b/c",
            "example.com/",
            &"a".repeat(64),
            "-x.com/a",
        ] {
            assert!(validate_label_key(bad).is_err(), "{bad}");
        }
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("x_").is_err());
    }

    #[test]
    fn label_requests() {
        let pair = |k: &str, v: &str| Pair {
            key: k.to_string(),
            value: v.to_string(),
        };
        assert!(check_label_request(&[pair("a", "1"), pair("a", "2")], &[]).is_err());
        assert!(check_label_request(&[pair("a", "1")], &["a".to_string()]).is_err());
        assert!(check_label_request(&[], &["b".to_string(), "b".to_string()]).is_err());
        let out = apply_labels(
            vec![pair("z", "1"), pair("b", "2"), pair("c", "3")],
            &[pair("a", "0"), pair("b", "9")],
            &["c".to_string()],
        );
        assert_eq!(out, vec![pair("a", "0"), pair("b", "9"), pair("z", "1")]);
    }
}
