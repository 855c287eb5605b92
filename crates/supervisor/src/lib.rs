//! supervisor: a tree of named, restartable async tasks (Monogon's `supervisor` package).
//!
//! Node services are written as *runnables*: async functions taking a [`Context`]. A runnable
//! may start children (`ctx.run("name", …)`), forming DNs like `root.role.curator` that double
//! as log tree addresses: each runnable's `tracing` events and [`Context::logger`] output land
//! under its DN. A runnable that fails or panics has its whole subtree cancelled and awaited,
//! then is restarted after an exponential backoff; cancellation flows down the tree, and
//! [`Supervisor::shutdown`] stops everything and waits for it.
#![forbid(unsafe_code)]

mod config;
mod context;
mod error;
mod node;
mod shared;
mod status;
mod supervisor;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use config::SupervisorConfig;
pub use context::Context;
pub use error::Error;
pub use status::{RunnableStatus, State};
pub use supervisor::Supervisor;

/// The error a runnable returns; boxed so that `?` works on any error type.
pub type RunnableError = Box<dyn std::error::Error + Send + Sync>;

/// What a runnable's future resolves to.
pub type RunnableResult = Result<(), RunnableError>;

/// A supervised task: called afresh with a new [`Context`] on every (re)start.
pub type Runnable = Arc<dyn Fn(Context) -> BoxFuture<'static, RunnableResult> + Send + Sync>;

/// Wraps an `async fn(Context) -> RunnableResult` or a closure returning such a future.
pub fn runnable<F, Fut>(f: F) -> Runnable
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RunnableResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}
