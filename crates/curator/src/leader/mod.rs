//! What a curator leader serves: Management, Curator, AAA and CuratorLocal, all on the shared
//! [`Leader`] state. This is the service layer: handlers check requests and RPC
//! preconditions, leave every record access to [`crate::state`] (which runs it under the
//! leadership guard) and choose the gRPC status of its errors (one mapping, `status.rs`).
//! Read-modify-write sequences on nodes hold `nodes_lock` (upstream `muNodes`), ticket
//! creation `ticket_lock`.

use std::sync::Arc;

use identity::NodeCredentials;
use tokio::sync::Mutex;

use crate::election::Leadership;
use crate::health::{Clock, Heartbeats};

pub mod aaa;
pub mod curator;
pub mod filter;
pub mod limits;
pub mod local;
pub mod management;
mod status;

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
        })
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
    use proto::api::{aaa_server::AaaServer, management_server::ManagementServer};
    use proto::curator_api::{
        curator_local_server::CuratorLocalServer, curator_server::CuratorServer,
    };
    rpc::serve::server_builder(security)
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
