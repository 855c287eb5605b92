//! Management service against a real leader: real etcd, real TLS, the owner's
//! certificate. Node records are written directly into etcd for setup; node certificates come
//! from the cluster PKI. Each test runs its own cluster in a loopback block of its own.

use std::time::Duration;

use curator::state::node::{self, NodeRecord};
use curator::testing::TestLeader;
use identity::SigningKey;
use proto::api::management_client::ManagementClient;
use proto::api::{
    self, delete_node_request, update_node_labels_request, update_node_roles_request,
};
use proto::common::node_labels::Pair;
use proto::common::node_roles::KubernetesWorker;
use proto::common::{NodeRoles, NodeState, NodeStatus};
use proto::curator_private::Node;
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = ManagementClient<Channel>;

async fn owner(t: &TestLeader) -> Client {
    ManagementClient::new(t.owner().await)
}

/// Writes a node record in `state` with `roles` and, if given, a status with `address`.
async fn add_node(
    t: &TestLeader,
    state: NodeState,
    roles: NodeRoles,
    address: Option<&str>,
) -> (SigningKey, NodeRecord) {
    let key = SigningKey::generate().expect("key");
    let join = SigningKey::generate().expect("key");
    let record = NodeRecord::new(
        &key.public_key(),
        Node {
            fsm_state: state as i32,
            roles: Some(roles),
            status: address.map(|a| NodeStatus {
                external_address: a.to_string(),
                ..Default::default()
            }),
            join_key: join.public_key().as_bytes().to_vec(),
            ..Default::default()
        },
    );
    t.put_node(&record).await;
    (key, record)
}

async fn load(t: &TestLeader, id: &str) -> NodeRecord {
    node::load(&t.leader.leadership, id)
        .await
        .expect("load node")
}

/// Puts a node straight into `state` (a fixture: the lifecycle is not walked).
async fn set_state(t: &TestLeader, id: &str, state: NodeState) {
    let mut r = load(t, id).await;
    r.node.fsm_state = state as i32;
    t.put_node(&r).await;
}

fn worker() -> NodeRoles {
    NodeRoles {
        kubernetes_worker: Some(KubernetesWorker {}),
        ..Default::default()
    }
}

