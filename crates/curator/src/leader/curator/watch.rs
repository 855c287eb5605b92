//! Curator.Watch (spec 4.9): the current state of one node or of all nodes, then every change.
//!
//! Both kinds read the current state with one leadership-guarded range read and then watch
//! etcd from the revision right after that read, so no change between the read and the
//! watch is lost or seen twice. The watch itself is a plain (unguarded) etcd watch: when
//! leadership moves, the listener tears this server down and clients re-resolve.

use futures::{Stream, StreamExt, stream};
use kv::etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use kv::{EventKind, WatchBatch};
use prost::Message;
use proto::curator_api::watch_event::{NodeTombstone, Progress};
use proto::curator_api::watch_request::Kind;
use proto::curator_api::{Node, WatchEvent, WatchRequest};
use tonic::Status;
use tonic::codegen::BoxStream;

use super::curator_node;
use crate::election::{Leadership, etcd_status, first_range};
use crate::leader::Leader;
use crate::state::node::{NODES_PREFIX, NodeRecord, checked_node_key};

/// Upper bound of one backlog event (upstream: 2 MiB), well below gRPC's default 4 MiB
/// message limit.
const MAX_BACKLOG_EVENT_BYTES: usize = 2 << 20;

/// Serves a Watch request.
pub(super) async fn watch(
    leader: &Leader,
    req: WatchRequest,
) -> Result<BoxStream<WatchEvent>, Status> {
    match req.kind {
        None => Err(Status::unimplemented("watch kind must be set")),
        Some(Kind::NodeInCluster(n)) => node_in_cluster(leader, &n.node_id).await,
        Some(Kind::NodesInCluster(_)) => nodes_in_cluster(leader).await,
    }
}

/// One node: its current value (nothing while it does not exist), then every change as a
/// one-node event and a deletion as a tombstone. The watch continues after a deletion, so a
/// re-created node shows up again.
async fn node_in_cluster(leader: &Leader, id: &str) -> Result<BoxStream<WatchEvent>, Status> {
    let key = checked_node_key(id)?;
    let (kvs, revision) = guarded_read(&leader.leadership, &key, false).await?;
    let current: Vec<WatchEvent> = kvs
        .iter()
        .filter_map(|(k, v)| decode(k, v))
        .map(one_node)
        .collect();
    let changes = changes(leader, &key, false, revision).await?;
    Ok(Box::pin(
        stream::iter(current.into_iter().map(Ok)).chain(changes),
    ))
}

/// All nodes: the backlog in events of at most [`MAX_BACKLOG_EVENT_BYTES`], the last of them
/// (possibly empty) flagged LAST_BACKLOGGED, then one event per change.
async fn nodes_in_cluster(leader: &Leader) -> Result<BoxStream<WatchEvent>, Status> {
    let (kvs, revision) = guarded_read(&leader.leadership, NODES_PREFIX, true).await?;
    let nodes: Vec<Node> = kvs.iter().filter_map(|(k, v)| decode(k, v)).collect();
    let backlog = backlog_events(nodes);
    let changes = changes(leader, NODES_PREFIX, true, revision).await?;
    Ok(Box::pin(
        stream::iter(backlog.into_iter().map(Ok)).chain(changes),
    ))
}

/// Splits the backlog into events. Upstream flags the event holding the remainder of the
/// backlog (empty if the split ended exactly at a boundary, or there are no nodes), so a
/// client collects nodes from every event up to and including the flagged one.
fn backlog_events(nodes: Vec<Node>) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    let mut current = WatchEvent::default();
    for node in nodes {
        if !current.nodes.is_empty()
            && current.encoded_len() + node.encoded_len() + 8 > MAX_BACKLOG_EVENT_BYTES
        {
            events.push(std::mem::take(&mut current));
        }
        current.nodes.push(node);
    }
    current.progress = Progress::LastBacklogged as i32;
    events.push(current);
    events
}

/// Reads `key` (or every key under it) under the leadership guard, returning the pairs and
/// the store revision of the read, which [`crate::election::Leadership::get_prefix`] does not
/// expose and the watch needs.
async fn guarded_read(
    l: &Leadership,
    key: &str,
    prefix: bool,
) -> Result<(Vec<(String, Vec<u8>)>, i64), Status> {
    let guard = Compare::create_revision(l.lock_key.clone(), CompareOp::Equal, l.lock_rev);
    let options = prefix.then(|| GetOptions::new().with_prefix());
    let txn = Txn::new()
        .when([guard])
        .and_then([TxnOp::get(key, options)]);
    let resp = l.namespace().txn(txn).await.map_err(etcd_status)?;
    if !resp.succeeded() {
        return Err(Status::unavailable("lost leadership"));
    }
    let revision = resp
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| Status::unavailable("etcd: no response header"))?;
    Ok((first_range(resp.op_responses()), revision))
}

