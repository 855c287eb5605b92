//! [`Esp`]: the node's emulated EFI system partition, `<state>/esp/metropolis/`, holding
//! `parameters.pb` (NodeParameters), `sealed_configuration.pb` (SealedConfiguration) and
//! `cluster_directory.pb` (ClusterDirectory), with upstream's file names.
//!
//! Nothing here is encrypted, as on upstream's ESP. Upstream seals the sealed configuration
//! to the TPM when it uses one; there is no TPM here (NodeTPMUsage NOT_PRESENT), so it is
//! stored as plain serialized protobuf, exactly as upstream does for TPM-less nodes. All files
//! are written atomically with mode 0600 (the sealed configuration holds the NUK and the join
//! private key).

use std::path::{Path, PathBuf};

use prost::Message;
use proto::api::NodeParameters;
use proto::common::ClusterDirectory;
use proto::private::SealedConfiguration;

use super::{Error, create_dir, read_file, write_file};

/// File name of the node parameters.
pub const PARAMETERS: &str = "parameters.pb";
/// File name of the sealed configuration.
pub const SEALED_CONFIGURATION: &str = "sealed_configuration.pb";
/// File name of the cluster directory.
pub const CLUSTER_DIRECTORY: &str = "cluster_directory.pb";

/// The `esp/metropolis` directory of a node.
#[derive(Debug, Clone)]
pub struct Esp {
    dir: PathBuf,
}

impl Esp {
    /// The ESP directory `dir` (`<state>/esp/metropolis`); nothing is touched yet.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The node parameters; `None` if there are none.
    pub fn parameters(&self) -> Result<Option<NodeParameters>, Error> {
        self.read_proto(PARAMETERS, "NodeParameters")
    }

    /// Installs parameters (already validated to decode) as `parameters.pb`.
    pub fn write_parameters_raw(&self, bytes: &[u8]) -> Result<(), Error> {
        self.write_raw(PARAMETERS, bytes)
    }

    /// The sealed configuration; `None` if the node never finished enrolment.
    pub fn sealed_configuration(&self) -> Result<Option<SealedConfiguration>, Error> {
        self.read_proto(SEALED_CONFIGURATION, "SealedConfiguration")
    }

    /// Writes ("seals") the sealed configuration.
    pub fn write_sealed_configuration(&self, c: &SealedConfiguration) -> Result<(), Error> {
        self.write_raw(SEALED_CONFIGURATION, &c.encode_to_vec())
    }

    /// The cluster directory; `None` if none was written yet.
    pub fn cluster_directory(&self) -> Result<Option<ClusterDirectory>, Error> {
        self.read_proto(CLUSTER_DIRECTORY, "ClusterDirectory")
    }

    /// Writes the cluster directory.
    pub fn write_cluster_directory(&self, d: &ClusterDirectory) -> Result<(), Error> {
        self.write_raw(CLUSTER_DIRECTORY, &d.encode_to_vec())
    }

    fn write_raw(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        create_dir(&self.dir)?;
        write_file(&self.dir.join(name), bytes)
    }

    fn read_proto<M: Message + Default>(
        &self,
        name: &str,
        what: &'static str,
    ) -> Result<Option<M>, Error> {
        let path = self.dir.join(name);
        let Some(bytes) = read_file(&path)? else {
            return Ok(None);
        };
        M::decode(bytes.as_slice())
            .map(Some)
            .map_err(|source| Error::Decode { path, what, source })
    }
}
