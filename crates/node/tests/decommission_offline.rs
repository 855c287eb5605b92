//! Decommissioning a node that is down when it is asked: it carries out the decommission when
//! it next starts (joins, finds DECOMMISSION_REQUESTED, wipes itself, reports), against a real
//! cluster of `metropolis-node` processes.

mod common;

use std::time::Duration;

use common::{START_TIMEOUT, bootstrap_params, cluster_ca, write_params};
use identity::SigningKey;
use prost::Message;
use proto::api::management_client::ManagementClient;
use proto::api::node_parameters::{Cluster, ClusterRegister};
use proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, GetClusterInfoRequest, GetNodesRequest,
    GetRegisterTicketRequest, NodeParameters, decommission_node_request,
};
use proto::common::NodeState;
use proto::common::cluster_configuration::StorageSecurityPolicy;
use test_support::node::{self, Exit, TestNode};
use test_support::{LoopbackBlock, eventually};
use tonic::transport::Channel;

async fn node_state(mgmt: &mut ManagementClient<Channel>, id: &str) -> Option<NodeState> {
    let mut stream = mgmt
        .get_nodes(GetNodesRequest {
            filter: format!("node.id == \"{id}\""),
        })
        .await
        .expect("GetNodes")
        .into_inner();
    let node = stream.message().await.expect("GetNodes message")?;
    NodeState::try_from(node.state).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_when_asked_decommissions_itself_when_it_returns() {
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
    let params = dir.path().join("register.pb");
    let register = NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: Some(directory),
            register_ticket: ticket,
            ca_certificate: ca.clone(),
            labels: None,
        })),
        network_config: None,
    };
    std::fs::write(&params, register.encode_to_vec()).expect("write");

    // Register node1 and let it join.
    let node1_dir = dir.path().join("node1");
    let node1 = node::start(1, &node1_dir, block.addr(2), Some(&params));
    let id1 = node1.expect_id(START_TIMEOUT).await;
    let line = node1
        .expect_line("waiting for approval", START_TIMEOUT)
        .await;
    let pubkey = line
        .rsplit("node public key ")
        .next()
        .map(|s| s.trim_end_matches(')').trim())
        .and_then(|h| hex::decode(h).ok())
        .expect("public key in line");
    mgmt.approve_node(ApproveNodeRequest { pubkey })
        .await
        .expect("ApproveNode");
    node1.expect_line("NODE_READY", START_TIMEOUT).await;
    assert_eq!(node_state(&mut mgmt, &id1).await, Some(NodeState::Up));

    // It goes down; meanwhile the operator asks for its decommissioning.
    assert_eq!(
        node1.expect_stop(Duration::from_secs(30)).await,
        Exit::Code(0)
    );
    mgmt.decommission_node(DecommissionNodeRequest {
        node: Some(decommission_node_request::Node::Id(id1.clone())),
    })
    .await
    .expect("DecommissionNode");
    assert_eq!(
        node_state(&mut mgmt, &id1).await,
        Some(NodeState::DecommissionRequested)
    );
    assert!(node1_dir.join("data").exists(), "nothing wiped while down");

    // Back up, it joins, finds the request and carries it out: wipe, report, exit as gone.
    node1.start().expect("start node 1 again");
    node1
        .expect_line("Joined the cluster.", START_TIMEOUT)
        .await;
    assert_eq!(node1.expect_exit(START_TIMEOUT).await, Exit::Code(3));
    let err = node1.stderr_text();
    assert!(err.contains("decommissioned"), "{err}");
    assert!(!node1_dir.join("data").exists(), "data wiped");
    eventually(Duration::from_secs(30), async || {
        match node_state(&mut mgmt, &id1).await {
            Some(NodeState::Decommissioned) => Ok(()),
            other => Err(format!("state {other:?}")),
        }
    })
    .await
    .expect("the record reaches DECOMMISSIONED");
    // Powered on once more: it knows it is gone (no NUK, no join key left).
    node1.start().expect("start node 1 a third time");
    assert_eq!(
        node1.expect_exit(Duration::from_secs(30)).await,
        Exit::Code(3),
        "no crash loop"
    );
    drop(node0);
}
