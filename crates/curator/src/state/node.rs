//! Node records: `/nodes/<id>` holds `curator.proto.private.Node`, `/join_keys/<hex>` maps a
//! join public key to its node ID. Both are always written (and deleted) in one transaction,
//! and only here. Deleting a node leaves `/deleted_nodes/<id>` behind, in the same
//! transaction: the permanent record that every certificate of that node ID is revoked, which
//! every curator and, through the leader, every node applies (see `crate::revocation`).
//!
//! A record's state changes only through [`create`] and [`set_state`], which check the
//! lifecycle table ([`super::lifecycle`]); [`update`] writes every other change and refuses a
//! record whose state was changed behind the table's back.
//!
//! Writes are optimistic: a loaded record remembers the etcd revision it was last written at,
//! and every write of it runs only if the key is still at that revision (in the same guarded
//! transaction), so a read-modify-write never overwrites a change made since its read. If one
//! was, the write fails with [`StateError::Conflict`] and the caller reads again and retries
//! (`crate::leader::optimistic`); no lock is held across etcd round trips.

use futures::{Stream, StreamExt, stream};
use identity::PublicKey;
use kv::etcd_client::{Compare, CompareOp, TxnOp, WatchOptions};
use kv::{EventKind, WatchBatch};
use prost::Message;
use proto::common::{NodeRoles, NodeState};
use proto::curator_private::Node;

use super::guard::{Kv, nth_value};
use super::{StateError, lifecycle};
use crate::election::Leadership;

/// Prefix of node records.
pub const NODES_PREFIX: &str = "/nodes/";
/// Prefix of the join-key index.
pub const JOIN_KEYS_PREFIX: &str = "/join_keys/";
/// Prefix of the deleted nodes' tombstones (empty values; the key names the node).
pub const DELETED_PREFIX: &str = "/deleted_nodes/";

/// A node record with its ID (derived from the public key, checked on load).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// `metropolis-…`.
    pub id: String,
    /// The stored record. Its `fsm_state` is changed through [`set_state`] only, its
    /// `join_key` through [`replace_join_key`] only.
    pub node: Node,
    /// What was last read or written; `None` for a record not stored yet.
    stored: Option<Stored>,
}

/// The fields of a stored record that [`update`] must not change, and the revision a write
/// of it is conditional on.
#[derive(Debug, Clone)]
struct Stored {
    /// The raw state.
    state: i32,
    /// The join key (its index entry is written with the record).
    join_key: Vec<u8>,
    /// The etcd revision of the record's last write as read (0: unknown, e.g. a record
    /// decoded from bytes alone; writing such a record always conflicts).
    mod_revision: i64,
}

impl Stored {
    fn of(node: &Node, mod_revision: i64) -> Self {
        Self {
            state: node.fsm_state,
            join_key: node.join_key.clone(),
            mod_revision,
        }
    }
}

/// Records compare by content: the revision they were read at is bookkeeping.
impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state && self.join_key == other.join_key
    }
}

impl NodeRecord {
    /// A new record for `public_key` (not stored yet: see [`create`]).
    pub fn new(public_key: &PublicKey, node: Node) -> Self {
        Self {
            id: identity::node_id(public_key),
            node: Node {
                public_key: public_key.as_bytes().to_vec(),
                ..node
            },
            stored: None,
        }
    }

    /// The node's state (INVALID for a value this build does not know).
    pub fn state(&self) -> NodeState {
        NodeState::try_from(self.node.fsm_state).unwrap_or(NodeState::Invalid)
    }

    /// The node's roles (empty message if none).
    pub fn roles(&self) -> NodeRoles {
        self.node.roles.clone().unwrap_or_default()
    }

    /// Whether the node holds any role.
    pub fn has_roles(&self) -> bool {
        let r = self.roles();
        r.consensus_member.is_some()
            || r.kubernetes_controller.is_some()
            || r.kubernetes_worker.is_some()
    }

    /// The node's public key.
    pub fn public_key(&self) -> Result<PublicKey, StateError> {
        PublicKey::from_slice(&self.node.public_key).map_err(|e| StateError::corrupt(self.key(), e))
    }

