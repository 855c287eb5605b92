//! Where a member keeps its files and how it is configured.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use identity::SigningKey;

use crate::error::Error;
use crate::membership::ExistingNode;

/// File name of the client socket inside the ephemeral directory. etcd 3.4 insists on
/// `host:port` even in unix URLs, so it is started in that directory with
/// `unix://client.sock:0`, which creates this file.
pub const SOCKET_NAME: &str = "client.sock:0";

/// File name of the metrics socket inside the ephemeral directory (same `host:port` form as
/// [`SOCKET_NAME`]): etcd serves its Prometheus metrics there, for the node to proxy.
pub const METRICS_SOCKET_NAME: &str = "metrics.sock:0";

/// Configuration of one node's etcd member.
#[derive(Debug, Clone)]
pub struct Config {
    /// Persistent directory: `data/` (etcd's own), `peer_pki/` and `peer_crl`.
    pub data_dir: PathBuf,
    /// Runtime directory for the client socket (short path: unix sockets allow 107 bytes).
    pub ephemeral_dir: PathBuf,
    /// The node key: the member's name is its node ID and its peer certificate is for this key.
    pub node_key: SigningKey,
    /// The node's own address; peers reach the member at `https://<address>:<peer_port>`.
    /// Upstream advertises `https://<node ID>:7834` and resolves IDs through /etc/hosts; a
    /// userspace node cannot edit /etc/hosts, so we advertise the IP (which the peer
    /// certificate carries as an IP SAN).
    pub address: IpAddr,
    /// Peer port, 7834 in a real cluster.
    pub peer_port: u16,
    /// Present when this node joins (or re-joins) an existing cluster as a new member; the
    /// data comes from the node's ConsensusMember role, issued by [`crate::Status::add_node`].
    pub join_cluster: Option<JoinCluster>,
    /// The etcd binary; `etcd` from PATH by default.
    pub etcd_binary: PathBuf,
    /// etcd's backend quota in bytes (`--quota-backend-bytes`); `None` keeps etcd's default
    /// (2 GiB). Past it etcd raises its NOSPACE alarm and refuses writes, see
    /// [`crate::Service`]'s space keeper.
    pub quota_backend_bytes: Option<u64>,
    /// Revisions of history etcd keeps: it compacts older ones by itself
    /// (`--auto-compaction-mode=revision`, checked every five minutes). Without compaction
    /// every overwrite stays in the database and it grows until it hits the quota.
    pub history_revisions: u64,
    /// How often the space keeper looks for a NOSPACE alarm on this member.
    pub space_check_interval: Duration,
    /// Whether etcd requires a connecting peer's certificate to name the address the peer
    /// connects from (etcd's peer client-SAN check). On by default: in a real cluster every
    /// node has an address of its own, which its peer certificate carries as an IP SAN. Only
    /// several members sharing one host's loopback turn it off: they all connect from
    /// 127.0.0.1, whatever address they listen on. Without the check peers are still
    /// authenticated by the cluster-private peer CA and its CRL; the check additionally pins a
    /// certificate to its node's network location.
    pub peer_client_san_check: bool,
}

/// Revisions of history kept by default: far more than a watcher of the curator lags behind
/// (it re-reads on a compacted watch anyway), few enough that a busy cluster's database stays
/// small.
pub const DEFAULT_HISTORY_REVISIONS: u64 = 10_000;

/// etcd's own backend quota when none is given (`--quota-backend-bytes` 0): 2 GiB.
pub const ETCD_DEFAULT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;

impl Config {
    /// A configuration with the standard peer port and the etcd binary from PATH.
    pub fn new(
        data_dir: PathBuf,
        ephemeral_dir: PathBuf,
        node_key: SigningKey,
        address: IpAddr,
    ) -> Self {
        Self {
            data_dir,
            ephemeral_dir,
            node_key,
            address,
            peer_port: 7834,
            join_cluster: None,
            etcd_binary: PathBuf::from("etcd"),
            quota_backend_bytes: None,
            history_revisions: DEFAULT_HISTORY_REVISIONS,
            space_check_interval: Duration::from_secs(5),
            peer_client_san_check: true,
        }
    }

    /// The backend quota etcd enforces: the configured one or etcd's default.
    pub fn effective_quota(&self) -> u64 {
        self.quota_backend_bytes
            .filter(|q| *q > 0)
            .unwrap_or(ETCD_DEFAULT_QUOTA)
    }

    /// The member name: the node ID.
    pub fn name(&self) -> String {
        identity::node_id(&self.node_key.public_key())
    }

    /// The TLS peer URL this member advertises.
    pub fn peer_url(&self) -> String {
        peer_url(self.address, self.peer_port)
    }

