//! Which nodes exist, in the leader's memory, so that a heartbeat costs no etcd read.
//!
//! Every heartbeat must refuse a node whose record is gone (deleted), which used to be one
//! guarded etcd read per beat: at thousands of nodes most of etcd's CPU. Instead the leader
//! keeps the set of node IDs with a record, read once at the start and then followed with a
//! watch on `/nodes/` from the revision of that read, so nothing between the two is missed.
//!
//! Two gaps are closed explicitly:
//! - a deletion must be refused at once, not a watch delay later: the delete path
//!   ([`LiveNodes::forget`]) marks the ID deleted before it answers, and a deleted ID stays
//!   refused even if a late watch event (a status update written just before the deletion)
//!   puts it back, since deleted node IDs are never reused;
//! - while the set is not in step with etcd (before the first read, after a failed watch),
//!   or for an ID it does not hold (created a moment ago), [`LiveNodes::check`] says
//!   "unknown" and the caller reads etcd as before: the set only ever answers for what it
//!   knows.
//!
//! The follower task lives as long as the [`Leader`] (it holds a weak reference, and the
//! leader cancels it when dropped) and stops when leadership is lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Leader;
use crate::state::{StateError, node};

/// How long the follower waits before reading again after its watch failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The node IDs with a record, kept by a watch.
#[derive(Debug, Default)]
pub struct LiveNodes {
    inner: RwLock<Inner>,
    started: AtomicBool,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether `present` is in step with etcd (read, and followed by a working watch).
    synced: bool,
    /// IDs with a record.
    present: HashSet<String>,
    /// IDs this leader deleted (or saw deleted): refused whatever a late event says.
    deleted: HashSet<String>,
}

/// What the set knows about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Its record exists.
    Present,
    /// It was deleted.
    Deleted,
    /// Not known here: read etcd.
    Unknown,
}

impl LiveNodes {
    /// What the set knows about node `id`.
    pub fn check(&self, id: &str) -> Known {
        let inner = self.read();
        if inner.deleted.contains(id) {
            Known::Deleted
        } else if inner.synced && inner.present.contains(id) {
            Known::Present
        } else {
            Known::Unknown
        }
    }

    /// Marks node `id` deleted, from now on (the delete path calls this before it answers).
    pub fn forget(&self, id: &str) {
        let mut inner = self.write();
        inner.present.remove(id);
        inner.deleted.insert(id.to_string());
    }

    /// Starts following the node records for `leader`, once.
    pub fn start(&self, leader: &Arc<Leader>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(follow(Arc::downgrade(leader), self.stop.clone()));
    }

    /// Stops the follower (the leader is gone).
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// Replaces the set with a fresh read.
    fn reset(&self, ids: Vec<String>) {
        let mut inner = self.write();
        inner.present = ids.into_iter().collect();
        inner.synced = true;
    }

    fn apply(&self, change: node::Presence) {
        let mut inner = self.write();
        match change {
            node::Presence::Created(id) => {
                inner.present.insert(id);
            }
            node::Presence::Removed(id) => {
                inner.present.remove(&id);
            }
        }
    }

    fn unsync(&self) {
        self.write().synced = false;
    }

    // A poisoned lock only means a panic mid-update of a set of strings; still usable.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the node IDs, then follows their changes; starts over when the watch fails, ends
/// when the leader is gone or has lost leadership.
async fn follow(leader: Weak<Leader>, stop: CancellationToken) {
    loop {
        let Some(strong) = leader.upgrade() else {
            return;
        };
        let ns = strong.ns().clone();
        let read = node::ids(&strong.leadership).await;
        let (ids, revision) = match read {
            Ok(read) => read,
            Err(StateError::LostLeadership) => return,
            Err(e) => {
                tracing::warn!("following node records: {e}");
                drop(strong);
                if pause(&stop).await {
                    return;
                }
                continue;
            }
        };
        let changes = node::presence_changes(&ns, revision).await;
        let mut changes = match changes {
            Ok(changes) => Box::pin(changes),
            Err(e) => {
                tracing::warn!("following node records: {e}");
                drop(strong);
                if pause(&stop).await {
                    return;
                }
                continue;
            }
        };
        strong.live.reset(ids);
        // Only a weak reference while waiting: the leader may go away meanwhile.
        drop(strong);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = changes.next() => next,
            };
            let Some(strong) = leader.upgrade() else {
                return;
            };
            match next {
                Some(Ok(change)) => strong.live.apply(change),
                Some(Err(e)) => {
                    strong.live.unsync();
                    tracing::info!("following node records: {e}; reading them again");
                    break;
                }
                None => {
                    strong.live.unsync();
                    break;
                }
            }
        }
        if pause(&stop).await {
            return;
        }
    }
}

/// Waits [`RETRY_PAUSE`]; true if stopped meanwhile.
async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(RETRY_PAUSE) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_what_it_knows() {
        let live = LiveNodes::default();
        assert_eq!(live.check("a"), Known::Unknown, "not read yet");
        live.reset(vec!["a".into()]);
        assert_eq!(live.check("a"), Known::Present);
        assert_eq!(
            live.check("b"),
            Known::Unknown,
            "maybe created a moment ago"
        );
        live.apply(node::Presence::Created("b".into()));
        assert_eq!(live.check("b"), Known::Present);
        live.forget("a");
        assert_eq!(live.check("a"), Known::Deleted);
        // A late event of a write made before the deletion does not bring it back.
        live.apply(node::Presence::Created("a".into()));
        assert_eq!(live.check("a"), Known::Deleted);
        live.apply(node::Presence::Removed("b".into()));
        assert_eq!(live.check("b"), Known::Unknown);
        live.unsync();
        assert_eq!(
            live.check("a"),
            Known::Deleted,
            "deletions outlive a failed watch"
        );
        live.apply(node::Presence::Created("c".into()));
        assert_eq!(live.check("c"), Known::Unknown, "not in step: read etcd");
    }
}
