//! CuratorLocal on the leader: GetCurrentLeader names itself, GetCACertificate returns the
//! cluster CA, GetClusterCRL the cluster CRL. (Followers serve their own CuratorLocal from the
//! listener.)

use std::sync::Arc;

use futures::{StreamExt, stream};
use proto::curator_api::curator_local_server::CuratorLocal;
use proto::curator_api::{
    GetCaCertificateRequest, GetCaCertificateResponse, GetClusterCrlRequest, GetClusterCrlResponse,
    GetCurrentLeaderRequest, GetCurrentLeaderResponse,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::Leader;
use crate::state::node;

/// The leader's CuratorLocal service.
#[derive(Debug, Clone)]
pub struct LeaderLocalService(pub Arc<Leader>);

#[tonic::async_trait]
impl CuratorLocal for LeaderLocalService {
    /// One answer naming this node, then the stream stays open until the client goes away:
    /// the leader has nothing more to report, and when leadership ends the server is torn
    /// down, which ends the stream and makes clients re-resolve.
    async fn get_current_leader(
        &self,
        _request: Request<GetCurrentLeaderRequest>,
    ) -> Result<Response<BoxStream<GetCurrentLeaderResponse>>, Status> {
        let answer = current_leader(&self.0).await?;
        let replies = stream::once(async move { Ok(answer) }).chain(stream::pending());
        Ok(Response::new(Box::pin(replies)))
    }

    async fn get_ca_certificate(
        &self,
        _request: Request<GetCaCertificateRequest>,
    ) -> Result<Response<GetCaCertificateResponse>, Status> {
        Ok(Response::new(GetCaCertificateResponse {
            identity_ca_certificate: self.0.credentials.ca().to_vec(),
        }))
    }

    async fn get_cluster_crl(
        &self,
        _request: Request<GetClusterCrlRequest>,
    ) -> Result<Response<GetClusterCrlResponse>, Status> {
        crate::revocation::cluster_crl(self.0.ns()).await
    }
}

/// This node as the leader, with the address it last reported ("" before its first status
/// update). Unavailable if its own record cannot be read, as upstream.
async fn current_leader(leader: &Leader) -> Result<GetCurrentLeaderResponse, Status> {
    let id = leader.credentials.node_id();
    let record = node::load(&leader.leadership, &id)
        .await
        .map_err(|e| Status::unavailable(format!("failed to load leader node: {e}")))?;
    let leader_host = record
        .node
        .status
        .map(|s| s.external_address)
        .unwrap_or_default();
    Ok(GetCurrentLeaderResponse {
        leader_node_id: id.clone(),
        leader_host,
        leader_port: i32::from(rpc::CURATOR_PORT),
        this_node_id: id,
    })
}