    /// The client socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.ephemeral_dir.join(SOCKET_NAME)
    }

    /// The metrics socket path.
    pub fn metrics_socket_path(&self) -> PathBuf {
        Self::metrics_socket_in(&self.ephemeral_dir)
    }

    /// The metrics socket of a member whose ephemeral directory is `ephemeral_dir`.
    pub fn metrics_socket_in(ephemeral_dir: &Path) -> PathBuf {
        ephemeral_dir.join(METRICS_SOCKET_NAME)
    }

    /// etcd's own data directory.
    pub fn etcd_data_dir(&self) -> PathBuf {
        self.data_dir.join("data")
    }

    /// The peer PKI files.
    pub fn peer_pki(&self) -> PeerPki {
        PeerPki {
            dir: self.data_dir.join("peer_pki"),
            crl: self.data_dir.join("peer_crl"),
        }
    }
}

/// `https://<ip>:<port>`, with brackets for IPv6.
pub fn peer_url(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("https://{a}:{port}"),
        IpAddr::V6(a) => format!("https://[{a}]:{port}"),
    }
}

/// What a new member needs to join: returned by [`crate::Status::add_node`] and kept verbatim in
/// the node's ConsensusMember role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCluster {
    /// DER of the etcd peer CA.
    pub ca_certificate: Vec<u8>,
    /// DER of this member's peer certificate.
    pub node_certificate: Vec<u8>,
    /// The voting members to contact.
    pub existing_nodes: Vec<ExistingNode>,
    /// DER of the peer CA's CRL at the time of joining.
    pub initial_crl: Vec<u8>,
}

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "cert-key.pem";
const CA_FILE: &str = "ca.pem";

/// Removes `dir` and everything below it, if it exists.
fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Swaps the directories `a` and `b` in one step (renameat2 RENAME_EXCHANGE). On a file
/// system without it, `b` is removed and `a` renamed into its place: a crash in between
/// leaves no PKI directory, which the next start treats as missing and writes again.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            std::fs::remove_dir_all(b)?;
            std::fs::rename(a, b)
        }
        Err(e) => Err(e.into()),
    }
}

/// The member's peer TLS files as etcd reads them.
#[derive(Debug, Clone)]
pub struct PeerPki {
    dir: PathBuf,
    crl: PathBuf,
}

impl PeerPki {
    /// The member certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }
    /// The member key (PKCS#8 PEM, 0600).
    pub fn key(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }
    /// The peer CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }
    /// The peer CRL (DER).
    pub fn crl(&self) -> &Path {
        &self.crl
    }

    /// Whether every PKI file is on disk. Anything less (nothing, or what an interrupted
    /// write left) is the signal to create them (a PKI bootstrap) rather than hand etcd an
    /// incomplete set.
    pub fn complete(&self) -> bool {
        [self.cert(), self.key(), self.ca(), self.crl.clone()]
            .iter()
            .all(|p| p.exists())
    }

    /// Where a new set of files is assembled before it replaces the PKI directory.
    fn staging(&self) -> PathBuf {
        self.dir.with_file_name("peer_pki.new")
    }

    /// Writes certificate, key (0600), CA and CRL, all or nothing: the files are assembled in
    /// a staging directory, the CRL is replaced, then the staging directory takes the place
    /// of the PKI directory in one rename (an atomic exchange when one is there already). A
    /// crash at any point leaves either the old set or the new one, never a mix, and a
    /// leftover staging directory is cleared by the next write.
    pub fn write_all(
        &self,
        cert_der: &[u8],
        key: &SigningKey,
        ca_der: &[u8],
        crl_der: &[u8],
    ) -> Result<(), Error> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { what, path, source }
        };
        let staging = self.staging();
        remove_dir_if_present(&staging)
            .map_err(io("clearing the peer PKI staging directory", &staging))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging)
            .map_err(io("creating the peer PKI staging directory", &staging))?;
        key.save(&staging.join(KEY_FILE))?;
        crate::failpoint::crash_point("consensus::peer_pki::after_key");
        identity::files::write_atomic(
            &staging.join(CERT_FILE),
            identity::files::certificate_to_pem(cert_der).as_bytes(),
            0o644,
        )?;
        identity::files::write_atomic(
            &staging.join(CA_FILE),
            identity::files::certificate_to_pem(ca_der).as_bytes(),
            0o644,
        )?;
        identity::files::write_atomic(&self.crl, crl_der, 0o644)?;
        crate::failpoint::crash_point("consensus::peer_pki::before_swap");
        if self.dir.exists() {
            exchange(&staging, &self.dir)
                .map_err(io("replacing the peer PKI directory", &self.dir))?;
            // The staging directory now holds the old files.
            remove_dir_if_present(&staging)
                .map_err(io("removing the old peer PKI files", &staging))?;
        } else {
            std::fs::rename(&staging, &self.dir)
                .map_err(io("installing the peer PKI directory", &self.dir))?;
        }
        if let Some(parent) = self.dir.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing the member directory", parent))?;
        }
        Ok(())
    }

    /// The CA certificate written to disk (DER).
    pub fn read_ca(&self) -> Result<Vec<u8>, Error> {
        Ok(identity::files::load_certificate(&self.ca())?)
    }
}
