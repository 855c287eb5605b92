//! Introspection types: the lifecycle state of each runnable as reported by
//! [`crate::Supervisor::status`].

use std::time::Duration;

use logtree::Dn;

/// Lifecycle state of a runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Running, not yet signalled healthy.
    Starting,
    /// Running and signalled healthy.
    Healthy,
    /// Signalled done; will not be restarted once it returns `Ok`.
    Done,
    /// Failed; its subtree is being cancelled. `restarts` counts restarts before this failure.
    Failed {
        /// Restarts that happened before this failure.
        restarts: u32,
    },
    /// Waiting before the next restart.
    Backoff {
        /// The delay being waited.
        delay: Duration,
    },
    /// Stopped because it (or an ancestor) was cancelled; will not be restarted by itself.
    Cancelled,
}

/// Status of one runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnableStatus {
    /// DN of the runnable (`root`, `root.a`, …).
    pub dn: Dn,
    /// Current lifecycle state.
    pub state: State,
    /// How many times it was restarted since its parent (re)created it.
    pub restarts: u32,
    /// Text of the most recent failure, if any.
    pub last_error: Option<String>,
}
