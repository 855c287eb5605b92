//! Errors of the bmaas library parts (the binaries wrap them with anyhow).

use std::path::PathBuf;

/// Result with the bmaas [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong setting up or running the server or the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Binding a listener failed.
    #[error("listening on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// Keys or certificates are unusable.
    #[error("credentials: {0}")]
    Identity(#[from] identity::Error),
    /// rustls refused a TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Setting up a gRPC connection failed.
    #[error("{0}")]
    Rpc(#[from] rpc::Error),
    /// The BMDB failed.
    #[error("BMDB: {0}")]
    Bmdb(#[from] bmdb::Error),
    /// A gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The configuration (flags, init file) is unusable.
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
