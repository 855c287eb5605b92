//! Curator service of the leader: what nodes call to register, commit, join, report
//! their status and heartbeats, follow the cluster (Watch), get Kubernetes worker certificates
//! and announce their cluster networking.
//!
//! The service itself only extracts the caller ([`PeerInfo`]) and hands off to one submodule
//! per concern; every record access goes through the state layer, and read-modify-write
//! sequences on node records are optimistic (`crate::leader::optimistic`).

use std::sync::Arc;

use proto::curator_api::{self as api, curator_server::Curator};
use rpc::PeerInfo;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::Leader;
use crate::state::NodeRecord;

// Public (hidden) only so the fuzz targets can call its parsers and checks directly.
#[doc(hidden)]
pub mod clusternet;
mod kube_pki;
mod lifecycle;
mod membership;
mod register;
mod revocations;
mod watch;

/// The Curator service.
#[derive(Debug, Clone)]
pub struct CuratorService(pub Arc<Leader>);

/// The caller of a request, detached from it so the request can be consumed.
fn peer<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    PeerInfo::of(request).cloned()
}

#[tonic::async_trait]
impl Curator for CuratorService {
    async fn watch(
        &self,
        request: Request<api::WatchRequest>,
    ) -> Result<Response<BoxStream<api::WatchEvent>>, Status> {
        let slot = self.0.streams.take(&peer(&request)?)?;
        watch::watch(&self.0, request.into_inner())
            .await
            .map(|events| Response::new(super::streams::holding(slot, events)))
    }

    async fn update_node_status(
        &self,
        request: Request<api::UpdateNodeStatusRequest>,
    ) -> Result<Response<api::UpdateNodeStatusResponse>, Status> {
        let peer = peer(&request)?;
        lifecycle::update_node_status(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<api::HeartbeatUpdateRequest>>,
    ) -> Result<Response<BoxStream<api::HeartbeatUpdateResponse>>, Status> {
        let peer = peer(&request)?;
        lifecycle::heartbeat(&self.0, &peer, request.into_inner()).map(Response::new)
    }

    async fn register_node(
        &self,
        request: Request<api::RegisterNodeRequest>,
    ) -> Result<Response<api::RegisterNodeResponse>, Status> {
        let peer = peer(&request)?;
        register::register_node(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn commit_node(
        &self,
        request: Request<api::CommitNodeRequest>,
    ) -> Result<Response<api::CommitNodeResponse>, Status> {
        let peer = peer(&request)?;
        register::commit_node(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn join_node(
        &self,
        request: Request<api::JoinNodeRequest>,
    ) -> Result<Response<api::JoinNodeResponse>, Status> {
        let peer = peer(&request)?;
        register::join_node(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn issue_certificate(
        &self,
        request: Request<api::IssueCertificateRequest>,
    ) -> Result<Response<api::IssueCertificateResponse>, Status> {
        let peer = peer(&request)?;
        kube_pki::issue_certificate(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_node_cluster_networking(
        &self,
        request: Request<api::UpdateNodeClusterNetworkingRequest>,
    ) -> Result<Response<api::UpdateNodeClusterNetworkingResponse>, Status> {
        let peer = peer(&request)?;
        clusternet::update_node_cluster_networking(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_consensus_status(
        &self,
        _request: Request<api::GetConsensusStatusRequest>,
    ) -> Result<Response<api::GetConsensusStatusResponse>, Status> {
        membership::get_consensus_status(&self.0)
            .await
            .map(Response::new)
    }

    async fn watch_revocations(
        &self,
        request: Request<api::WatchRevocationsRequest>,
    ) -> Result<Response<BoxStream<api::WatchRevocationsEvent>>, Status> {
        let slot = self.0.streams.take(&peer(&request)?)?;
        revocations::watch_revocations(&self.0)
            .await
            .map(|events| Response::new(super::streams::holding(slot, events)))
    }

    async fn report_decommission(
        &self,
        request: Request<api::ReportDecommissionRequest>,
    ) -> Result<Response<api::ReportDecommissionResponse>, Status> {
        let peer = peer(&request)?;
        lifecycle::report_decommission(&self.0, &peer, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// A node record as other nodes see it through Watch: everything but the secrets (cluster
/// unlock key) and the keys (which the ID stands for), with the full ConsensusMember data.
fn curator_node(r: &NodeRecord) -> api::Node {
    api::Node {
        id: r.id.clone(),
        roles: r.node.roles.clone(),
        status: r.node.status.clone(),
        clusternet: r.node.clusternet.clone(),
        state: r.node.fsm_state,
        labels: r.node.labels.clone(),
    }
}

/// The name of a node state for messages.
fn state_name(r: &NodeRecord) -> &'static str {
    r.state().as_str_name()
}
