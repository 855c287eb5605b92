//! Cancellation and shutdown of the whole tree.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{DropFlag, log_lines};
use crate::{Error, State, Supervisor, SupervisorConfig, runnable};
use logtree::LogTree;

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_everything_and_waits_for_all_tasks() {
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel();
    let leaf = {
        let drop_tx = drop_tx.clone();
        runnable(move |ctx| {
            let drop_tx = drop_tx.clone();
            async move {
                let _flag = DropFlag(drop_tx, "leaf");
                ctx.signal_healthy();
                ctx.cancelled().await;
                // Cleanup takes a while; shutdown must wait for it.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            }
        })
    };
    let mid = {
        let drop_tx = drop_tx.clone();
        runnable(move |ctx| {
            let drop_tx = drop_tx.clone();
            let leaf = leaf.clone();
            async move {
                let _flag = DropFlag(drop_tx, "mid");
                ctx.run("leaf", leaf)?;
                ctx.signal_healthy();
                // Uses the token rather than `cancelled()`, as code taking a token would.
                ctx.token().cancelled().await;
                Ok(())
            }
        })
    };
    let root = runnable(move |ctx| {
        let mid = mid.clone();
        async move {
            ctx.run("mid", mid)?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Err("returning an error after cancellation is fine".into())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    sup.wait_healthy("root.mid.leaf").await.expect("healthy");
    let before = Instant::now();
    sup.shutdown().await.expect("shutdown");
    assert!(
        Instant::now() - before >= Duration::from_secs(1),
        "waited for cleanup"
    );
    assert!(sup.live_tasks().is_empty());
    let mut dropped = Vec::new();
    while let Ok(d) = drop_rx.try_recv() {
        dropped.push(d);
    }
    dropped.sort_unstable();
    assert_eq!(dropped, vec!["leaf", "mid"]);
    for status in sup.status() {
        assert_eq!(status.state, State::Cancelled, "{status:?}");
        assert_eq!(status.restarts, 0, "cancellation is not a failure");
    }
    assert_eq!(
        sup.wait_healthy("root").await,
        Err(Error::ShuttingDown),
        "waiting on a shut-down tree fails instead of hanging"
    );
}

#[tokio::test(start_paused = true)]
async fn runnable_ignoring_cancellation_is_aborted_after_grace() {
    let tree = LogTree::new();
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel();
    let stubborn = runnable(move |ctx| {
        let drop_tx = drop_tx.clone();
        async move {
            let _flag = DropFlag(drop_tx, "stubborn");
            ctx.signal_healthy();
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    });
    let root = runnable(move |ctx| {
        let stubborn = stubborn.clone();
        async move {
            ctx.run("stubborn", stubborn)?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let sup = Supervisor::start(tree.clone(), root);
    sup.wait_healthy("root.stubborn").await.expect("healthy");
    let before = Instant::now();
    sup.shutdown().await.expect("shutdown");
    let took = Instant::now() - before;
    let grace = SupervisorConfig::default().cancel_grace;
    assert!(
        took >= grace && took < grace + Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(
        drop_rx.try_recv().ok(),
        Some("stubborn"),
        "task was aborted"
    );
    assert!(sup.live_tasks().is_empty());
    assert_eq!(
        log_lines(&tree, "root.stubborn"),
        vec!["ignored cancellation for 5s; task aborted"]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_names_live_runnables() {
    let config = SupervisorConfig {
        cancel_grace: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(3),
        ..SupervisorConfig::default()
    };
    let root = runnable(|ctx| async move {
        ctx.signal_healthy();
        std::future::pending::<()>().await;
        Ok(())
    });
    let sup = Supervisor::start_with_config(LogTree::new(), root, config);
    sup.wait_healthy("root").await.expect("healthy");
    assert_eq!(
        sup.shutdown().await,
        Err(Error::ShutdownTimeout {
            alive: vec!["root".to_string()]
        })
    );
    // The grace period (5 s) still ends in an abort, within the second wait (3 s + 3 s).
    sup.shutdown().await.expect("second shutdown");
}
