//! [`DataDir`]: the node's data directory (`<state>/data`), upstream's encrypted data
//! partition. Files go through [`DataDir::read`] / [`DataDir::write`], which encrypt them with
//! the data key (NUK ⊕ CUK) unless storage is INSECURE.
//!
//! A marker file written when the directory is set up ([`DataDir::create`]) is checked when it
//! is unlocked again ([`DataDir::open`]): a wrong key, or an encrypted directory opened as
//! INSECURE (or the reverse), is reported right there with a clear message rather than at the
//! first real file.
//!
//! Not everything below `data/` goes through here: etcd writes `data/etcd/` itself, in the
//! clear (see the crate README).

use std::path::{Component, Path, PathBuf};

use super::crypt::{self, DataKey};
use super::{Error, create_dir, read_file, write_file};

/// Name of the marker file, relative to the data directory.
const MARKER: &str = ".metropolis-data";
/// Contents of the marker (before encryption).
const MARKER_CONTENTS: &[u8] = b"metropolis node data v1";

/// The data directory, unlocked.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    key: Option<DataKey>,
}

impl DataDir {
    /// Sets up a new data directory at `root` (created 0700 if needed) for `key` (`None`:
    /// INSECURE, files stored in the clear). Fails if it was already set up.
    pub fn create(root: &Path, key: Option<DataKey>) -> Result<Self, Error> {
        create_dir(root)?;
        let dir = Self {
            root: root.to_path_buf(),
            key,
        };
        if read_file(&dir.root.join(MARKER))?.is_some() {
            return Err(Error::Layout {
                path: dir.root.clone(),
                reason: "data directory was already set up".to_string(),
            });
        }
        dir.write(MARKER, MARKER_CONTENTS)?;
        Ok(dir)
    }

    /// Unlocks an existing data directory with `key` (`None` for INSECURE) and checks that the
    /// key is right.
    pub fn open(root: &Path, key: Option<DataKey>) -> Result<Self, Error> {
        let dir = Self {
            root: root.to_path_buf(),
            key,
        };
        let marker = dir.root.join(MARKER);
        let Some(raw) = read_file(&marker)? else {
            return Err(Error::Layout {
                path: dir.root.clone(),
                reason: "data directory is missing or was never set up (no marker file)"
                    .to_string(),
            });
        };
        let reason = match (&dir.key, crypt::is_encrypted(&raw)) {
            (None, true) => Some(
                "data directory is encrypted, but the sealed configuration says storage is INSECURE",
            ),
            (Some(_), false) => Some(
                "data directory is not encrypted, but the sealed configuration says storage is encrypted",
            ),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(Error::Layout {
                path: dir.root.clone(),
                reason: reason.to_string(),
            });
        }
        match dir.read(MARKER)? {
            Some(c) if c == MARKER_CONTENTS => Ok(dir),
            _ => Err(Error::Layout {
                path: marker,
                reason: "marker file has unexpected contents".to_string(),
            }),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether files are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// Reads and decrypts `rel` (a relative `/`-separated path); `None` if it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path_of(rel)?;
        let Some(raw) = read_file(&path)? else {
            return Ok(None);
        };
        match &self.key {
            None if crypt::is_encrypted(&raw) => Err(Error::Layout {
                path,
                reason: "file is encrypted, but storage is INSECURE".to_string(),
            }),
            None => Ok(Some(raw)),
            Some(key) => crypt::open(key, rel, &raw)
                .map(Some)
                .map_err(|error| Error::Crypt { path, error }),
        }
    }

    /// Encrypts and writes `rel` atomically (0600; parent directories 0700).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.path_of(rel)?;
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        match &self.key {
            None => write_file(&path, bytes),
            Some(key) => {
                let sealed = crypt::seal(key, rel, bytes).map_err(|error| Error::Crypt {
                    path: path.clone(),
                    error,
                })?;
                write_file(&path, &sealed)
            }
        }
    }

    /// Removes `rel` if it exists.
    pub fn remove(&self, rel: &str) -> Result<(), Error> {
        let path = self.path_of(rel)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// `root/rel`, refusing absolute paths, `..` and empty components (the relative path is
    /// also the AEAD associated data, so it must be canonical).
    fn path_of(&self, rel: &str) -> Result<PathBuf, Error> {
        let p = Path::new(rel);
        let canonical = !rel.is_empty()
            && !rel.split('/').any(str::is_empty)
            && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !canonical {
            return Err(Error::BadPath(rel.to_string()));
        }
        Ok(self.root.join(p))
    }
}

/// Whether the data directory at `root` holds anything (used to refuse enrolling over the
/// leftovers of an earlier, unfinished enrolment).
pub fn has_contents(root: &Path) -> Result<bool, Error> {
    match std::fs::read_dir(root) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(root, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_canonical() {
        let d = DataDir {
            root: PathBuf::from("/x"),
            key: None,
        };
        for bad in ["", "/abs", "a/../b", "a//b", "a/", "./a", ".."] {
            assert!(d.path_of(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            d.path_of("node/roles.pb").expect("ok"),
            PathBuf::from("/x/node/roles.pb")
        );
    }
}
