//! The control plane worker following the ConsensusMember role (127.87.5.0/24): a registered
//! node that gains the role starts an etcd learner and a curator, restarts as a member, the
//! whole two-node cluster cold-starts from disk with encrypted storage (every node needs a
//! curator to rejoin), and losing the role stops the control plane and deletes the local etcd
//! state.

mod common;

use std::time::Duration;

use common::{NodeProcess, START_TIMEOUT, bootstrap_params, cluster_ca, write_params};
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

const NODE0: &str = "127.87.5.1";
const NODE1: &str = "127.87.5.2";

/// Sets the ConsensusMember role of `id` through whichever curator leads; on failure, panics
/// with the nodes' logs.
async fn set_consensus(leader: &LeaderChannel, id: &str, member: bool, nodes: &[&NodeProcess]) {
    // etcd admits one learner at a time and removal needs a healthy quorum: retry briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let result = async {
            ManagementClient::new(leader.channel().await?)
                .update_node_roles(UpdateNodeRolesRequest {
                    node: Some(update_node_roles_request::Node::Id(id.to_string())),
                    kubernetes_worker: None,
                    kubernetes_controller: None,
                    consensus_member: Some(member),
                })
                .await
        }
        .await;
        match result {
            Ok(_) => return,
            Err(s) if tokio::time::Instant::now() < deadline => {
                eprintln!("UpdateNodeRoles: {s:?}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(s) => {
                for n in nodes {
                    eprintln!("{} output:\n{}", n.address, n.lines().join("\n"));
                }
                panic!("UpdateNodeRoles: {s:?}; leader: {leader:?}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_role_follows_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("owner");
    let p0 = write_params(
        dir.path(),
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );
    let mut node0 = NodeProcess::start(&dir.path().join("node0"), NODE0, Some(&p0));
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
    let mut node1 = NodeProcess::start(&state1, NODE1, Some(&p1));
    let id1 = node1.node_id();
    let line = node1.wait_for("waiting for approval", START_TIMEOUT);
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
    node1.wait_for("NODE_READY", START_TIMEOUT);

    // Gaining the role: an etcd learner, promoted, then the curator.
    let owner_creds = ClientCredentials::Authenticated {
        certificate: cert.clone(),
        key: owner.clone(),
    };
    let leader = LeaderChannel::new(
        vec![format!("{NODE0}:7835"), format!("{NODE1}:7835")],
        owner_creds,
        ca.clone(),
        LeaderOptions::default(),
    )
    .expect("leader channel");
    set_consensus(&leader, &id1, true, &[&node0, &node1]).await;
    node1.wait_for("control plane running", START_TIMEOUT);
    node1.wait_for("curator running", START_TIMEOUT);
    assert!(state1.join("data/etcd/peer_pki/cert-key.pem").exists());

    // Restart as a member.
    node1.terminate();
    assert_eq!(node1.wait_exit(Duration::from_secs(30)), 0);
    drop(node1);
    let mut node1 = NodeProcess::start(&state1, NODE1, None);
    node1.wait_for("Joined the cluster.", START_TIMEOUT);
    node1.wait_for("curator running", START_TIMEOUT);

    // Cold start of the whole cluster: both stop, both start; each needs a curator (its own or
    // the other's) to get its cluster unlock key.
    node0.terminate();
    node1.terminate();
    assert_eq!(node0.wait_exit(Duration::from_secs(30)), 0);
    assert_eq!(node1.wait_exit(Duration::from_secs(30)), 0);
    drop((node0, node1));
    let node0 = NodeProcess::start(&dir.path().join("node0"), NODE0, None);
    let node1 = NodeProcess::start(&state1, NODE1, None);
    for n in [&node0, &node1] {
        n.wait_for("Joined the cluster.", START_TIMEOUT);
        n.wait_for("NODE_READY", START_TIMEOUT);
    }

    // Losing the role: the control plane stops and the member's state is deleted.
    set_consensus(&leader, &id1, false, &[&node0, &node1]).await;
    node1.wait_for("not a consensus member (any more)", START_TIMEOUT);
    node1.wait_for("curator not running", START_TIMEOUT);
    assert!(!state1.join("data/etcd").exists());
    drop(node0);
}
