//! The state layer against a real etcd: node records only change state along the lifecycle
//! table, creation checks the record and its join-key entry in the same transaction as the
//! write, corrupt records and lost leadership are reported as such (and become upstream's codes
//! at the service edge).

mod curator_support;

use curator::election::Leadership;
use curator::state::node::{self, NodeRecord};
use curator::state::{StateError, cluster};
use curator::testing::TestLeader;
use curator_support::*;
use identity::SigningKey;
use proto::api::{ApproveNodeRequest, GetNodesRequest};
use proto::common::NodeState;
use proto::curator_private::Node;
use tonic::Code;

/// A record for a fresh node key with a fresh join key (not stored).
fn new_record() -> (SigningKey, NodeRecord) {
    let (node_key, join_key) = (key(), key());
    let record = NodeRecord::new(
        &node_key.public_key(),
        Node {
            join_key: join_key.public_key().as_bytes().to_vec(),
            ..Default::default()
        },
    );
    (node_key, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_checks_the_table_the_record_and_the_join_key() {
    let t = TestLeader::start().await;
    let l = &t.leader.leadership;

    // Only the table's initial states: a node is never created approved.
    let (_, mut standby) = new_record();
    assert_eq!(
        node::create(l, &mut standby, NodeState::Standby).await,
        Err(StateError::InvalidTransition {
            id: standby.id.clone(),
            from: None,
            to: NodeState::Standby
        })
    );
    assert_eq!(node::load_opt(l, &standby.id).await, Ok(None));

    let (_, mut a) = new_record();
    node::create(l, &mut a, NodeState::New)
        .await
        .expect("create");
    let stored = node::load(l, &a.id).await.expect("load");
    assert_eq!(stored.state(), NodeState::New);
    assert_eq!(
        node::id_by_join_key(l, &a.node.join_key).await.as_deref(),
        Ok(a.id.as_str())
    );

    // The same node again: refused, nothing changed.
    let mut again = NodeRecord::new(&a.public_key().expect("key"), a.node.clone());
    assert_eq!(
        node::create(l, &mut again, NodeState::New).await,
        Err(StateError::NodeExists { id: a.id.clone() })
    );

    // Another node with a's join key: refused, and the index still points at a.
    let (_, mut b) = new_record();
    b.node.join_key = a.node.join_key.clone();
    assert_eq!(
        node::create(l, &mut b, NodeState::New).await,
        Err(StateError::JoinKeyInUse {
            owner: a.id.clone()
        })
    );
    assert_eq!(node::load_opt(l, &b.id).await, Ok(None));
    assert_eq!(
        node::id_by_join_key(l, &a.node.join_key).await.as_deref(),
        Ok(a.id.as_str())
    );

    // An index entry left pointing at the node being created (its record gone, as an
    // interrupted write could leave it) is its own: accepted.
    let (_, mut c) = new_record();
    t.put_node(&c).await;
    t.leader
        .ns()
        .delete(c.key(), None)
        .await
        .expect("raw delete of the record only");
    node::create(l, &mut c, NodeState::New)
        .await
        .expect("create over its own index entry");
    assert_eq!(
        node::load(l, &c.id).await.map(|r| r.state()),
        Ok(NodeState::New)
    );

    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_change_only_along_the_table() {
    let t = TestLeader::start().await;
    let l = &t.leader.leadership;
    let (_, mut r) = new_record();
    node::create(l, &mut r, NodeState::New)
        .await
        .expect("create");

    // NEW → UP skips approval: refused, record unchanged (in memory and stored).
    assert!(matches!(
        node::set_state(l, &mut r, NodeState::Up).await,
        Err(StateError::InvalidTransition { .. })
    ));
    assert_eq!(r.state(), NodeState::New);
    assert_eq!(
        node::load(l, &r.id).await.map(|r| r.state()),
        Ok(NodeState::New)
    );

    // Along the table, with other changes written in the same step.
    node::set_state(l, &mut r, NodeState::Standby)
        .await
        .expect("approve");
    r.node.cluster_unlock_key = vec![1; 32];
    node::set_state(l, &mut r, NodeState::Up)
        .await
        .expect("commit");
    let stored = node::load(l, &r.id).await.expect("load");
    assert_eq!(stored.state(), NodeState::Up);
    assert_eq!(stored.node.cluster_unlock_key, vec![1; 32]);

    // Back to NEW: not in the table.
    let mut loaded = node::load(l, &r.id).await.expect("load");
    assert!(matches!(
        node::set_state(l, &mut loaded, NodeState::New).await,
        Err(StateError::InvalidTransition { .. })
    ));

    // A state changed behind the table's back is refused by update.
    loaded.node.fsm_state = NodeState::Decommissioned as i32;
    assert!(matches!(
        node::update(l, &mut loaded).await,
        Err(StateError::Internal(_))
    ));
    assert_eq!(
        node::load(l, &r.id).await.map(|r| r.state()),
        Ok(NodeState::Up)
    );

    // So is a join key changed without the index check.
    let mut loaded = node::load(l, &r.id).await.expect("load");
    loaded.node.join_key = t.join_key.public_key().as_bytes().to_vec();
    assert!(matches!(
        node::update(l, &mut loaded).await,
        Err(StateError::Internal(_))
    ));
    assert_eq!(
        node::id_by_join_key(l, t.join_key.public_key().as_bytes())
            .await
            .as_deref(),
        Ok(t.node_id().as_str()),
        "the bootstrap node keeps its join key"
    );

    // Other changes go through update.
    let mut loaded = node::load(l, &r.id).await.expect("load");
    loaded.node.tpm_usage = 2;
    node::update(l, &mut loaded).await.expect("update");
    assert_eq!(node::load(l, &r.id).await.map(|r| r.node.tpm_usage), Ok(2));

    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_keys_move_atomically() {
    let t = TestLeader::start().await;
    let l = &t.leader.leadership;
    let (_, mut a) = new_record();
    node::create(l, &mut a, NodeState::New)
        .await
        .expect("create");
    let old = a.node.join_key.clone();
    let new = key().public_key().as_bytes().to_vec();

    node::replace_join_key(l, &mut a, &new)
        .await
        .expect("replace");
    assert_eq!(
        node::id_by_join_key(l, &new).await.as_deref(),
        Ok(a.id.as_str())
    );
    assert!(matches!(
        node::id_by_join_key(l, &old).await,
        Err(StateError::NotFound { .. })
    ));
    // Replacing with the key it has is a no-op write.
    node::replace_join_key(l, &mut a, &new)
        .await
        .expect("same key");

    // The bootstrap node's join key belongs to it: refused, nothing moved.
    assert_eq!(
        node::replace_join_key(l, &mut a, t.join_key.public_key().as_bytes()).await,
        Err(StateError::JoinKeyInUse { owner: t.node_id() })
    );
    assert_eq!(
        a.node.join_key, new,
        "the record in memory is unchanged too"
    );
    assert_eq!(
        node::load(l, &a.id).await.map(|r| r.node.join_key),
        Ok(new.clone())
    );
    assert_eq!(
        node::id_by_join_key(l, t.join_key.public_key().as_bytes())
            .await
            .as_deref(),
        Ok(t.node_id().as_str())
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_and_lost_leadership() {
    let t = TestLeader::start().await;
    let l = &t.leader.leadership;

    // A record that does not decode.
    let broken = key();
    let id = id_of(&broken);
    t.leader
        .ns()
        .put(format!("/nodes/{id}"), b"\xff\xff\xff".to_vec(), None)
        .await
        .expect("raw put");
    assert!(matches!(
        node::load(l, &id).await,
        Err(StateError::Corrupt { key, .. }) if key == format!("/nodes/{id}")
    ));
    // Listing skips it rather than failing the whole cluster view.
    let all = node::load_all(l).await.expect("load all");
    assert_eq!(
        all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![t.node_id()]
    );
    let mut mgmt = management(t.owner().await);
    let mut nodes = mgmt
        .get_nodes(GetNodesRequest {
            filter: String::new(),
        })
        .await
        .expect("GetNodes")
        .into_inner();
    let mut listed = 0;
    while next(&mut nodes).await.expect("node").is_some() {
        listed += 1;
    }
    assert_eq!(listed, 1);
    // At the service edge: Unavailable, as upstream.
    let approve = mgmt
        .approve_node(ApproveNodeRequest {
            pubkey: broken.public_key().as_bytes().to_vec(),
        })
        .await;
    assert_eq!(code(approve), Code::Unavailable);

    // A leadership whose election key revision is not the current one reads and writes
    // nothing.
    let stale = Leadership::new(
        l.namespace().clone(),
        l.lock_key.clone(),
        l.lock_rev + 1_000,
    );
    assert_eq!(
        node::load(&stale, &t.node_id()).await,
        Err(StateError::LostLeadership)
    );
    let (_, mut r) = new_record();
    assert_eq!(
        node::create(&stale, &mut r, NodeState::New).await,
        Err(StateError::LostLeadership)
    );
    assert_eq!(node::load_opt(l, &r.id).await, Ok(None));
    assert_eq!(
        cluster::rotate_register_ticket(&stale).await,
        Err(StateError::LostLeadership)
    );
    t.stop().await;
}

/// Writes are optimistic: a record read before another write of it is refused with
/// Conflict (nothing written), whichever write it is, and a fresh read goes through. A
/// deleted node's ID cannot be created again, even by a writer that read before the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_records_conflict() {
    let t = TestLeader::start().await;
    let l = &t.leader.leadership;
    let (_, mut r) = new_record();
    node::create(l, &mut r, NodeState::New)
        .await
        .expect("create");

    let mut stale = node::load(l, &r.id).await.expect("load");
    let mut fresh = node::load(l, &r.id).await.expect("load");
    fresh.node.tpm_usage = 2;
    node::update(l, &mut fresh).await.expect("update");
    // The record remembers its own write: a second write of it needs no new read.
    fresh.node.tpm_usage = 1;
    node::update(l, &mut fresh).await.expect("second update");

    let conflict = Err(StateError::Conflict { key: r.key() });
    stale.node.tpm_usage = 3;
    assert_eq!(node::update(l, &mut stale).await, conflict);
    let mut stale_state = stale.clone();
    stale_state.node.tpm_usage = fresh.node.tpm_usage;
    assert_eq!(
        node::set_state(l, &mut stale_state, NodeState::Standby).await,
        conflict
    );
    assert_eq!(stale_state.state(), NodeState::New, "unchanged in memory");
    let mut stale_key = node::load(l, &r.id).await.expect("load");
    node::update(l, &mut fresh).await.expect("another update");
    assert_eq!(
        node::replace_join_key(l, &mut stale_key, key().public_key().as_bytes()).await,
        conflict
    );
    assert_eq!(node::delete(l, &stale).await, conflict);
    assert_eq!(node::mark_deleted_unchanged(l, &stale).await, conflict);
    let stored = node::load(l, &r.id).await.expect("load");
    assert_eq!(stored.node.tpm_usage, 1);
    assert_eq!(stored.state(), NodeState::New);
    assert!(!node::is_deleted(l, &r.id).await.expect("read"));

    // A record decoded from bytes alone has no revision and is never written back.
    let mut bare =
        NodeRecord::decode(&r.id, &prost::Message::encode_to_vec(&stored.node)).expect("decode");
    assert_eq!(node::update(l, &mut bare).await, conflict);

    // Deleted (from a fresh read): the ID cannot be created again.
    node::delete(l, &stored).await.expect("delete");
    let (_, mut again) = new_record();
    again.id = r.id.clone();
    again.node.public_key = r.node.public_key.clone();
    assert_eq!(
        node::create(l, &mut again, NodeState::New).await,
        Err(StateError::NodeExists { id: r.id.clone() })
    );
    assert!(node::load_opt(l, &r.id).await.expect("read").is_none());

    t.stop().await;
}
