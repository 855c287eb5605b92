//! [`StateError`]: what can go wrong reading or changing the cluster state, said in the
//! state's own terms. Which gRPC code a caller sees is decided by the service layer
//! (`crate::leader::status`), per RPC where upstream uses another code.

use proto::common::NodeState;

use super::cluster::PolicyError;

/// An error of the state layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A record that was asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for ("node metropolis-…", "cluster configuration").
        what: String,
    },

    /// A stored record does not decode, or breaks an invariant of its key (a node record
    /// under another node's ID).
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt {
        /// The etcd key (relative to the curator keyspace).
        key: String,
        /// The decode error or broken invariant.
        reason: String,
    },

    /// The caller named something that cannot exist (a node ID with `/`, an empty join key)
    /// or handed over data the state refuses to store (an invalid cluster configuration).
    #[error("{0}")]
    InvalidArgument(String),

    /// The node lifecycle table has no transition `from` → `to`.
    #[error("node {id} cannot go from {} to {}", state_name(*from), to.as_str_name())]
    InvalidTransition {
        /// The node.
        id: String,
        /// Its state (`None`: the node does not exist yet).
        from: Option<NodeState>,
        /// The state it was to enter.
        to: NodeState,
    },

    /// A node record with this ID exists already.
    #[error("node {id} already exists")]
    NodeExists {
        /// The node.
        id: String,
    },

    /// The join key is indexed for another node.
    #[error("join key is already used by another node")]
    JoinKeyInUse {
        /// The node the index points at.
        owner: String,
    },

    /// A certificate name is already bound to a different public key.
    #[error("{what}: a certificate with this name exists for another key")]
    CertificateKeyMismatch {
        /// Which certificate.
        what: String,
    },

    /// The cluster policy forbids what was asked.
    #[error(transparent)]
    Policy(#[from] PolicyError),

    /// Another curator has taken over: the write guarded by our election key did not run.
    #[error("lost leadership")]
    LostLeadership,

    /// The store (etcd, or the PKI on top of it) failed; a retry may succeed.
    #[error("{0}")]
    Unavailable(String),

    /// An optimistic write found its record changed since it was read: read it again and
    /// redo the change.
    #[error("{key} changed concurrently")]
    Conflict {
        /// The etcd key (relative to the curator keyspace).
        key: String,
    },

    /// etcd's NOSPACE alarm is raised: its database reached the backend quota and the whole
    /// cluster refuses writes until the alarm is disarmed (reads still work). The consensus
    /// service of the member that raised it compacts, defragments and disarms it by itself
    /// once the database fits again; a retry right away fails the same way.
    #[error(
        "the cluster store is full (etcd NOSPACE alarm: the database reached its backend \
         quota), so writes are refused; it clears by itself once the consensus service has \
         compacted and defragmented the database below the quota; if it persists, the live \
         data exceeds the quota: raise the node's --etcd-quota-backend-bytes ({0})"
    )]
    StoreFull(String),

    /// Something that cannot happen did (no randomness, a bug).
    #[error("{0}")]
    Internal(String),
}

impl StateError {
    /// NotFound for `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// A corrupt record at `key`.
    pub fn corrupt(key: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// An etcd failure: [`StateError::StoreFull`] for a write refused under the NOSPACE
    /// alarm, [`StateError::Unavailable`] otherwise.
    pub fn etcd(e: impl std::fmt::Display) -> Self {
        Self::store(format!("etcd: {e}"))
    }

    /// A failure of the store (or of the PKI on top of it) described by `text`:
    /// [`StateError::StoreFull`] if etcd refused a write under its NOSPACE alarm (its message
    /// is kept in every wrapper), [`StateError::Unavailable`] otherwise.
    pub fn store(text: String) -> Self {
        if kv::mentions_no_space(&text) {
            Self::StoreFull(text)
        } else {
            Self::Unavailable(text)
        }
    }
}

/// `NEW`, `UP`, … or "absent" for a node that does not exist yet.
fn state_name(s: Option<NodeState>) -> &'static str {
    s.map_or("absent", |s| s.as_str_name())
}
