//! The handle a runnable receives: its DN, cancellation, health signals, loggers and the
//! ability to start children.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use logtree::{Dn, LeveledLogger, LogTree, RawLogger};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;
use crate::{Error, Runnable, State, node};

/// Context of one run of a runnable; clones refer to the same run.
#[derive(Clone)]
pub struct Context {
    shared: Arc<Shared>,
    dn: Dn,
    attempt: Arc<Attempt>,
}

/// Per-run state: a fresh one is made for every (re)start, so signals and children of an
/// old run cannot leak into the next.
pub(crate) struct Attempt {
    /// Cancelled when this run ends or an ancestor is cancelled; parent of the children.
    token: CancellationToken,
    children: Mutex<Children>,
    healthy_since: Mutex<Option<Instant>>,
    done: AtomicBool,
}

#[derive(Default)]
struct Children {
    names: HashSet<String>,
    handles: Vec<JoinHandle<()>>,
    /// Set once the supervisor has awaited every child; later `run` calls are refused so
    /// that no child can outlive the wait.
    closed: bool,
}

impl Attempt {
    pub(crate) fn new(token: CancellationToken) -> Attempt {
        Attempt {
            token,
            children: Mutex::default(),
            healthy_since: Mutex::default(),
            done: AtomicBool::new(false),
        }
    }

    fn children(&self) -> MutexGuard<'_, Children> {
        // The guarded data stays consistent even if a holder panicked.
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// How long the run has been healthy, if it signalled healthy.
    pub(crate) fn healthy_for(&self) -> Option<Duration> {
        let since = *self.healthy_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|t| t.elapsed())
    }

    /// Cancels the subtree of this run and waits until all its tasks have exited.
    pub(crate) async fn cancel_children(&self) {
        self.token.cancel();
        self.wait_children().await;
    }

    /// Waits until every child's supervision task has exited, then refuses new children.
    pub(crate) async fn wait_children(&self) {
        loop {
            let handles = {
                let mut c = self.children();
                if c.handles.is_empty() {
                    c.closed = true;
                    return;
                }
                std::mem::take(&mut c.handles)
            };
            // A supervision task does not panic in practice; if it did, it is gone either way.
            let _ = futures::future::join_all(handles).await;
        }
    }
}

impl Context {
    pub(crate) fn new(shared: Arc<Shared>, dn: Dn, attempt: Arc<Attempt>) -> Context {
        Context {
            shared,
            dn,
            attempt,
        }
    }

    /// Status of every runnable of this supervision tree (the whole tree, not only this
    /// runnable's subtree), in DN order: what a runnable reports about its siblings (metrics).
    pub fn tree_status(&self) -> Vec<crate::RunnableStatus> {
        self.shared.status_snapshot()
    }

    /// This runnable's DN, e.g. `root.role.curator`.
    pub fn dn(&self) -> &Dn {
        &self.dn
    }

    /// Starts a supervised child named `<dn>.<name>`; names are unique among the children
    /// of this run.
    pub fn run(&self, name: &str, runnable: Runnable) -> Result<(), Error> {
        let child_dn = self.dn.child(name).map_err(|_| Error::InvalidName {
            parent: self.dn.to_string(),
            name: name.to_string(),
        })?;
        let mut children = self.attempt.children();
        if children.closed || self.attempt.token.is_cancelled() {
            return Err(Error::NotRunning {
                dn: self.dn.to_string(),
            });
        }
        if !children.names.insert(name.to_string()) {
            return Err(Error::DuplicateName {
                parent: self.dn.to_string(),
                name: name.to_string(),
            });
        }
        // Spawning under the lock keeps the check above and the registration atomic with
        // respect to `wait_children`.
        let handle = node::spawn_node(
            &self.shared,
            child_dn,
            runnable,
            self.attempt.token.child_token(),
        );
        children.handles.push(handle);
        Ok(())
    }

    /// Tells the supervisor that setup is finished and the runnable is serving.
    pub fn signal_healthy(&self) {
        if self.attempt.token.is_cancelled() || self.attempt.is_done() {
            return;
        }
        self.attempt
            .healthy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        self.shared.set_state(&self.dn, State::Healthy);
    }

    /// Tells the supervisor that the runnable's work is complete: returning `Ok` afterwards
    /// is not a failure and the runnable is not restarted. Its children keep running.
    pub fn signal_done(&self) {
        if self.attempt.token.is_cancelled() {
            return;
        }
        self.attempt.done.store(true, Ordering::SeqCst);
        self.shared.set_state(&self.dn, State::Done);
    }

    /// Resolves once this runnable should stop (it or an ancestor was cancelled).
    pub async fn cancelled(&self) {
        self.attempt.token.cancelled().await;
    }

    /// Whether this runnable should stop.
    pub fn is_cancelled(&self) -> bool {
        self.attempt.token.is_cancelled()
    }

    /// The cancellation token of this run (a child of the parent's token), for passing to
    /// code that takes one.
    pub fn token(&self) -> CancellationToken {
        self.attempt.token.clone()
    }

    /// A leveled logger writing under this runnable's DN.
    pub fn logger(&self) -> LeveledLogger {
        self.shared.tree.leveled(self.dn.clone())
    }

    /// A raw line logger writing under this runnable's DN (e.g. for child-process output).
    pub fn raw_logger(&self) -> RawLogger {
        self.shared.tree.raw(self.dn.clone())
    }

    /// The log tree of this supervision tree.
    pub fn logtree(&self) -> &LogTree {
        &self.shared.tree
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("dn", &self.dn)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
