//! Node-side flows against a real cluster of `metropolis-node` processes:
//! refused registrations (foreign cluster, wrong ticket), register → approve → commit,
//! restart of a registered node (join), decommissioning (wipe, exit 3, no restart) and
//! deletion (exit 3, no restart). Multi-node scenarios beyond the node's own behaviour
//! (health, HA, cold start) belong to the launcher's end-to-end tests.

mod common;

use std::time::Duration;

use common::{
    START_TIMEOUT, bootstrap_params, cluster_ca, logged_public_key, register_params, write_params,
};
use identity::{SigningKey, templates};
use prost::Message;
use proto::api::management_client::ManagementClient;
use proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, DeleteNodeRequest, GetClusterInfoRequest,
    GetNodesRequest, GetRegisterTicketRequest, decommission_node_request, delete_node_request,
};
use proto::common::cluster_configuration::StorageSecurityPolicy;
use proto::common::{ClusterDirectory, NodeState};
use test_support::node::{self, Exit, Node, TestNode};
use test_support::{LoopbackBlock, eventually};
use tonic::transport::Channel;

async fn get_node(mgmt: &mut ManagementClient<Channel>, id: &str) -> Option<proto::api::Node> {
    let mut stream = mgmt
        .get_nodes(GetNodesRequest {
            filter: format!("node.id == \"{id}\""),
        })
        .await
        .expect("GetNodes")
        .into_inner();
    stream.message().await.expect("GetNodes message")
}

async fn node_state(mgmt: &mut ManagementClient<Channel>, id: &str) -> Option<NodeState> {
    let node = get_node(mgmt, id).await?;
    NodeState::try_from(node.state).ok()
}

