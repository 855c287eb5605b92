//! metroctl: the operator CLI of a Metropolis cluster.
//!
//! The binary (`src/main.rs`) parses the command line ([`cli`]) and runs a command
//! ([`cmd`]). Commands talk to the curator leader through rpc's leader-following channel
//! ([`session`]), after pinning the cluster CA on first contact ([`trust`]), with the owner
//! credentials kept in the config directory ([`config`]). What they print is built as
//! ordered documents ([`yaml::Doc`]) or tables ([`output`]) from node views ([`model`]); node
//! logs are rendered like the node's own logtree ([`logs`]). Every failure is an [`Error`]
//! whose message reads as advice and whose kind is the exit code ([`error`]).
//!
//! Beyond upstream's metroctl: JSON/YAML output, `--watch`, `node decommission` with a
//! visible wait, progress while waiting, register ticket rotation, distinct exit codes, and a
//! live web page of the cluster ([`dashboard`]).

#![forbid(unsafe_code)]

pub mod cli;
pub mod cmd;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod logs;
pub mod model;
pub mod output;
pub mod progress;
pub mod prompt;
pub mod roles;
pub mod session;
pub mod trust;
pub mod yaml;

pub use error::{Error, Kind, Result};
