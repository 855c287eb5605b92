//! Local storage of a node: the ESP directory with the parameters, the
//! sealed configuration and the cluster directory ([`esp`]), and the data directory whose files
//! are encrypted at rest with NUK ⊕ CUK ([`data`], [`crypt`], [`keys`]), with the typed
//! contents the node keeps there ([`contents`]).

pub mod contents;
pub mod crypt;
pub mod data;
pub mod esp;
pub mod keys;

use std::path::{Path, PathBuf};

pub use crypt::{CryptError, DataKey};
pub use data::DataDir;
pub use esp::Esp;
pub use keys::UnlockKeys;

/// Mode of directories holding node state: only the node may list them.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the node writes: secrets or not, nobody else needs to read them.
pub const FILE_MODE: u32 = 0o600;

/// What can go wrong with local storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be decrypted.
    #[error("{}: {error}", path.display())]
    Crypt { path: PathBuf, error: CryptError },
    /// A protobuf file could not be decoded.
    #[error("{}: cannot decode {what}: {source}", path.display())]
    Decode {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    /// Key material (unlock keys, storage security) is unusable.
    #[error("{0}")]
    BadKey(String),
    /// The data directory does not match how the sealed configuration says it was set up.
    #[error("{}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    /// Credentials stored in the data directory are unusable.
    #[error("{}: {error}", path.display())]
    Identity {
        path: PathBuf,
        #[source]
        error: identity::Error,
    },
    /// A path inside the data directory was malformed (a bug, not an input problem).
    #[error("invalid data path {0:?}")]
    BadPath(String),
    /// The system RNG failed.
    #[error("system random number generator failed")]
    Rng,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700.
pub(crate) fn create_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` atomically (temporary file with the final mode, fsync, rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    identity::files::write_atomic(path, bytes, FILE_MODE).map_err(|e| match e {
        identity::Error::Io { path, source } => Error::Io { path, source },
        other => Error::Identity {
            path: path.to_path_buf(),
            error: other,
        },
    })
}

/// Reads `path`; `None` if it does not exist.
pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}
