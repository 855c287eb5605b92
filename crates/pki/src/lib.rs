//! pki: certificate authorities, certificates and CRLs kept in etcd.
//!
//! A [`Certificate`] describes a certificate by name inside a PKI namespace (a key prefix such
//! as `/cluster-pki/` inside a [`kv::Namespaced`] keyspace): who issues it, which template it
//! follows and whether its private key is *managed* (generated here and stored in etcd, as for
//! the CAs) or *external* (the caller holds it and supplies the public key, as for node and
//! user certificates). [`Certificate::ensure`] issues it once and returns the stored copy ever
//! after; every write is create-only, so concurrent callers agree on one certificate and a name
//! can never be re-issued to a different key. CAs also own a CRL that
//! [`Certificate::revoke_serial`] extends with compare-and-swap and [`Certificate::watch_crl`]
//! follows.
//!
//! Building and signing certificates is the `identity` crate's job; this crate only decides
//! what to issue, stores it and keeps it consistent. The curator (cluster CA, node and owner
//! certificates) and consensus (etcd peer CA and member certificates) build on it.

#![forbid(unsafe_code)]

mod certificate;
mod crl;
mod error;
mod store;

pub use certificate::{Certificate, Issuer, Mode, Template};
pub use crl::{Crl, revoked_serials};
pub use error::{Error, Result};

/// PKI namespace of the cluster CA and the node and user certificates (curator keyspace).
pub const CLUSTER_PKI_NAMESPACE: &str = "/cluster-pki/";
/// Managed certificate name of the cluster CA.
pub const CLUSTER_CA_NAME: &str = "cluster-ca";
/// PKI namespace of the etcd peer CA and member certificates (etcd-pki keyspace).
pub const ETCD_PKI_NAMESPACE: &str = "/pki/";
/// Managed certificate name of the etcd peer CA.
pub const ETCD_CA_NAME: &str = "CA";
/// Certificate name of the owner's user certificate.
pub const OWNER_NAME: &str = "owner";
