//! Curator.Watch: upstream TestWatchNodeInCluster and TestWatchNodesInCluster, plus the
//! request errors.

mod curator_support;

use curator::state::node;
use curator::testing::TestLeader;
use curator_support::*;
use proto::common::NodeState;
use proto::curator_api::watch_event::Progress;
use proto::curator_api::watch_request::{Kind, NodeInCluster, NodesInCluster};
use proto::curator_api::{WatchEvent, WatchRequest};
use tonic::Code;

fn one_node(id: &str) -> WatchRequest {
    WatchRequest {
        kind: Some(Kind::NodeInCluster(NodeInCluster {
            node_id: id.to_string(),
        })),
    }
}

fn all_nodes() -> WatchRequest {
    WatchRequest {
        kind: Some(Kind::NodesInCluster(NodesInCluster {})),
    }
}

/// Reads a NodesInCluster backlog: every node up to and including the event flagged
/// LAST_BACKLOGGED.
async fn backlog(s: &mut tonic::Streaming<WatchEvent>) -> Vec<proto::curator_api::Node> {
    let mut nodes = Vec::new();
    loop {
        let ev = next(s).await.expect("watch error").expect("watch ended");
        nodes.extend(ev.nodes);
        if ev.progress == Progress::LastBacklogged as i32 {
            return nodes;
        }
    }
}

/// The next event that mentions `id` (clients must ignore other nodes).
async fn next_about(s: &mut tonic::Streaming<WatchEvent>, id: &str) -> WatchEvent {
    loop {
        let ev = next(s).await.expect("watch error").expect("watch ended");
        if ev.nodes.iter().any(|n| n.id == id) || ev.node_tombstones.iter().any(|t| t.node_id == id)
        {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_node_in_cluster() {
    let t = TestLeader::start().await;
    let mut cur = curator(t.owner().await);

    // The bootstrap node: its current value, with the full ConsensusMember data.
    let mut own = cur
        .watch(one_node(&t.node_id()))
        .await
        .expect("watch")
        .into_inner();
    let ev = next(&mut own).await.expect("ok").expect("event");
    assert_eq!(ev.nodes.len(), 1);
    let me = &ev.nodes[0];
    assert_eq!(me.id, t.node_id());
    assert_eq!(me.state, NodeState::Up as i32);
    let cm = me
        .roles
        .as_ref()
        .and_then(|r| r.consensus_member.as_ref())
        .expect("consensus member role");
    assert!(!cm.ca_certificate.is_empty() && !cm.peer_certificate.is_empty());

    // A node that does not exist yet: nothing until it is created.
    let k = key();
    let id = id_of(&k);
    let mut w = cur.watch(one_node(&id)).await.expect("watch").into_inner();
    assert!(
        stays_quiet(&mut w).await,
        "a missing node must not produce events"
    );

    let record = curator::state::NodeRecord::new(
        &k.public_key(),
        proto::curator_private::Node {
            fsm_state: NodeState::New as i32,
            ..Default::default()
        },
    );
    t.put_node(&record).await;
    let ev = next(&mut w).await.expect("ok").expect("event");
    assert_eq!((ev.nodes.len(), ev.nodes[0].id.as_str()), (1, id.as_str()));
    assert_eq!(ev.nodes[0].state, NodeState::New as i32);

    // Every change is one one-node event.
    modify(&t, &id, |r| r.node.status = Some(status("10.1.0.3"))).await;
    let ev = next(&mut w).await.expect("ok").expect("event");
    assert_eq!(
        ev.nodes[0]
            .status
            .as_ref()
            .map(|s| s.external_address.as_str()),
        Some("10.1.0.3")
    );

    // Deletion: one tombstone, and the watch goes on (a re-created node shows up again).
    // (Deleted as last written: deletions are conditional on the record being unchanged.)
    node::delete(&t.leader.leadership, &load(&t, &id).await)
        .await
        .expect("delete");
    let ev = next(&mut w).await.expect("ok").expect("event");
    assert!(ev.nodes.is_empty());
    assert_eq!(ev.node_tombstones.len(), 1);
    assert_eq!(ev.node_tombstones[0].node_id, id);
    t.put_node(&record).await;
    let ev = next(&mut w).await.expect("ok").expect("event");
    assert_eq!(ev.nodes[0].id, id);

    // A node watches itself with its own certificate too (READ_CLUSTER_STATUS).
    let mut as_node = curator(t.node(&k).await);
    let mut w2 = as_node
        .watch(one_node(&id))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut w2).await.expect("ok").expect("event").nodes[0].id,
        id
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_nodes_in_cluster() {
    let t = TestLeader::start().await;
    let mut cur = curator(t.owner().await);

    // Backlog: only the bootstrap node, then LAST_BACKLOGGED.
    let mut w = cur.watch(all_nodes()).await.expect("watch").into_inner();
    let nodes = backlog(&mut w).await;
    assert_eq!(
        nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![t.node_id()]
    );
    assert!(
        nodes[0]
            .roles
            .as_ref()
            .and_then(|r| r.consensus_member.as_ref())
            .is_some()
    );
    assert!(stays_quiet(&mut w).await, "no events without changes");

    // Creation.
    let (k, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&k);
    let ev = next_about(&mut w, &id).await;
    assert_eq!(ev.nodes.len(), 1);
    assert_eq!(ev.nodes[0].state, NodeState::Up as i32);

    // Status update through the API.
    let mut as_node = curator(t.node(&k).await);
    as_node
        .update_node_status(proto::curator_api::UpdateNodeStatusRequest {
            node_id: id.clone(),
            status: Some(status("10.1.0.4")),
        })
        .await
        .expect("UpdateNodeStatus");
    let ev = next_about(&mut w, &id).await;
    let st = ev.nodes[0].status.as_ref().expect("status");
    assert_eq!(st.external_address, "10.1.0.4");
    assert!(st.timestamp.is_some());

    // Resync: a new watch's backlog holds both nodes with the current data.
    let mut w2 = cur.watch(all_nodes()).await.expect("watch").into_inner();
    let nodes = backlog(&mut w2).await;
    assert_eq!(nodes.len(), 2);
    let other = nodes
        .iter()
        .find(|n| n.id == id)
        .expect("new node in backlog");
    assert_eq!(
        other.status.as_ref().map(|s| s.external_address.as_str()),
        Some("10.1.0.4")
    );

    // Deletion: a tombstone on both watches.
    let record = load(&t, &id).await;
    node::delete(&t.leader.leadership, &record)
        .await
        .expect("delete");
    for s in [&mut w, &mut w2] {
        let ev = next_about(s, &id).await;
        assert!(ev.nodes.is_empty());
        assert_eq!(ev.node_tombstones[0].node_id, id);
    }

    // A further re-open no longer lists it.
    let mut w3 = cur.watch(all_nodes()).await.expect("watch").into_inner();
    assert_eq!(backlog(&mut w3).await.len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_request_errors() {
    let t = TestLeader::start().await;
    let mut cur = curator(t.owner().await);
    assert_eq!(
        code(cur.watch(WatchRequest { kind: None }).await),
        Code::Unimplemented
    );
    assert_eq!(code(cur.watch(one_node("")).await), Code::InvalidArgument);
    assert_eq!(
        code(cur.watch(one_node("metropolis-a/b")).await),
        Code::InvalidArgument
    );
    // Unauthenticated callers are refused by the authorization layer.
    let mut anon = curator(t.ephemeral(&key()));
    assert_eq!(code(anon.watch(all_nodes()).await), Code::Unauthenticated);
    t.stop().await;
}
