//! e2e "ha_cold" (an e2e test of later upstream Monogon, not in the 8456ddf0 baseline): three
//! nodes, insecure storage, nodes 1 and 2 consensus members; every node is powered off at once and
//! powered on again → all HEALTHY (they rely on persisted roles to restart their etcd before any
//! curator answers); then node 0 loses its roles (KubernetesController, then ConsensusMember: its
//! etcd member disappears), is deleted (not-decommissioned bypass) and stops with exit code 3; the
//! remaining two are cold-restarted and become HEALTHY.

mod common;

use common::{Clock, GONE, HEALTH, REJOIN};
use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use launch::{DeleteBypass, Exit};
use test_support::{LoopbackBlock, eventually};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_cold() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let mut options = common::options(3, &block);
    options.consensus_members = 2;
    options.storage_policy = StorageSecurityPolicy::NeedsInsecure;
    let cluster = common::start(options).await;
    clock.lap("cluster of 3 launched, 3 consensus members");

    cluster.kill_all().await.expect("power off all");
    clock.lap("all powered off");
    cluster.start_all().await.expect("all nodes come back");
    cluster
        .wait_all_healthy(REJOIN)
        .await
        .expect("all HEALTHY after the cold start");
    clock.lap("all powered on and HEALTHY");

    // Take node 0 out of the control plane.
    let id0 = cluster.id_of(0).expect("id");
    let management = cluster.management();
    // Retried like upstream's TestEventual: right after the cold start etcd refuses to remove
    // a member ("unhealthy cluster") until its peers have been connected for a few seconds.
    eventually(REJOIN, || {
        management.set_roles(&id0, None, Some(false), None)
    })
    .await
    .expect("drop KubernetesController from node 0");
    eventually(REJOIN, || {
        management.set_roles(&id0, Some(false), None, None)
    })
    .await
    .expect("drop ConsensusMember from node 0");
    eventually(REJOIN, async || {
        let members = management.consensus_status().await;
        if let Ok(members) = &members
            && !members.is_empty()
            && members.iter().all(|m| m.id != id0)
        {
            return Ok(());
        }
        Err(format!("{members:?}"))
    })
    .await
    .expect("node 0's etcd member goes away");
    clock.lap("node 0 has no roles, its etcd member is gone");

    // The curator refuses to delete the node that leads; node 0 may lead until its etcd is
    // gone, so retry that refusal until another node took over.
    eventually(REJOIN, async || {
        let bypass = DeleteBypass {
            has_roles: false,
            not_decommissioned: true,
        };
        match management.delete(&id0, bypass).await {
            Err(e) if e.code() != Code::FailedPrecondition => panic!("deleting node 0: {e}"),
            other => other,
        }
    })
    .await
    .expect("deleting node 0");
    cluster.mark_removed(0);
    cluster.refresh_leader_channel().expect("leader channel");
    cluster
        .wait_node_gone(0, HEALTH)
        .await
        .expect("node 0 no longer listed");
    let exit = cluster
        .node(0)
        .wait_exit(GONE)
        .await
        .expect("deleted node 0 stops");
    assert_eq!(exit, Exit::Code(3), "a deleted node exits with 3");
    clock.lap("node 0 deleted and stopped");

    cluster
        .wait_all_healthy(HEALTH)
        .await
        .expect("nodes 1 and 2 HEALTHY");
    cluster.kill_all().await.expect("power off nodes 1 and 2");
    cluster.start_all().await.expect("nodes 1 and 2 come back");
    cluster
        .wait_all_healthy(REJOIN)
        .await
        .expect("nodes 1 and 2 HEALTHY after a cold start");
    clock.lap("nodes 1 and 2 cold-restarted and HEALTHY");
    cluster.shutdown().await;
}