    /// Decodes a stored record, refusing one whose key does not match the ID derived from its
    /// public key (such a record is corrupt or forged). Its revision is unknown, so it cannot
    /// be written back (see [`NodeRecord::decode_at`]).
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Self, StateError> {
        Self::decode_at(id, bytes, 0)
    }

    /// [`NodeRecord::decode`] of a record read at `mod_revision` (its key's last write), which
    /// a write of it is then conditional on.
    pub(crate) fn decode_at(id: &str, bytes: &[u8], mod_revision: i64) -> Result<Self, StateError> {
        let key = format!("{NODES_PREFIX}{id}");
        let node = Node::decode(bytes).map_err(|e| StateError::corrupt(&key, e))?;
        let public_key =
            PublicKey::from_slice(&node.public_key).map_err(|e| StateError::corrupt(&key, e))?;
        let derived = identity::node_id(&public_key);
        if derived != id {
            return Err(StateError::corrupt(
                key,
                format!("it holds the key of {derived}"),
            ));
        }
        Ok(Self {
            id: id.to_string(),
            stored: Some(Stored::of(&node, mod_revision)),
            node,
        })
    }

    /// The condition a write of this stored record runs under: its key is still at the
    /// revision it was read (or last written) at.
    fn unchanged(&self) -> Compare {
        let revision = self.stored.as_ref().map_or(0, |s| s.mod_revision);
        Compare::mod_revision(self.key(), CompareOp::Equal, revision)
    }

    /// Remembers a successful write at `revision`.
    fn written(&mut self, revision: i64) {
        self.stored = Some(Stored::of(&self.node, revision));
    }

    /// The conflict error for this record.
    fn conflict(&self) -> StateError {
        StateError::Conflict { key: self.key() }
    }

    /// The etcd key of this record.
    pub fn key(&self) -> String {
        format!("{NODES_PREFIX}{}", self.id)
    }

    /// The etcd key of this record's join-key index entry, if it has a join key.
    fn join_index(&self) -> Option<String> {
        (!self.node.join_key.is_empty()).then(|| join_key_index(&self.node.join_key))
    }

    /// The writes that store this record and its index entry.
    pub(crate) fn put_ops(&self) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(self.key(), self.node.encode_to_vec(), None)];
        if let Some(index) = self.join_index() {
            ops.push(TxnOp::put(index, self.id.clone(), None));
        }
        ops
    }
}

/// `/nodes/<id>`; InvalidArgument for an ID that is empty or contains `/`.
pub fn node_key(id: &str) -> Result<String, StateError> {
    if id.is_empty() || id.contains('/') {
        return Err(StateError::InvalidArgument("invalid node id".to_string()));
    }
    Ok(format!("{NODES_PREFIX}{id}"))
}

/// `/join_keys/<hex>`.
pub(crate) fn join_key_index(join_key: &[u8]) -> String {
    format!("{JOIN_KEYS_PREFIX}{}", hex::encode(join_key))
}

/// Loads a node; NotFound if absent.
pub async fn load(l: &Leadership, id: &str) -> Result<NodeRecord, StateError> {
    load_opt(l, id)
        .await?
        .ok_or_else(|| StateError::not_found(format!("node {id}")))
}

/// Loads a node; `None` if absent.
pub async fn load_opt(l: &Leadership, id: &str) -> Result<Option<NodeRecord>, StateError> {
    let key = node_key(id)?;
    l.get_kv(&key)
        .await?
        .map(|kv| NodeRecord::decode_at(id, &kv.value, kv.mod_revision))
        .transpose()
}

/// Loads every node; records that fail to decode are skipped (and logged), as upstream: one
/// bad record must not hide the whole cluster from its managers.
pub async fn load_all(l: &Leadership) -> Result<Vec<NodeRecord>, StateError> {
    let (kvs, _) = l.range(NODES_PREFIX, true).await?;
    Ok(decode_all(kvs))
}

/// One page of node records, in key order (see [`page`]).
#[derive(Debug)]
pub struct Page {
    /// The records (corrupt ones skipped and logged, as by [`load_all`]).
    pub records: Vec<NodeRecord>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<Cursor>,
    /// How many records the read range held from this page on (corrupt ones included).
    pub remaining: usize,
}

/// Where a paged read of the node records continues: one snapshot of the store, read in
/// pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    from: String,
    revision: i64,
}

