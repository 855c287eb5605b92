//! The cluster state the curator keeps in etcd (spec 4.3), always read and written through a
//! [`crate::election::Leadership`]: node records with their join-key index, the register
//! ticket, the initial owner, the cluster configuration and the cluster PKI.

pub mod cluster;
pub mod node;
pub mod pki;

pub use node::NodeRecord;
