//! node: the Metropolis node daemon, one `metropolis-node` process per (emulated) machine.
//!
//! A node is given a state directory, its own IP address and NodeParameters. It keeps its
//! local state like an upstream node keeps its partitions ([`storage`]: an `esp/` directory
//! and a `data/` directory encrypted at rest with NUK ⊕ CUK), enrols into its cluster on
//! every start ([`enrol`]: bootstrap a new cluster, register into an existing one, or re-join
//! with its join key), then runs the roleserve workers ([`roleserve`]): the control plane
//! (etcd member + curator) while it holds the ConsensusMember role, role fetch, status push,
//! heartbeats, the cluster directory and the NodeManagement service with its Logs RPC
//! ([`logs`]) and UpdateNode ([`update`]: bundles, A/B slots, the loader that boots the slot
//! the boot state names) and the metrics service ([`metrics`]). [`version`] is what the binary reports as its version. [`app`]
//! wires it into a process: logging into the logtree (and stdout), the
//! supervision tree, signals and exit codes ([`exit`]).
//!
//! Everything a TPM, dm-crypt or a real ESP would do is emulated in userspace; what that
//! protects and what it does not is described in the crate README.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod decommission;
pub mod enrol;
pub mod exit;
pub mod failpoint;
pub mod layout;
pub mod logs;
pub mod metrics;
pub mod params;
pub mod probe;
pub mod roleserve;
pub mod storage;
pub mod update;
pub mod version;

pub use cli::Args;
pub use exit::ExitCode;
