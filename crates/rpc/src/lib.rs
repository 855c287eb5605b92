//! The authenticated gRPC layer every Metropolis service runs on.
//!
//! * [`server_tls`]: the rustls server side: presents the node certificate, asks for a client
//!   certificate and accepts either one chaining to the cluster CA or a valid self-signed
//!   Ed25519 one (the ephemeral credentials of nodes registering/joining and of owners escrowing).
//! * [`peer`]: who is calling: a [`PeerInfo::Node`], a [`PeerInfo::User`] or
//!   [`PeerInfo::Unauthenticated`] (with the self-signed key if one was presented).
//! * [`authz`]: a tower layer enforcing the build-time method → permission table of
//!   `proto::authz`, with exactly upstream's gRPC codes, handing the [`PeerInfo`] to
//!   handlers through the request extensions.
//! * [`revocation`]: a shared set of revoked node IDs and certificate serials the layer consults
//!   on every call, so a deleted node is refused on its very next call (upstream never refuses it).
//! * [`client_tls`]: client credentials (authenticated, ephemeral, none) and server verification
//!   (node certificate of the expected cluster CA, not revoked by the cluster CRL if one is
//!   given, optionally a given node ID; or insecure for trust-on-first-use fetching of the CA).
//! * [`crl`]: the cluster CRL as a client holds it: only CRLs of the cluster CA, never an older
//!   one, fetched from any curator (`CuratorLocal.GetClusterCRL`).
//! * [`retry`]: client resilience: the one classifier of transient failures, the backoff
//!   policy, per-attempt timeouts and call deadlines.
//! * [`leader`]: a client channel that follows the curator leader through
//!   `CuratorLocal.GetCurrentLeader` (upstream's `metropolis:///control` resolver), retrying
//!   calls that hit a follower or a lost leadership under a [`RetryPolicy`]; it refuses revoked
//!   curators and leaders that fail a caller-supplied [`LeaderCheck`].
//! * [`management`]: a typed client of the cluster API (Management, and the Curator calls an
//!   operator makes) over the leader channel or a fixed channel.
//! * [`https`]: one HTTPS GET (HTTP/1.1) to a node, verified like a gRPC connection.
//! * [`metrics`]: a tower layer counting and timing calls by method and gRPC code (Prometheus).
//! * [`serve`]: a TLS accept loop with a bounded handshake feeding a tonic router.
//! * [`reflection`]: gRPC server reflection (v1 and v1alpha) over our full descriptor set.

#![forbid(unsafe_code)]

pub mod authz;
pub mod client_tls;
pub mod crl;
pub mod error;
pub mod https;
pub mod leader;
pub mod management;
pub mod metrics;
pub mod peer;
pub mod reflection;
pub mod retry;
pub mod revocation;
pub mod serve;
pub mod server_tls;
pub mod tls_verify;

pub use authz::{AuthLayer, ServerSecurity};
pub use client_tls::{ClientCredentials, ServerVerification};
pub use crl::ClusterCrl;
pub use error::Error;
pub use leader::{LeaderChannel, LeaderCheck, LeaderInfo, LeaderOptions};
pub use management::{CallError, DeleteBypass, Management};
pub use peer::PeerInfo;
pub use retry::{Backoff, RetryPolicy, is_transient};
pub use revocation::RevocationSet;

/// The fixed port of the curator services (Curator, CuratorLocal, Management, AAA).
pub const CURATOR_PORT: u16 = 7835;
/// The fixed port of etcd peer traffic.
pub const CONSENSUS_PORT: u16 = 7834;
/// The fixed port of the NodeManagement service.
pub const NODE_MANAGEMENT_PORT: u16 = 7839;

/// The rustls crypto provider used everywhere: ring (aws-lc-rs needs cmake to build).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