/// Reads at most `limit` node records, from the start (`None`) or where `cursor` left off,
/// under the guard. All pages of one read come from the same store revision, so together
/// they are what [`load_all`] would have returned, whatever is written meanwhile (unless
/// etcd compacts that revision away first: then the read fails and must start over).
pub async fn page(
    l: &Leadership,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page, StateError> {
    let (from, revision) = match cursor {
        Some(c) => (c.from.as_str(), c.revision),
        None => (NODES_PREFIX, 0),
    };
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let (kvs, revision, more, count) = l.range_page(NODES_PREFIX, from, limit, revision).await?;
    let next = match kvs.last() {
        Some(last) if more => Some(Cursor {
            // The smallest key after the last one read.
            from: format!("{}\0", last.key),
            revision,
        }),
        _ => None,
    };
    Ok(Page {
        records: decode_all(kvs),
        next,
        remaining: usize::try_from(count).unwrap_or(0),
    })
}

fn decode_all(kvs: Vec<Kv>) -> Vec<NodeRecord> {
    kvs.into_iter()
        .filter_map(|kv| decode_logged(&kv.key, &kv.value, kv.mod_revision))
        .collect()
}

/// Decodes `/nodes/<id>` read at `mod_revision`; `None` (logged) for other keys and corrupt
/// records.
fn decode_logged(key: &str, value: &[u8], mod_revision: i64) -> Option<NodeRecord> {
    let id = key.strip_prefix(NODES_PREFIX)?;
    NodeRecord::decode_at(id, value, mod_revision)
        .map_err(|e| tracing::warn!("skipping node record: {e}"))
        .ok()
}

/// Gives a record that is not stored yet the state it is created in, if the lifecycle table
/// lets a node start there.
pub(super) fn enter_initial(record: &mut NodeRecord, state: NodeState) -> Result<(), StateError> {
    if record.stored.is_some() {
        return Err(StateError::NodeExists {
            id: record.id.clone(),
        });
    }
    lifecycle::check(&record.id, None, state)?;
    record.node.fsm_state = state as i32;
    Ok(())
}

/// Stores a new node in `state` (whatever state `record` holds is replaced) with its join-key
/// index entry: only if no record with its ID exists and its ID was never deleted
/// (NodeExists: the caller reads again to tell which) and its join key is free or already
/// indexed for it (JoinKeyInUse), checked in the same transaction as the write. The
/// lifecycle table decides which states a node may be created in.
pub async fn create(
    l: &Leadership,
    record: &mut NodeRecord,
    state: NodeState,
) -> Result<(), StateError> {
    enter_initial(record, state)?;
    let absent = Compare::create_revision(record.key(), CompareOp::Equal, 0);
    let never_deleted = Compare::create_revision(
        format!("{DELETED_PREFIX}{}", record.id),
        CompareOp::Equal,
        0,
    );
    match claim_join_key(l, record, vec![absent, never_deleted], record.put_ops()).await? {
        Claim::Written(revision) => {
            record.written(revision);
            Ok(())
        }
        Claim::Taken(owner) => Err(StateError::JoinKeyInUse { owner }),
        Claim::ConditionFailed => Err(StateError::NodeExists {
            id: record.id.clone(),
        }),
    }
}

/// Writes every change of a stored record except its state ([`set_state`]) and its join key
/// ([`replace_join_key`]), with its join-key index entry, in one transaction; Conflict if the
/// record changed since it was read.
pub async fn update(l: &Leadership, record: &mut NodeRecord) -> Result<(), StateError> {
    check_unchanged(record)?;
    write(l, record).await
}

/// Writes `record` if it is still at the revision it was read at, and remembers the new one.
async fn write(l: &Leadership, record: &mut NodeRecord) -> Result<(), StateError> {
    let r = l
        .txn_if(vec![record.unchanged()], record.put_ops(), Vec::new())
        .await?;
    if !r.succeeded {
        return Err(record.conflict());
    }
    record.written(r.revision);
    Ok(())
}

/// Refuses a record that is not stored yet, or whose state or join key was changed directly:
/// those changes have their own checks.
fn check_unchanged(record: &NodeRecord) -> Result<(), StateError> {
    match &record.stored {
        Some(s) if s.state == record.node.fsm_state && s.join_key == record.node.join_key => Ok(()),
        Some(s) if s.state != record.node.fsm_state => Err(StateError::Internal(format!(
            "the state of node {} was changed without the lifecycle check",
            record.id
        ))),
        Some(_) => Err(StateError::Internal(format!(
            "the join key of node {} was changed without the join-key index check",
            record.id
        ))),
        None => Err(StateError::Internal(format!(
            "node {} is not stored yet; create it instead",
            record.id
        ))),
    }
}

/// Moves a stored record to state `to`, if the lifecycle table allows it, and writes it with
/// whatever else the caller changed (CommitNode stores the cluster unlock key with UP).
pub async fn set_state(
    l: &Leadership,
    record: &mut NodeRecord,
    to: NodeState,
) -> Result<(), StateError> {
    // The state is about to change; everything else must be as stored.
    let from = match &record.stored {
        Some(s) => s.state,
        None => return check_unchanged(record),
    };
    let previous = std::mem::replace(&mut record.node.fsm_state, from);
    if let Err(e) = check_unchanged(record) {
        record.node.fsm_state = previous;
        return Err(e);
    }
    let from_state = NodeState::try_from(from).unwrap_or(NodeState::Invalid);
    if let Err(e) = lifecycle::check(&record.id, Some(from_state), to) {
        record.node.fsm_state = previous;
        return Err(e);
    }
    record.node.fsm_state = to as i32;
    if let Err(e) = write(l, record).await {
        record.node.fsm_state = from;
        return Err(e);
    }
    Ok(())
}

/// Gives a stored record a new join key: the record, the new index entry and the removal of
/// the old one in one transaction, only if the new key is free or already this node's
/// (JoinKeyInUse otherwise). Other changes to the record are written with it; its state must
/// be unchanged.
pub async fn replace_join_key(
    l: &Leadership,
    record: &mut NodeRecord,
    join_key: &[u8],
) -> Result<(), StateError> {
    if join_key.is_empty() {
        return Err(StateError::InvalidArgument("join key is empty".to_string()));
    }
    check_unchanged(record)?;
    let old = std::mem::replace(&mut record.node.join_key, join_key.to_vec());
    let mut ops = record.put_ops();
    if !old.is_empty() && old != join_key {
        ops.push(TxnOp::delete(join_key_index(&old), None));
    }
    match claim_join_key(l, record, vec![record.unchanged()], ops).await {
        Ok(Claim::Written(revision)) => {
            record.written(revision);
            Ok(())
        }
        Ok(Claim::Taken(owner)) => {
            record.node.join_key = old;
            Err(StateError::JoinKeyInUse { owner })
        }
        Ok(Claim::ConditionFailed) => {
            record.node.join_key = old;
            Err(record.conflict())
        }
        Err(e) => {
            record.node.join_key = old;
            Err(e)
        }
    }
}

/// The outcome of [`claim_join_key`].
enum Claim {
    /// Written at this revision.
    Written(i64),
    /// The join key is indexed for this other node.
    Taken(String),
    /// One of the caller's conditions failed.
    ConditionFailed,
}

/// Runs `ops` if `when` holds and `record`'s join-key index entry is absent or already points
/// at it. "Absent" and "ours" cannot be one etcd compare, so "ours" is a second attempt.
async fn claim_join_key(
    l: &Leadership,
    record: &NodeRecord,
    when: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<Claim, StateError> {
    let Some(index) = record.join_index() else {
        let r = l.txn_if(when, ops, Vec::new()).await?;
        return Ok(if r.succeeded {
            Claim::Written(r.revision)
        } else {
            Claim::ConditionFailed
        });
    };
    let attempt = |index_condition: Compare| {
        let mut conditions = when.clone();
        conditions.push(index_condition);
        l.txn_if(
            conditions,
            ops.clone(),
            vec![TxnOp::get(index.clone(), None)],
        )
    };
    let raced = || {
        StateError::Unavailable(format!(
            "the join-key index entry of node {} changed concurrently; retry",
            record.id
        ))
    };
    let id = record.id.as_bytes();

    let free = attempt(Compare::create_revision(index.clone(), CompareOp::Equal, 0)).await?;
    if free.succeeded {
        return Ok(Claim::Written(free.revision));
    }
    match nth_value(&free.responses, 0) {
        Some(owner) if owner != id => {
            Ok(Claim::Taken(String::from_utf8_lossy(&owner).into_owned()))
        }
        // The entry is free, so one of the caller's conditions failed.
        None if !when.is_empty() => Ok(Claim::ConditionFailed),
        None => Err(raced()),
        Some(_) => {
            let ours = attempt(Compare::value(index.clone(), CompareOp::Equal, id)).await?;
            if ours.succeeded {
                return Ok(Claim::Written(ours.revision));
            }
            match nth_value(&ours.responses, 0) {
                Some(owner) if owner != id => {
                    Ok(Claim::Taken(String::from_utf8_lossy(&owner).into_owned()))
                }
                Some(_) if !when.is_empty() => Ok(Claim::ConditionFailed),
                _ => Err(raced()),
            }
        }
    }
}

/// Writes node `id`'s tombstone, the first step of its deletion (see [`delete`]): from then
/// on every curator treats its node ID as revoked. Idempotent.
pub async fn mark_deleted(l: &Leadership, id: &str) -> Result<(), StateError> {
    node_key(id)?;
    l.txn(vec![TxnOp::put(
        format!("{DELETED_PREFIX}{id}"),
        Vec::new(),
        None,
    )])
    .await
    .map(|_| ())
}

/// [`mark_deleted`] for a deletion that begins: only if `record` is unchanged since it was
/// read (its deletion was checked on what was read); Conflict otherwise.
pub async fn mark_deleted_unchanged(l: &Leadership, record: &NodeRecord) -> Result<(), StateError> {
    let tombstone = TxnOp::put(format!("{DELETED_PREFIX}{}", record.id), Vec::new(), None);
    let r = l
        .txn_if(vec![record.unchanged()], vec![tombstone], Vec::new())
        .await?;
    if !r.succeeded {
        return Err(record.conflict());
    }
    Ok(())
}

/// Every node ID with a tombstone, under the guard.
pub async fn tombstones(l: &Leadership) -> Result<Vec<String>, StateError> {
    let (kvs, _) = l.range(DELETED_PREFIX, true).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| deleted_id(kv.key.as_bytes()))
        .collect())
}

