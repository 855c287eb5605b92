//! Errors of the rpc crate (configuration and connection setup; per-call failures are
//! `tonic::Status`).

/// Failure to build a TLS configuration or to connect.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node or user credentials are unusable.
    #[error("credentials: {0}")]
    Identity(#[from] identity::Error),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The endpoint is not `host:port`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// Connecting (TCP, TLS or HTTP/2) failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A CRL is not a CRL of the cluster CA (or cannot be ordered).
    #[error("cluster CRL refused: {reason}")]
    Crl { reason: String },
    /// Binding or accepting on a listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// An error with its sources: tonic's transport errors say only "transport error" at the top,
/// the reason (certificate refused, connection refused) is further down. Causes whose text is
/// already there (several layers repeat their source's message) are left out.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
