//! Errors of the consensus service and its membership operations.

/// What can go wrong running or reconfiguring the etcd member.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the member's files (peer PKI, data directory).
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The etcd process could not be started or exited.
    #[error("etcd process: {0}")]
    Process(String),
    /// etcd refused or failed a request.
    #[error("etcd: {0}")]
    Etcd(#[from] kv::etcd_client::Error),
    /// The namespaced client could not be built.
    #[error("etcd client: {0}")]
    Kv(#[from] kv::Error),
    /// The etcd peer PKI failed.
    #[error("etcd peer PKI: {0}")]
    Pki(#[from] pki::Error),
    /// A key or certificate was unusable.
    #[error("identity: {0}")]
    Identity(#[from] identity::Error),
    /// Removing this member would leave the cluster without a working quorum.
    #[error("removing {node_id} would break quorum: {reason}")]
    QuorumWouldBreak { node_id: String, reason: String },
    /// A new member's peer URL (built from the address the node reports) is already another
    /// member's.
    #[error("node {node_id} reports peer URL {url}, which belongs to etcd member {member}")]
    PeerUrlInUse {
        node_id: String,
        url: String,
        member: String,
    },
    /// No etcd member belongs to this node.
    #[error("node {0} is not an etcd member")]
    NotAMember(String),
    /// The service was stopped.
    #[error("consensus service stopped")]
    Stopped,
}
