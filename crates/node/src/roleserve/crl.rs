//! The `crl` worker: keeps the node's cluster CRL current and persisted.
//!
//! The membership's CRL (see [`super::trust`]) is updated by the leader channel whenever it
//! talks to a curator; this worker writes every newer CRL to `node/cluster-crl.der` in the
//! (encrypted) data directory, so a restarted node still refuses the curators it knew to be
//! revoked, and fetches the CRL from every known curator every [`REFRESH_INTERVAL`] (the
//! `clusterdirectory` worker asks for a refresh at once when it sees a node deleted).
//!
//! The revocations also go into the revocation set of the node's own servers (added, never
//! removed: on a consensus member the local curator feeds the same set from etcd), so
//! NodeManagement refuses deleted nodes on nodes without a curator too.

use std::sync::Arc;
use std::time::Duration;

use supervisor::{Context, Runnable, RunnableResult};

use super::{Roleserve, until_cancelled};
use crate::storage::contents;

/// How often the CRL is fetched from all curators. Revocations reach a running node sooner
/// through the deletion it sees in the cluster directory watch; this bounds how long one it
/// missed (a watch gap, a partition) can go unnoticed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(120);

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
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + REFRESH_INTERVAL,
        REFRESH_INTERVAL,
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        tokio::select! {
            changed = installed.changed() => {
                if changed.is_err() {
                    // The CRL lives as long as the membership; never here.
                    std::future::pending::<()>().await;
                }
            }
            _ = refresh.tick() => {
                if let Some(r) = m.curator.refresh_crl().await
                    && r.answered.is_empty()
                {
                    tracing::debug!("no curator answered for the cluster CRL: {:?}", r.failed);
                }
            }
        }
    }
}
