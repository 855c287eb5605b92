//! The `rolefetch` worker: the node's roles, first from `data/node/roles.pb` (so a control
//! plane node can restart its etcd and curator before any curator is reachable, needed for a
//! cold start of the whole cluster), then from Curator.Watch of the node itself, persisting
//! every change.
//!
//! The same watch tells the node that it was deleted (a tombstone: exit code 3) or that a
//! manager asked it to decommission itself (state DECOMMISSION_REQUESTED: the process runs
//! the decommissioning procedure, see `crate::decommission`).
//!
//! Each of these, and each role change that would destroy local state (ConsensusMember gone
//! while the node has etcd data: the control plane deletes it; ConsensusMember with another
//! peer PKI than the one on disk: consensus overwrites it), is first confirmed independently
//! of the curator that sent it ([`super::confirm`]). An order that cannot be confirmed is not
//! applied at all (a SECURITY warning names the curator) and the worker fails, so it is
//! restarted and watches again.

use std::sync::Arc;

use proto::common::{NodeRoles, NodeState};
use proto::curator_api::watch_request::{Kind, NodeInCluster};
use proto::curator_api::{Node, WatchRequest};
use supervisor::{Context, Runnable, RunnableResult};

use super::confirm::{Confirmer, Order, same_peer_pki};
use super::controlplane::local_state_present;
use super::{
    Membership, Roleserve, call_failed, describe_roles, follow_leader, gone_message,
    until_cancelled,
};
use crate::exit::Exit;
use crate::storage::contents;

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move {
            let body = follow_leader(&rs, "watching this node", || run(rs.clone(), ctx.clone()));
            until_cancelled(&ctx, body).await
        }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let m = rs.membership().await;
    if rs.roles_now().is_none() {
        match contents::load_roles(&m.data) {
            Ok(Some(roles)) => {
                tracing::info!("persisted roles: {}", describe_roles(&roles));
                rs.set_roles(roles);
            }
            Ok(None) => {}
            // Not fatal: the watch below brings the current roles.
            Err(e) => tracing::warn!("cannot read persisted roles: {e}"),
        }
    }
    ctx.signal_healthy();

    let id = m.node_id();
    let request = WatchRequest {
        kind: Some(Kind::NodeInCluster(NodeInCluster {
            node_id: id.clone(),
        })),
    };
    // The leader this stream comes from: every order on it is that curator's.
    let (leader, mut client) = m.client_of_leader().await?;
    let mut stream = match client.watch(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(call_failed(&rs, &m, "watching this node", s).await),
    };
    // What is on disk as far as this run knows; the first event is always written, which also
    // repairs a roles file that could not be read.
    let mut persisted: Option<NodeRoles> = None;
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("watch of this node ended".into()),
            Err(s) => return Err(call_failed(&rs, &m, "watching this node", s).await),
        };
        if event.node_tombstones.iter().any(|t| t.node_id == id) {
            confirm(&rs, &m, &Order::Deleted, &leader).await?;
            rs.exit(Exit::gone(gone_message(&rs.env, "it was deleted")));
            std::future::pending::<()>().await;
        }
        for node in event.nodes.iter().filter(|n| n.id == id) {
            apply(&rs, &m, &leader, node, &mut persisted).await?;
        }
    }
}

/// Confirms a destructive order of curator `leader`; an unconfirmed one fails the worker.
async fn confirm(rs: &Roleserve, m: &Membership, order: &Order, leader: &str) -> RunnableResult {
    Confirmer::new(rs, m)
        .confirm(order, leader)
        .await
        .map_err(|why| format!("not acting on curator {leader}'s order: {why}").into())
}

/// The order a role change amounts to if it would destroy local etcd state, given the roles
/// the node goes by now (`None`: not known yet) and whether it has local etcd state.
pub fn role_change_order(
    current: Option<&NodeRoles>,
    new: &NodeRoles,
    local_state: bool,
) -> Option<Order> {
    let held = current.and_then(|r| r.consensus_member.as_ref());
    if !local_state {
        // Nothing to destroy, but joining an etcd cluster makes its member this node's
        // source of truth: confirmed unless these very roles were confirmed before.
        return match (&new.consensus_member, held) {
            (Some(new), Some(held)) if same_peer_pki(new, held) => None,
            (Some(new), _) => Some(Order::JoinConsensus(new.clone())),
            (None, _) => None,
        };
    }
    match (&new.consensus_member, held) {
        // Roles unknown or with the role, and now without it: the etcd data is deleted.
        (None, Some(_)) => Some(Order::LeaveConsensus),
        (None, None) if current.is_none() => Some(Order::LeaveConsensus),
        (None, None) => None,
        // The role with another peer PKI than the one the node runs with (or, roles unknown,
        // whatever is on disk): consensus writes it over the local one.
        (Some(new), Some(held)) if same_peer_pki(new, held) => None,
        (Some(new), _) => Some(Order::PeerPki(new.clone())),
    }
}

