//! The node lifecycle as a manager drives it: listing nodes with their health (GetNodes),
//! admitting them (ApproveNode), retiring them (DecommissionNode, ours) and removing them
//! (DeleteNode). State changes go through [`node::set_state`], i.e. the lifecycle table.

use std::sync::Arc;
use std::time::Instant;

use proto::api::{
    self, ApproveNodeRequest, ApproveNodeResponse, DecommissionNodeRequest,
    DecommissionNodeResponse, DeleteNodeRequest, DeleteNodeResponse, GetNodesRequest,
};
use proto::common::node_roles::ConsensusMember;
use proto::common::{NodeLabels, NodeRoles, NodeState};
use tonic::Status;
use tonic::codegen::BoxStream;

use super::labels::sorted;
use super::{is_decommissioning, node_id, role_names, state_name};
use crate::health::{self, Heartbeats};
use crate::leader::{Leader, optimistic};
use crate::state::{NodeRecord, node, pki};

/// Records in the first page GetNodes reads: few, so that the first nodes go out within
/// milliseconds however large the cluster.
const FIRST_PAGE: usize = 100;

/// Records in each later page: large enough that the per-read cost is small against
/// decoding and filtering, small enough that a page is a few hundred KiB.
const PAGE: usize = 500;

/// Matching nodes buffered between the reader and a slow caller; the reader waits beyond.
const STREAM_BUFFER: usize = 256;

