//! The `rolefetch` worker: the node's roles, first from `data/node/roles.pb` (so a control
//! plane node can restart its etcd and curator before any curator is reachable, needed for a
//! cold start of the whole cluster), then from Curator.Watch of the node itself, persisting
//! every change.
//!
//! The same watch tells the node that it was deleted (a tombstone: exit code 3) or that a
//! manager asked it to decommission itself (state DECOMMISSION_REQUESTED: the process runs
//! the decommissioning procedure, see `crate::decommission`).

use std::sync::Arc;

use proto::common::{NodeRoles, NodeState};
use proto::curator_api::watch_request::{Kind, NodeInCluster};
use proto::curator_api::{Node, WatchRequest};
use supervisor::{Context, Runnable, RunnableResult};

use super::{Membership, Roleserve, call_failed, describe_roles, gone_message, until_cancelled};
use crate::exit::Exit;
use crate::storage::contents;

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move {
            let body = run(rs, ctx.clone());
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
    let mut client = m.client().await?;
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
            rs.exit(Exit::gone(gone_message(&rs.env, "it was deleted")));
            std::future::pending::<()>().await;
        }
        for node in event.nodes.iter().filter(|n| n.id == id) {
            apply(&rs, &m, node, &mut persisted).await?;
        }
    }
}

/// Applies one update of this node's record.
async fn apply(
    rs: &Roleserve,
    m: &Membership,
    node: &Node,
    persisted: &mut Option<NodeRoles>,
) -> RunnableResult {
    match NodeState::try_from(node.state) {
        Ok(NodeState::DecommissionRequested | NodeState::Decommissioning) => {
            tracing::warn!("the cluster asked this node to decommission itself");
            rs.decommission();
            std::future::pending::<()>().await;
        }
        Ok(NodeState::Decommissioned) => {
            rs.exit(Exit::gone(gone_message(&rs.env, "it was decommissioned")));
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let roles = node.roles.clone().unwrap_or_default();
    if rs.set_roles(roles.clone()) {
        tracing::info!("roles: {}", describe_roles(&roles));
    }
    if persisted.as_ref() != Some(&roles) {
        contents::save_roles(&m.data, &roles).map_err(|e| format!("persisting roles: {e}"))?;
        *persisted = Some(roles);
    }
    Ok(())
}
