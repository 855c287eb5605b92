//! The Kubernetes PKI (behind IssueCertificate): a managed CA `id-ca` ("Metropolis
//! Kubernetes ID CA") in namespace `/kube-pki/` of the `namespaced:kubernetes/` keyspace,
//! separate from the cluster CA, and the certificates a KubernetesWorker node's components
//! need.
//!
//! Certificate names and subjects follow upstream's kubernetes/pki package, so the etcd
//! layout stays compatible: `kubelet-system:node:<id>-server` (DNS SAN `system:node:<id>`),
//! `kubelet-system:node:<id>-client` (CN `system:node:<id>`),
//! `csi-provisioner-metropolis:csi-provisioner:<id>` and
//! `netservices-metropolis:netservices:<id>`. All are external certificates bound to the
//! first key they were issued for: the same keys get the same certificates back, other keys
//! are refused ([`StateError::CertificateKeyMismatch`]).
//!
//! Deviation: upstream client certificates also carry an Organization (`system:nodes` for the
//! kubelet, which Kubernetes' Node authorizer uses as the group; `metropolis:csi- provisioner`,
//! `metropolis:netservices`). `identity::templates::CertificateTemplate` has no Organization field
//! and the pki crate builds every certificate from that template, so these certificates have a
//! CommonName only. Nothing runs Kubernetes here (nodes emulate it); adding `organizations` to the
//! template would fix it without touching this module's logic.

use std::sync::Arc;

use identity::PublicKey;
use identity::templates::{CertificateTemplate, ExtKeyUsage, KeyUsage};
use kv::Namespaced;
use pki::{Certificate, Mode, Template};
use proto::curator_api::issue_certificate_response;

use super::StateError;

/// Keyspace (below `namespaced:`) of the Kubernetes data, including its PKI.
const KUBERNETES_KEYSPACE: &str = "kubernetes";
/// PKI namespace of the Kubernetes PKI inside that keyspace.
const KUBE_PKI_NAMESPACE: &str = "/kube-pki/";
/// Managed certificate name of the Kubernetes identity CA.
const ID_CA_NAME: &str = "id-ca";
/// Its CommonName.
const ID_CA_CN: &str = "Metropolis Kubernetes ID CA";

/// The three public keys of a worker's components.
#[derive(Debug, Clone, Copy)]
pub struct WorkerKeys {
    /// The kubelet's key (server and client certificate).
    pub kubelet: PublicKey,
    /// The CSI provisioner's key.
    pub csi_provisioner: PublicKey,
    /// The network services' key.
    pub netservices: PublicKey,
}

/// Ensures the Kubernetes ID CA and node `id`'s four worker certificates.
pub async fn issue_worker(
    consensus: &consensus::Status,
    id: &str,
    keys: &WorkerKeys,
) -> Result<issue_certificate_response::KubernetesWorker, StateError> {
    let ns = consensus
        .namespaced(&[KUBERNETES_KEYSPACE])
        .map_err(|e| StateError::Unavailable(format!("Kubernetes keyspace: {e}")))?;
    issue(&ns, id, keys).await
}

async fn issue(
    ns: &Namespaced,
    id: &str,
    keys: &WorkerKeys,
) -> Result<issue_certificate_response::KubernetesWorker, StateError> {
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

/// A name already issued for another key is how a node is kept from getting a second set of
/// certificates.
async fn ensure(cert: &Certificate, ns: &Namespaced) -> Result<Vec<u8>, StateError> {
    cert.ensure(ns).await.map_err(|e| match e {
        pki::Error::KeyMismatch { .. } => StateError::CertificateKeyMismatch {
            what: format!("certificate {}", cert.name),
        },
        e => StateError::store(format!("could not ensure certificate {}: {e}", cert.name)),
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
