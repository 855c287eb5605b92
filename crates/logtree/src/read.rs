//! Read side of the log tree: options, filters, backlog snapshots and live subscriptions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::{Dn, Error, LogEntry, Payload, Severity};

/// Entries a subscriber may have queued before new ones are dropped. Matches upstream: large
/// enough to absorb bursts, small enough that a stalled reader costs little memory.
pub const SUBSCRIBER_BUFFER: usize = 128;

/// How much history a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backlog {
    /// No history.
    #[default]
    None,
    /// Everything still retained.
    All,
    /// The newest `n` matching entries across the whole matched subtree.
    Newest(usize),
}

/// Parameters of [`crate::LogTree::read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Match the whole subtree below the DN instead of the exact DN.
    pub with_children: bool,
    /// How much history to return.
    pub backlog: Backlog,
    /// Also subscribe to entries logged after the read.
    pub stream: bool,
    /// Only raw entries.
    pub only_raw: bool,
    /// Only leveled entries.
    pub only_leveled: bool,
    /// Only leveled entries at or above this severity (drops raw entries too).
    pub min_severity: Option<Severity>,
}

/// Result of a read: a backlog snapshot and optionally a live subscription.
#[derive(Debug)]
pub struct Reader {
    /// Matching history, oldest first.
    pub backlog: Vec<LogEntry>,
    /// New matching entries, if streaming was requested.
    pub stream: Option<Subscription>,
}

/// A live feed of new entries; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) rx: mpsc::Receiver<LogEntry>,
    pub(crate) missed: Arc<AtomicU64>,
}

impl Subscription {
    /// The next entry, or `None` once the log tree is gone.
    pub async fn next(&mut self) -> Option<LogEntry> {
        self.rx.recv().await
    }

    /// The next entry if one is already queued.
    pub fn try_next(&mut self) -> Option<LogEntry> {
        self.rx.try_recv().ok()
    }

    /// How many entries were dropped because this subscriber's buffer was full.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

/// A compiled, validated set of read filters.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    dn: Dn,
    with_children: bool,
    only_raw: bool,
    only_leveled: bool,
    min_severity: Option<Severity>,
}

impl Filter {
    /// Validates the option combination.
    pub(crate) fn new(dn: &Dn, opts: &ReadOptions) -> Result<Filter, Error> {
        if opts.only_raw && opts.only_leveled {
            return Err(Error::RawAndLeveled);
        }
        Ok(Filter {
            dn: dn.clone(),
            with_children: opts.with_children,
            only_raw: opts.only_raw,
            only_leveled: opts.only_leveled,
            min_severity: opts.min_severity,
        })
    }

    /// Whether entries logged at `dn` can match at all.
    pub(crate) fn matches_dn(&self, dn: &Dn) -> bool {
        if self.with_children {
            dn.is_within(&self.dn)
        } else {
            *dn == self.dn
        }
    }

    /// Whether an entry passes the kind and severity filters (DN not checked).
    pub(crate) fn matches_payload(&self, payload: &Payload) -> bool {
        match payload {
            // Upstream drops raw entries whenever a minimum severity is set, although the
            // proto comment only talks about leveled ones; we keep that so clients see the
            // same results against both implementations.
            Payload::Raw(_) => !self.only_leveled && self.min_severity.is_none(),
            Payload::Leveled(l) => {
                !self.only_raw && self.min_severity.is_none_or(|min| l.severity >= min)
            }
        }
    }

    /// Whether an entry passes every filter.
    pub(crate) fn matches(&self, entry: &LogEntry) -> bool {
        self.matches_dn(&entry.dn) && self.matches_payload(&entry.payload)
    }
}
