//! Revocation on every node (on a loopback block of its own): a node deleted from the cluster is refused by the
//! NodeManagement service of a node that runs no curator (it learns deletions from the leader
//! through Curator.WatchRevocations), not only by the curators.
//!
//! The deleted "node" is the test itself: it registers a key of its own (RegisterNode, owner
//! approval, CommitNode), which gets it a real node certificate.

mod common;

use std::time::{Duration, Instant};

use common::{
    START_TIMEOUT, bootstrap_params, cluster_ca, logged_public_key, register_params, write_params,
};
use identity::SigningKey;
use prost::Message;
use proto::api::get_logs_request::{BacklogMode, StreamMode};
use proto::api::management_client::ManagementClient;
use proto::api::node_management_client::NodeManagementClient;
use proto::api::{
    ActivationMode, ApproveNodeRequest, DeleteNodeRequest, GetClusterInfoRequest, GetLogsRequest,
    GetRegisterTicketRequest, RebootRequest, UpdateNodeRequest, delete_node_request,
    reboot_request,
};
use proto::common::NodeStorageSecurity;
use proto::common::cluster_configuration::StorageSecurityPolicy;
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::{CommitNodeRequest, RegisterNodeRequest};
use rpc::ClientCredentials;
use test_support::LoopbackBlock;
use test_support::node::{self, TestNode};
use tonic::Code;
use tonic::transport::Channel;

/// Registers `key` the way a node does and returns its node certificate.
async fn enrol_as_node(
    node0: &str,
    key: &SigningKey,
    ticket: &[u8],
    ca: &[u8],
    node0_id: &str,
    mgmt: &mut ManagementClient<Channel>,
) -> Vec<u8> {
    let mut cur = CuratorClient::new(common::channel(
        &format!("{node0}:7835"),
        ClientCredentials::Ephemeral(key.clone()),
        ca,
        node0_id,
    ));
    cur.register_node(RegisterNodeRequest {
        register_ticket: ticket.to_vec(),
        join_key: SigningKey::generate()
            .expect("key")
            .public_key()
            .as_bytes()
            .to_vec(),
        have_local_tpm: false,
        labels: None,
    })
    .await
    .expect("RegisterNode");
    mgmt.approve_node(ApproveNodeRequest {
        pubkey: key.public_key().as_bytes().to_vec(),
    })
    .await
    .expect("ApproveNode");
    cur.commit_node(CommitNodeRequest {
        cluster_unlock_key: Vec::new(),
        storage_security: NodeStorageSecurity::Insecure as i32,
    })
    .await
    .expect("CommitNode")
    .into_inner()
    .node_certificate
}

/// The code NodeManagement.Logs answers `creds` with on `address`.
async fn logs_code(address: &str, id: &str, creds: &ClientCredentials, ca: &[u8]) -> Code {
    let ch = common::channel(&format!("{address}:7839"), creds.clone(), ca, id);
    let r = NodeManagementClient::new(ch)
        .logs(GetLogsRequest {
            dn: String::new(),
            filters: Vec::new(),
            backlog_mode: BacklogMode::BacklogDisable as i32,
            backlog_count: 0,
            stream_mode: StreamMode::StreamDisable as i32,
        })
        .await;
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodemanagement_everywhere_refuses_a_deleted_node() {
    let block = LoopbackBlock::allocate();
    let (node0_ip, node1_ip) = (block.host(1), block.host(2));
    let (node0_ip, node1_ip) = (node0_ip.as_str(), node1_ip.as_str());
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("owner");
    let p0 = write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::Permissive),
    );
    let node0_dir = dir.path().join("node0");
    let node0 = node::start(0, &node0_dir, block.addr(1), Some(&p0));
    let id0 = node0.expect_id(START_TIMEOUT).await;
    node0.expect_line(node::READY_MARKER, START_TIMEOUT).await;
    let ca = cluster_ca(&node0_dir);
    let cert = common::escrow(node0_ip, &owner, &ca, &id0).await;
    let mut mgmt = ManagementClient::new(common::owner_channel(
        node0_ip, 7835, &owner, &cert, &ca, &id0,
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

    // node1: a plain node, no ConsensusMember role, so no curator of its own.
    let params = dir.path().join("register.pb");
    std::fs::write(
        &params,
        register_params(directory, ticket.clone(), ca.clone()).encode_to_vec(),
    )
    .expect("write");
    let node1 = node::start(1, &dir.path().join("node1"), block.addr(2), Some(&params));
    let id1 = node1.expect_id(START_TIMEOUT).await;
    mgmt.approve_node(ApproveNodeRequest {
        pubkey: logged_public_key(&node1).await,
    })
    .await
    .expect("ApproveNode");
    node1.expect_line(node::READY_MARKER, START_TIMEOUT).await;

    // The test enrols as a node: a real node certificate. Nodes may not read other nodes'
    // logs, so NodeManagement answers it PermissionDenied: authenticated, not authorized.
    let key = SigningKey::generate().expect("key");
    let node_cert = enrol_as_node(node0_ip, &key, &ticket, &ca, &id0, &mut mgmt).await;
    let creds = ClientCredentials::Authenticated {
        certificate: node_cert,
        key: key.clone(),
    };
    assert_eq!(
        logs_code(node1_ip, &id1, &creds, &ca).await,
        Code::PermissionDenied
    );
    // Nor update or power them off (PERMISSION_UPDATE_NODE and PERMISSION_NODE_POWER_MANAGEMENT
    // are not granted to node certificates): refused before anything happens.
    let update = NodeManagementClient::new(common::channel(
        &format!("{node1_ip}:7839"),
        creds.clone(),
        &ca,
        &id1,
    ))
    .update_node(UpdateNodeRequest {
        bundle_url: "https://127.0.0.1:1/bundle.tar".to_string(),
        activation_mode: ActivationMode::ActivationKexec as i32,
    })
    .await
    .expect_err("a node may not update another node");
    assert_eq!(update.code(), Code::PermissionDenied, "{update:?}");
    let reboot = NodeManagementClient::new(common::channel(
        &format!("{node1_ip}:7839"),
        creds.clone(),
        &ca,
        &id1,
    ))
    .reboot(RebootRequest {
        r#type: reboot_request::Type::PowerOff as i32,
        next_boot: 0,
    })
    .await
    .expect_err("a node may not power off another node");
    assert_eq!(reboot.code(), Code::PermissionDenied, "{reboot:?}");
    assert!(node1.is_running());

    mgmt.delete_node(DeleteNodeRequest {
        node: Some(delete_node_request::Node::Id(identity::node_id(
            &key.public_key(),
        ))),
        safety_bypass_has_roles: None,
        safety_bypass_not_decommissioned: Some(
            delete_node_request::SafetyBypassNotDecommissioned {},
        ),
    })
    .await
    .expect("DeleteNode");
    let deleted = Instant::now();

    // Both nodes' NodeManagement now refuse its certificate outright.
    for (address, id) in [(node1_ip, &id1), (node0_ip, &id0)] {
        loop {
            let code = logs_code(address, id, &creds, &ca).await;
            if code == Code::Unauthenticated {
                println!(
                    "NodeManagement on {address} refuses the deleted node {:?} after the deletion",
                    deleted.elapsed()
                );
                break;
            }
            assert!(
                deleted.elapsed() < Duration::from_secs(15),
                "NodeManagement on {address} still answers the deleted node with {code:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(node1);
    drop(node0);
}
