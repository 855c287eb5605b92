//! curator: the Metropolis cluster's control-plane brain.
//!
//! A curator runs next to every etcd member. They elect one leader over etcd
//! ([`election`]); the leader serves the cluster API — Management, Curator, AAA and
//! CuratorLocal ([`leader`]) — over mutual TLS on port 7835, followers serve CuratorLocal and
//! point every other call at the leader ([`listener`]). The cluster state lives in etcd under
//! `namespaced:curator/` ([`state`]); the first node writes the initial state with
//! [`bootstrap::finish`]. Node health comes from heartbeats in the leader's memory
//! ([`health`]).

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod election;
pub mod failpoint;
pub mod follower;
pub mod health;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod revocation;
pub mod service;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

pub use election::{DEFAULT_LEADER_TTL, ElectionStatus, Leadership};
pub use leader::Leader;
pub use service::{Config, Curator};

/// The keyspace (below `namespaced:`) of the curator.
pub const KEYSPACE: &str = "curator";
