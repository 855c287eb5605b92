//! e2e (3 nodes): the safety checks of decommission and delete read as advice;
//! node 1 is decommissioned (metroctl waits, showing progress, until DECOMMISSIONED) and then
//! deleted without bypasses; node 2 is deleted while UP, which needs a bypass and --yes.

mod common;

use common::{GONE, Metroctl, find};
use test_support::LoopbackBlock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_then_delete() {
    let block = LoopbackBlock::allocate();
    let cluster = common::start(3, &block).await;
    let (id0, id1, id2) = (
        cluster.id_of(0).expect("id"),
        cluster.id_of(1).expect("id"),
        cluster.id_of(2).expect("id"),
    );
    let mctl = Metroctl {
        config: cluster.state_dir().to_path_buf(),
        endpoints: Some(block.host(1)),
    };

    // Safety checks, with the fix in the message.
    let run = mctl.run(&["node", "decommission", &id0]).await.failed(3);
    assert!(run.stderr.contains("roles"), "{run}");
    assert!(run.stderr.contains("metroctl node remove"), "{run}");
    let run = mctl.run(&["node", "delete", &id1]).await.failed(3);
    assert!(run.stderr.contains("metroctl node decommission"), "{run}");
    // A bypass without a terminal needs --yes.
    let run = mctl
        .run(&["node", "delete", &id2, "--bypass-not-decommissioned"])
        .await
        .failed(2);
    assert!(run.stderr.contains("--yes"), "{run}");

    // Decommission node 1 and wait for it.
    cluster.mark_removed(1);
    let run = mctl
        .run(&["node", "decommission", &id1, "--timeout", "240"])
        .await
        .ok();
    assert!(
        run.stdout
            .contains(&format!("node {id1} is DECOMMISSIONED")),
        "{run}"
    );
    assert!(
        run.stdout.contains(&format!("metroctl node delete {id1}")),
        "{run}"
    );
    // Progress was visible while waiting (one line per state on a non-terminal).
    assert!(
        run.stderr.contains(&format!("decommissioning {id1}:")),
        "{run}"
    );
    let run = mctl
        .run(&["node", "describe", &id1, "-o", "json"])
        .await
        .ok();
    assert_eq!(run.json()[0]["state"], "DECOMMISSIONED");
    // Decommissioning again is a no-op that returns at once.
    mctl.run(&["node", "decommission", &id1]).await.ok();

    // Delete it without bypasses.
    let run = mctl.run(&["node", "delete", &id1]).await.ok();
    assert!(run.stdout.contains(&format!("deleted node {id1}")), "{run}");
    let run = mctl.run(&["node", "describe", &id1]).await.failed(3);
    assert!(run.stderr.contains("not found"), "{run}");

    // On a terminal the bypass is confirmed; "no" aborts.
    if let Some(run) = mctl
        .run_on_terminal(
            &["node", "delete", &id2, "--bypass-not-decommissioned"],
            "no\n",
        )
        .await
    {
        assert_eq!(run.code, 1, "{run}");
        assert!(run.stdout.contains("(yes/no)?"), "{run}");
        assert!(run.stdout.contains("was not deleted"), "{run}");
    }

    // Delete node 2 while it is UP: bypass plus --yes.
    cluster.mark_removed(2);
    mctl.run(&[
        "node",
        "delete",
        &id2,
        "--bypass-not-decommissioned",
        "--yes",
    ])
    .await
    .ok();
    let run = mctl.run(&["node", "describe", "-o", "json"]).await.ok();
    let nodes = run.json();
    assert!(find(&nodes, &id0).is_some(), "{run}");
    assert!(
        find(&nodes, &id1).is_none() && find(&nodes, &id2).is_none(),
        "{run}"
    );

    let _ = cluster.node(1).wait_exit(GONE).await;
    let _ = cluster.node(2).wait_exit(GONE).await;
    cluster.shutdown().await;
}