/// Waits until GetNodes reports the node HEALTHY (heartbeats arrive).
async fn wait_healthy(mgmt: &mut ManagementClient<Channel>, id: &str) {
    eventually(Duration::from_secs(30), async || {
        let health = get_node(mgmt, id).await.map(|n| n.health());
        if health == Some(proto::api::node::Health::Healthy) {
            Ok(())
        } else {
            Err(format!("health {health:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{id} not healthy: {e}"));
}

/// Registers node `index` at `address` and approves it once it asks.
async fn register(
    dir: &std::path::Path,
    index: usize,
    address: std::net::Ipv4Addr,
    params: &std::path::Path,
    mgmt: &mut ManagementClient<Channel>,
) -> (Node, String) {
    let node = node::start(
        index,
        &dir.join(format!("node{index}")),
        address,
        Some(params),
    );
    let id = node.expect_id(START_TIMEOUT).await;
    let pubkey = logged_public_key(&node).await;
    assert_eq!(
        identity::PublicKey::from_slice(&pubkey)
            .expect("key")
            .node_id(),
        id
    );
    assert!(
        node.stdout_lines()
            .iter()
            .any(|l| l.contains(&format!("metroctl approve {id}"))),
        "the approval hint names the node"
    );
    mgmt.approve_node(ApproveNodeRequest { pubkey })
        .await
        .expect("ApproveNode");
    node.expect_line("Cluster enrolment done.", START_TIMEOUT)
        .await;
    node.expect_line("NODE_READY", START_TIMEOUT).await;
    (node, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_restart_decommission_delete() {
    let block = LoopbackBlock::allocate();
    let node0_host = block.host(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("owner");
    let p0 = write_params(
        dir.path(),
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );
    let node0 = node::start(0, &dir.path().join("node0"), block.addr(1), Some(&p0));
    let id0 = node0.expect_id(START_TIMEOUT).await;
    node0.expect_line("NODE_READY", START_TIMEOUT).await;
    let ca = cluster_ca(node0.dir());
    let cert = common::escrow(&node0_host, &owner, &ca, &id0).await;
    let mut mgmt = ManagementClient::new(common::owner_channel(
        &node0_host,
        7835,
        &owner,
        &cert,
        &ca,
        &id0,
    ));
    let ticket = mgmt
        .get_register_ticket(GetRegisterTicketRequest {})
        .await
        .expect("ticket")
        .into_inner()
        .ticket;
    let directory = mgmt
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("cluster info")
        .into_inner()
        .cluster_directory
        .expect("directory");

    // Refusals: a CA that is not this cluster's (foreign cluster), a wrong ticket.
    let other_ca = templates::cluster_ca(&SigningKey::generate().expect("key")).expect("ca");
    let foreign = dir.path().join("foreign.pb");
    std::fs::write(
        &foreign,
        register_params(directory.clone(), ticket.clone(), other_ca).encode_to_vec(),
    )
    .expect("write");
    let n = node::start(
        9,
        &dir.path().join("foreign"),
        block.addr(9),
        Some(&foreign),
    );
    assert_eq!(n.expect_exit(Duration::from_secs(60)).await, Exit::Code(1));
    let err = n.stderr_text();
    assert!(err.contains("foreign cluster"), "{err}");

    let wrong = dir.path().join("wrong.pb");
    std::fs::write(
        &wrong,
        register_params(directory.clone(), b"wrong ticket".to_vec(), ca.clone()).encode_to_vec(),
    )
    .expect("write");
    let n = node::start(8, &dir.path().join("wrong"), block.addr(8), Some(&wrong));
    assert_eq!(n.expect_exit(Duration::from_secs(60)).await, Exit::Code(1));
    let err = n.stderr_text();
    assert!(err.contains("refused to register"), "{err}");

    // Register two nodes.
    let params = dir.path().join("register.pb");
    std::fs::write(
        &params,
        register_params(directory, ticket, ca.clone()).encode_to_vec(),
    )
    .expect("write");

    // A node stopped while it waits for approval stops at once and leaves nothing behind:
    // it simply registers anew next time.
    let waiting = node::start(7, &dir.path().join("waiting"), block.addr(7), Some(&params));
    waiting
        .expect_line("waiting for approval", START_TIMEOUT)
        .await;
    let stopping = std::time::Instant::now();
    assert_eq!(
        waiting.expect_stop(Duration::from_secs(30)).await,
        Exit::Code(0)
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    assert!(!dir.path().join("waiting/data").exists());
    assert!(
        !dir.path()
            .join("waiting/esp/metropolis/sealed_configuration.pb")
            .exists()
    );
    let (node1, id1) = register(dir.path(), 1, block.addr(2), &params, &mut mgmt).await;
    let (node2, id2) = register(dir.path(), 2, block.addr(3), &params, &mut mgmt).await;
    assert_eq!(node_state(&mut mgmt, &id1).await, Some(NodeState::Up));
    wait_healthy(&mut mgmt, &id1).await;
    wait_healthy(&mut mgmt, &id0).await;

    // Restart node1: it joins with its sealed configuration.
    assert_eq!(
        node1.expect_stop(Duration::from_secs(30)).await,
        Exit::Code(0)
    );
    drop(node1);
    let node1 = node::start(1, &dir.path().join("node1"), block.addr(2), None);
    assert_eq!(node1.expect_id(START_TIMEOUT).await, id1);
    node1
        .expect_line("Joined the cluster.", START_TIMEOUT)
        .await;
    node1.expect_line("NODE_READY", START_TIMEOUT).await;
    let directory1 = std::fs::read(dir.path().join("node1/esp/metropolis/cluster_directory.pb"))
        .expect("directory");
    let directory1 = ClusterDirectory::decode(directory1.as_slice()).expect("decode");
    assert!(
        directory1
            .nodes
            .iter()
            .any(|n| n.addresses.iter().any(|a| a.host == node0_host)),
        "{directory1:?}"
    );

    // Decommission node1: it reports, wipes its keys and data, and exits as gone.
    mgmt.decommission_node(DecommissionNodeRequest {
        node: Some(decommission_node_request::Node::Id(id1.clone())),
    })
    .await
    .expect("DecommissionNode");
    assert_eq!(node1.expect_exit(START_TIMEOUT).await, Exit::Code(3));
    let err = node1.stderr_text();
    assert!(err.contains("decommissioned"), "{err}");
    assert!(!dir.path().join("node1/data").exists(), "data wiped");
    assert_eq!(
        node_state(&mut mgmt, &id1).await,
        Some(NodeState::Decommissioned)
    );
    // Powered on again on the same state directory: it knows it is gone.
    node1.start().expect("start node 1 again");
    assert_eq!(
        node1.expect_exit(Duration::from_secs(30)).await,
        Exit::Code(3),
        "no crash loop"
    );

    // Delete node2 (still UP): it notices and exits as gone; a restart does not rejoin.
    mgmt.delete_node(DeleteNodeRequest {
        node: Some(delete_node_request::Node::Id(id2.clone())),
        safety_bypass_has_roles: None,
        safety_bypass_not_decommissioned: Some(
            delete_node_request::SafetyBypassNotDecommissioned {},
        ),
    })
    .await
    .expect("DeleteNode");
    assert_eq!(node2.expect_exit(START_TIMEOUT).await, Exit::Code(3));
    let err = node2.stderr_text();
    assert!(err.contains("removed from the cluster"), "{err}");
    drop(node2);
    let again = node::start(2, &dir.path().join("node2"), block.addr(3), None);
    assert_eq!(
        again.expect_exit(Duration::from_secs(60)).await,
        Exit::Code(3),
        "no crash loop"
    );
    let err = again.stderr_text();
    assert!(err.contains("deleted"), "{err}");
    drop(node0);
}
