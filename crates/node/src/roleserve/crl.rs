//! The `crl` worker: keeps the node's cluster CRL current and persisted.
//!
//! The membership's CRL (see [`super::trust`]) is kept current by the leader channel (from
//! every curator it asks for the leader, and from all known curators every
//! `rpc::leader::CRL_REFRESH_INTERVAL`; the `clusterdirectory` worker asks for a refresh at
//! once when it sees a node deleted). This worker writes every newer CRL to
//! `node/cluster-crl.der` in the (encrypted) data directory, so a restarted node still
//! refuses the curators it knew to be revoked.
//!
//! The revocations also go into the revocation set of the node's own servers (added, never
//! removed: on a consensus member the local curator feeds the same set from etcd), so
//! NodeManagement refuses deleted nodes on nodes without a curator too.

use std::sync::Arc;

use supervisor::{Context, Runnable, RunnableResult};

use super::{Roleserve, until_cancelled};
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
    ctx.signal_healthy();
    let mut installed = m.crl.subscribe();
    // What this run wrote; the first CRL held is written once (it may be newer than the file).
    let mut written: Option<u64> = None;
    loop {
        if m.crl.number() > written
            && let Some(der) = m.crl.der()
        {
            contents::save_crl(&m.data, &der)
                .map_err(|e| format!("persisting the cluster CRL: {e}"))?;
            written = m.crl.number();
            for serial in m.crl.revoked_serials() {
                rs.env.revocations.revoke_serial(&serial);
            }
            tracing::info!(
                "cluster CRL {} persisted: {} certificate(s) revoked",
                written.unwrap_or_default(),
                m.crl.revoked()
            );
        }
        if installed.changed().await.is_err() {
            // The CRL lives as long as the membership; never here.
            std::future::pending::<()>().await;
        }
    }
}