/// Every change of `key` (or the keys under it) after `revision`, as watch events. An etcd
/// failure (including the watch ending, e.g. compaction) ends the stream with Unavailable so
/// that clients re-watch.
async fn changes(
    leader: &Leader,
    key: &str,
    prefix: bool,
    revision: i64,
) -> Result<impl Stream<Item = Result<WatchEvent, Status>> + Send + 'static, Status> {
    let mut options = WatchOptions::new().with_start_revision(revision + 1);
    if prefix {
        options = options.with_prefix();
    }
    let watch = leader
        .ns()
        .watch(key, Some(options))
        .await
        .map_err(etcd_status)?;
    let events = watch.flat_map(|batch| stream::iter(batch_events(batch)));
    // Tonic ends the response at the first error, so this only shows if the watch ended
    // without one.
    let ended = stream::once(async { Err(Status::unavailable("etcd watch ended")) });
    Ok(events.chain(ended))
}

/// The watch events of one etcd watch response.
fn batch_events(batch: Result<WatchBatch, kv::Error>) -> Vec<Result<WatchEvent, Status>> {
    match batch {
        Ok(b) => b
            .events
            .iter()
            .filter_map(|e| change_event(e.kind, &e.key, &e.value))
            .map(Ok)
            .collect(),
        Err(e) => vec![Err(etcd_status(format!("watch: {e}")))],
    }
}

/// One change: a put becomes a one-node event, a delete a tombstone. Keys that are not node
/// records and records that do not decode are skipped.
fn change_event(kind: EventKind, key: &[u8], value: &[u8]) -> Option<WatchEvent> {
    let key = String::from_utf8_lossy(key);
    match kind {
        EventKind::Put => decode(&key, value).map(one_node),
        EventKind::Delete => {
            let id = key.strip_prefix(NODES_PREFIX)?.to_string();
            Some(WatchEvent {
                node_tombstones: vec![NodeTombstone { node_id: id }],
                ..Default::default()
            })
        }
    }
}

/// Decodes a `/nodes/<id>` record into the watched form; a record that does not decode (or
/// whose key and public key disagree) is logged and skipped, as upstream does.
fn decode(key: &str, value: &[u8]) -> Option<Node> {
    let id = key.strip_prefix(NODES_PREFIX)?;
    match NodeRecord::decode(id, value) {
        Ok(r) => Some(curator_node(&r)),
        Err(e) => {
            tracing::warn!("watch: skipping node record: {e}");
            None
        }
    }
}

fn one_node(node: Node) -> WatchEvent {
    WatchEvent {
        nodes: vec![node],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, label_bytes: usize) -> Node {
        let pair = proto::common::node_labels::Pair {
            key: "k".into(),
            value: "v".repeat(label_bytes),
        };
        Node {
            id: id.into(),
            labels: Some(proto::common::NodeLabels { pairs: vec![pair] }),
            ..Default::default()
        }
    }

    #[test]
    fn empty_backlog_is_one_flagged_event() {
        let events = backlog_events(Vec::new());
        assert_eq!(events.len(), 1);
        assert!(events[0].nodes.is_empty());
        assert_eq!(events[0].progress, Progress::LastBacklogged as i32);
    }

    #[test]
    fn backlog_is_split_below_the_limit() {
        // Five nodes of ~700 KiB: at most two fit into one 2 MiB event.
        let nodes: Vec<Node> = (0..5)
            .map(|i| node(&format!("metropolis-{i}"), 700 << 10))
            .collect();
        let events = backlog_events(nodes);
        assert_eq!(events.len(), 3);
        assert!(
            events
                .iter()
                .all(|e| e.encoded_len() <= MAX_BACKLOG_EVENT_BYTES)
        );
        assert_eq!(events.iter().map(|e| e.nodes.len()).sum::<usize>(), 5);
        let flagged: Vec<_> = events
            .iter()
            .map(|e| e.progress == Progress::LastBacklogged as i32)
            .collect();
        assert_eq!(flagged, vec![false, false, true]);
    }

    #[test]
    fn deletes_become_tombstones_and_foreign_keys_are_skipped() {
        let ev = change_event(EventKind::Delete, b"/nodes/metropolis-ab", b"").expect("tombstone");
        assert_eq!(ev.node_tombstones[0].node_id, "metropolis-ab");
        assert!(change_event(EventKind::Delete, b"/other/x", b"").is_none());
        assert!(change_event(EventKind::Put, b"/nodes/metropolis-ab", b"\xff garbage").is_none());
    }
}
