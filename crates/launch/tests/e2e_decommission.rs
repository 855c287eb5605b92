//! e2e decommissioning and deletion (ours; upstream's DecommissionNode is Unimplemented and a
//! deleted node crash-loops):
//!
//! * node 1 (UP, no roles) is decommissioned: it wipes itself and reports, the cluster shows
//!   it DECOMMISSIONED, the process exits 3, and DeleteNode without bypasses removes it;
//! * node 2 is deleted while running, with the not-decommissioned bypass: it is refused on
//!   its next call and exits 3 (no crash loop), and powered on again it exits 3 again.

mod common;

use common::{Clock, GONE, HEALTH};
use launch::proto::common::NodeState;
use launch::proto::private::SealedConfiguration;
use launch::{DeleteBypass, Exit, Node};
use prost::Message as _;
use test_support::LoopbackBlock;
use test_support::fs::files_below;
use tonic::Code;

/// A decommissioned node keeps nothing that unlocks its data or lets it rejoin: no data
/// directory contents, and no node unlock key or join key in its sealed configuration (TPM is
/// disabled here, so the file is a plain protobuf).
fn assert_wiped(node: &Node) {
    let leftovers = files_below(&node.data_dir());
    assert!(
        leftovers.is_empty(),
        "node {} kept data files: {leftovers:?}",
        node.index()
    );
    let path = node.esp_dir().join("sealed_configuration.pb");
    if let Ok(bytes) = std::fs::read(&path) {
        let sealed =
            SealedConfiguration::decode(bytes.as_slice()).expect("sealed configuration decodes");
        assert!(
            sealed.join_key.is_empty(),
            "{} still holds the join key",
            path.display()
        );
        assert!(
            sealed.node_unlock_key.is_empty(),
            "{} still holds the node unlock key",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_and_delete() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let cluster = common::start(common::options(3, &block)).await;
    clock.lap("cluster of 3 launched");
    let management = cluster.management();
    let (id0, id1, id2) = (
        cluster.id_of(0).expect("id"),
        cluster.id_of(1).expect("id"),
        cluster.id_of(2).expect("id"),
    );

    // The safety checks first.
    let err = management
        .decommission(&id0)
        .await
        .expect_err("node 0 has roles");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let err = management
        .delete(&id1, DeleteBypass::default())
        .await
        .expect_err("an UP node needs decommissioning first");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // Decommission node 1.
    management
        .decommission(&id1)
        .await
        .expect("decommission node 1");
    cluster.mark_removed(1);
    cluster
        .wait_node_state(1, NodeState::Decommissioned, GONE)
        .await
        .expect("node 1 DECOMMISSIONED");
    clock.lap("node 1 DECOMMISSIONED");
    let node1 = cluster.node(1);
    let exit = node1.wait_exit(GONE).await.expect("node 1 stops");
    assert_eq!(
        exit,
        Exit::Code(3),
        "a decommissioned node exits with 3:\n{}",
        node1.tail(30)
    );
    assert_wiped(node1);
    clock.lap("node 1 wiped itself and exited 3");
    management
        .delete(&id1, DeleteBypass::default())
        .await
        .expect("delete the decommissioned node 1 without bypasses");
    cluster
        .wait_node_gone(1, HEALTH)
        .await
        .expect("node 1 no longer listed");
    clock.lap("node 1 deleted");

    // Delete node 2 while it runs.
    management
        .delete(
            &id2,
            DeleteBypass {
                has_roles: false,
                not_decommissioned: true,
            },
        )
        .await
        .expect("delete the running node 2 with the bypass");
    cluster.mark_removed(2);
    let node2 = cluster.node(2);
    let exit = node2.wait_exit(GONE).await.expect("deleted node 2 stops");
    assert_eq!(
        exit,
        Exit::Code(3),
        "a deleted node exits with 3:\n{}",
        node2.tail(30)
    );
    clock.lap("node 2 deleted while running, refused and exited 3");
    node2.start().expect("power node 2 on again");
    let exit = node2
        .wait_exit(GONE)
        .await
        .expect("deleted node 2 stops again");
    assert_eq!(
        exit,
        Exit::Code(3),
        "a deleted node exits with 3 on every boot:\n{}",
        node2.tail(30)
    );
    clock.lap("node 2 powered on again, exited 3 again");

    cluster
        .wait_all_healthy(HEALTH)
        .await
        .expect("node 0 HEALTHY");
    let listed = management.get_nodes("").await.expect("GetNodes");
    assert_eq!(
        listed.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        vec![id0.as_str()]
    );
    cluster.shutdown().await;
}
