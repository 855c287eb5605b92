//! The control plane worker following the ConsensusMember role: a registered
//! node that gains the role starts an etcd learner and a curator, restarts as a member, the
//! whole two-node cluster cold-starts from disk with encrypted storage (every node needs a
//! curator to rejoin), and losing the role stops the control plane and deletes the local etcd
//! state.

mod common;

use std::time::Duration;

use common::{START_TIMEOUT, bootstrap_params, cluster_ca, write_params};
use identity::SigningKey;
use prost::Message;
use proto::api::management_client::ManagementClient;
use proto::api::node_parameters::{Cluster, ClusterRegister};
use proto::api::{
    ApproveNodeRequest, GetClusterInfoRequest, GetRegisterTicketRequest, NodeParameters,
    UpdateNodeRolesRequest, update_node_roles_request,
};
use proto::common::cluster_configuration::StorageSecurityPolicy;
use rpc::{ClientCredentials, LeaderChannel, LeaderOptions};
use test_support::node::{self, Exit, Node, TestNode};
use test_support::{LoopbackBlock, eventually};

/// Sets the ConsensusMember role of `id` through whichever curator leads; on failure, panics
/// with the nodes' logs.
async fn set_consensus(leader: &LeaderChannel, id: &str, member: bool, nodes: &[&Node]) {
    // etcd admits one learner at a time and removal needs a healthy quorum: retry briefly.
    let result = eventually(Duration::from_secs(60), async || {
        ManagementClient::new(leader.channel().await?)
            .update_node_roles(UpdateNodeRolesRequest {
                node: Some(update_node_roles_request::Node::Id(id.to_string())),
                kubernetes_worker: None,
                kubernetes_controller: None,
                consensus_member: Some(member),
            })
            .await
    })
    .await;
    if let Err(e) = result {
        for n in nodes {
            eprintln!("{} output:\n{}", n.address(), n.logs().join("\n"));
        }
        panic!("UpdateNodeRoles: {e}; leader: {leader:?}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_role_follows_the_cluster() {
    let block = LoopbackBlock::allocate();
    let host0 = block.host(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("owner");
    let p0 = write_params(
        dir.path(),
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );
    let state0 = dir.path().join("node0");
    let node0 = node::start(0, &state0, block.addr(1), Some(&p0));
    let id0 = node0.expect_id(START_TIMEOUT).await;
    node0.expect_line("NODE_READY", START_TIMEOUT).await;
    let ca = cluster_ca(&state0);
    let cert = common::escrow(&host0, &owner, &ca, &id0).await;
    let mut mgmt = ManagementClient::new(common::owner_channel(
        &host0, 7835, &owner, &cert, &ca, &id0,
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
        .expect("info")
        .into_inner()
        .cluster_directory;
    let params = NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: directory,
            register_ticket: ticket,
            ca_certificate: ca.clone(),
            labels: None,
        })),
        network_config: None,
    };
    let p1 = dir.path().join("register.pb");
    std::fs::write(&p1, params.encode_to_vec()).expect("write");
    let state1 = dir.path().join("node1");
    let node1 = node::start(1, &state1, block.addr(2), Some(&p1));
    let id1 = node1.expect_id(START_TIMEOUT).await;
    let line = node1
        .expect_line("waiting for approval", START_TIMEOUT)
        .await;
    let pubkey = line
        .rsplit("node public key ")
        .next()
        .map(|s| s.trim_end_matches(')').trim().to_string())
        .expect("key");
    mgmt.approve_node(ApproveNodeRequest {
        pubkey: hex::decode(pubkey).expect("hex"),
    })
    .await
    .expect("approve");
    node1.expect_line("NODE_READY", START_TIMEOUT).await;

    // Gaining the role: an etcd learner, promoted, then the curator.
    let owner_creds = ClientCredentials::Authenticated {
        certificate: cert.clone(),
        key: owner.clone(),
    };
    let leader = LeaderChannel::new(
        vec![format!("{host0}:7835"), format!("{}:7835", block.host(2))],
        owner_creds,
        ca.clone(),
        LeaderOptions::default(),
    )
    .expect("leader channel");
    set_consensus(&leader, &id1, true, &[&node0, &node1]).await;
    node1
        .expect_line("control plane running", START_TIMEOUT)
        .await;
    node1.expect_line("curator running", START_TIMEOUT).await;
    assert!(state1.join("data/etcd/peer_pki/cert-key.pem").exists());

    // Restart as a member.
    assert_eq!(
        node1.expect_stop(Duration::from_secs(30)).await,
        Exit::Code(0)
    );
    drop(node1);
    let node1 = node::start(1, &state1, block.addr(2), None);
    node1
        .expect_line("Joined the cluster.", START_TIMEOUT)
        .await;
    node1.expect_line("curator running", START_TIMEOUT).await;

    // Cold start of the whole cluster: both stop, both start; each needs a curator (its own or
    // the other's) to get its cluster unlock key.
    let (exit0, exit1) = tokio::join!(
        node0.expect_stop(Duration::from_secs(30)),
        node1.expect_stop(Duration::from_secs(30))
    );
    assert_eq!((exit0, exit1), (Exit::Code(0), Exit::Code(0)));
    drop((node0, node1));
    let node0 = node::start(0, &state0, block.addr(1), None);
    let node1 = node::start(1, &state1, block.addr(2), None);
    for n in [&node0, &node1] {
        n.expect_line("Joined the cluster.", START_TIMEOUT).await;
        n.expect_line("NODE_READY", START_TIMEOUT).await;
    }

    // Losing the role: the control plane stops and the member's state is deleted.
    set_consensus(&leader, &id1, false, &[&node0, &node1]).await;
    node1
        .expect_line("not a consensus member (any more)", START_TIMEOUT)
        .await;
    node1
        .expect_line("curator not running", START_TIMEOUT)
        .await;
    assert!(!state1.join("data/etcd").exists());
    drop(node0);
}
