//! The log tree itself: per-DN retention buffers, the global sequence counter and the list
//! of live subscribers, all behind one lock.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::read::Filter;
use crate::{
    Backlog, Dn, Error, LeveledLogger, LogEntry, Payload, RawLogger, ReadOptions, Reader,
    SUBSCRIBER_BUFFER, Subscription,
};

#[cfg(test)]
mod tests;

/// Entries kept per exact DN; older ones are evicted. Matches upstream: enough history to
/// debug a crash loop, bounded so a chatty service cannot exhaust memory.
pub const RETENTION_PER_DN: usize = 8192;

/// A shared, thread-safe log tree; clones refer to the same tree.
#[derive(Clone, Default)]
pub struct LogTree {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    nodes: HashMap<Dn, VecDeque<LogEntry>>,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<LogEntry>,
    missed: Arc<AtomicU64>,
}

impl LogTree {
    /// An empty tree.
    pub fn new() -> LogTree {
        LogTree::default()
    }

    /// A leveled logger writing to `dn`.
    pub fn leveled(&self, dn: Dn) -> LeveledLogger {
        LeveledLogger::new(self.clone(), dn)
    }

    /// A raw line logger writing to `dn`.
    pub fn raw(&self, dn: Dn) -> RawLogger {
        RawLogger::new(self.clone(), dn)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters for logs, and losing all logging after one panic would be worse.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files an entry: assigns its sequence number, stores it and fans it out to subscribers.
    pub(crate) fn publish(&self, dn: Dn, payload: Payload) {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let entry = LogEntry { dn, seq, payload };

        // Fan-out happens under the lock so that a concurrent `read` sees each entry either
        // in its backlog or in its stream, never both and never neither.
        state.subscribers.retain(|sub| {
            if !sub.filter.matches(&entry) {
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(entry.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    sub.missed.fetch_add(1, Ordering::Relaxed);
                    true
                }
                // The Subscription was dropped: forget it so dead readers do not pile up.
                Err(TrySendError::Closed(_)) => false,
            }
        });

        let buf = state.nodes.entry(entry.dn.clone()).or_default();
        if buf.len() >= RETENTION_PER_DN {
            buf.pop_front();
        }
        buf.push_back(entry);
    }

    /// Reads the backlog of `dn` and optionally subscribes to new entries, atomically.
    pub fn read(&self, dn: &Dn, opts: ReadOptions) -> Result<Reader, Error> {
        let filter = Filter::new(dn, &opts)?;
        let mut state = self.lock();
        let backlog = match opts.backlog {
            Backlog::None => Vec::new(),
            Backlog::All => collect(&state, &filter, usize::MAX),
            Backlog::Newest(n) => collect(&state, &filter, n),
        };
        let stream = opts.stream.then(|| {
            let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
            let missed = Arc::new(AtomicU64::new(0));
            state.subscribers.retain(|s| !s.tx.is_closed());
            state.subscribers.push(Subscriber {
                filter,
                tx,
                missed: missed.clone(),
            });
            Subscription { rx, missed }
        });
        Ok(Reader { backlog, stream })
    }

    /// Number of live subscriptions (dropped ones are pruned lazily on publish).
    pub fn subscriber_count(&self) -> usize {
        self.lock()
            .subscribers
            .iter()
            .filter(|s| !s.tx.is_closed())
            .count()
    }
}

/// The newest `limit` matching entries of all matching DNs, oldest first.
fn collect(state: &State, filter: &Filter, limit: usize) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = Vec::new();
    for (dn, buf) in &state.nodes {
        if !filter.matches_dn(dn) {
            continue;
        }
        // No DN can contribute more than `limit` entries to the global newest `limit`.
        out.extend(
            buf.iter()
                .rev()
                .filter(|e| filter.matches_payload(&e.payload))
                .take(limit)
                .cloned(),
        );
    }
    out.sort_unstable_by_key(|e| e.seq);
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    out
}

impl fmt::Debug for LogTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("LogTree")
            .field("dns", &state.nodes.len())
            .field("next_seq", &state.next_seq)
            .field("subscribers", &state.subscribers.len())
            .finish()
    }
}