/// Deletes a node record and its join-key index entry, and leaves its tombstone, in one
/// transaction; Conflict if the record changed since it was read (its join key may have).
pub async fn delete(l: &Leadership, record: &NodeRecord) -> Result<(), StateError> {
    let mut ops = vec![
        TxnOp::delete(record.key(), None),
        TxnOp::put(format!("{DELETED_PREFIX}{}", record.id), Vec::new(), None),
    ];
    if let Some(index) = record.join_index() {
        ops.push(TxnOp::delete(index, None));
    }
    let r = l.txn_if(vec![record.unchanged()], ops, Vec::new()).await?;
    if !r.succeeded {
        return Err(record.conflict());
    }
    Ok(())
}

/// Whether the node `id` was deleted (its tombstone exists).
pub async fn is_deleted(l: &Leadership, id: &str) -> Result<bool, StateError> {
    node_key(id)?;
    Ok(l.get(&format!("{DELETED_PREFIX}{id}")).await?.is_some())
}

/// Every deleted node ID, without leadership (every curator follows them), with the revision
/// [`deletions`] continues from.
pub async fn deleted_ids(ns: &kv::Namespaced) -> Result<(Vec<String>, i64), StateError> {
    let resp = ns
        .get(
            DELETED_PREFIX,
            Some(kv::etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(StateError::etcd)?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let ids = resp
        .kvs()
        .iter()
        .filter_map(|kv| deleted_id(kv.key()))
        .collect();
    Ok((ids, revision))
}

/// Every node deleted after `revision`, from a plain etcd watch; the stream ends with an
/// error when the watch fails or ends, so callers read again and watch again.
pub async fn deletions(
    ns: &kv::Namespaced,
    revision: i64,
) -> Result<impl Stream<Item = Result<String, StateError>> + Send + 'static, StateError> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let watch = ns
        .watch(DELETED_PREFIX, Some(options))
        .await
        .map_err(StateError::etcd)?;
    let ids = watch.flat_map(|batch| {
        stream::iter(match batch {
            Ok(b) => b
                .events
                .iter()
                .filter(|e| e.kind == EventKind::Put)
                .filter_map(|e| deleted_id(&e.key))
                .map(Ok)
                .collect(),
            Err(e) => vec![Err(StateError::etcd(format!("watch: {e}")))],
        })
    });
    let ended = stream::once(async { Err(StateError::etcd("watch ended")) });
    Ok(ids.chain(ended))
}

/// The node ID of a tombstone key (namespace already stripped). Public (hidden) for the fuzz
/// targets only.
#[doc(hidden)]
pub fn deleted_id(key: &[u8]) -> Option<String> {
    String::from_utf8_lossy(key)
        .strip_prefix(DELETED_PREFIX)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// The node ID the join-key index maps `join_key` to; `None` if it maps it to nothing.
pub async fn join_key_owner(l: &Leadership, join_key: &[u8]) -> Result<Option<String>, StateError> {
    if join_key.is_empty() {
        return Err(StateError::InvalidArgument("join key is empty".to_string()));
    }
    Ok(l.get(&join_key_index(join_key))
        .await?
        .map(|id| String::from_utf8_lossy(&id).into_owned()))
}

/// The node ID registered for a join key; NotFound if none.
pub async fn id_by_join_key(l: &Leadership, join_key: &[u8]) -> Result<String, StateError> {
    join_key_owner(l, join_key)
        .await?
        .ok_or_else(|| StateError::not_found("node with this join key"))
}

/// Reads one node without leadership (followers): a plain read. `None` if absent.
pub async fn load_unguarded(
    ns: &kv::Namespaced,
    id: &str,
) -> Result<Option<NodeRecord>, StateError> {
    let key = node_key(id)?;
    let resp = ns.get(key, None).await.map_err(StateError::etcd)?;
    resp.kvs()
        .first()
        .map(|kv| NodeRecord::decode_at(id, kv.value(), kv.mod_revision()))
        .transpose()
}

/// The IDs of every node record (keys only), under the guard, with the revision
/// [`presence_changes`] continues from.
pub async fn ids(l: &Leadership) -> Result<(Vec<String>, i64), StateError> {
    let (keys, revision) = l.keys(NODES_PREFIX).await?;
    let ids = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(NODES_PREFIX).map(str::to_string))
        .filter(|id| !id.is_empty())
        .collect();
    Ok((ids, revision))
}

/// A node record appearing or disappearing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Written (created or changed).
    Created(String),
    /// Deleted.
    Removed(String),
}

