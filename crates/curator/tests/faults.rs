//! Fault tolerance of the leader's handlers: a reply lost after the write, a handler cut
//! halfway (client cancel, deadline, a leadership change aborting in-flight calls) and the
//! leftovers such cuts leave, which the leader's background reconciler must clear.
//!
//! Cuts are made with the curator's failpoints (`curator::<place>`). The `fail` registry is
//! per process; every test here runs in a process of its own (nextest), so each configures
//! the failpoints it needs without disturbing the others.

mod curator_support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use curator::election::Leadership;
use curator::state::{NodeRecord, StateError, node, pki as cluster_pki};
use curator::testing::TestLeader;
use curator_support::*;
use identity::SigningKey;
use kv::etcd_client::MemberAddOptions;
use proto::api::management_client::ManagementClient;
use proto::api::{self, delete_node_request, update_node_roles_request};
use proto::common::node_roles::{ConsensusMember, KubernetesController};
use proto::common::{NodeRoles, NodeState, NodeStorageSecurity};
use proto::curator_api::{CommitNodeRequest, JoinNodeRequest};
use tonic::Code;
use tonic::transport::Channel;

/// The reconciler's period in these tests (5 s in a real leader).
const PERIOD: Duration = Duration::from_millis(500);
/// How long a leftover may survive: two periods, plus time for a loaded machine.
const CONVERGE: Duration = Duration::from_millis(2 * 500 + 1500);

async fn owner(t: &TestLeader) -> ManagementClient<Channel> {
    management(t.owner().await)
}

fn add_consensus(id: &str) -> api::UpdateNodeRolesRequest {
    api::UpdateNodeRolesRequest {
        node: Some(update_node_roles_request::Node::Id(id.to_string())),
        consensus_member: Some(true),
        ..Default::default()
    }
}

fn delete_req(id: &str) -> api::DeleteNodeRequest {
    api::DeleteNodeRequest {
        node: Some(delete_node_request::Node::Id(id.to_string())),
        safety_bypass_has_roles: Some(delete_node_request::SafetyBypassHasRoles {}),
        safety_bypass_not_decommissioned: Some(
            delete_node_request::SafetyBypassNotDecommissioned {},
        ),
    }
}

/// An UP node that reported `address` (so it can become a ConsensusMember).
async fn up_node_at(t: &TestLeader, address: Ipv4Addr) -> SigningKey {
    let (node_key, _) = add_node(t, NodeState::Up, &[]).await;
    modify(t, &id_of(&node_key), |r| {
        r.node.status = Some(status(&address.to_string()))
    })
    .await;
    node_key
}

/// The etcd members whose peer URL names `address`: (is learner) each.
async fn members_at(t: &TestLeader, address: Ipv4Addr) -> Vec<bool> {
    let host = format!("//{address}:");
    t.consensus
        .client()
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .filter(|m| m.peer_urls().iter().any(|u| u.contains(&host)))
        .map(|m| m.is_learner())
        .collect()
}

/// How many etcd members there are.
async fn member_count(t: &TestLeader) -> usize {
    t.consensus
        .client()
        .member_list()
        .await
        .expect("member list")
        .members()
        .len()
}

async fn record(t: &TestLeader, id: &str) -> Option<NodeRecord> {
    node::load_opt(&t.leader.leadership, id)
        .await
        .expect("load node")
}

/// Polls `check` until it holds or `within` has passed; the last reason on failure.
async fn converges(
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    test_support::eventually(within, async || check().await)
        .await
        .unwrap_or_else(|e| panic!("{what} did not converge within {within:?}: {e}"));
}

fn commit_request(cuk: &[u8]) -> CommitNodeRequest {
    CommitNodeRequest {
        cluster_unlock_key: cuk.to_vec(),
        storage_security: NodeStorageSecurity::AuthenticatedEncrypted as i32,
    }
}

