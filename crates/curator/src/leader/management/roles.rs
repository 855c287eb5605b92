//! UpdateNodeRoles: assigning and removing ConsensusMember, KubernetesController and
//! KubernetesWorker, including the etcd membership changes ConsensusMember needs (ours beyond the
//! baseline, as later upstream Monogon: adding makes the node an etcd learner, removing removes its
//! member).

use proto::api::{self, UpdateNodeRolesRequest, UpdateNodeRolesResponse};
use proto::common::NodeRoles;
use proto::common::node_roles::{ConsensusMember, KubernetesController, KubernetesWorker};
use tonic::Status;

use super::{is_decommissioning, node_id, reported_address, role_names, state_name};
use crate::leader::{Leader, optimistic};
use crate::state::{NodeRecord, node};

/// Sets or drops roles. Order as upstream: ConsensusMember first (KubernetesController
/// depends on it), then KubernetesController, then KubernetesWorker. All preconditions
/// are checked before anything changes, so a refused request leaves etcd membership
/// untouched (upstream could add an etcd member and then refuse the controller part).
pub(super) async fn update_node_roles(
    leader: &Leader,
    req: UpdateNodeRolesRequest,
) -> Result<UpdateNodeRolesResponse, Status> {
    use api::update_node_roles_request::Node as Which;
    let id = match &req.node {
        Some(Which::Pubkey(pk)) => node_id(Some(pk), None)?,
        Some(Which::Id(id)) => node_id(None, Some(id))?,
        None => node_id(None, None)?,
    };
    // A ConsensusMember change adds or removes an etcd member before (or after) the role is
    // saved: not while the reconciler compares members with roles. Other role changes are
    // record writes only.
    let _membership = match req.consensus_member {
        Some(_) => Some(leader.membership_lock.lock().await),
        None => None,
    };
    let (id, req) = (&id, &req);
    optimistic("UpdateNodeRoles", move || async move {
        // Upstream maps load errors other than NotFound to InvalidArgument; an etcd failure
        // is not the caller's mistake, so it stays Unavailable here.
        let record = node::load(&leader.leadership, id).await?;
        let delta = RoleDelta::new(&record.roles(), req);
        check_role_change(&record, req, &delta)?;
        if delta.is_empty() {
            // The proto promises no change when the values match the current roles.
            return Ok(UpdateNodeRolesResponse {});
        }
        apply_role_change(leader, record, delta).await?;
        Ok(UpdateNodeRolesResponse {})
    })
    .await
}

/// Carries out a checked, non-empty role change and saves it. If the save conflicts (the
/// record changed since it was read), a member added for it is removed again and the caller
/// starts over from a fresh read.
async fn apply_role_change(
    leader: &Leader,
    mut record: NodeRecord,
    delta: RoleDelta,
) -> Result<(), Status> {
    let id = record.id.clone();
    let mut roles = record.roles();
    let before_roles = record.node.roles.clone();
    // The leader's own member is removed only after the record is saved: removing it
    // stops the leader's etcd, so a save afterwards could not succeed (later upstream
    // Monogon removes first, which is right for every other node: a failed removal keeps the role).
    let own_removal = delta.consensus == Some(false) && id == leader.credentials.node_id();
    let mut added_member = false;
    match delta.consensus {
        Some(true) => {
            roles.consensus_member = Some(add_member(leader, &record).await?);
            added_member = true;
            // The handler cut between the learner and the role (a cancelled call, a deadline,
            // a leadership change): nothing after this point runs.
            fail::fail_point!("curator::update_node_roles::after_learner_add", |arg| {
                crate::failpoint::exit_if_asked(
                    "curator::update_node_roles::after_learner_add",
                    arg.as_deref(),
                );
                Err(Status::cancelled(
                    "failpoint curator::update_node_roles::after_learner_add",
                ))
            });
        }
        Some(false) => {
            if !own_removal {
                remove_member(leader, &record).await?;
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

    if let Err(e) = node::update(&leader.leadership, &mut record).await {
        if added_member {
            // Leave no learner without a role behind: etcd admits one learner at a time,
            // so an orphan would block every later ConsensusMember addition.
            if let Err(re) = remove_member(leader, &record).await {
                tracing::warn!(
                    "could not roll back the etcd learner of node {id}: {}",
                    re.message()
                );
            }
        }
        return Err(e.into());
    }
    if own_removal && let Err(e) = remove_member(leader, &record).await {
        // Put the role back: the member is still there.
        if let Err(re) = restore_roles(leader, &id, before_roles).await {
            tracing::warn!("could not restore the roles of node {id}: {}", re.message());
        }
        return Err(e);
    }
    tracing::info!(
        "roles of node {id} are now {}",
        role_names(record.node.roles.as_ref())
    );
    Ok(())
}

/// Gives node `id` back the roles it had before a change that failed after its save (its
/// member could not be removed), on the record as it is now.
async fn restore_roles(leader: &Leader, id: &str, roles: Option<NodeRoles>) -> Result<(), Status> {
    let roles = &roles;
    optimistic("restoring the roles", move || async move {
        let mut record = node::load(&leader.leadership, id).await?;
        record.node.roles = roles.clone();
        Ok(node::update(&leader.leadership, &mut record).await?)
    })
    .await
}

/// Adds the node to etcd as a learner at its reported address; the role data it needs
/// to start its member.
async fn add_member(leader: &Leader, record: &NodeRecord) -> Result<ConsensusMember, Status> {
    let id = &record.id;
    let address = reported_address(record).ok_or_else(|| no_address(record))?;
    let key = record.public_key()?;
    let join = leader
        .consensus
        .add_node(&key, address)
        .await
        .map_err(|e| consensus_status(id, e))?;
    Ok(crate::bootstrap::consensus_role(&join))
}

/// Removes the node's etcd member (a no-op if it has none).
async fn remove_member(leader: &Leader, record: &NodeRecord) -> Result<(), Status> {
    leader
        .consensus
        .remove_node(&record.id)
        .await
        .map(|_| ())
        .map_err(|e| consensus_status(&record.id, e))
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

/// The preconditions of UpdateNodeRoles, on the request as given (so removing
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

/// Sets or drops one marker role.
fn set_role<T>(slot: &mut Option<T>, change: Option<bool>, marker: T) {
    match change {
        Some(true) => *slot = Some(marker),
        Some(false) => *slot = None,
        None => {}
    }
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
pub(super) fn consensus_status(id: &str, e: consensus::Error) -> Status {
    match e {
        // Later upstream Monogon says Unavailable, but retrying cannot help: the cluster first
        // needs more healthy voters. FailedPrecondition tells the caller to change something.
        consensus::Error::QuorumWouldBreak { reason, .. } => Status::failed_precondition(format!(
            "removing the etcd member of node {id} would break etcd quorum ({reason}); add or repair \
             ConsensusMember nodes first"
        )),
        consensus::Error::PeerUrlInUse { url, member, .. } => Status::failed_precondition(format!(
            "node {id} reports the address of etcd peer URL {url}, which is etcd member {member}'s; \
             the node must report its own address before it can become a ConsensusMember"
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
