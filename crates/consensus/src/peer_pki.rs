//! The etcd peer PKI: a CA named `CA` in namespace `/pki/` of the
//! `namespaced:etcd-pki/` keyspace, and one member certificate per node, named by its node ID
//! and issued for the node key. The certificates carry the node's IP as a SAN because peers
//! dial each other by IP here (see [`crate::Config::address`]).

use std::net::IpAddr;
use std::sync::Arc;

use identity::PublicKey;
use kv::Namespaced;

use crate::error::Error;

/// The keyspace (below `namespaced:`) holding the etcd peer PKI.
pub const KEYSPACE: &str = "etcd-pki";

fn ca() -> Arc<pki::Certificate> {
    Arc::new(pki::Certificate::etcd_ca())
}

/// Ensures the peer CA and returns its DER.
pub async fn ensure_ca(ns: &Namespaced) -> Result<Vec<u8>, Error> {
    Ok(ca().ensure(ns).await?)
}

/// Ensures `node`'s member certificate (reachable at `address`) and returns its DER.
pub async fn ensure_member(
    ns: &Namespaced,
    node: &PublicKey,
    address: IpAddr,
) -> Result<Vec<u8>, Error> {
    let cert = pki::Certificate::etcd_peer(&ca(), *node, Vec::new(), vec![address]);
    Ok(cert.ensure(ns).await?)
}

/// The peer CA's current CRL (DER).
pub async fn crl(ns: &Namespaced) -> Result<Vec<u8>, Error> {
    Ok(ca().crl(ns).await?.der)
}
