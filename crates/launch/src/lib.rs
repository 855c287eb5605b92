//! launch: local Metropolis clusters made of real `metropolis-node` processes, for people
//! (the `launch-cluster` binary, `make cluster`) and for end-to-end tests (this library).
//!
//! A cluster lives in one state directory: `node<i>/` per node (its `--state-dir` with `esp/`,
//! `data/`, `ephemeral/`, plus `parameters.pb` and `node.log`) and the owner's credentials in
//! metroctl's layout (`owner-key.pem`, `owner.pem`, `ca.pem`), so the directory doubles as
//! metroctl's `--config`. Node `i` listens on `127.x.y.(i+1)` with the fixed Metropolis ports;
//! clusters in different `127.x.y.0/24` blocks run side by side.
//!
//! [`Cluster::start`] does what upstream's e2e harness does: bootstrap node 0 with a
//! fresh owner key, take ownership (AAA.Escrow), read the register ticket and cluster info,
//! start the other nodes with `cluster_register` parameters, approve them as they appear NEW,
//! wait until they are UP, optionally add consensus members one at a time (etcd admits one
//! learner at a time), and wait until every node is HEALTHY. Each [`Node`] can then be
//! powered off (SIGKILL to it and its etcd), powered on, rebooted (clean stop, start again:
//! it Joins) or frozen; [`Management`] (rpc's typed client) follows the curator leader for
//! API calls, refusing curators the cluster CRL revokes (fetched from the curators whenever a
//! leader channel starts, see [`Cluster::crl`]).
//!
//! Every process started here dies with its owner (see [`node`]).
//!
//! The node binary is found by [`find_node_binary`] (`$METROPOLIS_NODE_BIN`, or
//! `metropolis-node` next to the running executable or its parent directory, which covers
//! `target/<profile>/` for the launcher and `target/<profile>/deps/` for test binaries; nothing
//! builds it for you: `cargo build -p node`). Environment switches: `LAUNCH_ECHO_LOGS=1` echoes
//! every node's output to stderr, `LAUNCH_KEEP_STATE=1` keeps temporary state directories
//! (they are always kept when a launch fails or a test panics).

#![forbid(unsafe_code)]

pub mod cluster;
pub mod error;
pub mod node;
pub mod owner;
mod sys;

pub use cluster::{Cluster, ClusterOptions, ConsensusJoin, NodeHost, Timeouts, find_node_binary};
pub use error::{Error, Result};
pub use node::{Exit, Node, NodeConfig, RestartPolicy};
/// The typed cluster API client launch hands out (leader-following, retried).
pub use rpc::{DeleteBypass, Management};

/// Re-exported so callers name enum values of the same version.
pub use proto;