/// Every node record written or deleted after `revision`, from a plain etcd watch that
/// carries no values (only the key matters). The stream ends with an error when the watch
/// fails or ends, so callers read again and watch again.
pub async fn presence_changes(
    ns: &kv::Namespaced,
    revision: i64,
) -> Result<impl Stream<Item = Result<Presence, StateError>> + Send + 'static, StateError> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let watch = ns
        .watch(NODES_PREFIX, Some(options))
        .await
        .map_err(StateError::etcd)?;
    let changes = watch.flat_map(|batch| {
        stream::iter(match batch {
            Ok(b) => b
                .events
                .iter()
                .filter_map(|e| {
                    let id = String::from_utf8_lossy(&e.key)
                        .strip_prefix(NODES_PREFIX)
                        .filter(|id| !id.is_empty())
                        .map(str::to_string)?;
                    Some(Ok(match e.kind {
                        EventKind::Put => Presence::Created(id),
                        EventKind::Delete => Presence::Removed(id),
                    }))
                })
                .collect(),
            Err(e) => vec![Err(StateError::etcd(format!("watch: {e}")))],
        })
    });
    let ended = stream::once(async { Err(StateError::etcd("watch ended")) });
    Ok(changes.chain(ended))
}

/// Which nodes a watch follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One node, by ID.
    One(&'a str),
    /// Every node.
    All,
}

