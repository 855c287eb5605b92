//! The state directory of a node and where each part of it lives:
//!
//! ```text
//! <state>/esp/metropolis/{parameters.pb, sealed_configuration.pb, cluster_directory.pb}
//! <state>/esp/metropolis/{slot-a/, slot-b/, boot_state.json}   updates (crate::update)
//! <state>/data/            encrypted node data (node/credentials/*, node/roles.pb)
//! <state>/data/etcd/       the etcd member (peer PKI and etcd's own files; NOT encrypted)
//! <state>/ephemeral/       runtime files: the etcd client socket
//! ```
//!
//! Unix socket paths are limited to 107 bytes. If `<state>/ephemeral/consensus/client.sock:0`
//! would be longer, the ephemeral directory moves to a short per-node directory under /tmp
//! (named after a hash of the state directory, so it is stable across restarts).

use std::path::{Path, PathBuf};

use crate::storage::{self, Esp};

/// Longest socket path we use; sun_path holds 108 bytes including the terminating NUL, and a
/// little slack costs nothing.
const MAX_SOCKET_PATH: usize = 100;
/// The socket file consensus creates in its ephemeral directory (consensus::config).
const SOCKET_SUFFIX: &str = "consensus/client.sock:0";

/// Paths of one node's state.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The state directory (absolute).
    pub root: PathBuf,
    /// The emulated ESP (`<state>/esp/metropolis`).
    pub esp: Esp,
    /// The data directory (`<state>/data`).
    pub data: PathBuf,
    /// The etcd member's directory (`<state>/data/etcd`).
    pub etcd: PathBuf,
    /// The ephemeral directory (`<state>/ephemeral`, or a short one under /tmp).
    pub ephemeral: PathBuf,
    /// Whether `ephemeral` had to move to /tmp because the state path is too long.
    pub ephemeral_relocated: bool,
}

impl Layout {
    /// Creates the state directory (0700) if needed and computes the paths.
    pub fn prepare(state_dir: &Path) -> Result<Self, storage::Error> {
        storage::create_dir(state_dir)?;
        let root = state_dir
            .canonicalize()
            .map_err(|e| storage::Error::io(state_dir, e))?;
        let mut ephemeral = root.join("ephemeral");
        let mut ephemeral_relocated = false;
        if ephemeral.join(SOCKET_SUFFIX).as_os_str().len() > MAX_SOCKET_PATH {
            let digest =
                ring::digest::digest(&ring::digest::SHA256, root.as_os_str().as_encoded_bytes());
            ephemeral = std::env::temp_dir().join(format!(
                "metropolis-node-{}",
                hex::encode(&digest.as_ref()[..8])
            ));
            ephemeral_relocated = true;
        }
        storage::create_dir(&ephemeral)?;
        if ephemeral_relocated {
            check_private(&ephemeral, &root)?;
        }
        Ok(Self {
            esp: Esp::new(root.join("esp").join("metropolis")),
            data: root.join("data"),
            etcd: root.join("data").join("etcd"),
            ephemeral,
            ephemeral_relocated,
            root,
        })
    }

    /// The ephemeral directory of the etcd member (holds its client socket).
    pub fn consensus_ephemeral(&self) -> PathBuf {
        self.ephemeral.join("consensus")
    }
}

/// A shared directory like /tmp lets anyone create our directory first and watch or replace
/// the etcd socket in it: insist that it belongs to whoever owns the state directory and
/// that nobody else may enter it.
fn check_private(dir: &Path, state: &Path) -> Result<(), storage::Error> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| storage::Error::io(dir, e))?;
    let owner = std::fs::metadata(state)
        .map_err(|e| storage::Error::io(state, e))?
        .uid();
    if !meta.is_dir() || meta.uid() != owner || meta.mode() & 0o077 != 0 {
        return Err(storage::Error::Layout {
            path: dir.to_path_buf(),
            reason: "runtime directory is not a private directory of the node's user (mode \
                     0700); remove it or use a shorter state directory path"
                .to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_state_paths_get_a_short_ephemeral_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = Layout::prepare(&dir.path().join("n")).expect("layout");
        assert!(!short.ephemeral_relocated);
        assert!(short.ephemeral.starts_with(&short.root));

        let long = dir.path().join("x".repeat(120));
        let l = Layout::prepare(&long).expect("layout");
        assert!(l.ephemeral_relocated);
        assert!(l.ephemeral.join(SOCKET_SUFFIX).as_os_str().len() <= MAX_SOCKET_PATH);
        let again = Layout::prepare(&long).expect("layout");
        assert_eq!(l.ephemeral, again.ephemeral, "stable across restarts");
        let _ = std::fs::remove_dir_all(&l.ephemeral);
    }
}