/// Applies one update of this node's record, from curator `leader`.
async fn apply(
    rs: &Roleserve,
    m: &Membership,
    leader: &str,
    node: &Node,
    persisted: &mut Option<NodeRoles>,
) -> RunnableResult {
    match NodeState::try_from(node.state) {
        Ok(NodeState::DecommissionRequested | NodeState::Decommissioning) => {
            confirm(rs, m, &Order::Decommission, leader).await?;
            tracing::warn!("the cluster asked this node to decommission itself");
            rs.decommission();
            std::future::pending::<()>().await;
        }
        Ok(NodeState::Decommissioned) => {
            confirm(rs, m, &Order::Decommissioned, leader).await?;
            rs.exit(Exit::gone(gone_message(&rs.env, "it was decommissioned")));
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let roles = node.roles.clone().unwrap_or_default();
    let current = rs.roles_now();
    if let Some(order) = role_change_order(current.as_ref(), &roles, local_state_present(&rs.env)) {
        confirm(rs, m, &order, leader).await?;
    }
    if rs.set_roles(roles.clone()) {
        tracing::info!("roles: {}", describe_roles(&roles));
    }
    if persisted.as_ref() != Some(&roles) {
        contents::save_roles(&m.data, &roles).map_err(|e| format!("persisting roles: {e}"))?;
        *persisted = Some(roles);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::common::node_roles::{ConsensusMember, KubernetesWorker};

    use super::*;

    fn roles(peer: Option<&[u8]>) -> NodeRoles {
        NodeRoles {
            consensus_member: peer.map(|p| ConsensusMember {
                peer_certificate: p.to_vec(),
                ..ConsensusMember::default()
            }),
            ..NodeRoles::default()
        }
    }

    #[test]
    fn destructive_role_changes_are_orders() {
        let member = roles(Some(b"a"));
        let other_pki = roles(Some(b"b"));
        let none = roles(None);
        let worker = NodeRoles {
            kubernetes_worker: Some(KubernetesWorker {}),
            ..NodeRoles::default()
        };
        // Without local etcd state nothing is destroyed by losing the role...
        assert_eq!(role_change_order(Some(&member), &none, false), None);
        assert_eq!(role_change_order(None, &none, false), None);
        // ...but getting it makes the node join an etcd cluster, whose member it trusts from
        // then on: that is confirmed too, unless the same role was confirmed before.
        assert!(matches!(
            role_change_order(None, &other_pki, false),
            Some(Order::JoinConsensus(_))
        ));
        assert!(matches!(
            role_change_order(Some(&none), &member, false),
            Some(Order::JoinConsensus(_))
        ));
        assert!(matches!(
            role_change_order(Some(&member), &other_pki, false),
            Some(Order::JoinConsensus(_))
        ));
        assert_eq!(role_change_order(Some(&member), &member, false), None);
        // Losing the role, or getting roles without it while they were unknown.
        assert_eq!(
            role_change_order(Some(&member), &none, true),
            Some(Order::LeaveConsensus)
        );
        assert_eq!(
            role_change_order(None, &worker, true),
            Some(Order::LeaveConsensus)
        );
        // Known roles without the role stay without it (stale etcd data is the control
        // plane's to delete, as before).
        assert_eq!(role_change_order(Some(&none), &worker, true), None);
        // The same peer PKI is no order, another one is.
        assert_eq!(role_change_order(Some(&member), &member, true), None);
        assert!(matches!(
            role_change_order(Some(&member), &other_pki, true),
            Some(Order::PeerPki(_))
        ));
        assert!(matches!(
            role_change_order(None, &member, true),
            Some(Order::PeerPki(_))
        ));
    }
}
