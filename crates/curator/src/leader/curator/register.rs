//! Register Flow (RegisterNode → manager approval → CommitNode) and Join Flow (JoinNode),
//! as upstream. All three are called without cluster credentials: the caller proves possession of
//! a key with a self-signed certificate — the node key for RegisterNode/CommitNode, the join
//! key for JoinNode.
//!
//! Anyone can call them, so until its ticket or key has checked out a caller holds no
//! cluster-wide lock and takes its turn among the other unauthenticated callers
//! ([`Leader::admit_unauthenticated`]); the turn is given back as soon as the check passes.

use identity::PublicKey;
use proto::common::cluster_configuration::TpmMode;
use proto::common::node_labels::Pair;
use proto::common::{
    ClusterConfiguration, NodeLabels, NodeState, NodeStorageSecurity, NodeTpmUsage,
};
use proto::curator_api::{
    CommitNodeRequest, CommitNodeResponse, JoinNodeRequest, JoinNodeResponse, RegisterNodeRequest,
    RegisterNodeResponse,
};
use proto::curator_private::Node;
use rpc::PeerInfo;
use subtle::ConstantTimeEq;
use tonic::Status;
use zeroize::Zeroizing;

use super::state_name;
use crate::election::Leadership;
use crate::leader::{Leader, limits, optimistic};
use crate::state::node::{self, NodeRecord};
use crate::state::{StateError, cluster, pki};

/// Length of a cluster unlock key.
const CLUSTER_UNLOCK_KEY_LEN: usize = 32;