async fn nodes(c: &mut Client, filter: &str) -> Result<Vec<api::Node>, Status> {
    let mut stream = c
        .get_nodes(api::GetNodesRequest {
            filter: filter.to_string(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(n) = stream.message().await? {
        out.push(n);
    }
    Ok(out)
}

async fn ids(c: &mut Client, filter: &str) -> Vec<String> {
    let mut ids: Vec<String> = nodes(c, filter)
        .await
        .expect(filter)
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn roles_req(
    id: &str,
    worker: Option<bool>,
    consensus: Option<bool>,
    controller: Option<bool>,
) -> api::UpdateNodeRolesRequest {
    api::UpdateNodeRolesRequest {
        node: Some(update_node_roles_request::Node::Id(id.to_string())),
        kubernetes_worker: worker,
        consensus_member: consensus,
        kubernetes_controller: controller,
    }
}

fn delete_req(id: &str, has_roles: bool, not_decommissioned: bool) -> api::DeleteNodeRequest {
    api::DeleteNodeRequest {
        node: Some(delete_node_request::Node::Id(id.to_string())),
        safety_bypass_has_roles: has_roles.then_some(delete_node_request::SafetyBypassHasRoles {}),
        safety_bypass_not_decommissioned: not_decommissioned
            .then_some(delete_node_request::SafetyBypassNotDecommissioned {}),
    }
}

fn decommission_req(id: &str) -> api::DecommissionNodeRequest {
    api::DecommissionNodeRequest {
        node: Some(api::decommission_node_request::Node::Id(id.to_string())),
    }
}

async fn etcd_members(t: &TestLeader) -> Vec<(String, Vec<String>, bool)> {
    let list = t
        .consensus
        .client()
        .member_list()
        .await
        .expect("member list");
    list.members()
        .iter()
        .map(|m| (m.name().to_string(), m.peer_urls().to_vec(), m.is_learner()))
        .collect()
}

/// Upstream TestManagementClusterInfo, plus the directory's order and size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_cluster_info() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;

    let info = c
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.ca_certificate, t.ca);
    assert_eq!(
        info.cluster_configuration,
        Some(curator::testing::permissive_configuration())
    );
    let dir = info.cluster_directory.expect("directory");
    assert_eq!(dir.nodes.len(), 1);
    assert_eq!(dir.nodes[0].public_key, t.node_key().as_bytes().to_vec());
    assert!(dir.nodes[0].addresses.is_empty(), "no status reported yet");

    // After the node reports its status, the directory has its address.
    let mut me = load(&t, &t.node_id()).await;
    me.node.status = Some(NodeStatus {
        external_address: t.block.host(1),
        ..Default::default()
    });
    node::update(&t.leader.leadership, &mut me)
        .await
        .expect("update");
    // Nodes that are not UP are not in the directory.
    add_node(
        &t,
        NodeState::New,
        NodeRoles::default(),
        Some(&t.block.host(9)),
    )
    .await;
    add_node(
        &t,
        NodeState::DecommissionRequested,
        NodeRoles::default(),
        Some(&t.block.host(8)),
    )
    .await;
    let dir = c
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .cluster_directory;
    let dir = dir.expect("directory");
    assert_eq!(dir.nodes.len(), 1);
    assert_eq!(dir.nodes[0].id, t.node_id());
    assert_eq!(
        dir.nodes[0]
            .addresses
            .iter()
            .map(|a| a.host.as_str())
            .collect::<Vec<_>>(),
        [t.block.host(1).as_str()]
    );

    // At most 15 UP nodes, sorted by public key.
    for i in 0..15 {
        add_node(
            &t,
            NodeState::Up,
            NodeRoles::default(),
            Some(&format!("10.0.0.{i}")),
        )
        .await;
    }
    let dir = c
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .cluster_directory;
    let keys: Vec<Vec<u8>> = dir
        .expect("directory")
        .nodes
        .into_iter()
        .map(|n| n.public_key)
        .collect();
    assert_eq!(keys.len(), 15);
    let mut want = keys.clone();
    want.sort();
    assert_eq!(keys, want);
    t.stop().await;
}

/// Upstream TestGetNodes: upstream's filter expressions, health, role markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_nodes() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let me = t.node_id();
    let (_, up) = add_node(&t, NodeState::Up, worker(), Some("10.1.0.3")).await;
    let (_, new) = add_node(&t, NodeState::New, NodeRoles::default(), None).await;

    assert_eq!(
        ids(&mut c, "").await,
        sorted(vec![me.clone(), up.id.clone(), new.id.clone()])
    );
    assert_eq!(
        ids(&mut c, "node.state == NODE_STATE_UP").await,
        sorted(vec![me.clone(), up.id.clone()])
    );
    assert_eq!(
        ids(&mut c, "node.state == NODE_STATE_NEW").await,
        vec![new.id.clone()]
    );
    assert_eq!(
        ids(&mut c, "has(node.roles.kubernetes_worker)").await,
        vec![up.id.clone()]
    );
    assert_eq!(
        ids(&mut c, "has(node.roles.consensus_member)").await,
        vec![me.clone()]
    );
    assert_eq!(
        ids(&mut c, &format!("node.id == \"{}\"", up.id)).await,
        vec![up.id.clone()]
    );
    assert_eq!(
        ids(&mut c, "node.status.external_address == \"10.1.0.3\"").await,
        vec![up.id.clone()]
    );
    assert_eq!(
        ids(&mut c, "!has(node.status)").await,
        sorted(vec![me.clone(), new.id.clone()])
    );

    // A fresh leader gives UP nodes without heartbeats a grace period: UNKNOWN.
    let all = nodes(&mut c, "").await.expect("nodes");
    let mine = all.iter().find(|n| n.id == me).expect("own node");
    assert_eq!(mine.health, api::node::Health::Unknown as i32);
    // Roles are presence markers only: no etcd certificates or peers.
    let roles = mine.roles.clone().expect("roles");
    assert_eq!(roles.consensus_member, Some(Default::default()));
    assert!(roles.kubernetes_controller.is_some() && roles.kubernetes_worker.is_none());
    assert_eq!(mine.pubkey, t.node_key().as_bytes().to_vec());

    // Heartbeat ages, against the manual clock: past the grace period, the node that beat
    // 5 s ago is HEALTHY, the one that never did HEARTBEAT_TIMEOUT, the NEW one UNKNOWN.
    t.clock.advance(Duration::from_secs(11));
    t.leader.heartbeats.beat(&up.id);
    t.clock.advance(Duration::from_secs(5));
    let window =
        "node.time_since_heartbeat < duration('6s') && node.time_since_heartbeat > duration('4s')";
    assert_eq!(ids(&mut c, window).await, vec![up.id.clone()]);
    assert_eq!(
        ids(&mut c, "node.health == HEALTHY").await,
        vec![up.id.clone()]
    );
    assert_eq!(
        ids(&mut c, "node.health == HEALTH_HEALTHY").await,
        vec![up.id.clone()]
    );
    assert_eq!(
        ids(&mut c, "node.health == HEARTBEAT_TIMEOUT").await,
        vec![me.clone()]
    );
    assert_eq!(
        ids(&mut c, "node.health == UNKNOWN").await,
        vec![new.id.clone()]
    );
    let got = nodes(&mut c, &format!("node.id == \"{}\"", up.id))
        .await
        .expect("nodes");
    assert_eq!(
        got[0].time_since_heartbeat,
        Some(prost_types::Duration {
            seconds: 5,
            nanos: 0
        })
    );
    // Ten more seconds without a heartbeat: timed out.
    t.clock.advance(Duration::from_secs(10));
    assert_eq!(
        ids(&mut c, "node.health == HEARTBEAT_TIMEOUT").await,
        sorted(vec![me.clone(), up.id.clone()])
    );

    // Broken filters are the caller's mistake; so is a non-boolean result.
    for bad in [
        "node.state ==",
        "node.state",
        "nodes.state == 1",
        "node.stat == 3",
        "NODE_STATE_UP + 'x' == 1",
    ] {
        assert_eq!(
            code(nodes(&mut c, bad).await),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    t.stop().await;
}

/// Upstream: the ticket is stable; ours: rotation replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_ticket_is_stable_and_rotates() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let first = c
        .get_register_ticket(api::GetRegisterTicketRequest {})
        .await
        .expect("ticket")
        .into_inner()
        .ticket;
    let second = c
        .get_register_ticket(api::GetRegisterTicketRequest {})
        .await
        .expect("ticket")
        .into_inner()
        .ticket;
    assert_eq!(
        first.len(),
        34,
        "serialized RegisterTicket with 32 random bytes"
    );
    assert_eq!(first, second);
    let rotated = c
        .rotate_register_ticket(api::RotateRegisterTicketRequest {})
        .await
        .expect("rotate")
        .into_inner()
        .ticket;
    assert_ne!(rotated, first);
    assert_eq!(rotated.len(), 34);
    let now = c
        .get_register_ticket(api::GetRegisterTicketRequest {})
        .await
        .expect("ticket")
        .into_inner()
        .ticket;
    assert_eq!(now, rotated);
    t.stop().await;
}

/// NEW → STANDBY, idempotent; error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_node() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let (key, new) = add_node(&t, NodeState::New, NodeRoles::default(), None).await;
    let approve = |k: Vec<u8>| api::ApproveNodeRequest { pubkey: k };
    let pk = key.public_key().as_bytes().to_vec();

    c.approve_node(approve(pk.clone())).await.expect("approve");
    assert_eq!(load(&t, &new.id).await.state(), NodeState::Standby);
    c.approve_node(approve(pk.clone()))
        .await
        .expect("approve twice");
    assert_eq!(load(&t, &new.id).await.state(), NodeState::Standby);
    // UP: nothing to do.
    c.approve_node(approve(t.node_key().as_bytes().to_vec()))
        .await
        .expect("approve UP");
    assert_eq!(load(&t, &t.node_id()).await.state(), NodeState::Up);

    assert_eq!(
        code(c.approve_node(approve(vec![1; 31])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.approve_node(approve(vec![])).await),
        Code::InvalidArgument
    );
    let stranger = SigningKey::generate()
        .expect("key")
        .public_key()
        .as_bytes()
        .to_vec();
    assert_eq!(
        code(c.approve_node(approve(stranger)).await),
        Code::NotFound
    );
    for state in [NodeState::Decommissioned, NodeState::DecommissionRequested] {
        set_state(&t, &new.id, state).await;
        assert_eq!(
            code(c.approve_node(approve(pk.clone())).await),
            Code::FailedPrecondition
        );
    }
    t.stop().await;
}

/// Upstream TestUpdateNodeRoles, with real etcd membership changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_roles() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let (key, a) = add_node(
        &t,
        NodeState::Up,
        NodeRoles::default(),
        Some(&t.block.host(2)),
    )
    .await;

    // Worker: free to set and drop, by pubkey or ID.
    c.update_node_roles(api::UpdateNodeRolesRequest {
        node: Some(update_node_roles_request::Node::Pubkey(
            key.public_key().as_bytes().to_vec(),
        )),
        kubernetes_worker: Some(true),
        ..Default::default()
    })
    .await
    .expect("add worker");
    assert!(load(&t, &a.id).await.roles().kubernetes_worker.is_some());
    assert_eq!(
        ids(&mut c, "has(node.roles.kubernetes_worker)").await,
        vec![a.id.clone()]
    );
    c.update_node_roles(roles_req(&a.id, Some(false), None, None))
        .await
        .expect("drop worker");
    assert!(!load(&t, &a.id).await.has_roles());
    // Unset fields change nothing.
    c.update_node_roles(roles_req(&a.id, None, None, None))
        .await
        .expect("no-op");

    // A controller needs consensus.
    let r = c
        .update_node_roles(roles_req(&a.id, None, None, Some(true)))
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert!(!load(&t, &a.id).await.has_roles());

    // Both in one request: the node really becomes an etcd learner at its reported address.
    c.update_node_roles(roles_req(&a.id, None, Some(true), Some(true)))
        .await
        .expect("consensus + controller");
    let roles = load(&t, &a.id).await.roles();
    let cm = roles.consensus_member.expect("consensus role");
    assert!(
        !cm.ca_certificate.is_empty()
            && !cm.peer_certificate.is_empty()
            && !cm.initial_crl.is_empty()
    );
    assert_eq!(cm.peers.len(), 1, "the bootstrap member is the only voter");
    assert!(roles.kubernetes_controller.is_some());
    let members = etcd_members(&t).await;
    assert_eq!(members.len(), 2);
    assert!(
        members
            .iter()
            .any(|(_, urls, learner)| *learner && urls.iter().any(|u| u.contains(&t.block.host(2))))
    );

    // Consensus cannot go while the node is a controller, not even in the same request.
    assert_eq!(
        code(
            c.update_node_roles(roles_req(&a.id, None, Some(false), None))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            c.update_node_roles(roles_req(&a.id, None, Some(false), Some(false)))
                .await
        ),
        Code::FailedPrecondition
    );
    // In two steps it works, and the etcd member goes with the role.
    c.update_node_roles(roles_req(&a.id, None, None, Some(false)))
        .await
        .expect("drop controller");
    c.update_node_roles(roles_req(&a.id, None, Some(false), None))
        .await
        .expect("drop consensus");
    assert!(!load(&t, &a.id).await.has_roles());
    assert_eq!(etcd_members(&t).await.len(), 1);

    // A node without a reported address cannot join etcd; roles are not state-checked (a NEW
    // node may become a worker), except that a decommissioning node gets no new role.
    let (_, new) = add_node(&t, NodeState::New, NodeRoles::default(), None).await;
    assert_eq!(
        code(
            c.update_node_roles(roles_req(&new.id, None, Some(true), None))
                .await
        ),
        Code::FailedPrecondition
    );
    c.update_node_roles(roles_req(&new.id, Some(true), None, None))
        .await
        .expect("worker on NEW node");
    let (_, leaving) = add_node(
        &t,
        NodeState::DecommissionRequested,
        NodeRoles::default(),
        Some(&t.block.host(3)),
    )
    .await;
    assert_eq!(
        code(
            c.update_node_roles(roles_req(&leaving.id, Some(true), None, None))
                .await
        ),
        Code::FailedPrecondition
    );
    c.update_node_roles(roles_req(&leaving.id, Some(false), Some(false), None))
        .await
        .expect("removing is fine");

    // The leader is the only etcd voter: removing its member would break quorum. The role
    // stays, with its data.
    let me = t.node_id();
    c.update_node_roles(roles_req(&me, None, None, Some(false)))
        .await
        .expect("drop own controller");
    let r = c
        .update_node_roles(roles_req(&me, None, Some(false), None))
        .await;
    let status = r.expect_err("last voter");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("quorum"), "{status:?}");
    let cm = load(&t, &me)
        .await
        .roles()
        .consensus_member
        .expect("role restored");
    assert!(!cm.peer_certificate.is_empty());
    assert_eq!(etcd_members(&t).await.len(), 1);

    // Identification errors.
    let none = api::UpdateNodeRolesRequest {
        kubernetes_worker: Some(true),
        ..Default::default()
    };
    assert_eq!(code(c.update_node_roles(none).await), Code::InvalidArgument);
    let short = api::UpdateNodeRolesRequest {
        node: Some(update_node_roles_request::Node::Pubkey(vec![0; 5])),
        kubernetes_worker: Some(true),
        ..Default::default()
    };
    assert_eq!(
        code(c.update_node_roles(short).await),
        Code::InvalidArgument
    );
    let stranger = identity::node_id(&SigningKey::generate().expect("key").public_key());
    assert_eq!(
        code(
            c.update_node_roles(roles_req(&stranger, Some(true), None, None))
                .await
        ),
        Code::NotFound
    );
    t.stop().await;
}

