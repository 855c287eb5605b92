//! The cluster PKI: the cluster CA (managed, `cluster-ca` in `/cluster-pki/`), node
//! certificates (`node-<id>`, external) and the owner certificate (`owner`, external).
//!
//! A leader issues and revokes through [`Leadership`]: every PKI write is then made under
//! the leadership guard, like every record write, so a curator that lost the election can
//! neither hand out nor take back certificates. Only bootstrap, before any curator runs,
//! writes through a plain keyspace ([`ensure_ca`], [`ensure_node_certificate`]).

use std::sync::Arc;

use identity::PublicKey;
use kv::Namespaced;

use super::StateError;
use crate::election::Leadership;

fn ca() -> Arc<pki::Certificate> {
    Arc::new(pki::Certificate::cluster_ca())
}

fn pki_error(what: &str, e: pki::Error) -> StateError {
    match e {
        pki::Error::Kv(kv::Error::GuardFailed) => StateError::LostLeadership,
        pki::Error::KeyMismatch { .. } => StateError::CertificateKeyMismatch {
            what: what.to_string(),
        },
        e => StateError::store(format!("{what}: {e}")),
    }
}

/// Ensures the cluster CA; returns its DER. Leaders use [`leader_node_certificate`].
pub async fn ensure_ca(ns: &Namespaced) -> Result<Vec<u8>, StateError> {
    ca().ensure(ns)
        .await
        .map_err(|e| pki_error("cluster CA", e))
}

/// The cluster CA and the node certificate of `key` (both DER), issued under the leadership
/// guard if they do not exist yet.
pub async fn leader_node_certificate(
    l: &Leadership,
    key: &PublicKey,
) -> Result<(Vec<u8>, Vec<u8>), StateError> {
    let ns = l.guarded_namespace();
    Ok((
        ensure_ca(&ns).await?,
        ensure_node_certificate(&ns, key).await?,
    ))
}

/// Ensures the node certificate of `key`; returns its DER. Leaders use
/// [`leader_node_certificate`].
pub async fn ensure_node_certificate(
    ns: &Namespaced,
    key: &PublicKey,
) -> Result<Vec<u8>, StateError> {
    pki::Certificate::node(&ca(), *key)
        .ensure(ns)
        .await
        .map_err(|e| pki_error("node certificate", e))
}

/// Ensures the owner certificate for `key`; returns its DER. A different key than the one
/// that first took ownership is refused ([`StateError::CertificateKeyMismatch`]).
/// A leader passes its guarded keyspace (`Leadership::guarded_namespace`).
pub async fn ensure_owner_certificate(
    ns: &Namespaced,
    key: &PublicKey,
) -> Result<Vec<u8>, StateError> {
    pki::Certificate::user(&ca(), pki::OWNER_NAME, pki::OWNER_NAME, *key)
        .ensure(ns)
        .await
        .map_err(|e| pki_error("owner certificate", e))
}

/// Revokes a deleted node's certificate in the cluster CRL and drops it from the issued
/// certificates (ours: upstream keeps both, so deleted nodes keep authenticating). Returns the
/// revoked serial, if the node had a certificate, so the caller can refuse it at once.
/// Idempotent: once the certificate is dropped there is nothing left to do. Both writes are
/// made under the leadership guard.
pub async fn revoke_node(l: &Leadership, key: &PublicKey) -> Result<Option<Vec<u8>>, StateError> {
    let ns = &l.guarded_namespace();
    let ca = ca();
    let cert = pki::Certificate::node(&ca, *key);
    let serial = match cert
        .get(ns)
        .await
        .map_err(|e| pki_error("reading node certificate", e))?
    {
        Some(der) => Some(
            identity::verify::cert_serial(&der)
                .map_err(|e| StateError::corrupt(cert.cert_path(), e))?,
        ),
        None => None,
    };
    match ca.revoke_certificate(ns, &cert.name).await {
        Ok(()) | Err(pki::Error::NotFound { .. }) => {}
        Err(e) => return Err(pki_error("revoking node certificate", e)),
    }
    ca.delete_issued(ns, &cert.name)
        .await
        .map_err(|e| pki_error("deleting node certificate", e))?;
    Ok(serial)
}
