//! e2e "core" (upstream's e2e suite of that name): two nodes (TPM disabled, NEEDS_INSECURE storage,
//! as upstream); the cluster directory lists both addresses; all nodes become HEALTHY; node 1 is
//! rebooted, joins again and all are HEALTHY again; its logs hold "Cluster enrolment done." (first
//! boot) and "Joined the cluster." (the reboot).

mod common;

use common::{Clock, HEALTH, REJOIN};
use launch::Exit;
use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use test_support::LoopbackBlock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let mut options = common::options(2, &block);
    options.storage_policy = StorageSecurityPolicy::NeedsInsecure;
    let cluster = common::start(options).await;
    clock.lap("cluster of 2 launched");

    let management = cluster.management();
    let addresses: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.address().to_string())
        .collect();
    let info = common::wait_directory(&management, &addresses, REJOIN).await;
    assert_eq!(
        info.ca_certificate,
        cluster.ca_certificate(),
        "GetClusterInfo CA"
    );
    clock.lap("directory lists both addresses");

    cluster
        .wait_all_healthy(HEALTH)
        .await
        .expect("all nodes HEALTHY");
    clock.lap("all HEALTHY");

    let node1 = cluster.node(1);
    assert!(
        node1.logs_contain("Cluster enrolment done."),
        "node 1 did not log its enrolment:\n{}",
        node1.tail(40)
    );
    // Clean stop, start on the same state, NODE_READY, and a heartbeat from the new boot.
    cluster
        .reboot_node(1)
        .await
        .expect("node 1 reboots and rejoins");
    assert_eq!(
        node1.exits().last().map(|(_, e)| e.clone()),
        Some(Exit::Code(0)),
        "clean stop"
    );
    assert_eq!(node1.boot(), 2);
    assert!(
        node1
            .boot_logs()
            .iter()
            .any(|l| l.contains("Joined the cluster.")),
        "node 1's second boot did not join:\n{}",
        node1.tail(40)
    );
    clock.lap("node 1 rebooted and rejoined");
    cluster
        .wait_all_healthy(HEALTH)
        .await
        .expect("all nodes HEALTHY after the reboot");
    clock.lap("all HEALTHY again");

    for (index, exit) in cluster.shutdown().await {
        assert_eq!(
            exit.expect("node stops"),
            Exit::Code(0),
            "node {index} stops cleanly"
        );
    }
    clock.lap("stopped");
}
