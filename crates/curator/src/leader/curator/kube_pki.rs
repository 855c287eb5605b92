//! IssueCertificate: the certificates a KubernetesWorker node's components need,
//! from the Kubernetes PKI ([`crate::state::kube_pki`]).

use identity::PublicKey;
use proto::curator_api::issue_certificate_request::{Kind, KubernetesWorker};
use proto::curator_api::{
    IssueCertificateRequest, IssueCertificateResponse, issue_certificate_response,
};
use rpc::PeerInfo;
use tonic::Status;

use crate::leader::Leader;
use crate::state::kube_pki::{self, WorkerKeys};
use crate::state::node;

/// IssueCertificate: Kubernetes worker certificates for the calling node.
pub(super) async fn issue_certificate(
    leader: &Leader,
    peer: &PeerInfo,
    req: IssueCertificateRequest,
) -> Result<IssueCertificateResponse, Status> {
    let caller = peer.require_node()?;
    let record = node::load(&leader.leadership, &caller.id)
        .await
        .map_err(|e| Status::unavailable(format!("could not load node: {e}")))?;
    let worker = match req.kind {
        Some(Kind::KubernetesWorker(w)) => w,
        None => return Err(Status::invalid_argument("certificate kind must be set")),
    };
    if record.roles().kubernetes_worker.is_none() {
        return Err(Status::permission_denied(format!(
            "node {} is not a Kubernetes worker",
            caller.id
        )));
    }
    let keys = worker_keys(&worker)?;
    // Every failure is Unavailable, as upstream — including keys other than the ones the
    // certificates were first issued for.
    let issued = kube_pki::issue_worker(&leader.consensus, &caller.id, &keys)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(IssueCertificateResponse {
        kind: Some(issue_certificate_response::Kind::KubernetesWorker(issued)),
    })
}

/// The three public keys of a worker request.
fn worker_keys(w: &KubernetesWorker) -> Result<WorkerKeys, Status> {
    let key = |name: &str, bytes: &[u8]| {
        PublicKey::from_slice(bytes).map_err(|_| {
            Status::invalid_argument(format!("{name} must be 32 bytes, got {}", bytes.len()))
        })
    };
    Ok(WorkerKeys {
        kubelet: key("kubelet_pubkey", &w.kubelet_pubkey)?,
        csi_provisioner: key("csi_provisioner_pubkey", &w.csi_provisioner_pubkey)?,
        netservices: key("netservices_pubkey", &w.netservices_pubkey)?,
    })
}
