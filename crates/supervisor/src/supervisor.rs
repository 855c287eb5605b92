//! The handle of a running supervision tree: start, introspect, wait, shut down.

use std::sync::Arc;

use logtree::{Dn, LogTree};

use crate::shared::Shared;
use crate::{Error, Runnable, RunnableStatus, State, SupervisorConfig, node};

/// DN of the root runnable, as upstream (node services live under `root.…`).
const ROOT_NAME: &str = "root";

/// A running supervision tree; dropping it cancels the tree (without waiting).
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl Supervisor {
    /// Starts `root` as the runnable `root` with the default configuration. Must be called
    /// inside a tokio runtime.
    pub fn start(tree: LogTree, root: Runnable) -> Supervisor {
        Supervisor::start_with_config(tree, root, SupervisorConfig::default())
    }

    /// Starts `root` as the runnable `root` with the given configuration.
    pub fn start_with_config(
        tree: LogTree,
        root: Runnable,
        config: SupervisorConfig,
    ) -> Supervisor {
        let shared = Arc::new(Shared::new(tree, config));
        // Cannot fail: ROOT_NAME is a valid component.
        let dn = Dn::root().child(ROOT_NAME).unwrap_or_default();
        let token = shared.root_token.child_token();
        // The handle is not needed: shutdown waits on the live-task registry instead.
        drop(node::spawn_node(&shared, dn, root, token));
        Supervisor { shared }
    }

    /// The log tree runnables log into.
    pub fn logtree(&self) -> &LogTree {
        &self.shared.tree
    }

    /// Status of every known runnable, in DN order.
    pub fn status(&self) -> Vec<RunnableStatus> {
        self.shared.status_snapshot()
    }

    /// Status of one runnable.
    pub fn status_of(&self, dn: &str) -> Option<RunnableStatus> {
        self.status().into_iter().find(|s| s.dn.as_str() == dn)
    }

    /// DNs that still have a live task (supervision loop or runnable), in DN order.
    pub fn live_tasks(&self) -> Vec<String> {
        self.shared.live_tasks()
    }

    /// Waits until the runnable `dn` exists and its state satisfies `pred`; fails if the
    /// tree is shut down first.
    pub async fn wait_for_state(
        &self,
        dn: &str,
        mut pred: impl FnMut(&State) -> bool,
    ) -> Result<(), Error> {
        let mut rx = self.shared.subscribe_status();
        tokio::select! {
            biased;
            res = rx.wait_for(|map| map.get(dn).is_some_and(|s| pred(&s.state))) => {
                res.map(|_| ()).map_err(|_| Error::ShuttingDown)
            }
            () = self.shared.root_token.cancelled() => Err(Error::ShuttingDown),
        }
    }

    /// Waits until the runnable `dn` has signalled healthy (or done, which implies its
    /// setup finished).
    pub async fn wait_healthy(&self, dn: &str) -> Result<(), Error> {
        self.wait_for_state(dn, |s| matches!(s, State::Healthy | State::Done))
            .await
    }

    /// Cancels the whole tree without waiting.
    pub fn cancel(&self) {
        self.shared.root_token.cancel();
    }

    /// Cancels the whole tree and waits until every task has exited (runnables ignoring
    /// cancellation are aborted after the grace period). Times out with the DNs still alive.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.cancel();
        let mut live = self.shared.subscribe_live();
        let wait = live.wait_for(|m| m.is_empty());
        match tokio::time::timeout(self.shared.config.shutdown_timeout, wait).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::ShutdownTimeout {
                alive: self.live_tasks(),
            }),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shared.root_token.cancel();
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("status", &self.status())
            .finish()
    }
}
