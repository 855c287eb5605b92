//! What a follower serves: CuratorLocal (so clients can find the leader) and, for every other
//! call, Unavailable naming the leader, so a client can move on at once (upstream answers
//! Unimplemented because the services are simply not registered).

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use proto::curator_api::{
    GetCaCertificateRequest, GetCaCertificateResponse, GetClusterCrlRequest, GetClusterCrlResponse,
    GetCurrentLeaderRequest, GetCurrentLeaderResponse,
};
use tonic::body::Body;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Services a follower answers itself.
const FOLLOWER_SERVICES: &[&str] = &[
    "/metropolis.node.core.curator.proto.api.CuratorLocal/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The leader as a follower knows it.
#[derive(Debug, Clone, Default)]
pub struct KnownLeader {
    /// Its node ID; empty while unknown (election in progress).
    pub node_id: String,
    /// Its reported address; empty if it never reported one.
    pub host: String,
}

impl KnownLeader {
    fn unavailable(&self) -> Status {
        if self.node_id.is_empty() {
            return Status::unavailable(
                "this curator is not the leader and no leader is elected yet; retry shortly",
            );
        }
        let at = if self.host.is_empty() {
            String::new()
        } else {
            format!(" at {}:{}", self.host, rpc::CURATOR_PORT)
        };
        Status::unavailable(format!(
            "this curator is not the leader; the leader is {}{at}",
            self.node_id
        ))
    }
}

/// CuratorLocal on a follower.
#[derive(Clone)]
pub struct FollowerLocalService {
    /// This node's ID.
    pub node_id: String,
    /// The cluster CA (DER).
    pub ca: Vec<u8>,
    /// The leader when this server was started (the server restarts whenever it changes).
    pub leader: KnownLeader,
    /// The curator keyspace of the local etcd member (for the cluster CRL).
    pub ns: kv::Namespaced,
}

impl std::fmt::Debug for FollowerLocalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerLocalService")
            .field("node_id", &self.node_id)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl proto::curator_api::curator_local_server::CuratorLocal for FollowerLocalService {
    async fn get_current_leader(
        &self,
        _request: Request<GetCurrentLeaderRequest>,
    ) -> Result<Response<BoxStream<GetCurrentLeaderResponse>>, Status> {
        if self.leader.node_id.is_empty() {
            return Err(Status::unavailable(
                "no curator leader elected yet; try again",
            ));
        }
        if self.leader.host.is_empty() {
            return Err(Status::unavailable(format!(
                "the leader {} has not reported its address yet; try again",
                self.leader.node_id
            )));
        }
        let response = GetCurrentLeaderResponse {
            leader_node_id: self.leader.node_id.clone(),
            leader_host: self.leader.host.clone(),
            leader_port: i32::from(rpc::CURATOR_PORT),
            this_node_id: self.node_id.clone(),
        };
        // One answer, then the stream stays open: when leadership moves this server is torn
        // down, the stream breaks and the client asks again.
        let stream =
            futures::stream::once(async move { Ok(response) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_ca_certificate(
        &self,
        _request: Request<GetCaCertificateRequest>,
    ) -> Result<Response<GetCaCertificateResponse>, Status> {
        Ok(Response::new(GetCaCertificateResponse {
            identity_ca_certificate: self.ca.clone(),
        }))
    }

    async fn get_cluster_crl(
        &self,
        _request: Request<GetClusterCrlRequest>,
    ) -> Result<Response<GetClusterCrlResponse>, Status> {
        crate::revocation::cluster_crl(&self.ns).await
    }
}

use futures::StreamExt as _;

/// Layer answering everything but CuratorLocal with Unavailable naming the leader.
#[derive(Debug, Clone)]
pub struct FollowerGate {
    leader: KnownLeader,
}

impl FollowerGate {
    /// A gate pointing at `leader`.
    pub fn new(leader: KnownLeader) -> Self {
        Self { leader }
    }
}

impl<S> Layer<S> for FollowerGate {
    type Service = FollowerGateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FollowerGateService {
            inner,
            leader: self.leader.clone(),
        }
    }
}

/// The service produced by [`FollowerGate`].
#[derive(Debug, Clone)]
pub struct FollowerGateService<S> {
    inner: S,
    leader: KnownLeader,
}

impl<S> Service<http::Request<Body>> for FollowerGateService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if FOLLOWER_SERVICES.iter().any(|p| path.starts_with(p)) {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return inner.call(req).boxed();
        }
        futures::future::ready(Ok(self.leader.unavailable().into_http())).boxed()
    }
}