/// A CommitNode whose reply was lost after the record was saved is repeated by the node: the
/// repeat gets what the first call returned, not FailedPrecondition ("already UP").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_commit_returns_the_first_answer() {
    let t = TestLeader::start().await;
    let cuk = [5u8; 32];
    let (node_key, _) = add_node(&t, NodeState::Standby, &[]).await;
    let id = id_of(&node_key);

    let first = curator(t.ephemeral(&node_key))
        .commit_node(commit_request(&cuk))
        .await
        .expect("CommitNode")
        .into_inner();
    // The first reply was lost: the node asks again, on a new connection.
    let again = curator(t.ephemeral(&node_key))
        .commit_node(commit_request(&cuk))
        .await
        .expect("repeated CommitNode")
        .into_inner();
    assert_eq!(again, first, "the same certificate and CA");
    let record = load(&t, &id).await;
    assert_eq!(record.state(), NodeState::Up);
    assert_eq!(record.node.cluster_unlock_key, cuk);

    // Another cluster unlock key for a committed node is still refused, and changes nothing.
    let other = curator(t.ephemeral(&node_key))
        .commit_node(commit_request(&[6u8; 32]))
        .await;
    assert_eq!(code(other), Code::FailedPrecondition);
    assert_eq!(load(&t, &id).await.node.cluster_unlock_key, cuk);
    t.stop().await;
}

/// The save succeeds but the reply is replaced by an error (`after_save`): the node's
/// retry succeeds, and exactly one UP record exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_retried_after_a_failure_past_the_save() {
    let t = TestLeader::start().await;
    let cuk = [5u8; 32];
    let (node_key, _) = add_node(&t, NodeState::Standby, &[]).await;
    let id = id_of(&node_key);
    fail::cfg("curator::commit_node::after_save", "1*return").expect("failpoint");

    let first = curator(t.ephemeral(&node_key))
        .commit_node(commit_request(&cuk))
        .await;
    assert_eq!(
        code(first),
        Code::Unavailable,
        "the failpoint cut the reply"
    );
    assert_eq!(
        load(&t, &id).await.state(),
        NodeState::Up,
        "saved before the cut"
    );

    // What the node's client does with Unavailable: it retries.
    let retried = curator(t.ephemeral(&node_key))
        .commit_node(commit_request(&cuk))
        .await
        .expect("the retry succeeds")
        .into_inner();
    let certified = identity::verify::verify_node_cert(&retried.node_certificate, &t.ca)
        .expect("a valid node certificate");
    assert_eq!(certified, node_key.public_key());

    let up: Vec<_> = node::load_all(&t.leader.leadership)
        .await
        .expect("nodes")
        .into_iter()
        .filter(|r| r.id == id)
        .collect();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].state(), NodeState::Up);
    fail::remove("curator::commit_node::after_save");
    t.stop().await;
}

/// UpdateNodeRoles cut between the etcd learner and the saved role: the learner has no
/// role, would block every later member addition (etcd admits one learner at a time), and is
/// removed by the reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_change_cut_after_the_learner_leaves_no_orphan() {
    let t = TestLeader::start().await;
    t.reconcile_every(PERIOD);
    let mut c = owner(&t).await;
    let a = up_node_at(&t, t.block.addr(2)).await;
    let a_id = id_of(&a);
    fail::cfg("curator::update_node_roles::after_learner_add", "1*return").expect("failpoint");
    let cut = c.update_node_roles(add_consensus(&a_id)).await;
    assert_eq!(code(cut), Code::Cancelled);
    assert!(
        record(&t, &a_id)
            .await
            .expect("a")
            .roles()
            .consensus_member
            .is_none()
    );

    converges(CONVERGE, "orphan learner", async || {
        let left = members_at(&t, t.block.addr(2)).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("members at a's address: {left:?}"))
        }
    })
    .await;
    // Membership changes work again: another node becomes a learner.
    let b = up_node_at(&t, t.block.addr(3)).await;
    c.update_node_roles(add_consensus(&id_of(&b)))
        .await
        .expect("a later member addition");
    assert_eq!(members_at(&t, t.block.addr(3)).await, vec![true]);
    t.stop().await;
}

/// A node that is a ConsensusMember (a learner here) with its role, from UpdateNodeRoles.
async fn member_node(t: &TestLeader, address: Ipv4Addr) -> SigningKey {
    let key = up_node_at(t, address).await;
    owner(t)
        .await
        .update_node_roles(add_consensus(&id_of(&key)))
        .await
        .expect("ConsensusMember");
    assert_eq!(members_at(t, address).await, vec![true]);
    key
}

