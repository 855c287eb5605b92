//! Where a cluster lives on disk: the state directory and the owner's files in metroctl's
//! layout, each node's parameters, and the `metropolis-node` binary.

use super::*;

/// metroctl's owner key file (PEM "METROPOLIS INITIAL OWNER PRIVATE KEY", 0600).
pub const OWNER_KEY_FILE: &str = "owner-key.pem";

/// The same key as PKCS#8 PEM (0600), for tools like grpcurl or openssl.
pub const OWNER_PKCS8_KEY_FILE: &str = "owner.key";

/// metroctl's owner certificate file (PEM).
pub const OWNER_CERT_FILE: &str = "owner.pem";

/// metroctl's pinned cluster CA (PEM).
pub const CA_FILE: &str = "ca.pem";

/// Where the node parameters of node `i` are written (inside its directory).
pub const PARAMETERS_FILE: &str = "parameters.pb";

/// Finds `metropolis-node`: `explicit`, else `$METROPOLIS_NODE_BIN`, else
/// `$CARGO_BIN_EXE_metropolis-node`, else next to the running executable (the launcher in
/// `target/<profile>/`), else in the parent of its directory (a test binary in
/// `target/<profile>/deps/`).
pub fn find_node_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::NodeBinaryNotFound {
                looked: path.display().to_string(),
            })
        };
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["METROPOLIS_NODE_BIN", "CARGO_BIN_EXE_metropolis-node"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(value));
        }
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("metropolis-node"));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join("metropolis-node"));
        }
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| Error::NodeBinaryNotFound {
            looked: candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

pub(super) fn prepare_state_dir(
    given: Option<&Path>,
) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(Error::io("creating state directory", dir))?;
            let mut entries =
                std::fs::read_dir(dir).map_err(Error::io("reading state directory", dir))?;
            if entries.next().is_some() {
                return Err(Error::Invalid(format!(
                    "state directory {} is not empty: a launched cluster cannot be resumed, \
                     pick a new directory (or remove this one)",
                    dir.display()
                )));
            }
            let dir = std::fs::canonicalize(dir).map_err(Error::io("resolving", dir))?;
            Ok((dir, None))
        }
        None => {
            // Short paths under /tmp: etcd's unix socket lives in there and socket paths are
            // limited to 108 bytes.
            let temp = tempfile::Builder::new()
                .prefix("metropolis-")
                .tempdir()
                .map_err(Error::io(
                    "creating a temporary state directory",
                    std::env::temp_dir(),
                ))?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    write_atomic(path, contents, mode).map_err(|source| Error::Identity {
        what: "writing a credentials file",
        source,
    })
}

/// Writes the parameters file the node passes on every boot (0600: register parameters hold
/// the ticket).
pub(super) fn set_parameters(node: &Node, parameters: &NodeParameters) -> Result<()> {
    let path =
        node.config().parameters.clone().ok_or_else(|| {
            Error::Invalid(format!("node {} has no parameters file", node.index()))
        })?;
    let dir = node.dir();
    std::fs::create_dir_all(dir).map_err(Error::io("creating node directory", dir))?;
    write_file(&path, &parameters.encode_to_vec(), PRIVATE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_binary_is_an_error() {
        let err = find_node_binary(Some(Path::new("/nonexistent/metropolis-node")))
            .expect_err("must fail");
        assert!(err.to_string().contains("cargo build -p node"), "{err}");
    }
}
