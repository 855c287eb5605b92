//! The curator's domain layer: the cluster state it keeps in etcd and the rules
//! that keep it consistent. Every read and write of a record or an index goes through here —
//! node records with their join-key index ([`node`]), the register ticket, the initial owner
//! and the cluster configuration ([`cluster`]), the cluster and Kubernetes PKIs ([`pki`],
//! [`kube_pki`]) — and node states change only along the lifecycle table ([`lifecycle`]).
//!
//! A leader reads and writes under its [`crate::election::Leadership`]: every operation is
//! an etcd transaction guarded by the election key (`guard.rs`), so a deposed leader cannot
//! write. The exceptions are explicit: bootstrap writes the initial state before any curator
//! runs ([`cluster::initialize`]), followers read the leader's record, and watches follow etcd
//! directly.
//!
//! Errors are [`StateError`]s, in the state's own terms. The service handlers choose the gRPC
//! status for them (`crate::leader::status`), per RPC where upstream uses another code.

pub mod cluster;
mod error;
mod guard;
pub mod kube_pki;
pub mod lifecycle;
pub mod node;
pub mod pki;

pub use cluster::PolicyError;
pub use error::StateError;
pub use node::NodeRecord;