/// RegisterNode: creates the caller's node in state NEW.
pub(super) async fn register_node(
    leader: &Leader,
    peer: &PeerInfo,
    req: RegisterNodeRequest,
) -> Result<RegisterNodeResponse, Status> {
    let node_key = *peer.self_signed_key().ok_or_else(|| {
        Status::unauthenticated("RegisterNode needs a self-signed certificate of the node key")
    })?;
    let join_key = PublicKey::from_slice(&req.join_key).map_err(|_| {
        Status::invalid_argument(format!(
            "join_key must be 32 bytes, got {}",
            req.join_key.len()
        ))
    })?;
    let turn = leader.admit_unauthenticated().await?;
    check_ticket(leader, &req.register_ticket).await?;
    drop(turn);

    let l = &leader.leadership;
    let config = cluster::configuration(l).await?;
    let tpm_usage = cluster::tpm_usage(&config, req.have_local_tpm)?;
    let id = identity::node_id(&node_key);
    let labels = registration_labels(&id, req.labels);
    let (id, join_key, labels, node_key) = (&id, &join_key, &labels, &node_key);
    let record = optimistic("RegisterNode", move || async move {
        // Deleting a node revokes its node ID for good: registered again, it could never
        // authenticate. Say so now rather than after a manager approved it (the write
        // checks it again, atomically).
        if node::is_deleted(l, id).await? {
            return Err(Status::failed_precondition(format!(
                "node {id} was deleted from this cluster, and a deleted node's key stays revoked; \
                 reinstall the machine so that it registers with a new key"
            )));
        }
        ensure_join_key_free(l, join_key, id).await?;

        match node::load_opt(l, id).await? {
            Some(existing) if existing.state() == NodeState::New => {
                retry_registration(l, existing, join_key, tpm_usage).await
            }
            Some(existing) => Err(Status::failed_precondition(format!(
                "node {id} already exists, state {}",
                state_name(&existing)
            ))),
            None => {
                let mut record = NodeRecord::new(
                    node_key,
                    Node {
                        join_key: join_key.as_bytes().to_vec(),
                        tpm_usage: tpm_usage as i32,
                        labels: labels.clone(),
                        ..Default::default()
                    },
                );
                match node::create(l, &mut record, NodeState::New).await {
                    Ok(()) => {}
                    // Created (or deleted) since the read above: read again.
                    Err(StateError::NodeExists { .. }) => {
                        return Err(StateError::Conflict { key: record.key() }.into());
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!("node {id} registered (NEW)");
                Ok(record)
            }
        }
    })
    .await?;
    Ok(register_response(&config, &record))
}

/// The RegisterNode answer for a NEW record. Fixes an upstream quirk: upstream answers a
/// repeated RegisterNode of a NEW node with an empty response, so a node retrying after a lost
/// answer reads INVALID policy values; here every answer carries the real values.
fn register_response(config: &ClusterConfiguration, record: &NodeRecord) -> RegisterNodeResponse {
    RegisterNodeResponse {
        cluster_configuration: Some(config.clone()),
        tpm_usage: record.node.tpm_usage,
        recommended_node_storage_security: cluster::recommended_storage(config) as i32,
    }
}

/// A repeated RegisterNode of a node that is still NEW. Upstream keeps the first record
/// unchanged whatever the retry says. We adopt the retry's join key and TPM usage instead: the
/// caller proved possession of the node key, a NEW node holds no secrets yet, and a node that
/// lost its first join key (e.g. restarted registration) could otherwise never join after
/// committing. The old join-key index entry is removed in the same transaction, so no stale
/// index entry survives.
async fn retry_registration(
    l: &Leadership,
    mut record: NodeRecord,
    join_key: &PublicKey,
    tpm_usage: NodeTpmUsage,
) -> Result<NodeRecord, Status> {
    // Conflict if the record changed since it was read: the caller reads it again.
    record.node.tpm_usage = tpm_usage as i32;
    node::replace_join_key(l, &mut record, join_key.as_bytes()).await?;
    Ok(record)
}

/// Refuses a join key that another node already uses. Upstream overwrites the index entry
/// (a TODO there), which would let a registering node hijack another node's Join Flow: that
/// node's JoinNode would then resolve to the newcomer. Checked before the caller's own record
/// is looked at, so the answer does not depend on whether that exists; the writes check it
/// again, atomically.
async fn ensure_join_key_free(
    l: &Leadership,
    join_key: &PublicKey,
    id: &str,
) -> Result<(), Status> {
    match node::join_key_owner(l, join_key.as_bytes()).await? {
        Some(owner) if owner != id => Err(StateError::JoinKeyInUse { owner }.into()),
        _ => Ok(()),
    }
}

/// Checks the register ticket in constant time; PermissionDenied on a mismatch. The caller is
/// unauthenticated, so this takes no lock and writes nothing: one read of the ticket. A cluster
/// that never issued a ticket (GetRegisterTicket creates it) has none to match.
async fn check_ticket(leader: &Leader, given: &[u8]) -> Result<(), Status> {
    // Zeroized when dropped: the ticket admits whoever holds it.
    let expected = cluster::register_ticket(&leader.leadership)
        .await?
        .map(Zeroizing::new);
    match expected {
        Some(expected) if ticket_matches(&expected, given) => Ok(()),
        _ => Err(Status::permission_denied("invalid register ticket")),
    }
}

/// Compares in constant time, so the time taken says nothing about how many leading bytes
/// were right. The length is not secret (every ticket is 34 bytes): a different length is
/// rejected at once.
fn ticket_matches(expected: &[u8], given: &[u8]) -> bool {
    expected.ct_eq(given).into()
}

/// The labels a registering node keeps (later upstream Monogon, not in the 8456ddf0 baseline).
/// Invalid ones, repeats of an earlier key and those beyond the first 128 are dropped and logged
/// rather than refused, as later upstream Monogon does: the labels come from the node's
/// NodeParameters, which the node cannot change, so a refusal would lock it out of the cluster for
/// good, while a dropped label is one UpdateNodeLabels away from fixed. metroctl checks labels
/// before it writes them into NodeParameters, so with our tools nothing is dropped here. `None` if
/// none remain.
fn registration_labels(id: &str, given: Option<NodeLabels>) -> Option<NodeLabels> {
    let given = given.map(|l| l.pairs).unwrap_or_default();
    let filtered =
        labels::filter_registration(given.iter().map(|p| (p.key.as_str(), p.value.as_str())));
    // Bounded: the labels are the caller's, as many as fit in a request.
    for (key, value, why) in filtered.skipped.iter().take(limits::MAX_LOGGED_LABEL_SKIPS) {
        tracing::warn!(
            "node {id} registered with label {:?}={:?}, which is dropped: {why}",
            limits::clip(key),
            limits::clip(value)
        );
    }
    if let Some(more) = filtered
        .skipped
        .len()
        .checked_sub(limits::MAX_LOGGED_LABEL_SKIPS)
        .filter(|n| *n > 0)
    {
        tracing::warn!("node {id} registered with {more} more labels, which are dropped too");
    }
    let pairs: Vec<Pair> = filtered
        .kept
        .into_iter()
        .map(|(key, value)| Pair {
            key: key.to_string(),
            value: value.to_string(),
        })
        .collect();
    (!pairs.is_empty()).then_some(NodeLabels { pairs })
}

/// CommitNode: an approved (STANDBY) node hands over its cluster unlock key and receives its
/// node certificate; it is UP from then on.
pub(super) async fn commit_node(
    leader: &Leader,
    peer: &PeerInfo,
    req: CommitNodeRequest,
) -> Result<CommitNodeResponse, Status> {
    let node_key = *peer.self_signed_key().ok_or_else(|| {
        Status::unauthenticated("CommitNode needs a self-signed certificate of the node key")
    })?;
    let security = storage_security(req.storage_security)?;

    let l = &leader.leadership;
    let id = identity::node_id(&node_key);
    // The caller is unauthenticated: look its node up before taking the nodes lock, so that
    // callers with unknown (or not yet approved) keys cost a read and never hold up the
    // cluster's managers. Checked again under the lock, where the state change happens.
    if security != NodeStorageSecurity::Insecure
        && req.cluster_unlock_key.len() != CLUSTER_UNLOCK_KEY_LEN
    {
        return Err(Status::invalid_argument(format!(
            "cluster_unlock_key must be {CLUSTER_UNLOCK_KEY_LEN} bytes, got {}",
            req.cluster_unlock_key.len()
        )));
    }
    let turn = leader.admit_unauthenticated().await?;
    let first = node::load(l, &id).await?;
    check_committable(&first, &req.cluster_unlock_key)?;
    drop(turn);
    let config = cluster::configuration(l).await?;
    cluster::validate_storage(&config, security)?;

    // The record read above serves the first attempt; a conflict reads it again.
    let mut loaded = Some(first);
    let (id, req, node_key) = (&id, &req, &node_key);
    let (ca_certificate, node_certificate) = optimistic("CommitNode", move || {
        let first = loaded.take();
        async move {
            let mut record = match first {
                Some(record) => record,
                None => node::load(l, id).await?,
            };
            let commit = check_committable(&record, &req.cluster_unlock_key)?;
            // Issued before the state change is saved: if saving fails the node retries, and the
            // certificate (stored per key) comes back unchanged. A repeat gets the same one.
            let issued = pki::leader_node_certificate(l, node_key).await?;
            if commit == Commit::Repeat {
                tracing::info!("node {id} repeated its CommitNode; answering as the first time");
                return Ok(issued);
            }
            record.node.cluster_unlock_key = req.cluster_unlock_key.clone();
            node::set_state(l, &mut record, NodeState::Up).await?;
            tracing::info!("node {id} committed (UP)");
            Ok(issued)
        }
    })
    .await?;
    // A reply lost after the save (the node then repeats its CommitNode).
    fail::fail_point!("curator::commit_node::after_save", |arg| {
        crate::failpoint::exit_if_asked("curator::commit_node::after_save", arg.as_deref());
        Err(Status::unavailable(
            "failpoint curator::commit_node::after_save",
        ))
    });
    Ok(CommitNodeResponse {
        ca_certificate,
        node_certificate,
    })
}

/// The storage security a committing node chose; InvalidArgument unless it is a real choice.
fn storage_security(value: i32) -> Result<NodeStorageSecurity, Status> {
    use NodeStorageSecurity as S;
    match S::try_from(value) {
        Ok(s @ (S::Insecure | S::Encrypted | S::AuthenticatedEncrypted)) => Ok(s),
        _ => Err(Status::invalid_argument(
            "storage_security must be INSECURE, ENCRYPTED or AUTHENTICATED_ENCRYPTED",
        )),
    }
}

/// What a CommitNode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// A STANDBY node commits: the record becomes UP.
    Fresh,
    /// An UP node that committed with this very cluster unlock key asks again (its first
    /// reply was lost): it gets the same answer, nothing is written.
    Repeat,
}

/// STANDBY nodes commit; an UP node may repeat its commit with the same cluster unlock key
/// (the node's client retries calls whose reply it never saw, and without the answer it has no
/// certificate). Anything else is refused, a different key for an UP node included (upstream:
/// a node must not redo registration once it is in the cluster). The key is compared in
/// constant time: the caller is unauthenticated, and the key is a secret.
fn check_committable(record: &NodeRecord, cluster_unlock_key: &[u8]) -> Result<Commit, Status> {
    use NodeState as S;
    match record.state() {
        S::Standby => Ok(Commit::Fresh),
        S::Up if bool::from(record.node.cluster_unlock_key.ct_eq(cluster_unlock_key)) => {
            Ok(Commit::Repeat)
        }
        S::New => Err(Status::permission_denied(format!(
            "node is not approved yet; wait for approval (metroctl approve {})",
            record.id
        ))),
        // The decommissioning states are ours and only follow UP, so they are refused like UP
        // and DECOMMISSIONED rather than reported as an internal error.
        s @ (S::Up | S::Decommissioned | S::DecommissionRequested | S::Decommissioning) => Err(
            Status::failed_precondition(format!("node is {}, cannot commit", s.as_str_name())),
        ),
        S::Invalid => Err(Status::internal("node record has an invalid state")),
    }
}

/// JoinNode: a node that is UP (or being decommissioned) proves possession of its join key
/// and receives its cluster unlock key.
pub(super) async fn join_node(
    leader: &Leader,
    peer: &PeerInfo,
    req: JoinNodeRequest,
) -> Result<JoinNodeResponse, Status> {
    // PermissionDenied rather than Unauthenticated, as upstream.
    let join_key = *peer.self_signed_key().ok_or_else(|| {
        Status::permission_denied("JoinNode needs a self-signed certificate of the join key")
    })?;

    // No lock: JoinNode only reads, and its caller is unauthenticated. Each read is
    // consistent on its own; a record that changes between them is caught by the join-key
    // and state checks below, which look at the record itself.
    let l = &leader.leadership;
    let turn = leader.admit_unauthenticated().await?;
    let id = node::id_by_join_key(l, join_key.as_bytes()).await?;
    let record = node::load(l, &id).await?;
    // The index is only a lookup aid; the record is the truth. A stale entry (which
    // upstream's unchecked index writes could leave behind) must not let an old join key in.
    // A node whose deletion has begun (its record outlives the tombstone until the etcd
    // member is gone) is deleted as far as it is concerned.
    if record.node.join_key != join_key.as_bytes() || node::is_deleted(l, &id).await? {
        return Err(Status::not_found("no node with this join key"));
    }
    drop(turn);
    let config = cluster::configuration(l).await?;
    check_sealing(&config, &record, req.using_sealed_configuration)?;
    // A node asked to decommission must come back to carry it out: it joins, finds
    // DECOMMISSION_REQUESTED in its record and wipes itself (a node that crashed while wiping
    // finishes the same way). Refusing it would leave a node that was down at the request
    // stuck in DECOMMISSION_REQUESTED for good, with its data intact.
    if !matches!(
        record.state(),
        NodeState::Up | NodeState::DecommissionRequested | NodeState::Decommissioning
    ) {
        return Err(Status::failed_precondition(format!(
            "node isn't UP (it is {}), cannot join",
            state_name(&record)
        )));
    }
    Ok(JoinNodeResponse {
        cluster_unlock_key: record.node.cluster_unlock_key,
    })
}

/// Whether the node's use of a TPM-sealed configuration matches the cluster's TPM mode and
/// what the node registered with; PermissionDenied otherwise (a node that registered with a
/// TPM but now joins without one may have been tampered with).
fn check_sealing(
    config: &ClusterConfiguration,
    record: &NodeRecord,
    sealed: bool,
) -> Result<(), Status> {
    let mode = TpmMode::try_from(config.tpm_mode).unwrap_or(TpmMode::Invalid);
    if mode == TpmMode::Required && !sealed {
        return Err(Status::permission_denied(
            "the cluster requires a TPM-sealed configuration",
        ));
    }
    if mode == TpmMode::Disabled && sealed {
        return Err(Status::permission_denied(
            "the cluster has TPM use disabled, but the node uses a sealed configuration",
        ));
    }
    let uses_tpm = record.node.tpm_usage == NodeTpmUsage::NodeTpmPresentAndUsed as i32;
    if uses_tpm && !sealed {
        return Err(Status::permission_denied(
            "the node registered with a TPM but did not use a sealed configuration",
        ));
    }
    if !uses_tpm && sealed {
        return Err(Status::permission_denied(
            "the node registered without a TPM but uses a sealed configuration",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_comparison() {
        assert!(ticket_matches(b"abc", b"abc"));
        assert!(!ticket_matches(b"abc", b"abd"));
        assert!(!ticket_matches(b"abc", b"ab"));
        assert!(!ticket_matches(b"abc", b""));
    }

    #[test]
    fn labels_are_filtered() {
        let pair = |k: &str, v: &str| Pair {
            key: k.into(),
            value: v.into(),
        };
        let given = NodeLabels {
            pairs: vec![
                pair("rack", "r1"),
                pair("example.com/zone", ""),
                pair("-bad", "x"),
                pair("Bad.Prefix/x", "y"),
                pair("rack", "duplicate"),
                pair("ok", "bad value"),
                pair(&"k".repeat(64), "v"),
            ],
        };
        let kept = registration_labels("metropolis-aa", Some(given)).expect("some kept");
        assert_eq!(
            kept.pairs,
            vec![pair("rack", "r1"), pair("example.com/zone", "")]
        );
        assert!(registration_labels("metropolis-aa", None).is_none());
        assert!(
            registration_labels(
                "metropolis-aa",
                Some(NodeLabels {
                    pairs: vec![pair("-bad", "")]
                })
            )
            .is_none()
        );
        let many = NodeLabels {
            pairs: (0..200).map(|i| pair(&format!("k{i}"), "v")).collect(),
        };
        assert_eq!(
            registration_labels("metropolis-aa", Some(many))
                .expect("kept")
                .pairs
                .len(),
            labels::MAX_LABELS_PER_NODE
        );
    }

    #[test]
    fn storage_security_must_be_a_choice() {
        assert!(storage_security(NodeStorageSecurity::Invalid as i32).is_err());
        assert!(storage_security(42).is_err());
        assert_eq!(
            storage_security(NodeStorageSecurity::Encrypted as i32).ok(),
            Some(NodeStorageSecurity::Encrypted)
        );
    }

    #[test]
    fn sealing_rules() {
        let config = |mode: TpmMode| ClusterConfiguration {
            tpm_mode: mode as i32,
            ..Default::default()
        };
        let record = |usage: NodeTpmUsage| {
            NodeRecord::new(
                &identity::PublicKey::from_bytes([0; 32]),
                Node {
                    tpm_usage: usage as i32,
                    ..Default::default()
                },
            )
        };
        let used = record(NodeTpmUsage::NodeTpmPresentAndUsed);
        let unused = record(NodeTpmUsage::NodeTpmPresentButUnused);
        assert!(check_sealing(&config(TpmMode::Required), &used, true).is_ok());
        assert!(check_sealing(&config(TpmMode::Required), &used, false).is_err());
        assert!(check_sealing(&config(TpmMode::Disabled), &unused, false).is_ok());
        assert!(check_sealing(&config(TpmMode::Disabled), &unused, true).is_err());
        assert!(check_sealing(&config(TpmMode::BestEffort), &used, true).is_ok());
        assert!(check_sealing(&config(TpmMode::BestEffort), &used, false).is_err());
        assert!(check_sealing(&config(TpmMode::BestEffort), &unused, true).is_err());
        assert!(check_sealing(&config(TpmMode::BestEffort), &unused, false).is_ok());
    }
}
