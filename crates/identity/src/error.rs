//! The crate's single error type.
//!
//! Every failure of key handling, certificate issuance and certificate verification is a
//! distinct variant, so callers (the rpc peer classifier, the curator, metroctl) can match on
//! the reason and operators get a message that says what is wrong with which input.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key or signature had the wrong number of bytes.
    #[error("bad {what} length: expected {expected} bytes, got {got}")]
    BadKeyLength {
        /// What was being decoded (e.g. "Ed25519 public key").
        what: &'static str,
        /// Required length in bytes.
        expected: usize,
        /// Length actually supplied.
        got: usize,
    },

    /// A key (in a PKCS#8 document or a certificate) uses an algorithm other than Ed25519.
    #[error("key algorithm {algorithm} is not Ed25519; Metropolis uses Ed25519 keys everywhere")]
    NotEd25519 {
        /// The algorithm OID found, in dotted form.
        algorithm: String,
    },

    /// A 64-byte private key (seed || public key) whose public half does not belong to the seed.
    #[error(
        "private key is corrupt: its embedded public key does not match the one derived from its seed"
    )]
    KeyMismatch,

    /// A PKCS#8 document could not be decoded.
    #[error("invalid PKCS#8 private key: {0}")]
    Pkcs8(String),

    /// PEM framing or base64 was broken.
    #[error("invalid PEM data: {0}")]
    Pem(#[from] pem::PemError),

    /// PEM was well-formed but of the wrong kind.
    #[error("unexpected PEM block {got:?}, expected {expected:?}")]
    PemType {
        /// The PEM label that was required.
        expected: &'static str,
        /// The PEM label that was found.
        got: String,
    },

    /// A string is not a node ID.
    #[error("invalid node ID {id:?}: node IDs look like metropolis-<lowercase hex>")]
    InvalidNodeId {
        /// The offending string.
        id: String,
    },

    /// DER could not be parsed as an X.509 certificate or CRL.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was being parsed ("certificate", "CA certificate", "CRL").
        what: &'static str,
        /// Parser diagnostics.
        reason: String,
    },

    /// The certificate offered as a CA is not usable as one.
    #[error("certificate is not a usable CA: {reason}")]
    NotCa {
        /// Which CA requirement failed.
        reason: &'static str,
    },

    /// A leaf (node/user) certificate claims to be a CA; Metropolis only has one CA level.
    #[error("certificate is a CA, but a node or user certificate was expected")]
    UnexpectedCa,

    /// A certificate or message signature did not verify.
    #[error("signature invalid: {0}")]
    SignatureInvalid(String),

    /// The certificate lacks the extended key usage that marks its role.
    #[error(
        "certificate lacks the {wanted} extended key usage (node certs have ServerAuth, user certs ClientAuth)"
    )]
    WrongEku {
        /// "ServerAuth" or "ClientAuth".
        wanted: &'static str,
    },

    /// A node certificate's names do not match the node ID derived from its key.
    #[error("node has ID {node_id:?}, but its certificate {problem}")]
    IdMismatch {
        /// The ID derived from the certificate's public key.
        node_id: String,
        /// What is wrong with the certificate's names.
        problem: String,
    },

    /// A user certificate has no (or an empty) subject CommonName.
    #[error("user certificate has no CommonName, so it names no identity")]
    MissingCommonName,

    /// A certificate does not belong to the private key it was paired with.
    #[error("certificate is for public key {cert_key}, but the private key's public key is {key}")]
    CertKeyMismatch {
        /// Hex public key inside the certificate.
        cert_key: String,
        /// Hex public key of the private key.
        key: String,
    },

    /// Certificate or CRL generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),

    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Rng,

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its contents are bad; `error` says how.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it (not a `#[source]`: the message already includes it).
        error: Box<Error>,
    },
}

impl Error {
    /// The error itself, or for [`Error::InFile`] the error inside, for matching on the cause.
    pub fn root(&self) -> &Error {
        match self {
            Error::InFile { error, .. } => error.root(),
            other => other,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(what: &'static str, reason: impl ToString) -> Self {
        Error::Parse {
            what,
            reason: reason.to_string(),
        }
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Generate(e.to_string())
    }
}
