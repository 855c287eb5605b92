//! What UP nodes call on the curator: upstream TestClusterUpdateNodeStatus,
//! TestClusterHeartbeat (over the stream), TestIssueKubernetesWorkerCertificate,
//! TestUpdateNodeClusterNetworking, plus GetConsensusStatus and our ReportDecommission.

mod curator_support;

use curator::testing::TestLeader;
use curator_support::*;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use proto::api::GetNodesRequest;
use proto::api::node::Health;
use proto::common::node_cluster_networking::Prefix;
use proto::common::{NodeClusterNetworking, NodeState};
use proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use proto::curator_api::report_decommission_request::Stage;
use proto::curator_api::{
    GetConsensusStatusRequest, HeartbeatUpdateRequest, IssueCertificateRequest,
    ReportDecommissionRequest, UpdateNodeClusterNetworkingRequest, UpdateNodeStatusRequest,
    issue_certificate_request, issue_certificate_response,
};
use tonic::Code;

fn status_request(id: &str, address: &str) -> UpdateNodeStatusRequest {
    UpdateNodeStatusRequest {
        node_id: id.to_string(),
        status: Some(status(address)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_status() {
    let t = TestLeader::start().await;
    let (k, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&k);
    let mut cur = curator(t.node(&k).await);

    // The node's own timestamp is replaced by the curator's.
    let mut req = status_request(&id, "10.1.0.3");
    if let Some(s) = req.status.as_mut() {
        s.timestamp = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        });
    }
    let before = std::time::SystemTime::now();
    cur.update_node_status(req).await.expect("UpdateNodeStatus");
    let stored = load(&t, &id).await.node.status.expect("status stored");
    assert_eq!(stored.external_address, "10.1.0.3");
    let ts = stored.timestamp.expect("timestamp set");
    let ts = std::time::UNIX_EPOCH
        + std::time::Duration::new(u64::try_from(ts.seconds).expect("positive"), 0);
    assert!(
        ts + std::time::Duration::from_secs(1) >= before,
        "server time, not the node's"
    );

    // The whole status is replaced.
    let mut req = status_request(&id, "fd00::1");
    if let Some(s) = req.status.as_mut() {
        s.running_curator = Some(Default::default());
    }
    cur.update_node_status(req).await.expect("IPv6 address");
    cur.update_node_status(status_request(&id, "10.1.0.4"))
        .await
        .expect("update");
    let stored = load(&t, &id).await.node.status.expect("status");
    assert_eq!(
        (stored.external_address.as_str(), stored.running_curator),
        ("10.1.0.4", None)
    );

    // Someone else's ID, the owner, bad requests.
    assert_eq!(
        code(
            cur.update_node_status(status_request(&t.node_id(), "10.1.0.5"))
                .await
        ),
        Code::PermissionDenied
    );
    let mut owner = curator(t.owner().await);
    assert_eq!(
        code(
            owner
                .update_node_status(status_request(&id, "10.1.0.5"))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            cur.update_node_status(status_request(&id, "not-an-ip"))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(cur.update_node_status(status_request(&id, "")).await),
        Code::InvalidArgument
    );
    let no_status = UpdateNodeStatusRequest {
        node_id: id.clone(),
        status: None,
    };
    assert_eq!(
        code(cur.update_node_status(no_status).await),
        Code::InvalidArgument
    );
    assert_eq!(
        load(&t, &id).await.node.status.map(|s| s.external_address),
        Some("10.1.0.4".to_string())
    );

    // A deleted node's certificate still authenticates, but its record is gone.
    let record = load(&t, &id).await;
    curator::state::node::delete(&t.leader.leadership, &record)
        .await
        .expect("delete");
    assert_eq!(
        code(
            cur.update_node_status(status_request(&id, "10.1.0.4"))
                .await
        ),
        Code::NotFound
    );
    t.stop().await;
}

/// The health GetNodes reports for `id`.
async fn health(t: &TestLeader, id: &str) -> Health {
    let mut mgmt = management(t.owner().await);
    let req = GetNodesRequest {
        filter: format!("node.id == \"{id}\""),
    };
    let mut nodes = mgmt.get_nodes(req).await.expect("GetNodes").into_inner();
    let node = next(&mut nodes)
        .await
        .expect("ok")
        .expect("the node is listed");
    Health::try_from(node.health).expect("known health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat() {
    let t = TestLeader::start().await;
    let (k, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&k);
    // Fresh leader, no heartbeat yet: grace period.
    assert_eq!(health(&t, &id).await, Health::Unknown);

    let mut cur = curator(t.node(&k).await);
    let (mut tx, rx) = mpsc::unbounded::<HeartbeatUpdateRequest>();
    tx.send(HeartbeatUpdateRequest {}).await.expect("send");
    let mut replies = cur.heartbeat(rx).await.expect("Heartbeat").into_inner();
    next(&mut replies)
        .await
        .expect("ok")
        .expect("one reply per heartbeat");
    assert_eq!(health(&t, &id).await, Health::Healthy);

    // Well after the timeout, a new heartbeat makes the node healthy again.
    t.clock.advance(std::time::Duration::from_secs(11));
    assert_eq!(health(&t, &id).await, Health::HeartbeatTimeout);
    tx.send(HeartbeatUpdateRequest {}).await.expect("send");
    next(&mut replies).await.expect("ok").expect("reply");
    assert_eq!(health(&t, &id).await, Health::Healthy);

    // The client closing its side ends the stream with OK.
    drop(tx);
    assert!(next(&mut replies).await.expect("OK at the end").is_none());

    // Only nodes heartbeat.
    let mut owner = curator(t.owner().await);
    let one = futures::stream::iter(vec![HeartbeatUpdateRequest {}]);
    let refused = match owner.heartbeat(one).await {
        Ok(r) => r.into_inner().next().await.expect("an answer").map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(code(refused), Code::PermissionDenied);

    // Ours: a deleted node's heartbeats are refused and not recorded.
    let (gone, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let gone_id = id_of(&gone);
    let mut as_gone = curator(t.node(&gone).await);
    let record = load(&t, &gone_id).await;
    curator::state::node::delete(&t.leader.leadership, &record)
        .await
        .expect("delete");
    // Deleted behind the handlers' back (straight in etcd), so the leader learns it from its
    // watch of the records: within the watch delay. (DeleteNode itself tells it at once.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while t.leader.live.check(&gone_id) == curator::leader::live::Known::Present {
        assert!(
            std::time::Instant::now() < deadline,
            "the deletion never reached the leader's node set"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let one = futures::stream::iter(vec![HeartbeatUpdateRequest {}]);
    let mut replies = as_gone
        .heartbeat(one)
        .await
        .expect("stream opens")
        .into_inner();
    assert_eq!(code(next(&mut replies).await), Code::NotFound);
    let now = t.leader.heartbeats.now();
    let (_, since) = t.leader.heartbeats.health(&gone_id, NodeState::Up, now);
    assert!(
        since > std::time::Duration::from_secs(3600),
        "no heartbeat recorded for a deleted node"
    );
    t.stop().await;
}

fn worker_request(kubelet: &[u8], csi: &[u8], netservices: &[u8]) -> IssueCertificateRequest {
    IssueCertificateRequest {
        kind: Some(issue_certificate_request::Kind::KubernetesWorker(
            issue_certificate_request::KubernetesWorker {
                kubelet_pubkey: kubelet.to_vec(),
                csi_provisioner_pubkey: csi.to_vec(),
                netservices_pubkey: netservices.to_vec(),
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_kubernetes_worker_certificate() {
    let t = TestLeader::start().await;
    let (k, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&k);
    let mut cur = curator(t.node(&k).await);
    let (kubelet, csi, net) = (key().public_key(), key().public_key(), key().public_key());
    let req = worker_request(kubelet.as_bytes(), csi.as_bytes(), net.as_bytes());

    // Not a worker yet; the owner is not a node.
    assert_eq!(
        code(cur.issue_certificate(req.clone()).await),
        Code::PermissionDenied
    );
    let mut owner = curator(t.owner().await);
    assert_eq!(
        code(owner.issue_certificate(req.clone()).await),
        Code::PermissionDenied
    );

    make_worker(&t, &id).await;
    assert_eq!(
        code(
            cur.issue_certificate(IssueCertificateRequest { kind: None })
                .await
        ),
        Code::InvalidArgument
    );
    let short = worker_request(&kubelet.as_bytes()[..31], csi.as_bytes(), net.as_bytes());
    assert_eq!(
        code(cur.issue_certificate(short).await),
        Code::InvalidArgument
    );

    let resp = cur
        .issue_certificate(req.clone())
        .await
        .expect("IssueCertificate")
        .into_inner();
    let Some(issue_certificate_response::Kind::KubernetesWorker(w)) = resp.kind else {
        panic!("worker certificates")
    };
    assert_ne!(
        w.identity_ca_certificate, t.ca,
        "the Kubernetes PKI is separate from the cluster CA"
    );
    let ca = &w.identity_ca_certificate;
    let inspect = |der: &[u8]| identity::verify::inspect(der).expect("parses");
    for (der, key) in [
        (&w.kubelet_server_certificate, kubelet),
        (&w.kubelet_client_certificate, kubelet),
        (&w.csi_provisioner_certificate, csi),
        (&w.netservices_certificate, net),
    ] {
        assert_eq!(
            identity::verify::check_in_cluster(der, ca).expect("chains to the identity CA"),
            key
        );
    }
    let server = inspect(&w.kubelet_server_certificate);
    assert!(server.server_auth && server.dns_names == vec![format!("system:node:{id}")]);
    let client = inspect(&w.kubelet_client_certificate);
    assert!(client.client_auth);
    assert_eq!(client.common_name, Some(format!("system:node:{id}")));
    assert_eq!(
        inspect(&w.csi_provisioner_certificate).common_name,
        Some(format!("metropolis:csi-provisioner:{id}"))
    );
    assert_eq!(
        inspect(&w.netservices_certificate).common_name,
        Some(format!("metropolis:netservices:{id}"))
    );

    // Same keys: same certificates. Other keys: refused.
    let again = cur
        .issue_certificate(req)
        .await
        .expect("again")
        .into_inner();
    assert_eq!(
        again.kind,
        Some(issue_certificate_response::Kind::KubernetesWorker(w))
    );
    let other = worker_request(
        key().public_key().as_bytes(),
        csi.as_bytes(),
        net.as_bytes(),
    );
    assert_eq!(code(cur.issue_certificate(other).await), Code::Unavailable);
    t.stop().await;
}

fn clusternet(key: &str, prefixes: &[&str]) -> UpdateNodeClusterNetworkingRequest {
    UpdateNodeClusterNetworkingRequest {
        clusternet: Some(NodeClusterNetworking {
            wireguard_pubkey: key.to_string(),
            prefixes: prefixes
                .iter()
                .map(|p| Prefix {
                    cidr: p.to_string(),
                })
                .collect(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_cluster_networking() {
    let t = TestLeader::start().await;
    let (a, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let (b, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let (mut ca, mut cb) = (curator(t.node(&a).await), curator(t.node(&b).await));
    // Base64 of 32 bytes: 0x01… and 0x02….
    let key1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let key2 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    // No status reported yet.
    assert_eq!(
        code(
            ca.update_node_cluster_networking(clusternet(key1, &[]))
                .await
        ),
        Code::FailedPrecondition
    );
    ca.update_node_status(status_request(&id_of(&a), "203.0.113.5"))
        .await
        .expect("status a");
    cb.update_node_status(status_request(&id_of(&b), "203.0.113.6"))
        .await
        .expect("status b");

    // Bad requests.
    let empty = UpdateNodeClusterNetworkingRequest { clusternet: None };
    assert_eq!(
        code(ca.update_node_cluster_networking(empty).await),
        Code::InvalidArgument
    );
    for bad_key in ["", "not base64!", "AQEB"] {
        assert_eq!(
            code(
                ca.update_node_cluster_networking(clusternet(bad_key, &[]))
                    .await
            ),
            Code::InvalidArgument,
            "{bad_key}"
        );
    }
    for bad_prefix in [
        "10.192.0.0/10",
        "10.192.1.1/24",
        "10.0.0.0/24",
        "203.0.113.6/32",
        "203.0.113.0/24",
        "garbage",
    ] {
        let req = clusternet(key1, &["10.192.1.0/24", bad_prefix]);
        assert_eq!(
            code(ca.update_node_cluster_networking(req).await),
            Code::InvalidArgument,
            "{bad_prefix}"
        );
    }
    assert!(
        load(&t, &id_of(&a)).await.node.clusternet.is_none(),
        "refused requests change nothing"
    );

    // Valid: pod network prefixes and the node's own /32.
    let prefixes = ["10.192.1.0/24", "10.192.0.0/11", "203.0.113.5/32"];
    ca.update_node_cluster_networking(clusternet(key1, &prefixes))
        .await
        .expect("update a");
    let stored = load(&t, &id_of(&a)).await.node.clusternet.expect("stored");
    assert_eq!(stored.wireguard_pubkey, key1);
    assert_eq!(
        stored
            .prefixes
            .iter()
            .map(|p| p.cidr.as_str())
            .collect::<Vec<_>>(),
        prefixes
    );
    // Re-announcing one's own key is fine; taking another node's is not.
    ca.update_node_cluster_networking(clusternet(key1, &["10.192.2.0/24"]))
        .await
        .expect("same key again");
    assert_eq!(
        code(
            cb.update_node_cluster_networking(clusternet(key1, &[]))
                .await
        ),
        Code::InvalidArgument
    );
    cb.update_node_cluster_networking(clusternet(key2, &["10.192.3.0/24"]))
        .await
        .expect("update b");

    let mut owner = curator(t.owner().await);
    assert_eq!(
        code(
            owner
                .update_node_cluster_networking(clusternet(key2, &[]))
                .await
        ),
        Code::PermissionDenied
    );
    t.stop().await;
}

fn report(stage: Stage) -> ReportDecommissionRequest {
    ReportDecommissionRequest {
        stage: stage as i32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_decommission() {
    let t = TestLeader::start().await;
    let (k, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&k);
    let mut cur = curator(t.node(&k).await);

    // Nobody asked this UP node to decommission.
    assert_eq!(
        code(cur.report_decommission(report(Stage::Started)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(cur.report_decommission(report(Stage::Done)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(cur.report_decommission(report(Stage::Invalid)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            cur.report_decommission(ReportDecommissionRequest { stage: 9 })
                .await
        ),
        Code::InvalidArgument
    );
    let mut owner = curator(t.owner().await);
    assert_eq!(
        code(owner.report_decommission(report(Stage::Started)).await),
        Code::PermissionDenied
    );
    assert_eq!(load(&t, &id).await.state(), NodeState::Up);

    // REQUESTED → DECOMMISSIONING → DECOMMISSIONED, each report repeatable.
    modify(&t, &id, |r| {
        r.node.fsm_state = NodeState::DecommissionRequested as i32
    })
    .await;
    for _ in 0..2 {
        cur.report_decommission(report(Stage::Started))
            .await
            .expect("started");
        assert_eq!(load(&t, &id).await.state(), NodeState::Decommissioning);
    }
    for _ in 0..2 {
        cur.report_decommission(report(Stage::Done))
            .await
            .expect("done");
        assert_eq!(load(&t, &id).await.state(), NodeState::Decommissioned);
    }
    cur.report_decommission(report(Stage::Started))
        .await
        .expect("a late STARTED is harmless");
    assert_eq!(load(&t, &id).await.state(), NodeState::Decommissioned);

    // DONE straight from REQUESTED (the STARTED report was lost).
    let (k2, _) = add_node(&t, NodeState::DecommissionRequested, &[1; 32]).await;
    curator(t.node(&k2).await)
        .report_decommission(report(Stage::Done))
        .await
        .expect("done");
    assert_eq!(
        load(&t, &id_of(&k2)).await.state(),
        NodeState::Decommissioned
    );

    // A deleted node.
    let record = load(&t, &id).await;
    curator::state::node::delete(&t.leader.leadership, &record)
        .await
        .expect("delete");
    assert_eq!(
        code(cur.report_decommission(report(Stage::Done)).await),
        Code::NotFound
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_consensus_status() {
    let t = TestLeader::start().await;
    let resp = curator(t.owner().await)
        .get_consensus_status(GetConsensusStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(resp.etcd_member.len(), 1);
    assert_eq!(resp.etcd_member[0].id, t.node_id());
    assert_eq!(resp.etcd_member[0].status, MemberStatus::Full as i32);
    // Nodes may read it too (READ_CLUSTER_STATUS); unauthenticated callers may not.
    let (k, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    curator(t.node(&k).await)
        .get_consensus_status(GetConsensusStatusRequest {})
        .await
        .expect("as node");
    let mut anon = curator(t.ephemeral(&key()));
    assert_eq!(
        code(
            anon.get_consensus_status(GetConsensusStatusRequest {})
                .await
        ),
        Code::Unauthenticated
    );
    t.stop().await;
}
