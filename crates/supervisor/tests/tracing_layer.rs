//! Tracing events inside a runnable land under its DN.
//!
//! This lives in its own test binary on purpose: it installs a thread-local subscriber, and
//! tracing-core caches per-callsite interest globally. If another test thread first hit the
//! supervisor's `runnable` span callsite while this subscriber was being registered, the
//! span could be cached as disabled and the test would flake.

use logtree::{Backlog, Dn, LogTree, LogTreeLayer, ReadOptions};
use supervisor::{Supervisor, runnable};
use tracing_subscriber::layer::SubscriberExt;

fn lines(tree: &LogTree, dn: &str) -> Vec<String> {
    tree.read(
        &Dn::new(dn).expect("valid dn"),
        ReadOptions {
            backlog: Backlog::All,
            only_leveled: true,
            ..Default::default()
        },
    )
    .expect("read")
    .backlog
    .iter()
    .filter_map(|e| e.leveled().map(|l| l.lines.join("\n")))
    .collect()
}

#[tokio::test]
async fn tracing_events_land_under_runnable_dn() {
    let tree = LogTree::new();
    // The default current-thread test runtime runs every task on this thread, so a
    // thread-local subscriber sees all of them.
    let subscriber = tracing_subscriber::registry().with(LogTreeLayer::new(tree.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let child = runnable(|ctx| async move {
        tracing::info!(port = 7835, "listening");
        ctx.signal_healthy();
        ctx.cancelled().await;
        Ok(())
    });
    let root = runnable(move |ctx| {
        let child = child.clone();
        async move {
            tracing::warn!("root starting");
            ctx.run("curator", child)?;
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    });
    let sup = Supervisor::start(tree.clone(), root);
    sup.wait_healthy("root.curator").await.expect("healthy");
    assert_eq!(lines(&tree, "root.curator"), vec!["listening port=7835"]);
    assert_eq!(lines(&tree, "root"), vec!["root starting"]);
    sup.shutdown().await.expect("shutdown");
}
