//! The `revocations` worker: keeps this node's revocation set current from
//! Curator.WatchRevocations, so that the node's own servers (NodeManagement) refuse a deleted
//! node as the curators do — on every node, not only those running a curator (which also
//! feeds the same set from etcd; both only ever add, so they cannot undo each other).
//!
//! The CRL is checked against the cluster CA before it is applied: revocations come from the
//! leader, but a CRL is only worth what its signature says.

use std::sync::Arc;

use proto::curator_api::{WatchRevocationsEvent, WatchRevocationsRequest};
use rpc::RevocationSet;
use supervisor::{Context, Runnable, RunnableResult};

use super::{Roleserve, call_failed, follow_leader, until_cancelled};

/// The supervisor runnable. A failed watch is started again (on the new leader at once after
/// a failover, see [`follow_leader`]), and every new watch starts with the full current state.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move {
            let body = follow_leader(&rs, "watching revocations", || run(rs.clone(), ctx.clone()));
            until_cancelled(&ctx, body).await
        }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let m = rs.membership().await;
    ctx.signal_healthy();
    let mut client = m.client().await?;
    let mut stream = match client.watch_revocations(WatchRevocationsRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(call_failed(&rs, &m, "watching revocations", s).await),
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => apply(&rs.env.revocations, m.credentials.ca(), event)?,
            Ok(None) => return Err("the revocation watch ended".into()),
            Err(s) => return Err(call_failed(&rs, &m, "watching revocations", s).await),
        }
    }
}

/// Applies one event: the CRL's serials (if it carries a CRL signed by `ca`) and the deleted
/// node IDs.
pub fn apply(
    revocations: &RevocationSet,
    ca: &[u8],
    event: WatchRevocationsEvent,
) -> Result<(), String> {
    if !event.cluster_crl.is_empty() {
        let crl = identity::verify::inspect_crl(&event.cluster_crl, ca)
            .map_err(|e| format!("the cluster CRL from the curator is not valid: {e}"))?;
        revocations.revoke_serials(crl.revoked_serials);
    }
    if !event.deleted_node_ids.is_empty() {
        tracing::info!(
            "refusing the certificates of deleted nodes {}",
            event.deleted_node_ids.join(", ")
        );
        revocations.revoke_nodes(event.deleted_node_ids);
    }
    Ok(())
}
