//! Errors of the supervisor API (not of runnables, which return [`crate::RunnableError`]).

/// Everything the supervisor API can refuse or report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A child name was empty or contained a dot.
    #[error("invalid runnable name {name:?} under {parent}: must be non-empty and contain no '.'")]
    InvalidName {
        /// DN of the parent runnable.
        parent: String,
        /// The rejected name.
        name: String,
    },
    /// A sibling with the same name already exists in this run of the parent.
    #[error("runnable {parent}.{name} already exists")]
    DuplicateName {
        /// DN of the parent runnable.
        parent: String,
        /// The duplicate name.
        name: String,
    },
    /// The context belongs to a run that has ended or is being cancelled.
    #[error("runnable {dn} is not running (cancelled or exited); cannot start children")]
    NotRunning {
        /// DN of the runnable whose context was used.
        dn: String,
    },
    /// The supervision tree is shutting down.
    #[error("supervisor is shutting down")]
    ShuttingDown,
    /// Shutdown gave up waiting; the listed runnables still have live tasks.
    #[error("shutdown timed out; still alive: {}", alive.join(", "))]
    ShutdownTimeout {
        /// DNs with tasks that did not exit.
        alive: Vec<String>,
    },
}
