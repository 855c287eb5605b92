//! The `statuspush` worker: reports the node's status (its address, and whether its curator
//! runs) with UpdateNodeStatus whenever it changes. The first successful report makes the
//! node print `NODE_READY`.
//!
//! The address never changes here (it is given on the command line; upstream follows the
//! network), so in practice the status changes when the control plane starts or stops.

use std::sync::Arc;

use proto::common::NodeStatus;
use proto::common::node_status::RunningCurator;
use proto::curator_api::UpdateNodeStatusRequest;
use proto::curator_api::curator_client::CuratorClient;
use supervisor::{Context, Runnable, RunnableResult};

use super::membership::CALL_POLICY;
use super::{Roleserve, call_failed, until_cancelled};

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
    let mut control_plane = rs.watch_control_plane();
    let mut reported: Option<NodeStatus> = None;
    ctx.signal_healthy();
    loop {
        let running = *control_plane.borrow_and_update();
        let status = NodeStatus {
            external_address: rs.env.address.to_string(),
            running_curator: running.then_some(RunningCurator {
                port: i32::from(rpc::CURATOR_PORT),
            }),
            boot_id: rs.env.boot_id.clone(),
            version: Some(crate::version::current().clone()),
            ..Default::default()
        };
        if reported.as_ref() != Some(&status) {
            let request = UpdateNodeStatusRequest {
                node_id: m.node_id(),
                status: Some(status.clone()),
            };
            let result = m
                .curator
                .call(&CALL_POLICY, |ch| {
                    let request = request.clone();
                    async move { CuratorClient::new(ch).update_node_status(request).await }
                })
                .await;
            if let Err(s) = result {
                return Err(call_failed(&rs, &m, "reporting status", s).await);
            }
            tracing::info!(
                "status reported: address {}, curator {}",
                status.external_address,
                if running { "running" } else { "not running" }
            );
            reported = Some(status);
            rs.mark_ready();
        }
        if control_plane.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
