//! Curator.Watch: the current state of one node or of all nodes, then every change.
//!
//! Both kinds read the current state with one leadership-guarded read and then follow the
//! changes from the revision right after that read ([`node::snapshot`], [`node::changes`]),
//! so no change between the read and the watch is lost or seen twice. The watch itself is a
//! plain (unguarded) etcd watch: when leadership moves, the listener tears this server down
//! and clients re-resolve.

use futures::{StreamExt, stream};
use prost::Message;
use proto::curator_api::watch_event::{NodeTombstone, Progress};
use proto::curator_api::watch_request::Kind;
use proto::curator_api::{Node, WatchEvent, WatchRequest};
use tonic::Status;
use tonic::codegen::BoxStream;

use super::curator_node;
use crate::leader::Leader;
use crate::state::node::{self, NodeChange, Scope};

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
    let scope = Scope::One(id);
    let (current, revision) = node::snapshot(&leader.leadership, scope).await?;
    let current = current.iter().map(|r| one_node(curator_node(r)));
    let changes = changes(leader, scope, revision).await?;
    Ok(Box::pin(
        stream::iter(current.map(Ok).collect::<Vec<_>>()).chain(changes),
    ))
}

/// All nodes: the backlog in events of at most [`MAX_BACKLOG_EVENT_BYTES`], the last of them
/// (possibly empty) flagged LAST_BACKLOGGED, then one event per change.
async fn nodes_in_cluster(leader: &Leader) -> Result<BoxStream<WatchEvent>, Status> {
    let (current, revision) = node::snapshot(&leader.leadership, Scope::All).await?;
    let backlog = backlog_events(current.iter().map(curator_node).collect());
    let changes = changes(leader, Scope::All, revision).await?;
    Ok(Box::pin(
        stream::iter(backlog.into_iter().map(Ok)).chain(changes),
    ))
}

/// Every change after `revision`, as watch events. A store failure (including the watch
/// ending, e.g. compaction) ends the stream with Unavailable so that clients re-watch.
async fn changes(
    leader: &Leader,
    scope: Scope<'_>,
    revision: i64,
) -> Result<BoxStream<WatchEvent>, Status> {
    let changes = node::changes(leader.ns(), scope, revision).await?;
    Ok(Box::pin(changes.map(|c| match c {
        Ok(NodeChange::Put(record)) => Ok(one_node(curator_node(&record))),
        Ok(NodeChange::Deleted(node_id)) => Ok(WatchEvent {
            node_tombstones: vec![NodeTombstone { node_id }],
            ..Default::default()
        }),
        Err(e) => Err(Status::from(e)),
    })))
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
}
