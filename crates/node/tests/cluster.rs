//! Node-side flows against a real cluster of `metropolis-node` processes (127.87.4.0/24):
//! refused registrations (foreign cluster, wrong ticket), register → approve → commit,
//! restart of a registered node (join), decommissioning (wipe, exit 3, no restart) and
//! deletion (exit 3, no restart). Multi-node scenarios beyond the node's own behaviour
//! (health, HA, cold start) belong to the launcher's end-to-end tests.

mod common;

use std::time::Duration;

use common::{NodeProcess, START_TIMEOUT, bootstrap_params, cluster_ca, write_params};
use identity::{SigningKey, templates};
use prost::Message;
use proto::api::management_client::ManagementClient;
use proto::api::node_parameters::{Cluster, ClusterRegister};
use proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, DeleteNodeRequest, GetClusterInfoRequest,
    GetNodesRequest, GetRegisterTicketRequest, NodeParameters, decommission_node_request,
    delete_node_request,
};
use proto::common::cluster_configuration::StorageSecurityPolicy;
use proto::common::{ClusterDirectory, NodeState};
use tonic::transport::Channel;

const NODE0: &str = "127.87.4.1";

fn register_params(directory: ClusterDirectory, ticket: Vec<u8>, ca: Vec<u8>) -> NodeParameters {
    NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: Some(directory),
            register_ticket: ticket,
            ca_certificate: ca,
            labels: None,
        })),
        network_config: None,
    }
}

/// The public key a registering node logs while it waits for approval.
fn logged_public_key(node: &NodeProcess) -> Vec<u8> {
    let line = node.wait_for("waiting for approval", START_TIMEOUT);
    let hex_key = line
        .rsplit("node public key ")
        .next()
        .map(|s| s.trim_end_matches(')').trim())
        .expect("public key in line");
    hex::decode(hex_key).expect("hex public key")
}

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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let health = get_node(mgmt, id).await.map(|n| n.health());
        if health == Some(proto::api::node::Health::Healthy) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} not healthy: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Registers a node at `address` and approves it once it asks.
async fn register(
    dir: &std::path::Path,
    name: &str,
    address: &str,
    params: &std::path::Path,
    mgmt: &mut ManagementClient<Channel>,
) -> (NodeProcess, String) {
    let node = NodeProcess::start(&dir.join(name), address, Some(params));
    let id = node.node_id();
    let pubkey = logged_public_key(&node);
    assert_eq!(
        identity::PublicKey::from_slice(&pubkey)
            .expect("key")
            .node_id(),
        id
    );
    assert!(
        node.lines()
            .iter()
            .any(|l| l.contains(&format!("metroctl approve {id}"))),
        "the approval hint names the node"
    );
    mgmt.approve_node(ApproveNodeRequest { pubkey })
        .await
        .expect("ApproveNode");
    node.wait_for("Cluster enrolment done.", START_TIMEOUT);
    node.wait_for("NODE_READY", START_TIMEOUT);
    (node, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_restart_decommission_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("owner");
    let p0 = write_params(
        dir.path(),
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );
    let node0 = NodeProcess::start(&dir.path().join("node0"), NODE0, Some(&p0));
    let id0 = node0.node_id();
    node0.wait_for("NODE_READY", START_TIMEOUT);
    let ca = cluster_ca(&node0.state_dir);
    let cert = common::escrow(NODE0, &owner, &ca, &id0).await;
    let mut mgmt =
        ManagementClient::new(common::owner_channel(NODE0, 7835, &owner, &cert, &ca, &id0));
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
    let mut n = NodeProcess::start(&dir.path().join("foreign"), "127.87.4.9", Some(&foreign));
    assert_eq!(n.wait_exit(Duration::from_secs(60)), 1);
    let err = n.stderr().join("\n");
    assert!(err.contains("foreign cluster"), "{err}");

    let wrong = dir.path().join("wrong.pb");
    std::fs::write(
        &wrong,
        register_params(directory.clone(), b"wrong ticket".to_vec(), ca.clone()).encode_to_vec(),
    )
    .expect("write");
    let mut n = NodeProcess::start(&dir.path().join("wrong"), "127.87.4.8", Some(&wrong));
    assert_eq!(n.wait_exit(Duration::from_secs(60)), 1);
    let err = n.stderr().join("\n");
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
    let mut waiting = NodeProcess::start(&dir.path().join("waiting"), "127.87.4.7", Some(&params));
    waiting.wait_for("waiting for approval", START_TIMEOUT);
    let stopping = std::time::Instant::now();
    waiting.terminate();
    assert_eq!(waiting.wait_exit(Duration::from_secs(30)), 0);
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
    let (mut node1, id1) = register(dir.path(), "node1", "127.87.4.2", &params, &mut mgmt).await;
    let (mut node2, id2) = register(dir.path(), "node2", "127.87.4.3", &params, &mut mgmt).await;
    assert_eq!(node_state(&mut mgmt, &id1).await, Some(NodeState::Up));
    wait_healthy(&mut mgmt, &id1).await;
    wait_healthy(&mut mgmt, &id0).await;

    // Restart node1: it joins with its sealed configuration.
    node1.terminate();
    assert_eq!(node1.wait_exit(Duration::from_secs(30)), 0);
    drop(node1);
    let mut node1 = NodeProcess::start(&dir.path().join("node1"), "127.87.4.2", None);
    assert_eq!(node1.node_id(), id1);
    node1.wait_for("Joined the cluster.", START_TIMEOUT);
    node1.wait_for("NODE_READY", START_TIMEOUT);
    let directory1 = std::fs::read(dir.path().join("node1/esp/metropolis/cluster_directory.pb"))
        .expect("directory");
    let directory1 = ClusterDirectory::decode(directory1.as_slice()).expect("decode");
    assert!(
        directory1
            .nodes
            .iter()
            .any(|n| n.addresses.iter().any(|a| a.host == NODE0)),
        "{directory1:?}"
    );

    // Decommission node1: it reports, wipes its keys and data, and exits as gone.
    mgmt.decommission_node(DecommissionNodeRequest {
        node: Some(decommission_node_request::Node::Id(id1.clone())),
    })
    .await
    .expect("DecommissionNode");
    assert_eq!(node1.wait_exit(START_TIMEOUT), 3);
    let err = node1.stderr().join("\n");
    assert!(err.contains("decommissioned"), "{err}");
    assert!(!dir.path().join("node1/data").exists(), "data wiped");
    assert_eq!(
        node_state(&mut mgmt, &id1).await,
        Some(NodeState::Decommissioned)
    );
    drop(node1);
    let mut again = NodeProcess::start(&dir.path().join("node1"), "127.87.4.2", None);
    assert_eq!(again.wait_exit(Duration::from_secs(30)), 3, "no crash loop");

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
    assert_eq!(node2.wait_exit(START_TIMEOUT), 3);
    let err = node2.stderr().join("\n");
    assert!(err.contains("removed from the cluster"), "{err}");
    drop(node2);
    let mut again = NodeProcess::start(&dir.path().join("node2"), "127.87.4.3", None);
    assert_eq!(again.wait_exit(Duration::from_secs(60)), 3, "no crash loop");
    let err = again.stderr().join("\n");
    assert!(err.contains("deleted"), "{err}");
    drop(node0);
}
