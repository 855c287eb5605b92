//! CuratorLocal on the leader: upstream TestGetCurrentLeader, GetCACertificate and (ours)
//! GetClusterCRL.

mod curator_support;

use curator::testing::TestLeader;
use curator_support::*;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use proto::curator_api::{
    GetCaCertificateRequest, GetClusterCrlRequest, GetCurrentLeaderRequest, UpdateNodeStatusRequest,
};
use rpc::ClientCredentials;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_current_leader() {
    let t = TestLeader::start().await;
    // Without credentials: callers use it to find the leader before they have any.
    let mut local = CuratorLocalClient::new(t.channel(ClientCredentials::None));
    let mut s = local
        .get_current_leader(GetCurrentLeaderRequest {})
        .await
        .expect("GetCurrentLeader")
        .into_inner();
    let first = next(&mut s).await.expect("ok").expect("one answer");
    assert_eq!(first.leader_node_id, t.node_id());
    assert_eq!(first.this_node_id, t.node_id());
    assert_eq!(first.leader_port, 7835);
    assert_eq!(first.leader_host, "", "no status reported yet");
    // The stream stays open after the answer.
    assert!(stays_quiet(&mut s).await);

    // After the leader reports its address, new streams carry it.
    let mut as_leader = curator(t.node(t.credentials.key()).await);
    let address = t.address.to_string();
    let req = UpdateNodeStatusRequest {
        node_id: t.node_id(),
        status: Some(status(&address)),
    };
    as_leader
        .update_node_status(req)
        .await
        .expect("UpdateNodeStatus");
    let mut local = CuratorLocalClient::new(t.ephemeral(&key()));
    let mut s = local
        .get_current_leader(GetCurrentLeaderRequest {})
        .await
        .expect("GetCurrentLeader")
        .into_inner();
    assert_eq!(
        next(&mut s).await.expect("ok").expect("answer").leader_host,
        address
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ca_certificate() {
    let t = TestLeader::start().await;
    let mut local = CuratorLocalClient::new(t.channel(ClientCredentials::None));
    let resp = local
        .get_ca_certificate(GetCaCertificateRequest {})
        .await
        .expect("GetCACertificate")
        .into_inner();
    assert_eq!(resp.identity_ca_certificate, t.ca);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_cluster_crl() {
    let t = TestLeader::start().await;
    // Without credentials: clients fetch it before they trust any curator.
    let mut local = CuratorLocalClient::new(t.channel(ClientCredentials::None));
    let first = local
        .get_cluster_crl(GetClusterCrlRequest {})
        .await
        .expect("GetClusterCRL")
        .into_inner()
        .crl;
    let held = rpc::ClusterCrl::new(t.ca.clone());
    assert!(held.update(&first).expect("signed by the cluster CA"));
    assert_eq!(held.revoked(), 0);

    // Deleting a node revokes its certificate: the next CRL is newer and lists it.
    let (node_key, _) = add_node(&t, proto::common::NodeState::Up, &[7; 32]).await;
    let node_cert = pki::Certificate::node(
        &std::sync::Arc::new(pki::Certificate::cluster_ca()),
        node_key.public_key(),
    )
    .ensure(t.leader.ns())
    .await
    .expect("node certificate");
    assert!(!held.is_revoked(&node_cert));
    management(t.owner().await)
        .delete_node(proto::api::DeleteNodeRequest {
            node: Some(proto::api::delete_node_request::Node::Id(id_of(&node_key))),
            safety_bypass_has_roles: None,
            safety_bypass_not_decommissioned: Some(
                proto::api::delete_node_request::SafetyBypassNotDecommissioned {},
            ),
        })
        .await
        .expect("DeleteNode");
    let second = local
        .get_cluster_crl(GetClusterCrlRequest {})
        .await
        .expect("GetClusterCRL")
        .into_inner()
        .crl;
    assert!(held.update(&second).expect("signed by the cluster CA"));
    assert!(
        held.is_revoked(&node_cert),
        "the deleted node's certificate is revoked"
    );
    t.stop().await;
}
