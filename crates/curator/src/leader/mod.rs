//! What a curator leader serves: Management, Curator, AAA and CuratorLocal, all on the shared
//! [`Leader`] state. This is the service layer: handlers check requests and RPC
//! preconditions, leave every record access to [`crate::state`] (which runs it under the
//! leadership guard) and choose the gRPC status of its errors (one mapping, `status.rs`).
//! Read-modify-write sequences on nodes are optimistic (upstream holds `muNodes` across
//! them): each write is conditional on the record being unchanged since its read, and a
//! handler whose write conflicts reads again and redoes its change ([`optimistic`]), so
//! calls on different nodes never wait for each other. Only what etcd transactions cannot
//! cover is serialised: etcd membership changes (`membership_lock`, against the background
//! reconciler), WireGuard key claims (`clusternet_lock`) and ticket creation (`ticket_lock`).
//! Callers without cluster credentials (RegisterNode, CommitNode, JoinNode, Escrow) take
//! turns among themselves through [`Leader::admit_unauthenticated`] until their key or ticket
//! has checked out, so however many of them call at once, they cannot crowd out the
//! cluster's managers and nodes.

use std::sync::Arc;

use std::time::Duration;

use identity::NodeCredentials;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tonic::{Code, Status};

use crate::election::Leadership;
use crate::health::{Clock, Heartbeats};

pub mod aaa;
pub mod background;
pub mod curator;
pub mod filter;
pub mod limits;
pub mod live;
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
    /// The node IDs with a record, which heartbeats are checked against (see [`live`]).
    pub live: live::LiveNodes,
    /// Serialises etcd membership changes (UpdateNodeRoles of ConsensusMember, DeleteNode)
    /// with the background reconciler, which must not mistake a member added a moment
    /// before its role is saved for a leftover. Record writes need no lock (see
    /// [`optimistic`]).
    pub membership_lock: Mutex<()>,
    /// Serialises WireGuard key claims: a key must be unique across node records, which no
    /// single-record condition can check.
    pub clusternet_lock: Mutex<()>,
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

impl Drop for Leader {
    fn drop(&mut self) {
        self.live.stop();
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
            live: live::LiveNodes::default(),
            membership_lock: Mutex::new(()),
            clusternet_lock: Mutex::new(()),
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

/// How many times a handler redoes a read-modify-write whose write found the record changed
/// since its read. Conflicts need two writers on the same node at once (a manager and the
/// node itself, two managers); ten in a row means something rewrites the record constantly,
/// and the caller is better told.
pub const MAX_CONFLICT_ATTEMPTS: u32 = 10;

/// Runs `attempt` (a read-modify-write of node records) until its write does not conflict
/// (Aborted, from `StateError::Conflict`), at most [`MAX_CONFLICT_ATTEMPTS`] times, with a
/// short growing pause between attempts so that writers racing on one record spread out.
/// After the last, Aborted with what was tried.
pub(crate) async fn optimistic<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.code() == Code::Aborted && tries < MAX_CONFLICT_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(u64::from(tries))).await;
            }
            Err(e) if e.code() == Code::Aborted => {
                return Err(Status::aborted(format!(
                    "{what}: {} on each of {tries} attempts; retry",
                    e.message()
                )));
            }
            result => return result,
        }
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
