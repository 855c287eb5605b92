//! The curator's gRPC listener on port 7835: the leader serves Curator,
//! CuratorLocal, AAA and Management; a follower serves CuratorLocal and answers everything else
//! with Unavailable naming the leader. The socket stays bound; the server behind it is rebuilt
//! whenever the election status changes, and the old one's connections are severed so clients
//! notice at once and re-resolve the leader.

use std::sync::Arc;
use std::time::Duration;

use identity::NodeCredentials;
use rpc::serve::Limits;
use rpc::{RevocationSet, ServerSecurity};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::election::ElectionStatus;
use crate::follower::{FollowerGate, FollowerLocalService, KnownLeader};
use crate::health::Clock;
use crate::leader::{self, Leader};
use crate::metrics::CuratorMetrics;
use crate::state::node;

/// What a follower serves, as its reflection lists it.
const FOLLOWER_SERVICES: &[&str] = &[proto::curator_api::curator_local_server::SERVICE_NAME];

/// How long a torn-down server may take to finish after its connections were severed.
const TEARDOWN_GRACE: Duration = Duration::from_secs(2);

/// Connections the curator port accepts at once: every node of the cluster holds one to the
/// leader (its heartbeat and watches share it), so this is the cluster size one leader serves,
/// four times the generic listener's cap. The cost is a descriptor (the node raises its
/// open-file limit for it) and some tens of KiB per connection.
pub const MAX_CONNECTIONS: usize = 4 * rpc::serve::MAX_CONNECTIONS;

/// The curator port's connection limits: [`MAX_CONNECTIONS`], the generic per-address cap.
pub fn connection_limits() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS,
        ..Limits::default()
    }
}

/// What the listener needs.
#[derive(Clone)]
pub struct ListenerConfig {
    /// This node's credentials (server certificate, cluster CA).
    pub credentials: NodeCredentials,
    /// The local etcd member.
    pub consensus: consensus::Status,
    /// Revoked certificates, consulted on every call.
    pub revocations: RevocationSet,
    /// The leader's clock (heartbeat health).
    pub clock: Arc<dyn Clock>,
    /// Connection limits of the port.
    pub limits: Limits,
    /// Call and leadership metrics, if the node collects them.
    pub metrics: Option<Arc<CuratorMetrics>>,
}

/// Serves on `listener` until `cancel`, following `election`.
pub async fn serve(
    config: ListenerConfig,
    listener: TcpListener,
    mut election: watch::Receiver<ElectionStatus>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let listener = Arc::new(listener);
    let tls = rpc::server_tls::server_config(&config.credentials).map_err(|e| e.to_string())?;
    let security =
        ServerSecurity::new(config.credentials.ca().to_vec(), config.revocations.clone());
    let layer = match &config.metrics {
        Some(m) => {
            m.set_revocations(config.revocations.clone());
            m.layer()
        }
        None => rpc::metrics::RpcMetricsLayer::default(),
    };
    let ns = config
        .consensus
        .namespaced(&[crate::KEYSPACE])
        .map_err(|e| e.to_string())?;
    loop {
        let status = election.borrow_and_update().clone();
        let sever = CancellationToken::new();
        let incoming = rpc::serve::tls_incoming_with(
            listener.clone(),
            tls.clone(),
            config.limits.clone(),
            sever.clone(),
        );
        let shutdown = sever.clone().cancelled_owned();
        let server = match &status {
            ElectionStatus::Leader(leadership) => {
                tracing::info!("serving as curator leader");
                let leader = Leader::new(
                    leadership.clone(),
                    config.credentials.clone(),
                    config.consensus.clone(),
                    config.clock.clone(),
                    config.revocations.clone(),
                );
                if let Some(m) = &config.metrics {
                    m.leading(&leader);
                }
                let router = leader::router_observed(&leader, security.clone(), layer.clone());
                // The background reconciler lives exactly as long as this leadership's
                // server: `sever` fires when the election status changes.
                tokio::spawn(leader::background::run(
                    leader.clone(),
                    leader::background::RECONCILE_PERIOD,
                    sever.clone(),
                ));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
            other => {
                if let Some(m) = &config.metrics {
                    m.not_leading();
                }
                let known = match other {
                    ElectionStatus::Follower { leader_id } => KnownLeader {
                        node_id: leader_id.clone(),
                        host: leader_host(&ns, leader_id).await,
                    },
                    _ => KnownLeader::default(),
                };
                tracing::info!("serving as curator follower (leader: {:?})", known.node_id);
                let local = FollowerLocalService {
                    node_id: config.credentials.node_id(),
                    ca: config.credentials.ca().to_vec(),
                    leader: known.clone(),
                    ns: ns.clone(),
                };
                let router = rpc::serve::server_builder_observed(security.clone(), layer.clone())
                    .layer(FollowerGate::new(known))
                    .add_service(
                        proto::curator_api::curator_local_server::CuratorLocalServer::new(local)
                            .max_decoding_message_size(leader::limits::MAX_LOCAL_REQUEST_BYTES),
                    )
                    .add_service(rpc::reflection::v1(FOLLOWER_SERVICES))
                    .add_service(rpc::reflection::v1alpha(FOLLOWER_SERVICES));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
            }
        };
        let stop = tokio::select! {
            changed = election.changed() => changed.is_err(),
            _ = cancel.cancelled() => true,
        };
        sever.cancel();
        let abort = server.abort_handle();
        if tokio::time::timeout(TEARDOWN_GRACE, server).await.is_err() {
            abort.abort();
        }
        if stop {
            if let Some(m) = &config.metrics {
                m.not_leading();
            }
            return Ok(());
        }
    }
}

/// The leader's reported address, or "" if unknown (clients then try other endpoints).
async fn leader_host(ns: &kv::Namespaced, leader_id: &str) -> String {
    match node::load_unguarded(ns, leader_id).await {
        Ok(Some(record)) => record
            .node
            .status
            .map(|s| s.external_address)
            .unwrap_or_default(),
        Ok(None) => String::new(),
        Err(e) => {
            tracing::warn!("reading leader {leader_id}'s record: {e}");
            String::new()
        }
    }
}
