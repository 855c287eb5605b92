//! Node records: `/nodes/<id>` holds `curator.proto.private.Node`, `/join_keys/<hex>` maps a
//! join public key to its node ID. Both are always written in one transaction.

use identity::PublicKey;
use kv::etcd_client::{GetOptions, TxnOp};
use prost::Message;
use proto::common::{NodeRoles, NodeState};
use proto::curator_private::Node;
use tonic::Status;

use crate::election::Leadership;

/// Prefix of node records.
pub const NODES_PREFIX: &str = "/nodes/";
/// Prefix of the join-key index.
pub const JOIN_KEYS_PREFIX: &str = "/join_keys/";

/// A node record with its ID (derived from the public key, checked on load).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// `metropolis-…`.
    pub id: String,
    /// The stored record.
    pub node: Node,
}

impl NodeRecord {
    /// A new record for `public_key`.
    pub fn new(public_key: &PublicKey, node: Node) -> Self {
        Self {
            id: identity::node_id(public_key),
            node: Node {
                public_key: public_key.as_bytes().to_vec(),
                ..node
            },
        }
    }

    /// The node's state.
    pub fn state(&self) -> NodeState {
        NodeState::try_from(self.node.fsm_state).unwrap_or(NodeState::Invalid)
    }

    /// Sets the node's state.
    pub fn set_state(&mut self, state: NodeState) {
        self.node.fsm_state = state as i32;
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
    pub fn public_key(&self) -> Result<PublicKey, Status> {
        PublicKey::from_slice(&self.node.public_key)
            .map_err(|e| Status::internal(format!("node {}: {e}", self.id)))
    }

    /// Decodes a stored record, refusing one whose key does not match the ID derived from its
    /// public key (spec 4.3: such a record is corrupt or forged).
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Self, String> {
        let node = Node::decode(bytes).map_err(|e| format!("decoding node {id}: {e}"))?;
        let key = PublicKey::from_slice(&node.public_key).map_err(|e| format!("node {id}: {e}"))?;
        let derived = identity::node_id(&key);
        if derived != id {
            return Err(format!("node record {id} holds the key of {derived}"));
        }
        Ok(Self {
            id: id.to_string(),
            node,
        })
    }

    /// The etcd key of this record.
    pub fn key(&self) -> String {
        node_key(&self.id)
    }
}

/// `/nodes/<id>`; InvalidArgument for an ID that is empty or contains `/`.
pub fn checked_node_key(id: &str) -> Result<String, Status> {
    if id.is_empty() || id.contains('/') {
        return Err(Status::invalid_argument("invalid node id"));
    }
    Ok(node_key(id))
}

fn node_key(id: &str) -> String {
    format!("{NODES_PREFIX}{id}")
}

fn join_key_key(join_key: &[u8]) -> String {
    format!("{JOIN_KEYS_PREFIX}{}", hex::encode(join_key))
}

/// Resolves a node given by public key (32 bytes) or by ID, as the Management requests do.
pub fn id_from_request(pubkey: Option<&[u8]>, id: Option<&str>) -> Result<String, Status> {
    match (pubkey, id) {
        (Some(pk), _) => {
            let key = PublicKey::from_slice(pk).map_err(|_| {
                Status::invalid_argument(format!("public key must be 32 bytes, got {}", pk.len()))
            })?;
            Ok(identity::node_id(&key))
        }
        (None, Some(id)) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(Status::invalid_argument(
            "node must be given by pubkey or id",
        )),
    }
}

/// Loads a node; NotFound if absent.
pub async fn load(l: &Leadership, id: &str) -> Result<NodeRecord, Status> {
    let key = checked_node_key(id)?;
    let Some(bytes) = l.get(&key).await? else {
        return Err(Status::not_found(format!("node {id} not found")));
    };
    NodeRecord::decode(id, &bytes).map_err(Status::unavailable)
}

/// Loads every node; records that fail to decode are skipped (and logged), as upstream.
pub async fn load_all(l: &Leadership) -> Result<Vec<NodeRecord>, Status> {
    let kvs = l.get_prefix(NODES_PREFIX).await?;
    Ok(decode_all(kvs))
}

/// Decodes `(key, value)` pairs of `/nodes/`, skipping bad ones.
pub fn decode_all(kvs: Vec<(String, Vec<u8>)>) -> Vec<NodeRecord> {
    kvs.into_iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(NODES_PREFIX)?.to_string();
            NodeRecord::decode(&id, &v)
                .map_err(|e| tracing::warn!("skipping node record: {e}"))
                .ok()
        })
        .collect()
}

/// Saves a node and (if it has one) its join-key index entry in one transaction.
pub async fn save(l: &Leadership, n: &NodeRecord) -> Result<(), Status> {
    let mut ops = vec![TxnOp::put(n.key(), n.node.encode_to_vec(), None)];
    if !n.node.join_key.is_empty() {
        ops.push(TxnOp::put(
            join_key_key(&n.node.join_key),
            n.id.clone(),
            None,
        ));
    }
    l.txn(ops).await.map(|_| ())
}

/// Deletes a node record and its join-key index entry in one transaction.
pub async fn delete(l: &Leadership, n: &NodeRecord) -> Result<(), Status> {
    let mut ops = vec![TxnOp::delete(n.key(), None)];
    if !n.node.join_key.is_empty() {
        ops.push(TxnOp::delete(join_key_key(&n.node.join_key), None));
    }
    l.txn(ops).await.map(|_| ())
}

/// The node ID registered for a join key; NotFound if none.
pub async fn id_by_join_key(l: &Leadership, join_key: &[u8]) -> Result<String, Status> {
    if join_key.is_empty() {
        return Err(Status::invalid_argument("join key is empty"));
    }
    match l.get(&join_key_key(join_key)).await? {
        Some(id) => Ok(String::from_utf8_lossy(&id).into_owned()),
        None => Err(Status::not_found("no node with this join key")),
    }
}

/// Reads every node without leadership (followers, watches): a plain range read.
pub async fn load_all_unguarded(ns: &kv::Namespaced) -> Result<Vec<NodeRecord>, Status> {
    let resp = ns
        .get(NODES_PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(crate::election::etcd_status)?;
    Ok(decode_all(
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect(),
    ))
}

/// Reads one node without leadership; None if absent.
pub async fn load_unguarded(ns: &kv::Namespaced, id: &str) -> Result<Option<NodeRecord>, Status> {
    let key = checked_node_key(id)?;
    let resp = ns
        .get(key, None)
        .await
        .map_err(crate::election::etcd_status)?;
    match resp.kvs().first() {
        Some(kv) => NodeRecord::decode(id, kv.value())
            .map(Some)
            .map_err(Status::unavailable),
        None => Ok(None),
    }
}
