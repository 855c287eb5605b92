//! Feeds the rpc layer's revocation set from the cluster's revocation state, on every curator.
//!
//! Two sources, each only ever growing: the cluster CRL (DeleteNode revokes the node
//! certificate there) and the tombstones DeleteNode leaves (`/deleted_nodes/<id>`, see
//! [`crate::state::node`]), which revoke every certificate of that node ID. Both are applied
//! add-only, so neither can undo the other. A curator [`load`]s them before it serves its
//! first call and then [`follow`]s them, applying changes within milliseconds, so a deleted
//! node is refused from its next call on and its open streams end (upstream keeps accepting it
//! until the cluster CA changes). Clients get the same CRL from `CuratorLocal.GetClusterCRL`
//! ([`cluster_crl`]) and refuse revoked curators.

use futures::{StreamExt, stream};
use kv::Namespaced;
use proto::curator_api::GetClusterCrlResponse;
use rpc::RevocationSet;
use tonic::{Response, Status};

use crate::state::node;

/// Reads both sources once and applies them.
pub async fn load(ns: &Namespaced, revocations: &RevocationSet) -> Result<(), String> {
    let ca = pki::Certificate::cluster_ca();
    let crl = ca
        .crl(ns)
        .await
        .map_err(|e| format!("reading the cluster CRL: {e}"))?;
    apply_crl(&crl.der, revocations)?;
    let (deleted, _) = node::deleted_ids(ns)
        .await
        .map_err(|e| format!("reading deleted nodes: {e}"))?;
    revocations.revoke_nodes(deleted);
    Ok(())
}

/// One change of the revocation state.
enum Change {
    Crl(Vec<u8>),
    Deleted(String),
}

/// Follows both sources until one of the watches fails; the caller (a supervised runnable)
/// restarts it. Each watch starts with the current state.
pub async fn follow(ns: Namespaced, revocations: RevocationSet) -> Result<(), String> {
    let ca = pki::Certificate::cluster_ca();
    let crls = ca.watch_crl(&ns).map(|c| {
        c.map(|c| Change::Crl(c.der))
            .map_err(|e| format!("watching the cluster CRL: {e}"))
    });
    let (deleted, revision) = node::deleted_ids(&ns)
        .await
        .map_err(|e| format!("reading deleted nodes: {e}"))?;
    revocations.revoke_nodes(deleted);
    let deletions = node::deletions(&ns, revision)
        .await
        .map_err(|e| format!("watching deleted nodes: {e}"))?
        .map(|d| {
            d.map(Change::Deleted)
                .map_err(|e| format!("watching deleted nodes: {e}"))
        });
    let mut changes = stream::select(crls.boxed(), deletions.boxed());
    while let Some(change) = changes.next().await {
        match change? {
            Change::Crl(der) => apply_crl(&der, &revocations)?,
            Change::Deleted(id) => {
                tracing::debug!("node {id} was deleted; refusing its certificates");
                revocations.revoke_node(&id);
            }
        }
    }
    Err("revocation watch ended".to_string())
}

fn apply_crl(der: &[u8], revocations: &RevocationSet) -> Result<(), String> {
    let serials = pki::revoked_serials(der).map_err(|e| format!("reading the cluster CRL: {e}"))?;
    tracing::debug!("cluster CRL revokes {} certificates", serials.len());
    revocations.revoke_serials(serials);
    Ok(())
}

/// CuratorLocal.GetClusterCRL, on the leader and on followers: the cluster CRL as this
/// curator's etcd member has it (a plain read: clients take the newest CRL of all the curators
/// they ask, so a follower lagging behind costs nothing).
pub async fn cluster_crl(ns: &Namespaced) -> Result<Response<GetClusterCrlResponse>, Status> {
    let crl = pki::Certificate::cluster_ca()
        .crl(ns)
        .await
        .map_err(|e| Status::unavailable(format!("reading the cluster CRL: {e}")))?;
    Ok(Response::new(GetClusterCrlResponse { crl: crl.der }))
}
