//! What a curator leader serves: Management, Curator, AAA and CuratorLocal, all on the shared
//! [`Leader`] state. This is the service layer: handlers check requests and RPC
//! preconditions, leave every record access to [`crate::state`] (which runs it under the
//! leadership guard) and choose the gRPC status of its errors (one mapping, `status.rs`).
//! Read-modify-write sequences on nodes hold `nodes_lock` (upstream `muNodes`), ticket
//! creation `ticket_lock`. Callers without cluster credentials (RegisterNode, CommitNode,
//! JoinNode, Escrow) never wait for either before their key or ticket has checked out, and
//! take turns among themselves through [`Leader::admit_unauthenticated`], so however many
//! of them call at once, they cannot crowd out the cluster's managers and nodes.

use std::sync::Arc;

use std::time::Duration;

use identity::NodeCredentials;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tonic::Status;

use crate::election::Leadership;
use crate::health::{Clock, Heartbeats};

pub mod aaa;
pub mod background;
pub mod curator;
pub mod filter;
pub mod limits;
pub mod local;
pub mod management;
mod status;
pub mod streams;

/// How many calls without cluster credentials the leader works on at once. Each costs a few
/// etcd reads (a join-key or node lookup, the ticket, the configuration), about a millisecond:
/// two at a time serve several hundred registrations or joins a second — more than a whole
/// cluster rebooting at once needs — while anyone on the network, who can open as many
/// connections as they like, gets no more than this share of the leader's etcd connection and
/// CPU. Measured (hardening test `join_storm_does_not_delay_approvals`): with four, 500
/// looping JoinNode callers tripled ApproveNode's p99; with two it stays within 2×.
pub const MAX_UNAUTHENTICATED_IN_FLIGHT: usize = 2;

/// How long a call without credentials waits for its turn before it is told to come back
/// (Unavailable, which nodes retry with backoff): long enough to ride out a burst of joins,
/// short enough that a flood does not park requests forever.
pub const UNAUTHENTICATED_ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// The state shared by the leader's services.
pub struct Leader {
    /// Proof of leadership; guards every etcd operation.
    pub leadership: Leadership,
    /// This node's credentials (its ID and the cluster CA).
    pub credentials: NodeCredentials,
    /// The local etcd member, for membership changes (UpdateNodeRoles, DeleteNode).
    pub consensus: consensus::Status,
    /// Heartbeats received since this leadership started.
    pub heartbeats: Heartbeats,
    /// Serialises read-modify-write sequences on node records.
    pub nodes_lock: Mutex<()>,
    /// Serialises register-ticket creation and rotation.
    pub ticket_lock: Mutex<()>,
    /// The revocation set of this node's servers: DeleteNode updates it directly, so the
    /// deleted node's very next call here is refused even before the CRL watch catches up.
    pub revocations: rpc::RevocationSet,
    /// Turns of the calls without cluster credentials ([`MAX_UNAUTHENTICATED_IN_FLIGHT`]).
    unauthenticated: Semaphore,
    /// Where GetNodes filters run: off the runtime, bounded (see [`filter`]).
    pub filters: filter::FilterPool,
    /// Long-lived streams per caller (see [`streams`]).
    pub streams: streams::StreamSlots,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("node", &self.credentials.node_id())
            .field("lock", &self.leadership.lock_key)
            .finish()
    }
}

impl Leader {
    /// A leader with fresh volatile state.
    pub fn new(
        leadership: Leadership,
        credentials: NodeCredentials,
        consensus: consensus::Status,
        clock: Arc<dyn Clock>,
        revocations: rpc::RevocationSet,
    ) -> Arc<Self> {
        Arc::new(Self {
            leadership,
            credentials,
            consensus,
            heartbeats: Heartbeats::new(clock),
            nodes_lock: Mutex::new(()),
            ticket_lock: Mutex::new(()),
            revocations,
            unauthenticated: Semaphore::new(MAX_UNAUTHENTICATED_IN_FLIGHT),
            filters: filter::FilterPool::default(),
            streams: streams::StreamSlots::default(),
        })
    }

    /// Waits for a turn of a call without cluster credentials; hold the permit until the
    /// caller's ticket or key has checked out. Unavailable if none comes within
    /// [`UNAUTHENTICATED_ADMISSION_WAIT`].
    pub async fn admit_unauthenticated(&self) -> Result<SemaphorePermit<'_>, Status> {
        match tokio::time::timeout(
            UNAUTHENTICATED_ADMISSION_WAIT,
            self.unauthenticated.acquire(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Status::unavailable("the curator leader is shutting down")),
            Err(_) => Err(Status::unavailable(format!(
                "the curator leader is busy with more than {MAX_UNAUTHENTICATED_IN_FLIGHT} \
                 unauthenticated calls; retry later"
            ))),
        }
    }

    /// The curator keyspace.
    pub fn ns(&self) -> &kv::Namespaced {
        self.leadership.namespace()
    }
}

/// What the leader serves, as its reflection lists it.
const LEADER_SERVICES: &[&str] = &[
    proto::api::management_server::SERVICE_NAME,
    proto::curator_api::curator_server::SERVICE_NAME,
    proto::api::aaa_server::SERVICE_NAME,
    proto::curator_api::curator_local_server::SERVICE_NAME,
];

/// The leader's gRPC router: all four services behind the authorization layer, each decoding
/// requests up to its limit in [`limits`].
pub fn router(
    leader: &Arc<Leader>,
    security: rpc::ServerSecurity,
) -> tonic::transport::server::Router<rpc::serve::Layers> {
    router_observed(leader, security, rpc::metrics::RpcMetricsLayer::default())
}

/// [`router`] recording every call with `metrics` (the curator's metrics layer).
pub fn router_observed(
    leader: &Arc<Leader>,
    security: rpc::ServerSecurity,
    metrics: rpc::metrics::RpcMetricsLayer,
) -> tonic::transport::server::Router<rpc::serve::Layers> {
    use proto::api::{aaa_server::AaaServer, management_server::ManagementServer};
    use proto::curator_api::{
        curator_local_server::CuratorLocalServer, curator_server::CuratorServer,
    };
    rpc::serve::server_builder_observed(security, metrics)
        .add_service(
            ManagementServer::new(management::ManagementService(leader.clone()))
                .max_decoding_message_size(limits::MAX_MANAGEMENT_REQUEST_BYTES),
        )
        .add_service(
            CuratorServer::new(curator::CuratorService(leader.clone()))
                .max_decoding_message_size(limits::MAX_CURATOR_REQUEST_BYTES),
        )
        .add_service(
            AaaServer::new(aaa::AaaService(leader.clone()))
                .max_decoding_message_size(limits::MAX_AAA_REQUEST_BYTES),
        )
        .add_service(
            CuratorLocalServer::new(local::LeaderLocalService(leader.clone()))
                .max_decoding_message_size(limits::MAX_LOCAL_REQUEST_BYTES),
        )
        .add_service(rpc::reflection::v1(LEADER_SERVICES))
        .add_service(rpc::reflection::v1alpha(LEADER_SERVICES))
}
