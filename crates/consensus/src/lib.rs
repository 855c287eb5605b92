//! consensus: the etcd member every ConsensusMember node runs, managed by the node itself.
//!
//! The Debian `etcd` binary runs as a supervised child process of the node (never as a system
//! service): clients reach it over a unix socket in the node's ephemeral directory, peers over
//! TLS with Ed25519 certificates from an etcd peer CA that lives inside etcd itself (as
//! upstream's `metropolis/node/core/consensus`).
//!
//! * [`Service::run`] is the supervisor runnable: PKI bootstrap on first start (etcd without
//!   peers, CA and member certificate created inside it, written to disk, etcd stopped), then
//!   the full member; restart from disk; joining an existing cluster from [`JoinCluster`] data.
//!   It reports [`Status`] only once the member is a voting member.
//! * [`Status::add_node`] issues a peer certificate and adds a learner (what UpdateNodeRoles and
//!   bootstrap use), [`Status::remove_node`] removes a member unless that breaks quorum. Both
//!   find a node's member by node ID only (its name, or the member ID recorded when it was
//!   added), never by a peer URL built from an address the node reports.
//! * Helpers run next to the member: the autopromoter (every 1 s, on the etcd leader only,
//!   promotes learners) and the self-updater (sets the member's peer URL once, because the
//!   bootstrap member first registered a plain-HTTP one).
//! * When the runnable is cancelled (the node stops), etcd is stopped only once the users that
//!   hold it ([`Status::hold`]: the curator's election, revoking its lease) are done, or after
//!   [`HOLD_GRACE`].
//! * etcd compacts its history by itself (revision mode, [`Config::history_revisions`]), and a
//!   third helper, the space keeper, clears a NOSPACE alarm on this member (compaction,
//!   defragmentation, disarm) once the database fits its quota again
//!   ([`Config::quota_backend_bytes`]).

#![forbid(unsafe_code)]

mod config;
mod error;
pub mod failpoint;
mod membership;
mod peer_pki;
mod process;
mod service;
mod space;

pub use config::{Config, DEFAULT_HISTORY_REVISIONS, ETCD_DEFAULT_QUOTA, JoinCluster, PeerPki};
pub use error::Error;
pub use membership::{ExistingNode, MEMBERS_KEYSPACE};
pub use service::{HOLD_GRACE, Hold, Service, Status, StatusWatch};
pub use space::SpaceCheck;

/// Initial cluster token of every Metropolis etcd cluster (upstream's value).
pub const CLUSTER_TOKEN: &str = "METROPOLIS";
