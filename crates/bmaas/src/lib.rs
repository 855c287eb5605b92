//! bmaas: the BMaaS (bare metal as a service) server and agent.
//!
//! * [`server`]: `bmaas-server`. Serves the agent-facing `AgentCallback` API on a public TLS
//!   listener (agents authenticate with a self-signed Ed25519 certificate whose key must match
//!   the machine's agent-started tag in the BMDB), an internal mutual-TLS gRPC listener with
//!   reflection and our `Operator` service (enroll machines, list them, request OS
//!   installations), and an optional read-only debug web page.
//! * [`agent`]: `bmaas-agent`. Runs on a managed machine, heartbeats to the server, sends a
//!   [`hwreport`] of the machine it runs on and carries out OS installation requests.
//! * [`devcerts`]: component certificates, including the self-made development CA of
//!   `--srv-dev-certs`.
//!
//! The BMDB itself (schema, sessions, work) is the `bmdb` crate.

#![forbid(unsafe_code)]

pub mod agent;
pub mod devcerts;
pub mod duration;
pub mod error;
pub mod hwreport;
pub mod server;

pub use error::{Error, Result};