/// Upstream TestDeleteNode, plus what we do beyond it: revocation and etcd member removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_node() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let (plain_key, plain) = add_node(
        &t,
        NodeState::Up,
        NodeRoles::default(),
        Some(&t.block.host(2)),
    )
    .await;
    let (_, with_roles) = add_node(&t, NodeState::Up, worker(), Some(&t.block.host(3))).await;

    // UP nodes must be decommissioned first.
    assert_eq!(
        code(c.delete_node(delete_req(&plain.id, false, false)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            c.delete_node(delete_req(&with_roles.id, false, false))
                .await
        ),
        Code::FailedPrecondition
    );

    // The node's certificate works until it is deleted.
    let mut as_node = ManagementClient::new(t.node(&plain_key).await);
    as_node
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await
        .expect("node reads cluster info");
    t.leader.heartbeats.beat(&plain.id);

    c.delete_node(delete_req(&plain.id, false, true))
        .await
        .expect("delete UP roleless node with bypass");
    assert_eq!(
        code(
            node::load(&t.leader.leadership, &plain.id)
                .await
                .map_err(Status::from)
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            node::id_by_join_key(&t.leader.leadership, &plain.node.join_key)
                .await
                .map_err(Status::from)
        ),
        Code::NotFound,
        "join key index entry deleted with the node"
    );
    assert_eq!(
        code(c.delete_node(delete_req(&plain.id, false, true)).await),
        Code::NotFound
    );

    // Its certificate is in the cluster CRL (curators follow it; applied by hand here), and
    // the leader refuses the node ID at once.
    let crl = pki::Certificate::cluster_ca()
        .crl(t.leader.ns())
        .await
        .expect("crl");
    let serials = pki::revoked_serials(&crl.der).expect("serials");
    let cert = curator::state::pki::ensure_node_certificate(
        t.leader.ns(),
        &SigningKey::generate().expect("k").public_key(),
    )
    .await
    .expect("unrelated cert");
    assert!(!serials.contains(&identity::verify::cert_serial(&cert).expect("serial")));
    assert_eq!(
        serials.len(),
        1,
        "exactly the deleted node's certificate is revoked"
    );
    t.revocations.revoke_serials(serials);
    assert!(t.revocations.is_node_revoked(&plain.id));
    let r = as_node
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await;
    assert_eq!(code(r), Code::Unauthenticated);

    // Roles block deletion unless bypassed too.
    assert_eq!(
        code(c.delete_node(delete_req(&with_roles.id, false, true)).await),
        Code::FailedPrecondition
    );
    c.delete_node(delete_req(&with_roles.id, true, true))
        .await
        .expect("delete with both bypasses");

    // NEW and STANDBY nodes go without bypasses.
    let (_, new) = add_node(&t, NodeState::New, NodeRoles::default(), None).await;
    let (_, standby) = add_node(&t, NodeState::Standby, NodeRoles::default(), None).await;
    c.delete_node(delete_req(&new.id, false, false))
        .await
        .expect("delete NEW");
    c.delete_node(delete_req(&standby.id, false, false))
        .await
        .expect("delete STANDBY");

    // A ConsensusMember deleted with the bypasses loses its etcd member too.
    let (_, member) = add_node(
        &t,
        NodeState::Up,
        NodeRoles::default(),
        Some(&t.block.host(4)),
    )
    .await;
    c.update_node_roles(roles_req(&member.id, None, Some(true), None))
        .await
        .expect("consensus");
    assert_eq!(etcd_members(&t).await.len(), 2);
    assert_eq!(
        code(c.delete_node(delete_req(&member.id, false, true)).await),
        Code::FailedPrecondition
    );
    c.delete_node(delete_req(&member.id, true, true))
        .await
        .expect("delete member");
    assert_eq!(etcd_members(&t).await.len(), 1);

    // The leader does not delete itself, whatever the bypasses.
    assert_eq!(
        code(c.delete_node(delete_req(&t.node_id(), true, true)).await),
        Code::FailedPrecondition
    );

    // GetNodes lists only the survivors.
    assert_eq!(ids(&mut c, "").await, vec![t.node_id()]);
    let none = api::DeleteNodeRequest::default();
    assert_eq!(code(c.delete_node(none).await), Code::InvalidArgument);
    t.stop().await;
}

