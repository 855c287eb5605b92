//! The leader's background reconciler (upstream `impl_leader_background.go`, which syncs etcd
//! membership every 5 s): it clears whatever a handler cut halfway left behind, so nothing
//! waits for an operator.
//!
//! Each pass, under `membership_lock` (so it never sees a membership change whose role is not
//! saved yet), compares the etcd member list with the node records:
//! - a node whose deletion has begun (tombstone written, record still there) is finished:
//!   revoked, its member removed, its record removed ([`finish_deletion`]);
//! - a member whose node has no record (deleted) is removed, voters with etcd's quorum check;
//! - a learner whose node lacks the ConsensusMember role (UpdateNodeRoles cut between adding
//!   the learner and saving the role) is removed: it would block every later member addition,
//!   since etcd admits one learner at a time, and the node never starts it;
//! - a voter whose node lacks the role (the role removed, the member not yet) is removed too,
//!   with the quorum check;
//! - a learner nobody recorded (its adder stopped before recording it) is removed;
//! - a node holding the role without a member (removal cut after the member went) loses the
//!   role, and KubernetesController with it, which needs it.
//!
//! The node record is the truth, unlike upstream, where etcd membership is and a cut
//! UpdateNodeRoles ends up completed: a change the caller saw fail should not happen later
//! behind their back. As upstream, nothing is done unless the leader finds its own node among
//! both the members and the records (a sign that members and records are matched right), and
//! the leader's own member is never touched (removing it would stop the leader's etcd).
//! Membership changes are not guarded by the leadership (etcd has no such transaction), but
//! the member list is read before the records, and every record write is guarded, by the
//! leadership and by the record's revision as read: a record a handler changed since the
//! pass read it is left for the next pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kv::etcd_client::GetOptions;
use tokio_util::sync::CancellationToken;

use super::Leader;
use super::management::finish_deletion;
use crate::state::{StateError, node};

/// How often the reconciler runs (upstream: 5 s).
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(5);

/// Runs a pass every `period` until `stop` fires or the leadership is lost. Failures of a
/// pass are logged; the next pass starts over.
pub async fn run(leader: Arc<Leader>, period: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        match reconcile(&leader).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("reconciler: {n} leftover(s) cleared"),
            Err(StateError::LostLeadership) => {
                tracing::info!("reconciler: leadership lost; stopping");
                return;
            }
            Err(e) => tracing::warn!("reconciler: {e}"),
        }
    }
}

/// One etcd member as the reconciler sees it.
#[derive(Debug)]
struct Member {
    id: u64,
    /// The node it belongs to: its name once started, the recorded ID before.
    node: Option<String>,
    learner: bool,
}

/// One pass; returns how many leftovers it cleared. A leftover it cannot clear now (e.g.
/// the quorum check refuses) is logged and retried next pass.
pub async fn reconcile(leader: &Leader) -> Result<usize, StateError> {
    let _membership = leader.membership_lock.lock().await;
    let l = &leader.leadership;
    let own = leader.credentials.node_id();
    // Members before records: a node created after the member list was read cannot be
    // mistaken for a member's missing node.
    let members = members(&leader.consensus).await?;
    let records = node::load_all(l).await?;
    let tombstones: HashSet<String> = node::tombstones(l).await?.into_iter().collect();
    let by_id: HashMap<&str, &node::NodeRecord> =
        records.iter().map(|r| (r.id.as_str(), r)).collect();
    if !members
        .iter()
        .any(|m| m.node.as_deref() == Some(own.as_str()))
        || !by_id.contains_key(own.as_str())
    {
        return Err(StateError::Internal(format!(
            "the leader {own} is not among both the etcd members and the nodes; not reconciling"
        )));
    }

    let mut cleared = 0;
    // Half-done deletions first: they remove their members themselves.
    for record in records
        .iter()
        .filter(|r| tombstones.contains(&r.id) && r.id != own)
    {
        match finish_deletion(leader, record).await {
            Ok(()) => {
                tracing::info!("reconciler: finished deleting node {}", record.id);
                cleared += 1;
            }
            Err(e) => tracing::warn!(
                "reconciler: cannot finish deleting node {} yet: {}",
                record.id,
                e.message()
            ),
        }
    }

    for m in &members {
        let why = match m.node.as_deref() {
            Some(id) if id == own => continue,
            None if m.learner => "a learner no node is recorded for",
            None => continue,
            Some(id) if tombstones.contains(id) => continue,
            Some(id) => match by_id.get(id) {
                None => "a member of a node that does not exist",
                Some(r) if r.roles().consensus_member.is_some() => continue,
                Some(_) if m.learner => "a learner of a node without the ConsensusMember role",
                Some(_) => "a voter of a node without the ConsensusMember role",
            },
        };
        let result = match m.node.as_deref() {
            // By node ID: the quorum check, and the node's member record goes with it.
            Some(id) => leader.consensus.remove_node(id).await.map(|_| ()),
            None => leader
                .consensus
                .client()
                .member_remove(m.id)
                .await
                .map(|_| ())
                .map_err(Into::into),
        };
        let label = m.node.clone().unwrap_or_else(|| format!("{:x}", m.id));
        match result {
            Ok(()) => {
                tracing::info!("reconciler: removed etcd member {label}, {why}");
                cleared += 1;
            }
            Err(e) => tracing::warn!("reconciler: cannot remove etcd member {label} ({why}): {e}"),
        }
    }

    let members_of: HashSet<&str> = members.iter().filter_map(|m| m.node.as_deref()).collect();
    for record in &records {
        let roles = record.roles();
        if roles.consensus_member.is_none()
            || members_of.contains(record.id.as_str())
            || tombstones.contains(&record.id)
            || record.id == own
        {
            continue;
        }
        let mut changed = record.clone();
        let roles = changed.node.roles.get_or_insert_with(Default::default);
        roles.consensus_member = None;
        roles.kubernetes_controller = None;
        match node::update(l, &mut changed).await {
            Ok(()) => {}
            Err(StateError::Conflict { .. }) => {
                tracing::info!(
                    "reconciler: node {} changed during the pass; looking again next pass",
                    record.id
                );
                continue;
            }
            Err(e) => return Err(e),
        }
        tracing::info!(
            "reconciler: node {} has no etcd member; its ConsensusMember role (and \
             KubernetesController) removed",
            record.id
        );
        cleared += 1;
    }
    Ok(cleared)
}

/// The etcd members, each with its node: by name, or by the member ID recorded when it was
/// added (a learner has no name until it starts).
async fn members(consensus: &consensus::Status) -> Result<Vec<Member>, StateError> {
    let list = consensus
        .client()
        .member_list()
        .await
        .map_err(StateError::etcd)?;
    let recorded = consensus
        .namespaced(&[consensus::MEMBERS_KEYSPACE])
        .map_err(StateError::etcd)?
        .get("/", Some(GetOptions::new().with_prefix()))
        .await
        .map_err(StateError::etcd)?;
    let recorded: HashMap<u64, String> = recorded
        .kvs()
        .iter()
        .filter_map(|kv| {
            let node = String::from_utf8_lossy(kv.key())
                .strip_prefix('/')?
                .to_string();
            let id = u64::from_str_radix(std::str::from_utf8(kv.value()).ok()?, 16).ok()?;
            Some((id, node))
        })
        .collect();
    Ok(list
        .members()
        .iter()
        .map(|m| Member {
            id: m.id(),
            node: if m.name().is_empty() {
                recorded.get(&m.id()).cloned()
            } else {
                Some(m.name().to_string())
            },
            learner: m.is_learner(),
        })
        .collect())
}
