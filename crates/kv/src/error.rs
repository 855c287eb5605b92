//! The crate's error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to etcd through this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An etcd request failed (connection lost, etcd refused it, …).
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),

    /// The unix socket of the local etcd member could not be connected to.
    #[error(
        "cannot connect to etcd at {}: {source} (is the consensus service running?)",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Underlying transport error.
        #[source]
        source: tonic::transport::Error,
    },

    /// A sub-namespace name was rejected.
    #[error("invalid etcd namespace name {name:?}: {reason}")]
    InvalidNamespace {
        /// The offending name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },

    /// A write through a guarded namespace ([`crate::Namespaced::guarded`]) found its guard
    /// condition false (e.g. the writer is no longer the leader it was): nothing was written.
    #[error("the guard condition of this etcd write does not hold; nothing was written")]
    GuardFailed,

    /// etcd answered a guarded write without the response of the operation it wrapped.
    #[error("etcd answered a guarded write without its response")]
    MissingResponse,

    /// etcd cancelled a watch; the caller must re-read and watch again.
    #[error(
        "etcd cancelled the watch (compact revision {compact_revision}): {reason}; re-read and watch again"
    )]
    WatchCanceled {
        /// etcd's reason text, often empty.
        reason: String,
        /// Nonzero when the requested start revision was already compacted away.
        compact_revision: i64,
    },
}

/// The text of etcd's answer to a write while its NOSPACE alarm is raised (`ErrGRPCNoSpace`,
/// gRPC code ResourceExhausted).
pub const NO_SPACE_MESSAGE: &str = "database space exceeded";

/// Whether `e` is etcd refusing a write because its NOSPACE alarm is raised: the database
/// reached its backend quota, and nothing is written until the alarm is disarmed.
pub fn is_no_space(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::ResourceExhausted && s.message().contains(NO_SPACE_MESSAGE))
}

/// [`is_no_space`] for an error already turned into text (by this crate or a layer above):
/// etcd's message is kept verbatim in every wrapper.
pub fn mentions_no_space(text: &str) -> bool {
    text.contains(NO_SPACE_MESSAGE)
}

impl Error {
    /// Whether this is etcd refusing a write under its NOSPACE alarm ([`is_no_space`]).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Etcd(e) => is_no_space(e),
            _ => false,
        }
    }
}
