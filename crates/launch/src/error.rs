//! Errors of the launcher. Each says which node, what was awaited and what was last seen, so a
//! failed end-to-end test explains itself without a debugger.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while launching or driving a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `metropolis-node` binary was not found.
    #[error(
        "metropolis-node binary not found (looked at: {looked}); build it with `cargo build -p node` \
         (or `cargo build --release -p node` for release launchers) or point METROPOLIS_NODE_BIN at it"
    )]
    NodeBinaryNotFound { looked: String },
    /// A node process could not be started.
    #[error("starting node {index} ({binary}): {source}", binary = binary.display())]
    Spawn {
        index: usize,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something awaited did not happen in time.
    #[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        after: std::time::Duration,
        last: String,
    },
    /// A node exited while something was waiting for it.
    #[error("node {index} exited ({status}) while waiting for {what}; last log lines:\n{tail}")]
    NodeExited {
        index: usize,
        status: String,
        what: String,
        tail: String,
    },
    /// A cluster RPC failed for good.
    #[error("{what}: {code:?}: {message}")]
    Rpc {
        what: String,
        code: tonic::Code,
        message: String,
    },
    /// Bad options or an answer of the cluster that makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// Keys or certificates could not be made, read or checked.
    #[error("{what}: {source}")]
    Identity {
        what: &'static str,
        #[source]
        source: identity::Error,
    },
    /// A client could not be configured.
    #[error("{what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: rpc::Error,
    },
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    pub(crate) fn rpc(what: impl Into<String>, status: &tonic::Status) -> Self {
        Error::Rpc {
            what: what.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// The gRPC code if this is a failed call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<rpc::CallError> for Error {
    fn from(e: rpc::CallError) -> Self {
        Error::rpc(e.method, &e.status)
    }
}