impl Scope<'_> {
    /// The key (or prefix) and whether it is a prefix.
    fn key(&self) -> Result<(String, bool), StateError> {
        match self {
            Scope::One(id) => Ok((node_key(id)?, false)),
            Scope::All => Ok((NODES_PREFIX.to_string(), true)),
        }
    }
}

/// One change of the watched nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeChange {
    /// A node was created or changed (boxed: a record is large, and a stream carries many
    /// tombstones as well).
    Put(Box<NodeRecord>),
    /// A node was deleted.
    Deleted(String),
}

/// The watched nodes now, under the guard, with the revision a watch continues from so that
/// nothing between the read and the watch is lost or seen twice. Corrupt records are skipped
/// (and logged), as upstream.
pub async fn snapshot(
    l: &Leadership,
    scope: Scope<'_>,
) -> Result<(Vec<NodeRecord>, i64), StateError> {
    let (key, prefix) = scope.key()?;
    let (kvs, revision) = l.range(&key, prefix).await?;
    Ok((decode_all(kvs), revision))
}

/// Every change of the watched nodes after `revision`, from a plain etcd watch (it carries no
/// leadership guard: when leadership moves, the server serving it is torn down). Corrupt
/// records are skipped (and logged); the stream ends with an error when the watch fails or
/// ends (e.g. compaction), so callers re-read and watch again.
pub async fn changes(
    ns: &kv::Namespaced,
    scope: Scope<'_>,
    revision: i64,
) -> Result<impl Stream<Item = Result<NodeChange, StateError>> + Send + 'static, StateError> {
    let (key, prefix) = scope.key()?;
    let mut options = WatchOptions::new().with_start_revision(revision + 1);
    if prefix {
        options = options.with_prefix();
    }
    let watch = ns
        .watch(key, Some(options))
        .await
        .map_err(StateError::etcd)?;
    let changes = watch.flat_map(|batch| stream::iter(batch_changes(batch)));
    let ended = stream::once(async { Err(StateError::etcd("watch ended")) });
    Ok(changes.chain(ended))
}