/// Ours: DecommissionNode and how it gates DeleteNode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_node() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let (_, up) = add_node(
        &t,
        NodeState::Up,
        NodeRoles::default(),
        Some(&t.block.host(2)),
    )
    .await;
    let (_, busy) = add_node(&t, NodeState::Up, worker(), Some(&t.block.host(3))).await;
    let (_, new) = add_node(&t, NodeState::New, NodeRoles::default(), None).await;

    c.decommission_node(decommission_req(&up.id))
        .await
        .expect("decommission");
    assert_eq!(
        load(&t, &up.id).await.state(),
        NodeState::DecommissionRequested
    );
    c.decommission_node(decommission_req(&up.id))
        .await
        .expect("idempotent");
    assert_eq!(
        load(&t, &up.id).await.state(),
        NodeState::DecommissionRequested
    );
    assert_eq!(
        ids(&mut c, "node.state == NODE_STATE_DECOMMISSION_REQUESTED").await,
        vec![up.id.clone()]
    );

    let status = c
        .decommission_node(decommission_req(&busy.id))
        .await
        .expect_err("has roles");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("KubernetesWorker") && status.message().contains("metroctl"),
        "{status:?}"
    );
    assert_eq!(
        code(c.decommission_node(decommission_req(&new.id)).await),
        Code::FailedPrecondition
    );
    // The leader always has roles.
    assert_eq!(
        code(c.decommission_node(decommission_req(&t.node_id())).await),
        Code::FailedPrecondition
    );

    // Deletion waits for the node to finish decommissioning.
    let status = c
        .delete_node(delete_req(&up.id, false, false))
        .await
        .expect_err("in progress");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("decommissioning in progress"),
        "{status:?}"
    );
    set_state(&t, &up.id, NodeState::Decommissioning).await;
    c.decommission_node(decommission_req(&up.id))
        .await
        .expect("idempotent while decommissioning");
    assert_eq!(
        code(c.delete_node(delete_req(&up.id, false, false)).await),
        Code::FailedPrecondition
    );
    set_state(&t, &up.id, NodeState::Decommissioned).await;
    c.decommission_node(decommission_req(&up.id))
        .await
        .expect("idempotent when done");
    c.delete_node(delete_req(&up.id, false, false))
        .await
        .expect("delete DECOMMISSIONED without bypass");

    let stranger = identity::node_id(&SigningKey::generate().expect("key").public_key());
    assert_eq!(
        code(c.decommission_node(decommission_req(&stranger)).await),
        Code::NotFound
    );
    let none = api::DecommissionNodeRequest { node: None };
    assert_eq!(code(c.decommission_node(none).await), Code::InvalidArgument);
    t.stop().await;
}

