//! Feeds the rpc layer's revocation set from the cluster CRL, on every curator: DeleteNode
//! revokes the node certificate in the CRL, this watch applies it to every server within
//! milliseconds, so a deleted node is refused from its next call on (upstream keeps accepting
//! it until the cluster CA changes). Clients get the same CRL from
//! `CuratorLocal.GetClusterCRL` ([`cluster_crl`]) and refuse revoked curators.

use futures::StreamExt;
use kv::Namespaced;
use proto::curator_api::GetClusterCrlResponse;
use rpc::RevocationSet;
use tonic::{Response, Status};

/// Follows the cluster CRL until the stream fails; the caller (a supervised runnable)
/// restarts it.
pub async fn follow_crl(ns: Namespaced, revocations: RevocationSet) -> Result<(), String> {
    let ca = pki::Certificate::cluster_ca();
    let mut crls = ca.watch_crl(&ns);
    while let Some(crl) = crls.next().await {
        let crl = crl.map_err(|e| format!("watching the cluster CRL: {e}"))?;
        let serials =
            pki::revoked_serials(&crl.der).map_err(|e| format!("reading the cluster CRL: {e}"))?;
        tracing::debug!("cluster CRL now revokes {} certificates", serials.len());
        revocations.replace(Vec::new(), serials);
    }
    Err("cluster CRL watch ended".to_string())
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
