//! The `nodemgmt` worker: serves NodeManagement (Logs, UpdateNode) on `<address>:7839` with
//! the node certificate, behind the same authorization layer as the curator (owners may read
//! logs and update the node; other nodes lack READ_NODE_LOGS and UPDATE_NODE).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proto::api::node_management_server::NodeManagementServer;
use rpc::ServerSecurity;
use supervisor::{Context, Runnable, RunnableResult};

use super::Roleserve;

use crate::logs::NodeManagementService;
use crate::update::bundle::Limits;
use crate::update::fetch::FetchConfig;
use crate::update::slots::Slots;
use crate::update::{self, Updater};

/// Tar headers and padding on top of a bundle's file contents.
const BUNDLE_SLACK_BYTES: u64 = 1 << 20;

/// What this listener serves, as its reflection lists it.
const SERVED: &[&str] = &[proto::api::node_management_server::SERVICE_NAME];

/// Largest NodeManagement request: a log query (a DN and filters) or an update (a URL).
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move { run(rs, ctx).await }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let m = tokio::select! {
        m = rs.membership() => m,
        _ = ctx.cancelled() => return Ok(()),
    };
    // The revocations this node already knows (the CRL it persisted) apply from the first
    // connection on, not only once the `crl` worker has caught up.
    for serial in m.crl.revoked_serials() {
        rs.env.revocations.revoke_serial(&serial);
    }
    let addr = SocketAddr::new(IpAddr::V4(rs.env.address), rpc::NODE_MANAGEMENT_PORT);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let tls = rpc::server_tls::server_config(&m.credentials)?;
    let security = ServerSecurity::new(m.credentials.ca().to_vec(), rs.env.revocations.clone());
    let updater = rs.updater(|| {
        let fetch = FetchConfig::new(
            rs.env.update_ca.as_deref(),
            update::DOWNLOAD_TIMEOUT,
            Limits::default().max_total_bytes + BUNDLE_SLACK_BYTES,
        )?;
        // Weak: the updater lives in the Roleserve it stops.
        let stopper = Arc::downgrade(&rs);
        Ok(Updater::new(
            Slots::new(rs.env.layout.esp.dir()),
            fetch,
            Limits::default(),
            move |exit| {
                if let Some(rs) = stopper.upgrade() {
                    rs.exit(exit);
                }
            },
        ))
    })?;
    let service = NodeManagementService::new(ctx.logtree().clone()).with_updater(updater);
    tracing::info!("NodeManagement serving on {addr}");
    ctx.signal_healthy();
    let token = ctx.token();
    rpc::serve::server_builder(security)
        .add_service(
            NodeManagementServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(rpc::reflection::v1(SERVED))
        .add_service(rpc::reflection::v1alpha(SERVED))
        .serve_with_incoming_shutdown(
            // Severed on cancellation: graceful shutdown would wait for streaming Logs calls.
            rpc::serve::tls_incoming_until(listener, tls, token.clone()),
            token.cancelled_owned(),
        )
        .await
        .map_err(|e| format!("NodeManagement server: {e}"))?;
    Ok(())
}