/// UpdateNodeLabels (later upstream Monogon, not in the 8456ddf0 baseline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_labels() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let (_, n) = add_node(&t, NodeState::New, NodeRoles::default(), None).await;
    let pair = |k: &str, v: &str| Pair {
        key: k.to_string(),
        value: v.to_string(),
    };
    let req = |upsert: Vec<Pair>, delete: Vec<&str>| api::UpdateNodeLabelsRequest {
        node: Some(update_node_labels_request::Node::Id(n.id.clone())),
        upsert,
        delete: delete.into_iter().map(String::from).collect(),
    };

    c.update_node_labels(req(
        vec![pair("zone", "b"), pair("example.com/rack", "r1")],
        vec![],
    ))
    .await
    .expect("upsert");
    c.update_node_labels(req(
        vec![pair("zone", "a"), pair("gpu", "")],
        vec!["example.com/rack"],
    ))
    .await
    .expect("mix");
    let got = nodes(&mut c, &format!("node.id == \"{}\"", n.id))
        .await
        .expect("nodes");
    let labels = got[0].labels.clone().expect("labels").pairs;
    assert_eq!(
        labels,
        vec![pair("gpu", ""), pair("zone", "a")],
        "sorted by key"
    );
    let filter = "node.labels.pairs.exists(p, p.key == 'zone' && p.value == 'a')";
    assert_eq!(ids(&mut c, filter).await, vec![n.id.clone()]);

    for bad in [
        req(vec![pair("-x", "1")], vec![]),
        req(vec![pair("x", "1"), pair("x", "2")], vec![]),
        req(vec![pair("x", "1")], vec!["x"]),
    ] {
        assert_eq!(code(c.update_node_labels(bad).await), Code::InvalidArgument);
    }
    let many: Vec<Pair> = (0..129).map(|i| pair(&format!("l{i}"), "v")).collect();
    assert_eq!(
        code(c.update_node_labels(req(many, vec![])).await),
        Code::OutOfRange
    );
    let stranger = identity::node_id(&SigningKey::generate().expect("key").public_key());
    let r = c
        .update_node_labels(api::UpdateNodeLabelsRequest {
            node: Some(update_node_labels_request::Node::Id(stranger)),
            upsert: vec![pair("a", "b")],
            delete: vec![],
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    t.stop().await;
}

/// The authorization layer: the owner may call everything; a node certificate only carries
/// READ_CLUSTER_STATUS (and UPDATE_NODE_SELF), so it may read but changes nothing; a
/// self-signed certificate authenticates nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization() {
    let t = TestLeader::start().await;
    let (key, n) = add_node(
        &t,
        NodeState::Up,
        NodeRoles::default(),
        Some(&t.block.host(2)),
    )
    .await;
    let mut as_node = ManagementClient::new(t.node(&key).await);
    let mut owner = owner(&t).await;
    let mut ephemeral = ManagementClient::new(t.ephemeral(&key));
    let pk = key.public_key().as_bytes().to_vec();

    let denied = Code::PermissionDenied;
    assert_eq!(
        code(
            as_node
                .get_register_ticket(api::GetRegisterTicketRequest {})
                .await
        ),
        denied
    );
    assert_eq!(
        code(
            as_node
                .rotate_register_ticket(api::RotateRegisterTicketRequest {})
                .await
        ),
        denied
    );
    assert_eq!(
        code(
            as_node
                .approve_node(api::ApproveNodeRequest { pubkey: pk.clone() })
                .await
        ),
        denied
    );
    assert_eq!(
        code(
            as_node
                .update_node_roles(roles_req(&n.id, Some(true), None, None))
                .await
        ),
        denied
    );
    assert_eq!(
        code(as_node.decommission_node(decommission_req(&n.id)).await),
        denied
    );
    assert_eq!(
        code(as_node.delete_node(delete_req(&n.id, true, true)).await),
        denied
    );
    let labels = api::UpdateNodeLabelsRequest {
        node: Some(update_node_labels_request::Node::Id(n.id.clone())),
        upsert: vec![Pair {
            key: "a".into(),
            value: "b".into(),
        }],
        delete: vec![],
    };
    assert_eq!(
        code(as_node.update_node_labels(labels.clone()).await),
        denied
    );
    // Reading is what nodes may do: their certificates carry READ_CLUSTER_STATUS.
    as_node
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await
        .expect("node reads cluster info");
    assert_eq!(
        nodes(&mut as_node, "")
            .await
            .expect("node lists nodes")
            .len(),
        2
    );
    assert!(
        load(&t, &n.id).await.roles().kubernetes_worker.is_none(),
        "nothing changed"
    );

    assert_eq!(
        code(
            ephemeral
                .get_cluster_info(api::GetClusterInfoRequest {})
                .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            ephemeral
                .get_register_ticket(api::GetRegisterTicketRequest {})
                .await
        ),
        Code::Unauthenticated
    );

    owner
        .get_register_ticket(api::GetRegisterTicketRequest {})
        .await
        .expect("owner: ticket");
    owner
        .rotate_register_ticket(api::RotateRegisterTicketRequest {})
        .await
        .expect("owner: rotate");
    owner
        .get_cluster_info(api::GetClusterInfoRequest {})
        .await
        .expect("owner: info");
    owner
        .approve_node(api::ApproveNodeRequest { pubkey: pk })
        .await
        .expect("owner: approve");
    owner
        .update_node_roles(roles_req(&n.id, Some(true), None, None))
        .await
        .expect("owner: roles");
    owner
        .update_node_labels(labels)
        .await
        .expect("owner: labels");
    owner
        .update_node_roles(roles_req(&n.id, Some(false), None, None))
        .await
        .expect("owner: roles");
    owner
        .decommission_node(decommission_req(&n.id))
        .await
        .expect("owner: decommission");
    owner
        .delete_node(delete_req(&n.id, false, true))
        .await
        .expect("owner: delete");
    t.stop().await;
}