/// DeleteNode cut after its first step (tombstone, revocation): the caller's retry finishes
/// the deletion instead of answering NotFound with the etcd member left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cut_after_the_tombstone_is_finished_by_the_retry() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let a = member_node(&t, t.block.addr(2)).await;
    let a_id = id_of(&a);
    fail::cfg("curator::delete_node::after_tombstone", "1*return").expect("failpoint");
    assert_eq!(
        code(c.delete_node(delete_req(&a_id)).await),
        Code::Cancelled
    );
    assert!(
        t.revocations.is_node_revoked(&a_id),
        "revoked in the first step"
    );

    c.delete_node(delete_req(&a_id))
        .await
        .expect("the retry finishes the deletion");
    assert!(record(&t, &a_id).await.is_none());
    assert!(
        members_at(&t, t.block.addr(2)).await.is_empty(),
        "no member left"
    );
    assert!(
        node::is_deleted(&t.leader.leadership, &a_id)
            .await
            .expect("tombstone")
    );
    // Done: a further retry finds nothing to delete.
    assert_eq!(code(c.delete_node(delete_req(&a_id)).await), Code::NotFound);
    t.stop().await;
}

/// A failed etcd member removal is an error the caller sees (not a success with a dead
/// member left), and the reconciler finishes the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_member_removal_fails_the_delete_and_is_finished_later() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let a = member_node(&t, t.block.addr(2)).await;
    let a_id = id_of(&a);
    fail::cfg("curator::delete_node::remove_member", "1*return").expect("failpoint");
    let failed = c.delete_node(delete_req(&a_id)).await;
    assert_eq!(code(failed), Code::Unavailable);
    assert_eq!(members_at(&t, t.block.addr(2)).await, vec![true]);

    t.reconcile_every(PERIOD);
    converges(CONVERGE, "half-done deletion", async || {
        let members = members_at(&t, t.block.addr(2)).await;
        let present = record(&t, &a_id).await.is_some();
        if members.is_empty() && !present {
            Ok(())
        } else {
            Err(format!("members {members:?}, record present: {present}"))
        }
    })
    .await;
    assert!(
        node::is_deleted(&t.leader.leadership, &a_id)
            .await
            .expect("tombstone")
    );
    t.stop().await;
}

/// Every kind of leftover, written straight into etcd and its member list, converges within
/// two periods; what is consistent is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_clears_every_leftover() {
    let t = TestLeader::start().await;
    t.reconcile_every(PERIOD);
    let no_members_at = |address: Ipv4Addr| {
        let t = &t;
        async move || {
            let left = members_at(t, address).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("members at {address}: {left:?}"))
            }
        }
    };

    // A learner of a node without the ConsensusMember role.
    let a = up_node_at(&t, t.block.addr(2)).await;
    t.consensus
        .add_node(&a.public_key(), t.block.addr(2).into())
        .await
        .expect("learner");
    converges(
        CONVERGE,
        "learner without role",
        no_members_at(t.block.addr(2)),
    )
    .await;

    // A learner of a node that has no record (deleted, or never registered).
    let ghost = key();
    t.consensus
        .add_node(&ghost.public_key(), t.block.addr(3).into())
        .await
        .expect("learner");
    converges(
        CONVERGE,
        "learner without node",
        no_members_at(t.block.addr(3)),
    )
    .await;

    // A learner nobody recorded (its adder stopped between adding and recording it).
    t.consensus
        .client()
        .member_add(
            [format!("https://{}:2380", t.block.addr(4))],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add");
    converges(
        CONVERGE,
        "unrecorded learner",
        no_members_at(t.block.addr(4)),
    )
    .await;

    // The ConsensusMember role (and KubernetesController, which needs it) without a member.
    let (b, _) = add_node(&t, NodeState::Up, &[]).await;
    let b_id = id_of(&b);
    modify(&t, &b_id, |r| {
        r.node.roles = Some(NodeRoles {
            consensus_member: Some(ConsensusMember::default()),
            kubernetes_controller: Some(KubernetesController {}),
            ..Default::default()
        })
    })
    .await;
    converges(CONVERGE, "role without member", async || {
        let roles = record(&t, &b_id).await.expect("b").roles();
        if roles.consensus_member.is_none() && roles.kubernetes_controller.is_none() {
            Ok(())
        } else {
            Err(format!("roles {roles:?}"))
        }
    })
    .await;

    // A half-done deletion: tombstone written, record and member still there.
    let d = member_node(&t, t.block.addr(5)).await;
    let d_id = id_of(&d);
    t.leader
        .ns()
        .put(format!("{}{d_id}", node::DELETED_PREFIX), Vec::new(), None)
        .await
        .expect("tombstone");
    converges(CONVERGE, "half-done deletion", async || {
        let members = members_at(&t, t.block.addr(5)).await;
        let present = record(&t, &d_id).await.is_some();
        if members.is_empty() && !present {
            Ok(())
        } else {
            Err(format!("members {members:?}, record present: {present}"))
        }
    })
    .await;

    // What is consistent stays: the leader, and a learner with its role.
    let e = member_node(&t, t.block.addr(6)).await;
    tokio::time::sleep(2 * PERIOD).await;
    assert_eq!(members_at(&t, t.block.addr(6)).await, vec![true]);
    assert!(
        record(&t, &id_of(&e))
            .await
            .expect("e")
            .roles()
            .consensus_member
            .is_some()
    );
    assert_eq!(member_count(&t).await, 2);
    assert!(
        record(&t, &t.node_id())
            .await
            .expect("leader")
            .roles()
            .consensus_member
            .is_some()
    );
    t.stop().await;
}

