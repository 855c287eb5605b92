//! The crate's error type.

use identity::PublicKey;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong issuing, storing or revoking certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An etcd request failed; retrying later may help.
    #[error("etcd request failed: {0}")]
    Etcd(etcd_client::Error),

    /// The etcd client wrapper failed for another reason (e.g. a cancelled watch).
    #[error(transparent)]
    Kv(kv::Error),

    /// Building, signing or parsing a certificate failed.
    #[error(transparent)]
    Identity(#[from] identity::Error),

    /// The name is already issued to another public key; names are bound to one key forever.
    #[error(
        "certificate {name:?} is already issued for public key {stored}, not {requested}; \
         a certificate name is bound to the first key it was issued for"
    )]
    KeyMismatch {
        /// Certificate name.
        name: String,
        /// Public key in the stored certificate.
        stored: PublicKey,
        /// Public key the caller asked for.
        requested: PublicKey,
    },

    /// Concurrent writers kept changing the key; the operation can simply be retried.
    #[error("concurrent writers kept changing etcd key {key:?}; retry the operation")]
    Conflict {
        /// Raw etcd key.
        key: String,
    },

    /// Something that should be in etcd is not.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, with its etcd key.
        what: String,
    },

    /// Data in etcd does not parse or does not fit; needs an operator.
    #[error("data at etcd key {key:?} is corrupt: {reason}")]
    Corrupt {
        /// Raw etcd key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The private key of an external certificate was asked for.
    #[error(
        "certificate {name:?} has an external key: its private key is held by its owner, not in etcd"
    )]
    NotManaged {
        /// Certificate name.
        name: String,
    },

    /// A CA operation (CRL, revocation) was asked of a certificate that is not a CA.
    #[error("certificate {name:?} is not a self-signed CA, so it has no CRL")]
    NotCa {
        /// Certificate name.
        name: String,
    },

    /// The certificate description itself is unusable.
    #[error("certificate {name:?}: {reason}")]
    Invalid {
        /// Certificate name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A CRL could not be parsed.
    #[error("invalid CRL: {0}")]
    InvalidCrl(String),
}

impl Error {
    /// Whether retrying the same call later can succeed (etcd unavailable, lost races).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Etcd(_) | Error::Conflict { .. })
    }
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::Etcd(e)
    }
}

impl From<kv::Error> for Error {
    fn from(e: kv::Error) -> Self {
        // Keep plain etcd failures in one variant whichever client layer reported them.
        match e {
            kv::Error::Etcd(e) => Error::Etcd(e),
            other => Error::Kv(other),
        }
    }
}
