//! State shared by every node of one supervision tree: configuration, log tree, the status
//! table and the registry of live tasks that shutdown waits on.

use std::collections::BTreeMap;
use std::sync::Arc;

use logtree::{Dn, LogTree};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{RunnableStatus, State, SupervisorConfig};

/// Status table keyed by DN string, so iteration is in tree order.
pub(crate) type StatusMap = BTreeMap<String, RunnableStatus>;

pub(crate) struct Shared {
    pub(crate) tree: LogTree,
    pub(crate) config: SupervisorConfig,
    /// Cancels the whole tree.
    pub(crate) root_token: CancellationToken,
    status: watch::Sender<StatusMap>,
    /// Number of live tasks (supervision loop and runnable) per DN.
    live: watch::Sender<BTreeMap<String, usize>>,
}

impl Shared {
    pub(crate) fn new(tree: LogTree, config: SupervisorConfig) -> Shared {
        Shared {
            tree,
            config,
            root_token: CancellationToken::new(),
            status: watch::channel(StatusMap::new()).0,
            live: watch::channel(BTreeMap::new()).0,
        }
    }

    /// Updates (creating if needed) the status entry of `dn`.
    pub(crate) fn update(&self, dn: &Dn, f: impl FnOnce(&mut RunnableStatus)) {
        self.status.send_modify(|map| {
            let entry = map.entry(dn.to_string()).or_insert_with(|| RunnableStatus {
                dn: dn.clone(),
                state: State::Starting,
                restarts: 0,
                last_error: None,
            });
            f(entry);
        });
    }

    pub(crate) fn set_state(&self, dn: &Dn, state: State) {
        self.update(dn, |s| s.state = state);
    }

    /// Forgets the statuses of the subtree below `dn` (not `dn` itself): a restarted runnable
    /// builds its children anew, possibly different ones.
    pub(crate) fn remove_descendants(&self, dn: &Dn) {
        let prefix = format!("{dn}.");
        self.status.send_if_modified(|map| {
            let before = map.len();
            map.retain(|k, _| !k.starts_with(&prefix));
            map.len() != before
        });
    }

    pub(crate) fn status_snapshot(&self) -> Vec<RunnableStatus> {
        self.status.borrow().values().cloned().collect()
    }

    pub(crate) fn subscribe_status(&self) -> watch::Receiver<StatusMap> {
        self.status.subscribe()
    }

    /// Registers a task for `dn` until the guard is dropped. Taken before spawning, so the
    /// registry is never empty while any task of the tree can still start another.
    pub(crate) fn live_guard(self: &Arc<Self>, dn: &Dn) -> LiveGuard {
        self.live
            .send_modify(|m| *m.entry(dn.to_string()).or_default() += 1);
        LiveGuard {
            shared: self.clone(),
            dn: dn.to_string(),
        }
    }

    pub(crate) fn live_tasks(&self) -> Vec<String> {
        self.live.borrow().keys().cloned().collect()
    }

    pub(crate) fn subscribe_live(&self) -> watch::Receiver<BTreeMap<String, usize>> {
        self.live.subscribe()
    }
}

/// Keeps a DN in the live-task registry while a task runs (dropped on exit or abort).
pub(crate) struct LiveGuard {
    shared: Arc<Shared>,
    dn: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.shared.live.send_modify(|m| {
            if let Some(n) = m.get_mut(&self.dn) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.dn);
                }
            }
        });
    }
}