/// The changes of one etcd watch response. Public (hidden) for the fuzz targets only.
#[doc(hidden)]
pub fn batch_changes(batch: Result<WatchBatch, kv::Error>) -> Vec<Result<NodeChange, StateError>> {
    match batch {
        Ok(b) => b
            .events
            .iter()
            .filter_map(|e| change(e.kind, &e.key, &e.value, e.mod_revision))
            .map(Ok)
            .collect(),
        Err(e) => vec![Err(StateError::etcd(format!("watch: {e}")))],
    }
}

/// One change: a put becomes the record, a delete a tombstone. Keys that are not node records
/// and records that do not decode are skipped.
fn change(kind: EventKind, key: &[u8], value: &[u8], mod_revision: i64) -> Option<NodeChange> {
    let key = String::from_utf8_lossy(key);
    match kind {
        EventKind::Put => {
            decode_logged(&key, value, mod_revision).map(|r| NodeChange::Put(Box::new(r)))
        }
        EventKind::Delete => key
            .strip_prefix(NODES_PREFIX)
            .map(|id| NodeChange::Deleted(id.to_string())),
    }
}

/// Writes `record` as it is, bypassing the lifecycle table: for test fixtures that need a
/// node in a given state without walking it there. Only the test harness has it.
#[cfg(feature = "testing")]
pub(crate) async fn write_unchecked(l: &Leadership, record: &NodeRecord) -> Result<(), StateError> {
    l.txn(record.put_ops()).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_become_tombstones_and_foreign_keys_are_skipped() {
        assert_eq!(
            change(EventKind::Delete, b"/nodes/metropolis-ab", b"", 5),
            Some(NodeChange::Deleted("metropolis-ab".into()))
        );
        assert!(change(EventKind::Delete, b"/other/x", b"", 5).is_none());
        assert!(change(EventKind::Put, b"/nodes/metropolis-ab", b"\xff garbage", 5).is_none());
    }

    #[test]
    fn node_keys_are_checked() {
        assert_eq!(
            node_key("metropolis-ab").as_deref(),
            Ok("/nodes/metropolis-ab")
        );
        for bad in ["", "a/b"] {
            assert!(matches!(node_key(bad), Err(StateError::InvalidArgument(_))));
        }
    }

    #[test]
    fn records_under_another_id_are_corrupt() {
        let key = identity::SigningKey::generate().expect("key").public_key();
        let record = NodeRecord::new(&key, Node::default());
        let bytes = record.node.encode_to_vec();
        assert_eq!(
            NodeRecord::decode(&record.id, &bytes).map(|r| r.id),
            Ok(record.id.clone())
        );
        assert!(matches!(
            NodeRecord::decode("metropolis-00", &bytes),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            NodeRecord::decode(&record.id, b"\xff\xff"),
            Err(StateError::Corrupt { .. })
        ));
    }
}
