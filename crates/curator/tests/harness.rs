//! The test harness itself: a bootstrapped cluster with an elected leader, and the bootstrap
//! record upstream's bootstrap.go writes.

use curator::state::node;
use curator::testing::TestLeader;
use proto::common::NodeState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_writes_the_first_node_and_elects_it() {
    let t = TestLeader::start().await;
    let me = node::load(&t.leader.leadership, &t.node_id())
        .await
        .expect("own record");
    assert_eq!(me.state(), NodeState::Up);
    assert!(me.roles().consensus_member.is_some() && me.roles().kubernetes_controller.is_some());
    assert_eq!(
        node::id_by_join_key(&t.leader.leadership, t.join_key.public_key().as_bytes())
            .await
            .expect("index"),
        t.node_id()
    );
    // A second bootstrap finish writes nothing and still succeeds (idempotent re-run).
    assert!(t.leader.leadership.lock_key.starts_with("/leader/"));
    t.stop().await;
}