/// A node that was down while DECOMMISSION_REQUESTED joins again (it must come back to carry
/// out the decommission) and gets its cluster unlock key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_requested_node_can_join() {
    let t = TestLeader::start().await;
    let cuk = [3u8; 32];
    let (_, join_key) = add_node(&t, NodeState::DecommissionRequested, &cuk).await;
    let joined = curator(t.ephemeral(&join_key))
        .join_node(JoinNodeRequest {
            using_sealed_configuration: false,
        })
        .await
        .expect("JoinNode of a DECOMMISSION_REQUESTED node");
    assert_eq!(joined.into_inner().cluster_unlock_key, cuk);

    // Once DECOMMISSIONED it has nothing to come back for.
    let (_, done) = add_node(&t, NodeState::Decommissioned, &cuk).await;
    let refused = curator(t.ephemeral(&done))
        .join_node(JoinNodeRequest {
            using_sealed_configuration: false,
        })
        .await;
    assert_eq!(code(refused), Code::FailedPrecondition);
    t.stop().await;
}

/// A DECOMMISSION_REQUESTED node that will never come back: the operator finishes it with
/// DeleteNode's not-decommissioned bypass (metroctl node delete --bypass-not-decommissioned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_requested_node_is_deleted_with_the_bypass() {
    let t = TestLeader::start().await;
    let mut c = owner(&t).await;
    let (node_key, join_key) = add_node(&t, NodeState::DecommissionRequested, &[]).await;
    let id = id_of(&node_key);
    let mut plain = delete_req(&id);
    plain.safety_bypass_not_decommissioned = None;
    assert_eq!(code(c.delete_node(plain).await), Code::FailedPrecondition);
    assert!(record(&t, &id).await.is_some());

    c.delete_node(delete_req(&id))
        .await
        .expect("DeleteNode with the bypass");
    assert!(record(&t, &id).await.is_none());
    assert!(t.revocations.is_node_revoked(&id));
    let join = curator(t.ephemeral(&join_key))
        .join_node(JoinNodeRequest {
            using_sealed_configuration: false,
        })
        .await;
    assert_eq!(code(join), Code::NotFound, "gone for good");
    t.stop().await;
}

/// PKI writes are made under the leadership guard: a deposed leader can neither issue nor
/// revoke a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_writes_need_the_leadership() {
    let t = TestLeader::start().await;
    let l = &t.leader.leadership;
    let deposed = Leadership::new(l.namespace().clone(), l.lock_key.clone(), l.lock_rev + 1000);
    let key = key();
    let issued = cluster_pki::leader_node_certificate(&deposed, &key.public_key()).await;
    assert_eq!(issued.map(|_| ()), Err(StateError::LostLeadership));
    let ca = Arc::new(pki::Certificate::cluster_ca());
    let node_cert = pki::Certificate::node(&ca, key.public_key());
    assert_eq!(
        node_cert.get(l.namespace()).await.expect("read"),
        None,
        "nothing issued"
    );

    let (_, cert) = cluster_pki::leader_node_certificate(l, &key.public_key())
        .await
        .expect("issued by the leader");
    let revoked = cluster_pki::revoke_node(&deposed, &key.public_key()).await;
    assert_eq!(revoked.map(|_| ()), Err(StateError::LostLeadership));
    assert_eq!(
        node_cert.get(l.namespace()).await.expect("read"),
        Some(cert),
        "not dropped"
    );
    let crl = ca.crl(l.namespace()).await.expect("crl");
    assert!(
        pki::revoked_serials(&crl.der).expect("serials").is_empty(),
        "not revoked"
    );
    t.stop().await;
}
