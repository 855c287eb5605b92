//! Curator.Watch: the current state of one node or of all nodes, then every change.
//!
//! Both kinds read the current state with one leadership-guarded read and then follow the
//! changes from the revision right after that read ([`node::snapshot`], [`node::changes`]),
//! so no change between the read and the watch is lost or seen twice. The watch itself is a
//! plain (unguarded) etcd watch: when leadership moves, the listener tears this server down
//! and clients re-resolve.
//!
//! Every watch shares the leader's etcd connection with everything else the leader does, and
//! HTTP/2 flow control makes an unread stream hold that connection's window: a client that
//! stops reading would, through its watch, stop the leader's etcd traffic. So each watch's
//! changes are read from etcd at once by a task of its own ([`pump`]) into a bounded buffer;
//! a client that falls more than [`MAX_BUFFERED_BYTES`] behind is cut off with Unavailable
//! (it re-watches, as after any watch failure) instead of stalling anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::{Stream, StreamExt, stream};
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

/// How far (in encoded bytes) a client may fall behind the changes of its watch before it is
/// cut off. A change event is one node record, at most a few dozen KiB even with the full 128
/// labels, so this holds dozens of changes — a client that reads at all keeps up — while
/// twenty stalled watches hold no more than 20 MiB of the leader's memory.
const MAX_BUFFERED_BYTES: usize = 1 << 20;

/// Most change events buffered per watch, whatever their size (tombstones are tiny).
const MAX_BUFFERED_EVENTS: usize = 4096;

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

/// Every change after `revision`, as watch events, read from etcd by a [`pump`]. A store
/// failure (including the watch ending, e.g. compaction) ends the stream with Unavailable so
/// that clients re-watch.
async fn changes(
    leader: &Leader,
    scope: Scope<'_>,
    revision: i64,
) -> Result<BoxStream<WatchEvent>, Status> {
    let changes = node::changes(leader.ns(), scope, revision).await?;
    Ok(pump(changes.map(|c| match c {
        Ok(NodeChange::Put(record)) => Ok(one_node(curator_node(&record))),
        Ok(NodeChange::Deleted(node_id)) => Ok(WatchEvent {
            node_tombstones: vec![NodeTombstone { node_id }],
            ..Default::default()
        }),
        Err(e) => Err(Status::from(e)),
    })))
}

/// Reads `events` eagerly in a task of its own into a buffer of at most
/// [`MAX_BUFFERED_BYTES`] (and [`MAX_BUFFERED_EVENTS`]), which the returned stream drains.
/// When the buffer is full the source is dropped and the returned stream ends with
/// Unavailable at its next poll; when the returned stream is dropped, so is the source.
pub(super) fn pump<T, S>(events: S) -> BoxStream<T>
where
    T: Message + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<(Result<T, Status>, usize)>(MAX_BUFFERED_EVENTS);
    let buffered = Arc::new(AtomicUsize::new(0));
    let overflowed = Arc::new(AtomicBool::new(false));
    let (pumped, cut) = (buffered.clone(), overflowed.clone());
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = events.next() => item,
            };
            let Some(item) = item else { return };
            let size = item.as_ref().map_or(0, |e| e.encoded_len());
            let failed = item.is_err();
            // One event always fits, however large: the bound is on falling behind, not on
            // record size (records are bounded where they are written).
            let behind = pumped.load(Ordering::Acquire);
            if behind > 0 && behind + size > MAX_BUFFERED_BYTES {
                cut.store(true, Ordering::Release);
                return;
            }
            pumped.fetch_add(size, Ordering::AcqRel);
            match tx.try_send((item, size)) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    cut.store(true, Ordering::Release);
                    return;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
            if failed {
                return;
            }
        }
    });
    Box::pin(stream::unfold(
        (rx, buffered, overflowed, false),
        |(mut rx, buffered, overflowed, done)| async move {
            if done {
                return None;
            }
            // Checked before the buffer is drained: a client this far behind gains nothing
            // from the rest, and it learns at once that it must re-watch.
            let cut_off = || {
                Status::unavailable(format!(
                    "watch cut off: the client fell more than {} KiB behind the cluster's \
                     changes; watch again",
                    MAX_BUFFERED_BYTES >> 10
                ))
            };
            if overflowed.load(Ordering::Acquire) {
                return Some((Err(cut_off()), (rx, buffered, overflowed, true)));
            }
            match rx.recv().await {
                Some((item, size)) => {
                    buffered.fetch_sub(size, Ordering::AcqRel);
                    let last = item.is_err();
                    Some((item, (rx, buffered, overflowed, last)))
                }
                None if overflowed.load(Ordering::Acquire) => {
                    Some((Err(cut_off()), (rx, buffered, overflowed, true)))
                }
                None => None,
            }
        },
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

    /// Sets its flag when dropped: tells whether the pump let go of its source.
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// An endless source of ~64 KiB events that reports being dropped; like an etcd watch, it
    /// yields to the runtime between events.
    fn endless(
        dropped: Arc<AtomicBool>,
    ) -> impl Stream<Item = Result<WatchEvent, Status>> + Send + 'static {
        let flag = DropFlag(dropped);
        stream::repeat_with(move || {
            let _keep = &flag;
            Ok(WatchEvent {
                nodes: vec![node("metropolis-x", 64 << 10)],
                ..Default::default()
            })
        })
        .then(|e| async {
            tokio::task::yield_now().await;
            e
        })
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_cut_off() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut s = pump(endless(dropped.clone()));
        // Nobody reads: the pump fills its buffer, gives up the source and ends the stream.
        eventually("the pump lets go of its source", || {
            dropped.load(Ordering::Acquire)
        })
        .await;
        let first = s.next().await.expect("an item");
        let e = first.expect_err("cut off at once");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("1024 KiB behind"), "{e}");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_stream_drops_the_source() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut s = pump(endless(dropped.clone()));
        // A reader that keeps up gets everything.
        for _ in 0..100 {
            s.next().await.expect("an item").expect("an event");
        }
        drop(s);
        eventually("the pump lets go of its source", || {
            dropped.load(Ordering::Acquire)
        })
        .await;
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
