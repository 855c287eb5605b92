//! Naming, logging and signalling within a running tree.

use tokio::sync::mpsc;

use super::{DEADLINE, log_lines, recv};
use crate::{Error, State, Supervisor, runnable};
use logtree::{LogTree, Severity};

#[tokio::test]
async fn names_form_dns() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let leaf = runnable(move |ctx| {
        let tx = tx.clone();
        async move {
            tx.send(ctx.dn().to_string())?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let mid = runnable(move |ctx| {
        let leaf = leaf.clone();
        async move {
            ctx.run("b", leaf)?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let root = runnable(move |ctx| {
        let mid = mid.clone();
        async move {
            ctx.run("a", mid)?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    assert_eq!(recv(&mut rx).await, "root.a.b");
    sup.wait_healthy("root.a.b").await.expect("healthy");
    let dns: Vec<String> = sup.status().iter().map(|s| s.dn.to_string()).collect();
    assert_eq!(dns, vec!["root", "root.a", "root.a.b"]);
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn logger_writes_land_under_dn() {
    let tree = LogTree::new();
    let child = runnable(|ctx| async move {
        ctx.logger().warning("child.rs:1", "from the child");
        ctx.raw_logger().write_line("raw output");
        ctx.signal_healthy();
        ctx.cancelled().await;
        Ok(())
    });
    let root = runnable(move |ctx| {
        let child = child.clone();
        async move {
            ctx.run("worker", child)?;
            ctx.signal_done();
            Ok(())
        }
    });
    let sup = Supervisor::start(tree.clone(), root);
    sup.wait_healthy("root.worker").await.expect("healthy");
    let entries = super::logs(&tree, "root.worker");
    assert_eq!(entries.len(), 2);
    let leveled = entries[0].leveled().expect("leveled");
    assert_eq!(leveled.severity, Severity::Warning);
    assert_eq!(leveled.lines, vec!["from the child"]);
    assert_eq!(
        entries[1].raw().map(|r| r.data.as_str()),
        Some("raw output")
    );
    assert!(
        log_lines(&tree, "root").is_empty(),
        "nothing leaks to the parent"
    );
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn healthy_then_done_is_not_restarted() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let root = runnable(move |ctx| {
        let tx = tx.clone();
        let mut go = go_rx.clone();
        async move {
            tx.send("started")?;
            ctx.signal_healthy();
            go.wait_for(|g| *g).await?;
            ctx.signal_done();
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    assert_eq!(recv(&mut rx).await, "started");
    sup.wait_for_state("root", |s| *s == State::Healthy)
        .await
        .expect("healthy");
    go_tx.send(true).expect("signal");
    sup.wait_for_state("root", |s| *s == State::Done)
        .await
        .expect("done");
    // Give a restart every chance to happen; virtual time makes this instant.
    tokio::time::sleep(DEADLINE).await;
    assert!(rx.try_recv().is_err(), "a done runnable is not restarted");
    let status = sup.status_of("root").expect("status");
    assert_eq!((status.state, status.restarts), (State::Done, 0));
    assert!(sup.live_tasks().is_empty(), "nothing left running");
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn done_parent_keeps_children_running() {
    let child = runnable(|ctx| async move {
        ctx.signal_healthy();
        ctx.cancelled().await;
        Ok(())
    });
    let root = runnable(move |ctx| {
        let child = child.clone();
        async move {
            ctx.run("child", child)?;
            ctx.signal_done();
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    sup.wait_healthy("root.child").await.expect("healthy");
    sup.wait_for_state("root", |s| *s == State::Done)
        .await
        .expect("done");
    assert_eq!(
        sup.status_of("root.child").map(|s| s.state),
        Some(State::Healthy)
    );
    assert!(sup.live_tasks().contains(&"root.child".to_string()));
    sup.shutdown().await.expect("shutdown");
    assert_eq!(
        sup.status_of("root.child").map(|s| s.state),
        Some(State::Cancelled)
    );
}

#[tokio::test]
async fn child_name_errors() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let idle = runnable(|ctx| async move {
        ctx.cancelled().await;
        Ok(())
    });
    let root = runnable(move |ctx| {
        let tx = tx.clone();
        let idle = idle.clone();
        async move {
            let results = vec![
                ctx.run("a", idle.clone()),
                ctx.run("a", idle.clone()),
                ctx.run("", idle.clone()),
                ctx.run("x.y", idle.clone()),
            ];
            tx.send(results)?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    let results = recv(&mut rx).await;
    assert_eq!(results[0], Ok(()));
    assert_eq!(
        results[1],
        Err(Error::DuplicateName {
            parent: "root".into(),
            name: "a".into()
        })
    );
    assert!(matches!(results[2], Err(Error::InvalidName { .. })));
    assert!(matches!(results[3], Err(Error::InvalidName { .. })));
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn stale_context_cannot_start_children() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let idle = runnable(|ctx| async move {
        ctx.cancelled().await;
        Ok(())
    });
    let root = runnable(move |ctx| {
        let tx = tx.clone();
        async move {
            // Hand the context out, then fail: the next run gets a fresh context.
            tx.send(ctx.clone())?;
            Err("first run fails".into())
        }
    });
    let sup = Supervisor::start(LogTree::new(), root);
    let old = recv(&mut rx).await;
    let _next = recv(&mut rx).await;
    assert!(old.is_cancelled());
    assert_eq!(
        old.run("late", idle),
        Err(Error::NotRunning { dn: "root".into() })
    );
    sup.shutdown().await.expect("shutdown");
}
