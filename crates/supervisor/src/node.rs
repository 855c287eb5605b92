//! The supervision loop of one runnable: run it, classify how it ended, tear down its
//! subtree, and restart it with backoff when it failed.

use std::any::Any;
use std::sync::Arc;

use logtree::{Dn, caller_location};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Backoff;
use crate::context::{Attempt, Context};
use crate::shared::Shared;
use crate::{Runnable, RunnableResult, State};

/// How one run of a runnable ended.
enum Exit {
    Returned(RunnableResult),
    Panicked(String),
    /// Ignored cancellation for longer than the grace period and was aborted.
    Aborted,
}

/// Spawns the supervision task of a new node. `token` is the node's own token, a child of
/// the parent run's token.
pub(crate) fn spawn_node(
    shared: &Arc<Shared>,
    dn: Dn,
    runnable: Runnable,
    token: CancellationToken,
) -> JoinHandle<()> {
    shared.set_state(&dn, State::Starting);
    let guard = shared.live_guard(&dn);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        supervise(shared, dn, runnable, token).await;
    })
}

async fn supervise(shared: Arc<Shared>, dn: Dn, runnable: Runnable, token: CancellationToken) {
    let logger = shared.tree.leveled(dn.clone());
    let mut backoff = Backoff::new(&shared.config);
    let mut restarts = 0u32;
    loop {
        if token.is_cancelled() {
            shared.set_state(&dn, State::Cancelled);
            return;
        }
        shared.set_state(&dn, State::Starting);
        let attempt = Arc::new(Attempt::new(token.child_token()));
        let ctx = Context::new(shared.clone(), dn.clone(), attempt.clone());
        let exit = run_once(&shared, &dn, &runnable, ctx, &token).await;
        let healthy_for = attempt.healthy_for();

        let error = match exit {
            Exit::Returned(Ok(())) if attempt.is_done() => {
                // Children of a finished runnable keep serving; this task lives on until they
                // exit so that whoever awaits this node also awaits its subtree.
                attempt.wait_children().await;
                return;
            }
            Exit::Aborted => {
                logger.warning(
                    &caller_location(),
                    format!(
                        "ignored cancellation for {:?}; task aborted",
                        shared.config.cancel_grace
                    ),
                );
                stop(&shared, &dn, &attempt).await;
                return;
            }
            // Whatever a cancelled runnable returns is just how it stopped, not a failure.
            _ if token.is_cancelled() => {
                stop(&shared, &dn, &attempt).await;
                return;
            }
            // A long-running service that returns silently is a bug (it stopped doing its
            // job without saying why); only an explicit Done makes returning Ok legitimate.
            Exit::Returned(Ok(())) => "returned Ok without signalling Done".to_string(),
            Exit::Returned(Err(e)) => e.to_string(),
            Exit::Panicked(msg) => format!("panicked: {msg}"),
        };

        logger.error(&caller_location(), format!("runnable failed: {error}"));
        shared.update(&dn, |s| {
            s.state = State::Failed { restarts };
            s.last_error = Some(error);
        });
        // No orphans: the whole subtree of the failed run is gone before the next run starts.
        attempt.cancel_children().await;
        if token.is_cancelled() {
            shared.set_state(&dn, State::Cancelled);
            return;
        }

        let delay = backoff.next_delay(&shared.config, healthy_for);
        shared.set_state(&dn, State::Backoff { delay });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = token.cancelled() => {
                shared.set_state(&dn, State::Cancelled);
                return;
            }
        }
        restarts += 1;
        shared.remove_descendants(&dn);
        shared.update(&dn, |s| s.restarts = restarts);
        logger.info(
            &caller_location(),
            format!("restarting after {delay:?} backoff (restart #{restarts})"),
        );
    }
}

/// Final teardown of a cancelled node.
async fn stop(shared: &Shared, dn: &Dn, attempt: &Attempt) {
    attempt.cancel_children().await;
    shared.set_state(dn, State::Cancelled);
}

/// Runs the runnable once in its own task, enforcing the cancellation grace period.
async fn run_once(
    shared: &Arc<Shared>,
    dn: &Dn,
    runnable: &Runnable,
    ctx: Context,
    token: &CancellationToken,
) -> Exit {
    let span = tracing::info_span!(parent: None, "runnable", dn = %dn);
    let runnable = runnable.clone();
    let guard = shared.live_guard(dn);
    // A task of its own makes the runnable abortable and turns panics into JoinErrors,
    // including panics in the synchronous part of the call that builds the future.
    let mut task = tokio::spawn(async move {
        let _guard = guard;
        let future = span.in_scope(|| runnable(ctx));
        future.instrument(span).await
    });
    let joined = tokio::select! {
        res = &mut task => res,
        () = token.cancelled() => {
            match tokio::time::timeout(shared.config.cancel_grace, &mut task).await {
                Ok(res) => res,
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    return Exit::Aborted;
                }
            }
        }
    };
    match joined {
        Ok(result) => Exit::Returned(result),
        Err(e) if e.is_panic() => Exit::Panicked(panic_message(e.into_panic())),
        // Only this function aborts the task, and that path returned above.
        Err(_) => Exit::Aborted,
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
