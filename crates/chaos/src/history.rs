//! etcd's own revision history, read on a member's client socket: what a scenario checks
//! after the fact instead of trusting what a node answered. A unix socket is a file, so the
//! harness reaches a member's socket from outside the member's network namespace.
//!
//! [`History::scan`] replays every change (put or delete, with the previous value) between two
//! revisions through a watch with a start revision; the nodes never compact etcd, and a scan
//! that meets a compacted revision fails rather than reporting a partial history as clean.

use std::path::PathBuf;

use kv::etcd_client::{Client, EventType, GetOptions, WatchOptions};
use launch::proto::curator_private::LeaderElectionValue;
use prost::Message;

use crate::{Error, Result, Testbed};

/// The curator's election keys: `/leader/<lease hex>` in the curator keyspace.
const ELECTION_PREFIX: &[u8] = b"namespaced:curator//leader/";

/// A client on one member's socket.
pub struct History {
    client: Client,
}

/// One node's election key, as read at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionKey {
    pub key: Vec<u8>,
    /// The lease the key is bound to (the leader's lease while it leads).
    pub lease: i64,
    pub create_revision: i64,
}

/// One change in etcd's history.
#[derive(Debug, Clone)]
pub struct Change {
    pub revision: i64,
    pub key: Vec<u8>,
    pub delete: bool,
    /// The lease of the written value (of the deleted one, for a delete).
    pub lease: i64,
    /// The written value (the deleted one, for a delete).
    pub value: Vec<u8>,
    /// The value a put replaced (empty for a new key and for a delete).
    pub prev_value: Vec<u8>,
}

impl Change {
    /// The marked values (`marker` followed by `[-A-Za-z0-9]*`) this change wrote that the
    /// key did not hold before: what the write carried, not what a later rewrite of the same
    /// record kept. Empty for a delete.
    pub fn introduces(&self, marker: &str) -> Vec<String> {
        if self.delete {
            return Vec::new();
        }
        let before = tokens(&self.prev_value, marker.as_bytes());
        tokens(&self.value, marker.as_bytes())
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect()
    }
}

/// Every `marker[-A-Za-z0-9]*` in `bytes`.
fn tokens(bytes: &[u8], marker: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    if marker.is_empty() {
        return found;
    }
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
        let start = at + offset;
        let end = bytes[start + marker.len()..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-'))
            .map_or(bytes.len(), |n| start + marker.len() + n);
        found.push(String::from_utf8_lossy(&bytes[start..end]).into_owned());
        at = end;
    }
    found
}

fn etcd_error(what: &str) -> impl FnOnce(kv::etcd_client::Error) -> Error + '_ {
    move |e| Error::Check(format!("etcd history: {what}: {e}"))
}

impl History {
    /// Connects to node `index`'s etcd member (its socket in its state directory).
    pub async fn connect(bed: &Testbed, index: usize) -> Result<Self> {
        let socket: PathBuf = bed
            .cluster
            .node(index)
            .config()
            .dir
            .join("ephemeral/consensus/client.sock:0");
        let client = kv::connect_unix(&socket)
            .await
            .map_err(|e| Error::Check(format!("etcd history: {}: {e}", socket.display())))?;
        Ok(Self { client })
    }

    /// etcd's current revision (as this member knows it).
    pub async fn revision(&self) -> Result<i64> {
        let resp = self
            .client
            .clone()
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(etcd_error("reading the revision"))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// The election key of node `node_id`, if it has one now.
    pub async fn election_key(&self, node_id: &str) -> Result<Option<ElectionKey>> {
        let resp = self
            .client
            .clone()
            .get(ELECTION_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_error("reading the election keys"))?;
        Ok(resp
            .kvs()
            .iter()
            .find(|kv| LeaderElectionValue::decode(kv.value()).is_ok_and(|v| v.node_id == node_id))
            .map(|kv| ElectionKey {
                key: kv.key().to_vec(),
                lease: kv.lease(),
                create_revision: kv.create_revision(),
            }))
    }

    /// Every change of any key in revisions `from..=to`, oldest first.
    pub async fn scan(&self, from: i64, to: i64) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        if to < from {
            return Ok(changes);
        }
        let mut stream = self
            .client
            .clone()
            .watch(
                "\0",
                Some(
                    WatchOptions::new()
                        .with_all_keys()
                        .with_start_revision(from)
                        .with_prev_key(),
                ),
            )
            .await
            .map_err(etcd_error("watching from the start revision"))?;
        loop {
            let Some(resp) = stream
                .message()
                .await
                .map_err(etcd_error("replaying the history"))?
            else {
                return Err(Error::Check(
                    "etcd history: the watch ended before the scan reached its end".into(),
                ));
            };
            if resp.compact_revision() > 0 {
                return Err(Error::Check(format!(
                    "etcd history: compacted up to revision {}, cannot scan from {from}",
                    resp.compact_revision()
                )));
            }
            if resp.canceled() {
                return Err(Error::Check(format!(
                    "etcd history: watch canceled: {}",
                    resp.cancel_reason()
                )));
            }
            let mut reached = false;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                // One revision's events (a transaction's) come in one response.
                reached |= kv.mod_revision() >= to;
                if kv.mod_revision() > to {
                    continue;
                }
                let delete = event.event_type() == EventType::Delete;
                let prev_value = event.prev_kv().map(|p| p.value().to_vec());
                let (lease, value, prev_value) = match (delete, event.prev_kv()) {
                    (true, Some(prev)) => (prev.lease(), prev.value().to_vec(), Vec::new()),
                    (true, None) => (0, Vec::new(), Vec::new()),
                    (false, _) => (
                        kv.lease(),
                        kv.value().to_vec(),
                        prev_value.unwrap_or_default(),
                    ),
                };
                changes.push(Change {
                    revision: kv.mod_revision(),
                    key: kv.key().to_vec(),
                    delete,
                    lease,
                    value,
                    prev_value,
                });
            }
            if reached {
                break;
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(prev: &[u8], value: &[u8]) -> Change {
        Change {
            revision: 1,
            key: b"k".to_vec(),
            delete: false,
            lease: 0,
            value: value.to_vec(),
            prev_value: prev.to_vec(),
        }
    }

    #[test]
    fn a_put_introduces_only_marked_values_the_key_did_not_hold() {
        // Values as they sit in a protobuf: length-prefixed, followed by other fields.
        let first = put(b"\x0aold\x12", b"\x0am1-7\x12\x02xy");
        assert_eq!(first.introduces("m1"), vec!["m1-7".to_string()]);
        // A rewrite of the record that keeps the value introduces nothing.
        let kept = put(b"\x0am1-7\x12", b"\x0am1-7\x12\x03xyz");
        assert!(kept.introduces("m1").is_empty());
        // A new value whose old one is its prefix is still new.
        let next = put(b"\x0am1-1\x12", b"\x0am1-12\x12");
        assert_eq!(next.introduces("m1"), vec!["m1-12".to_string()]);
        // Other markers and deletes do not count.
        assert!(put(b"", b"m2-1").introduces("m1").is_empty());
        let mut delete = put(b"", b"m1-3");
        delete.delete = true;
        assert!(delete.introduces("m1").is_empty());
    }
}
