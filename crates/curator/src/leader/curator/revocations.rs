//! Curator.WatchRevocations (ours, see api.proto): what the cluster has revoked — the cluster
//! CRL and the deleted node IDs — for nodes whose servers have no curator of their own to
//! learn it from (see `crate::revocation` for the curators' side).
//!
//! The first event is the current state; then each CRL update and each deletion is one event.
//! Both parts only ever grow, so clients apply them additively. The stream is read from etcd
//! through the same bounded buffer as Watch ([`super::watch::pump`]).

use futures::{StreamExt, stream};
use proto::curator_api::WatchRevocationsEvent;
use tonic::Status;
use tonic::codegen::BoxStream;

use super::watch::pump;
use crate::leader::Leader;
use crate::state::node;

/// Serves a WatchRevocations request.
pub(super) async fn watch_revocations(
    leader: &Leader,
) -> Result<BoxStream<WatchRevocationsEvent>, Status> {
    let ns = leader.ns();
    let crl_error = |e: pki::Error| Status::unavailable(format!("watching the cluster CRL: {e}"));
    // Each part is read and then watched from right after its read, so nothing is missed.
    let mut crls = pki::Certificate::cluster_ca().watch_crl(ns);
    let current_crl = crls
        .next()
        .await
        .ok_or_else(|| Status::unavailable("the cluster CRL watch ended"))?
        .map_err(crl_error)?;
    let (deleted, revision) = node::deleted_ids(ns).await?;
    let deletions = node::deletions(ns, revision).await?;

    let first = WatchRevocationsEvent {
        cluster_crl: current_crl.der,
        deleted_node_ids: deleted,
    };
    let crl_changes = crls.map(move |c| {
        c.map(|c| WatchRevocationsEvent {
            cluster_crl: c.der,
            ..Default::default()
        })
        .map_err(crl_error)
    });
    let deletion_events = deletions.map(|d| {
        d.map(|id| WatchRevocationsEvent {
            deleted_node_ids: vec![id],
            ..Default::default()
        })
        .map_err(Status::from)
    });
    let changes = stream::select(crl_changes.boxed(), deletion_events.boxed());
    Ok(Box::pin(
        stream::once(async { Ok(first) }).chain(pump(changes)),
    ))
}
