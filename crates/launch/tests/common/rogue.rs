//! A rogue curator: a gRPC server on a curator port that presents the real certificate of a
//! node of a test cluster (one that was deleted, or one without the ConsensusMember role),
//! names itself the curator leader and orders one victim node to destroy itself.
//!
//! It serves what a node talks to: CuratorLocal (GetCurrentLeader naming itself,
//! GetCACertificate) and Curator (JoinNode with the empty cluster unlock key of INSECURE
//! storage, a Watch of the victim showing it DECOMMISSION_REQUESTED and without roles, a
//! Watch of all nodes listing itself as the only consensus member, and agreeable
//! UpdateNodeStatus, Heartbeat and ReportDecommission). Every call is recorded, so a test can
//! tell whether the victim ever took it for its leader.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use identity::NodeCredentials;
use launch::proto::common::node_roles::ConsensusMember;
use launch::proto::common::{NodeRoles, NodeState, NodeStatus};
use launch::proto::curator_api::curator_local_server::{CuratorLocal, CuratorLocalServer};
use launch::proto::curator_api::curator_server::{Curator, CuratorServer};
use launch::proto::curator_api::watch_event::Progress;
use launch::proto::curator_api::watch_request::Kind;
use launch::proto::curator_api::{
    GetCaCertificateRequest, GetCaCertificateResponse, GetCurrentLeaderRequest,
    GetCurrentLeaderResponse, HeartbeatUpdateRequest, HeartbeatUpdateResponse, JoinNodeRequest,
    JoinNodeResponse, Node, ReportDecommissionRequest, ReportDecommissionResponse,
    UpdateNodeStatusRequest, UpdateNodeStatusResponse, WatchEvent, WatchRequest,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// A running rogue curator; stops serving when dropped.
pub struct Rogue {
    calls: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Rogue {
    /// Serves on `listen` (the curator port of the address whose node it impersonates) with
    /// `creds`, ordering node `victim` to decommission itself.
    pub async fn start(listen: SocketAddr, creds: NodeCredentials, victim: String) -> Rogue {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let service = Service {
            id: creds.node_id(),
            host: listen.ip().to_string(),
            ca: creds.ca().to_vec(),
            victim,
            calls: calls.clone(),
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("rogue curator cannot bind {listen}: {e}"));
        let tls = rpc::server_tls::server_config(&creds).expect("rogue TLS configuration");
        let security = rpc::ServerSecurity::new(creds.ca().to_vec(), rpc::RevocationSet::new());
        let router = rpc::serve::server_builder(security)
            .add_service(CuratorLocalServer::new(service.clone()))
            .add_service(CuratorServer::new(service));
        let incoming = rpc::serve::tls_incoming(listener, tls);
        let server = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                eprintln!("rogue curator stopped: {e}");
            }
        });
        Rogue { calls, server }
    }

    /// Every call received so far (method names, in order).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the victim took the rogue for its leader: it only calls Curator methods on the
    /// curator it follows (GetCurrentLeader and GetCACertificate are discovery, asked of any
    /// curator).
    pub fn obeyed(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| !c.starts_with("CuratorLocal."))
            .collect()
    }
}

#[derive(Clone)]
struct Service {
    id: String,
    host: String,
    ca: Vec<u8>,
    victim: String,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn record(&self, call: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call.to_string());
    }

    /// The victim as the rogue shows it: asked to decommission itself, with no roles left.
    fn victim_node(&self) -> Node {
        Node {
            id: self.victim.clone(),
            roles: Some(NodeRoles::default()),
            state: NodeState::DecommissionRequested as i32,
            ..Default::default()
        }
    }

    /// The rogue itself, as the only consensus member.
    fn own_node(&self) -> Node {
        Node {
            id: self.id.clone(),
            roles: Some(NodeRoles {
                consensus_member: Some(ConsensusMember::default()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                external_address: self.host.clone(),
                ..Default::default()
            }),
            state: NodeState::Up as i32,
            ..Default::default()
        }
    }
}

/// One event, then the stream stays open like a real watch.
fn open_stream<T: Send + 'static>(first: T) -> BoxStream<T> {
    Box::pin(futures::stream::once(async move { Ok(first) }).chain(futures::stream::pending()))
}

#[tonic::async_trait]
impl CuratorLocal for Service {
    async fn get_current_leader(
        &self,
        _request: Request<GetCurrentLeaderRequest>,
    ) -> Result<Response<BoxStream<GetCurrentLeaderResponse>>, Status> {
        self.record("CuratorLocal.GetCurrentLeader");
        Ok(Response::new(open_stream(GetCurrentLeaderResponse {
            leader_node_id: self.id.clone(),
            leader_host: self.host.clone(),
            leader_port: i32::from(rpc::CURATOR_PORT),
            this_node_id: self.id.clone(),
        })))
    }

    async fn get_ca_certificate(
        &self,
        _request: Request<GetCaCertificateRequest>,
    ) -> Result<Response<GetCaCertificateResponse>, Status> {
        self.record("CuratorLocal.GetCACertificate");
        Ok(Response::new(GetCaCertificateResponse {
            identity_ca_certificate: self.ca.clone(),
        }))
    }
}

#[tonic::async_trait]
impl Curator for Service {
    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<BoxStream<WatchEvent>>, Status> {
        self.record("Curator.Watch");
        let event = match request.into_inner().kind {
            Some(Kind::NodeInCluster(_)) => WatchEvent {
                nodes: vec![self.victim_node()],
                ..Default::default()
            },
            _ => WatchEvent {
                nodes: vec![self.own_node(), self.victim_node()],
                progress: Progress::LastBacklogged as i32,
                ..Default::default()
            },
        };
        Ok(Response::new(open_stream(event)))
    }

    async fn update_node_status(
        &self,
        _request: Request<UpdateNodeStatusRequest>,
    ) -> Result<Response<UpdateNodeStatusResponse>, Status> {
        self.record("Curator.UpdateNodeStatus");
        Ok(Response::new(UpdateNodeStatusResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatUpdateRequest>>,
    ) -> Result<Response<BoxStream<HeartbeatUpdateResponse>>, Status> {
        self.record("Curator.Heartbeat");
        let replies = request
            .into_inner()
            .map(|update| update.map(|_| HeartbeatUpdateResponse {}));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn join_node(
        &self,
        _request: Request<JoinNodeRequest>,
    ) -> Result<Response<JoinNodeResponse>, Status> {
        self.record("Curator.JoinNode");
        // INSECURE storage: the cluster unlock key is empty, so the rogue can hand it out.
        Ok(Response::new(JoinNodeResponse::default()))
    }

    async fn report_decommission(
        &self,
        _request: Request<ReportDecommissionRequest>,
    ) -> Result<Response<ReportDecommissionResponse>, Status> {
        self.record("Curator.ReportDecommission");
        Ok(Response::new(ReportDecommissionResponse {}))
    }
}
