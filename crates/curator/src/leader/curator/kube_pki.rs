//! IssueCertificate (spec 4.9): the certificates a KubernetesWorker node's components need,
//! from the Kubernetes PKI — a managed CA `id-ca` ("Metropolis Kubernetes ID CA") in namespace
//! `/kube-pki/` of the `namespaced:kubernetes/` keyspace, separate from the cluster CA.
//!
//! Certificate names and subjects follow upstream's kubernetes/pki package, so the etcd
//! layout stays compatible: `kubelet-system:node:<id>-server` (DNS SAN `system:node:<id>`),
//! `kubelet-system:node:<id>-client` (CN `system:node:<id>`),
//! `csi-provisioner-metropolis:csi-provisioner:<id>` and
//! `netservices-metropolis:netservices:<id>`. All are external certificates bound to the
//! first key they were issued for: the same keys get the same certificates back, other keys
//! are refused.
//!
//! Deviation: upstream client certificates also carry an Organization (`system:nodes` for
//! the kubelet, which Kubernetes' Node authorizer uses as the group; `metropolis:csi-
//! provisioner`, `metropolis:netservices`). `identity::templates::CertificateTemplate` has no
//! Organization field and the pki crate builds every certificate from that template, so
//! these certificates have a CommonName only. Nothing runs Kubernetes here (spec 11); adding
//! `organizations` to the template would fix it without touching this module's logic.

use std::sync::Arc;

use identity::PublicKey;
use identity::templates::{CertificateTemplate, ExtKeyUsage, KeyUsage};
use kv::Namespaced;
use pki::{Certificate, Mode, Template};
use proto::curator_api::issue_certificate_request::{Kind, KubernetesWorker};
use proto::curator_api::{
    IssueCertificateRequest, IssueCertificateResponse, issue_certificate_response,
};
use rpc::PeerInfo;
use tonic::Status;

use crate::leader::Leader;
use crate::state::node;

/// Keyspace (below `namespaced:`) of the Kubernetes data, including its PKI.
const KUBERNETES_KEYSPACE: &str = "kubernetes";
/// PKI namespace of the Kubernetes PKI inside that keyspace.
const KUBE_PKI_NAMESPACE: &str = "/kube-pki/";
/// Managed certificate name of the Kubernetes identity CA.
const ID_CA_NAME: &str = "id-ca";
/// Its CommonName.
const ID_CA_CN: &str = "Metropolis Kubernetes ID CA";

/// IssueCertificate: Kubernetes worker certificates for the calling node.
pub(super) async fn issue_certificate(
    leader: &Leader,
    peer: &PeerInfo,
    req: IssueCertificateRequest,
) -> Result<IssueCertificateResponse, Status> {
    let caller = peer.require_node()?;
    let record = node::load(&leader.leadership, &caller.id)
        .await
        .map_err(|e| Status::unavailable(format!("could not load node: {}", e.message())))?;
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
    let keys = WorkerKeys::parse(&worker)?;
    let ns = leader
        .consensus
        .namespaced(&[KUBERNETES_KEYSPACE])
        .map_err(|e| Status::unavailable(format!("Kubernetes keyspace: {e}")))?;
    let issued = issue_worker(&ns, &caller.id, &keys).await?;
    Ok(IssueCertificateResponse {
        kind: Some(issue_certificate_response::Kind::KubernetesWorker(issued)),
    })
}

/// The three public keys of a worker request.
struct WorkerKeys {
    kubelet: PublicKey,
    csi_provisioner: PublicKey,
    netservices: PublicKey,
}

impl WorkerKeys {
    fn parse(w: &KubernetesWorker) -> Result<Self, Status> {
        let key = |name: &str, bytes: &[u8]| {
            PublicKey::from_slice(bytes).map_err(|_| {
                Status::invalid_argument(format!("{name} must be 32 bytes, got {}", bytes.len()))
            })
        };
        Ok(Self {
            kubelet: key("kubelet_pubkey", &w.kubelet_pubkey)?,
            csi_provisioner: key("csi_provisioner_pubkey", &w.csi_provisioner_pubkey)?,
            netservices: key("netservices_pubkey", &w.netservices_pubkey)?,
        })
    }
}

/// Ensures the CA and the node's four certificates.
async fn issue_worker(
    ns: &Namespaced,
    id: &str,
    keys: &WorkerKeys,
) -> Result<issue_certificate_response::KubernetesWorker, Status> {
    let ca = Arc::new(Certificate::self_signed_ca(
        KUBE_PKI_NAMESPACE,
        ID_CA_NAME,
        ID_CA_CN,
    ));
    let node_name = format!("system:node:{id}");
    let csi_name = format!("metropolis:csi-provisioner:{id}");
    let netservices_name = format!("metropolis:netservices:{id}");

    let kubelet_server = external(
        &ca,
        &format!("kubelet-{node_name}-server"),
        server(&node_name),
        keys.kubelet,
    );
    let kubelet_client = external(
        &ca,
        &format!("kubelet-{node_name}-client"),
        client(&node_name),
        keys.kubelet,
    );
    let csi = external(
        &ca,
        &format!("csi-provisioner-{csi_name}"),
        client(&csi_name),
        keys.csi_provisioner,
    );
    let netservices = external(
        &ca,
        &format!("netservices-{netservices_name}"),
        client(&netservices_name),
        keys.netservices,
    );

    Ok(issue_certificate_response::KubernetesWorker {
        identity_ca_certificate: ensure(&ca, ns).await?,
        kubelet_server_certificate: ensure(&kubelet_server, ns).await?,
        kubelet_client_certificate: ensure(&kubelet_client, ns).await?,
        csi_provisioner_certificate: ensure(&csi, ns).await?,
        netservices_certificate: ensure(&netservices, ns).await?,
    })
}

fn external(
    ca: &Arc<Certificate>,
    name: &str,
    template: CertificateTemplate,
    key: PublicKey,
) -> Certificate {
    Certificate::issued_by(ca, name, Template::Custom(template), Mode::External(key))
}

/// Every failure is Unavailable, as upstream — including a name already issued for another
/// key, which is how a node is kept from getting a second set of certificates.
async fn ensure(cert: &Certificate, ns: &Namespaced) -> Result<Vec<u8>, Status> {
    cert.ensure(ns).await.map_err(|e| {
        Status::unavailable(format!("could not ensure certificate {}: {e}", cert.name))
    })
}

/// Upstream `pki.Server(dnsNames, nil)`: no subject, the name as DNS SAN, ServerAuth.
fn server(dns_name: &str) -> CertificateTemplate {
    CertificateTemplate {
        common_name: None,
        dns_names: vec![dns_name.to_string()],
        ip_addresses: Vec::new(),
        key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        ext_key_usage: vec![ExtKeyUsage::ServerAuth],
        is_ca: false,
    }
}

/// Upstream `pki.Client(identity, groups)` minus the groups (see the module docs): CN =
/// identity, ClientAuth.
fn client(identity: &str) -> CertificateTemplate {
    CertificateTemplate {
        common_name: Some(identity.to_string()),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        ext_key_usage: vec![ExtKeyUsage::ClientAuth],
        is_ca: false,
    }
}
