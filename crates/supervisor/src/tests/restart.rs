//! Failure handling: restarts, backoff, panics, and teardown of a failed subtree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{DropFlag, log_lines, recv};
use crate::{State, Supervisor, runnable};
use logtree::LogTree;

#[tokio::test(start_paused = true)]
async fn failing_runnable_restarts_with_growing_backoff() {
    let tree = LogTree::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let root = runnable(move |_ctx| {
        let tx = tx.clone();
        async move {
            tx.send(Instant::now())?;
            Err("disk on fire".into())
        }
    });
    let sup = Supervisor::start(tree.clone(), root);
    let mut starts = Vec::new();
    for _ in 0..6 {
        starts.push(recv(&mut rx).await);
    }
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, vec![100, 200, 400, 800, 1600]);

    let status = sup.status_of("root").expect("status");
    assert!(status.restarts >= 5, "{status:?}");
    assert_eq!(status.last_error.as_deref(), Some("disk on fire"));

    let entries = super::logs(&tree, "root");
    let errors: Vec<_> = entries
        .iter()
        .filter_map(|e| e.leveled())
        .filter(|l| l.severity == logtree::Severity::Error)
        .collect();
    assert!(errors.len() >= 5);
    assert_eq!(errors[0].lines, vec!["runnable failed: disk on fire"]);
    let lines = log_lines(&tree, "root");
    assert!(
        lines.contains(&"restarting after 100ms backoff (restart #1)".to_string()),
        "{lines:?}"
    );
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_a_long_healthy_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicU32::new(0));
    let root = runnable(move |ctx| {
        let tx = tx.clone();
        let runs = runs.clone();
        async move {
            tx.send(Instant::now())?;
            if runs.fetch_add(1, Ordering::SeqCst) == 3 {
                ctx.signal_healthy();
                tokio::time::sleep(Duration::from_secs(31)).await;
            }
            Err("fail".into())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    let mut starts = Vec::new();
    for _ in 0..6 {
        starts.push(recv(&mut rx).await);
    }
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // Runs 0-2 fail at once (100, 200, 400 ms); run 3 is healthy for 31 s, so the delay
    // after it starts over at 100 ms.
    assert_eq!(gaps, vec![100, 200, 400, 31_000 + 100, 200]);
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn ok_without_done_is_restarted() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let root = runnable(move |ctx| {
        let tx = tx.clone();
        async move {
            ctx.signal_healthy();
            tx.send(())?;
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    recv(&mut rx).await;
    recv(&mut rx).await;
    let status = sup.status_of("root").expect("status");
    assert!(status.restarts >= 1);
    assert_eq!(
        status.last_error.as_deref(),
        Some("returned Ok without signalling Done")
    );
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn panic_is_caught_and_restarted() {
    let runs = Arc::new(AtomicU32::new(0));
    let root = runnable(move |ctx| {
        let runs = runs.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom");
            }
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    sup.wait_healthy("root")
        .await
        .expect("healthy after restart");
    let status = sup.status_of("root").expect("status");
    assert_eq!(status.restarts, 1);
    assert_eq!(status.last_error.as_deref(), Some("panicked: boom"));
    sup.shutdown().await.expect("shutdown");
}

#[derive(Debug, PartialEq, Eq)]
enum ChildEvent {
    Started,
    SawCancel,
    Exited,
}

#[tokio::test(start_paused = true)]
async fn failing_parent_cancels_and_awaits_children_before_restart() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel();
    let child_up = Arc::new(Notify::new());
    let child = {
        let child_up = child_up.clone();
        runnable(move |ctx| {
            let tx = tx.clone();
            let drop_tx = drop_tx.clone();
            let child_up = child_up.clone();
            async move {
                let _flag = DropFlag(drop_tx, "child task gone");
                tx.send(ChildEvent::Started)?;
                ctx.signal_healthy();
                child_up.notify_one();
                ctx.cancelled().await;
                tx.send(ChildEvent::SawCancel)?;
                // Slow cleanup: the parent must not restart before this finishes.
                tokio::time::sleep(Duration::from_secs(2)).await;
                tx.send(ChildEvent::Exited)?;
                Ok(())
            }
        })
    };
    let runs = Arc::new(AtomicU32::new(0));
    let root = runnable(move |ctx| {
        let child = child.clone();
        let child_up = child_up.clone();
        let runs = runs.clone();
        async move {
            ctx.run("child", child)?;
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                child_up.notified().await;
                return Err("parent failed".into());
            }
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    assert_eq!(recv(&mut rx).await, ChildEvent::Started);
    sup.wait_for_state("root", |s| matches!(s, State::Backoff { .. }))
        .await
        .expect("backoff");
    // By the time the parent is in backoff, the child has been cancelled and has finished.
    // `try_recv`, not `recv`: these must already have happened, not merely happen later.
    assert_eq!(rx.try_recv().ok(), Some(ChildEvent::SawCancel));
    assert_eq!(rx.try_recv().ok(), Some(ChildEvent::Exited));
    assert_eq!(drop_rx.try_recv().ok(), Some("child task gone"));
    assert_eq!(sup.live_tasks(), vec!["root".to_string()], "no orphans");
    assert_eq!(
        sup.status_of("root.child").map(|s| s.state),
        Some(State::Cancelled)
    );
    // The restarted parent builds a fresh child.
    assert_eq!(recv(&mut rx).await, ChildEvent::Started);
    sup.wait_healthy("root").await.expect("healthy");
    assert_eq!(sup.status_of("root.child").map(|s| s.restarts), Some(0));
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn failing_child_does_not_restart_parent() {
    let parent_runs = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let child = runnable(move |_ctx| {
        let tx = tx.clone();
        async move {
            tx.send(())?;
            Err("child failed".into())
        }
    });
    let root = {
        let parent_runs = parent_runs.clone();
        runnable(move |ctx| {
            let child = child.clone();
            let parent_runs = parent_runs.clone();
            async move {
                parent_runs.fetch_add(1, Ordering::SeqCst);
                ctx.run("flaky", child)?;
                ctx.signal_healthy();
                ctx.cancelled().await;
                Ok(())
            }
        })
    };
    let sup = Supervisor::start(LogTree::new(), root);
    for _ in 0..4 {
        recv(&mut rx).await;
    }
    assert_eq!(parent_runs.load(Ordering::SeqCst), 1);
    assert_eq!(sup.status_of("root").map(|s| s.state), Some(State::Healthy));
    assert!(sup.status_of("root.flaky").is_some_and(|s| s.restarts >= 3));
    sup.shutdown().await.expect("shutdown");
}