/// Every node (or those the CEL filter selects) with its health, from one snapshot of the
/// store read in pages, each page's matches sent while the next is read. The first page is
/// read and filtered before the call answers, so a filter that fails on the first nodes (a
/// type error, a missing field) or is over a limit is the call's status, not a stream cut
/// off after its headers.
pub(super) async fn get_nodes(
    leader: &Arc<Leader>,
    req: GetNodesRequest,
) -> Result<BoxStream<api::Node>, Status> {
    // Compile first: a broken filter costs no etcd read.
    let filter = leader.filters.compile(req.filter).await?;
    // One instant for all nodes, as upstream, so their heartbeat ages are comparable.
    let now = leader.heartbeats.now();
    let first = node::page(&leader.leadership, None, FIRST_PAGE).await?;
    let mut selection = leader.filters.selection(&filter, first.remaining)?;
    let nodes = first
        .records
        .iter()
        .map(|r| api_node(r, &leader.heartbeats, now))
        .collect();
    let selected = selection.select(nodes).await?;
    let Some(mut cursor) = first.next else {
        return Ok(Box::pin(futures::stream::iter(
            selected.into_iter().map(Ok),
        )));
    };

    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let leader = leader.clone();
    tokio::spawn(async move {
        for node in selected {
            if tx.send(Ok(node)).await.is_err() {
                return;
            }
        }
        loop {
            let page = match node::page(&leader.leadership, Some(&cursor), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let nodes = page
                .records
                .iter()
                .map(|r| api_node(r, &leader.heartbeats, now))
                .collect();
            // Stops at the next node if the caller goes away (the send below fails, this
            // task ends and drops the evaluation).
            let selected = tokio::select! {
                selected = selection.select(nodes) => selected,
                _ = tx.closed() => return,
            };
            match selected {
                Ok(selected) => {
                    for node in selected {
                        if tx.send(Ok(node)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            match page.next {
                Some(next) => cursor = next,
                None => return,
            }
        }
    });
    let mut rx = rx;
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

/// NEW → STANDBY; STANDBY and UP are already approved (idempotent).
pub(super) async fn approve_node(
    leader: &Leader,
    req: ApproveNodeRequest,
) -> Result<ApproveNodeResponse, Status> {
    let id = node_id(Some(&req.pubkey), None)?;
    let id = &id;
    optimistic("ApproveNode", move || async move {
        let mut record = node::load(&leader.leadership, id).await?;
        match record.state() {
            NodeState::Standby | NodeState::Up => {}
            NodeState::New => {
                node::set_state(&leader.leadership, &mut record, NodeState::Standby).await?;
                tracing::info!("approved node {id} (NEW → STANDBY)");
            }
            _ => {
                return Err(Status::failed_precondition(format!(
                    "node {id} is {}; only a NEW node can be approved (STANDBY and UP nodes already are)",
                    state_name(&record)
                )));
            }
        }
        Ok(ApproveNodeResponse {})
    })
    .await
}

/// Ours (upstream: Unimplemented): UP and role-less → DECOMMISSION_REQUESTED. The node sees
/// that through Curator.Watch, wipes itself and reports progress with
/// Curator.ReportDecommission (DECOMMISSIONING, then DECOMMISSIONED). A node that is down
/// when asked does so when it next starts (JoinNode lets it in for that); one that will
/// never come back is finished by DeleteNode with the not-decommissioned bypass.
pub(super) async fn decommission_node(
    leader: &Leader,
    req: DecommissionNodeRequest,
) -> Result<DecommissionNodeResponse, Status> {
    use api::decommission_node_request::Node as Which;
    let id = match &req.node {
        Some(Which::Pubkey(pk)) => node_id(Some(pk), None)?,
        Some(Which::Id(id)) => node_id(None, Some(id))?,
        None => node_id(None, None)?,
    };
    let id = &id;
    optimistic("DecommissionNode", move || async move {
        let mut record = node::load(&leader.leadership, id).await?;
        if is_decommissioning(record.state()) {
            // Idempotent: the request has already been made.
            return Ok(DecommissionNodeResponse {});
        }
        check_decommissionable(&record)?;
        node::set_state(
            &leader.leadership,
            &mut record,
            NodeState::DecommissionRequested,
        )
        .await?;
        tracing::info!("decommissioning of node {id} requested (UP → DECOMMISSION_REQUESTED)");
        Ok(DecommissionNodeResponse {})
    })
    .await
}

/// Removes a node. Beyond upstream, which leaves a deleted node able to authenticate: its
/// node ID and certificate are revoked (and the issued copy dropped), so its open streams end
/// with Unauthenticated, its heartbeats are forgotten and its etcd member removed.
///
/// The steps are ordered so that a call cut at any point (client cancel, deadline, a
/// leadership change) leaves something a retry or the leader's background reconciler
/// finishes ([`finish_deletion`]); a node whose deletion has begun is never half-usable.
pub(super) async fn delete_node(
    leader: &Leader,
    req: DeleteNodeRequest,
) -> Result<DeleteNodeResponse, Status> {
    use api::delete_node_request::Node as Which;
    let id = match &req.node {
        Some(Which::Pubkey(pk)) => node_id(Some(pk), None)?,
        Some(Which::Id(id)) => node_id(None, Some(id))?,
        None => node_id(None, None)?,
    };
    refuse_leader_deletion(leader, &id)?;
    // Removes an etcd member: not while the reconciler looks at the members.
    let _membership = leader.membership_lock.lock().await;
    let l = &leader.leadership;
    let (id, req) = (&id, &req);
    let record = optimistic("DeleteNode", move || async move {
        let record = node::load(l, id).await?;
        // A deletion that has begun (tombstone written) was checked when it began: a retry,
        // with or without the bypasses, finishes it. One that begins now begins only if the
        // record is still the one checked (a role added meanwhile is seen on the next try).
        if !node::is_deleted(l, id).await? {
            check_deletable(
                &record,
                req.safety_bypass_has_roles.is_some(),
                req.safety_bypass_not_decommissioned.is_some(),
            )?;
            node::mark_deleted_unchanged(l, &record).await?;
        }
        Ok(record)
    })
    .await?;
    finish_deletion(leader, &record).await?;
    Ok(DeleteNodeResponse {})
}

/// Deletes `record`'s node, or finishes a deletion that was cut short, in an order where
/// every prefix is safe and every step is idempotent. The caller holds `membership_lock`.
/// The record may change while this runs (the node still reports its status until its
/// certificate is revoked): the last step then reads it again.
///
/// 1. The tombstone (under the leadership guard): from here on the node ID is revoked on
///    every curator, RegisterNode refuses the key, JoinNode refuses the node, and the
///    reconciler knows the deletion must be finished.
/// 2. The certificate revoked in the CRL and dropped (PKI writes, under the guard too).
/// 3. The etcd member removed (by node ID only: the address in the record is what the node
///    reported about itself, and a node claiming a voter's address must not take that voter
///    with it). A failure is the caller's error: the record is still there, so a retry (or
///    the reconciler) finishes the deletion instead of finding nothing to delete while a
///    dead voter counts against quorum.
/// 4. The record and its join-key index entry removed.
pub(crate) async fn finish_deletion(leader: &Leader, record: &NodeRecord) -> Result<(), Status> {
    let l = &leader.leadership;
    let id = &record.id;
    node::mark_deleted(l, id).await?;
    let serial = pki::revoke_node(l, &record.public_key()?).await?;
    // Refuse the node here from its very next call, and end its open streams; other
    // curators learn it from the tombstone and the CRL within milliseconds, other nodes from
    // the leader (Curator.WatchRevocations).
    leader.revocations.revoke_node(id);
    if let Some(serial) = serial {
        leader.revocations.revoke_serial(&serial);
    }
    leader.heartbeats.forget(id);
    leader.live.forget(id);
    fail::fail_point!("curator::delete_node::after_tombstone", |arg| {
        crate::failpoint::exit_if_asked("curator::delete_node::after_tombstone", arg.as_deref());
        Err(Status::cancelled(
            "failpoint curator::delete_node::after_tombstone",
        ))
    });

    // Also for nodes without the ConsensusMember role: it removes a learner left behind by
    // an interrupted UpdateNodeRoles, and is a no-op for non-members.
    let removal = async {
        fail::fail_point!("curator::delete_node::remove_member", |arg| {
            crate::failpoint::exit_if_asked("curator::delete_node::remove_member", arg.as_deref());
            Err(consensus::Error::Process(
                "failpoint curator::delete_node::remove_member".into(),
            ))
        });
        leader.consensus.remove_node(id).await
    };
    match removal.await {
        Ok(true) => tracing::info!("removed the etcd member of deleted node {id}"),
        Ok(false) => {}
        Err(e) => {
            let status = super::roles::consensus_status(id, e);
            return Err(Status::new(
                status.code(),
                format!(
                    "node {id} is revoked and marked deleted, but its etcd member is not removed \
                     yet: {}. Retry the deletion; the curator leader also retries it in the \
                     background",
                    status.message()
                ),
            ));
        }
    }
    let mut current = Some(record.clone());
    optimistic("DeleteNode", move || {
        let first = current.take();
        async move {
            let record = match first {
                Some(record) => record,
                None => match node::load_opt(l, id).await? {
                    Some(record) => record,
                    // Gone already: the deletion is done.
                    None => return Ok(()),
                },
            };
            Ok(node::delete(l, &record).await?)
        }
    })
    .await?;
    tracing::info!(
        "deleted node {id} (was {}); its certificate is revoked",
        state_name(record)
    );
    Ok(())
}

/// Deleting the node that serves this call is refused (ours; upstream only refuses it
/// indirectly, through the leader's roles, and not at all with the has-roles bypass). It
/// would revoke the certificate the leader serves with and remove the etcd member its
/// leadership lives on, mid-call, with nobody in charge to finish the cleanup.
fn refuse_leader_deletion(leader: &Leader, id: &str) -> Result<(), Status> {
    if id == leader.credentials.node_id() {
        return Err(Status::failed_precondition(format!(
            "node {id} is the current curator leader and cannot delete itself; remove its roles \
             (metroctl node remove role KubernetesController {id}, then ConsensusMember) so \
             another node leads, then delete it"
        )));
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

/// DeleteNode's preconditions with the safety bypasses.
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
