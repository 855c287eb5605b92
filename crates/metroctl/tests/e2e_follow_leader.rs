//! e2e: `--endpoints` may name any node. With node 1 a second consensus member
//! (a curator follower), metroctl pointed only at node 1 finds the leader on node 0; pointed
//! at a node list whose first entry is dead, it still gets through.

mod common;

use common::Metroctl;
use launch::{Cluster, ClusterOptions};
use test_support::LoopbackBlock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_endpoint_reaches_the_leader() {
    let block = LoopbackBlock::allocate();
    let options = ClusterOptions {
        consensus_members: 1,
        ..ClusterOptions::new(2, &block.prefix())
    };
    let cluster = Cluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("launching the cluster failed: {e}"));
    let id0 = cluster.id_of(0).expect("id 0");
    let id1 = cluster.id_of(1).expect("id 1");
    let leader = cluster
        .management()
        .current_leader()
        .expect("the launcher knows the leader");
    let follower = if leader == id0 {
        block.host(2)
    } else {
        block.host(1)
    };
    let mctl = Metroctl {
        config: cluster.state_dir().to_path_buf(),
        endpoints: Some(follower.clone()),
    };

    let run = mctl.run(&["cluster", "info", "-o", "json"]).await.ok();
    assert_eq!(run.json()["leader"]["id"], leader.as_str(), "{run}");
    let run = mctl.run(&["node", "describe", "-o", "json"]).await.ok();
    let nodes = run.json();
    for id in [&id0, &id1] {
        let node = common::find(&nodes, id).expect("listed");
        assert!(
            common::roles(node).contains(&"ConsensusMember".to_string()),
            "{run}"
        );
        assert_eq!(node["running_curator"], true, "{run}");
    }

    // A dead first endpoint costs a retry, not the command.
    let mctl = Metroctl {
        endpoints: Some(format!("{},{follower}", block.host(250))),
        ..mctl
    };
    mctl.run(&["node", "list"]).await.ok();

    cluster.shutdown().await;
}
