//! e2e: only the real curator leader is obeyed. A rogue curator (see `common/rogue.rs`)
//! presents the genuine certificate of a node of a real test cluster, names itself the
//! leader and orders a real node process (the victim) to decommission itself, i.e. to wipe
//! its data. The victim's cluster directory is made to list the rogue first, so leader
//! discovery reaches it before any genuine curator.
//!
//! * `revoked_curator_is_refused`: the rogue holds the certificate of a deleted node (revoked
//!   in the cluster CRL);
//! * `non_member_curator_is_refused`: the rogue holds the (valid) certificate of a node
//!   without the ConsensusMember role, reached through an address-only directory entry;
//! * `unconfirmed_order_is_not_obeyed`: the rogue holds the certificate of a deleted consensus
//!   member, and the victim cannot know: it was down when the member was deleted (its CRL is
//!   stale, its directory still lists the member) and the one genuine curator is unreachable
//!   (frozen) when the victim comes back. The rogue passes both leader checks; its order must
//!   still not be carried out, because nothing confirms it. Once the genuine curator is back,
//!   the victim learns the revocation, drops the rogue, and a genuine decommissioning of the
//!   victim still works.
//!
//! In each case the victim must not act on the rogue's order (a `SECURITY:` warning naming
//! the rogue), keep its data and keep running as a healthy member of the real cluster; in the
//! first two it must never call a Curator method on the rogue at all.

mod common;
#[path = "common/rogue.rs"]
mod rogue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Clock, GONE, HEALTH};
use identity::NodeCredentials;
use launch::proto::common::ClusterDirectory;
use launch::proto::common::NodeState;
use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use launch::proto::common::cluster_directory::{Node as DirectoryNode, node::Address};
use launch::{Cluster, DeleteBypass, Exit, Node};
use prost::Message as _;
use rogue::Rogue;
use test_support::LoopbackBlock;
use tokio::time::Instant;

/// How long the victim is given to act on the rogue's order (it acts within seconds when it
/// obeys).
const VERDICT: Duration = Duration::from_secs(60);

/// A 3-node cluster with INSECURE storage: the rogue can then answer JoinNode (the cluster
/// unlock key is empty) and the test can read node credentials from the data directories.
async fn cluster(block: &LoopbackBlock) -> Cluster {
    let mut options = common::options(3, block);
    options.storage_policy = StorageSecurityPolicy::NeedsInsecure;
    common::start(options).await
}

/// A node's credentials, read from its (unencrypted) data directory: what an attacker holding
/// the machine of that node has.
fn stolen_credentials(node: &Node) -> NodeCredentials {
    NodeCredentials::load(&node.data_dir().join("node").join("credentials"))
        .expect("node credentials in the INSECURE data directory")
}

/// Writes the victim's cluster directory: these `(node ID, address)` entries, in this order
/// (an empty ID for an address-only entry).
fn write_directory(victim: &Node, entries: &[(&str, String)]) {
    let directory = ClusterDirectory {
        nodes: entries
            .iter()
            .map(|(id, host)| DirectoryNode {
                public_key: Vec::new(),
                addresses: vec![Address { host: host.clone() }],
                id: id.to_string(),
            })
            .collect(),
    };
    let path = victim.esp_dir().join("cluster_directory.pb");
    std::fs::write(&path, directory.encode_to_vec())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The curator address of a node.
fn curator_addr(node: &Node) -> SocketAddr {
    SocketAddr::new(node.address().into(), rpc::CURATOR_PORT)
}

/// Waits until the victim either refused the rogue (a SECURITY warning naming it) or exited
/// (obeying the rogue's order to decommission ends with exit code 3); returns the victim's
/// SECURITY lines.
async fn verdict(victim: &Node, rogue: &Rogue, rogue_id: &str) -> Vec<String> {
    let deadline = Instant::now() + VERDICT;
    loop {
        let security: Vec<String> = victim
            .boot_logs()
            .into_iter()
            .filter(|l| l.contains("SECURITY:") && l.contains(rogue_id))
            .collect();
        if !security.is_empty() || !victim.is_running() {
            return security;
        }
        assert!(
            Instant::now() < deadline,
            "the victim neither refused the rogue nor exited within {VERDICT:?}; the rogue saw \
             {:?}:\n{}",
            rogue.calls(),
            victim.tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The victim kept its data, never called a Curator method on the rogue, and runs on as a
/// healthy node of the real cluster.
async fn assert_unharmed(
    cluster: &Cluster,
    victim: &Node,
    data_before: &[PathBuf],
    rogue: &Rogue,
    security: &[String],
) {
    assert_kept(victim, data_before, rogue, security);
    assert!(
        rogue.obeyed().is_empty(),
        "the victim followed the rogue as its leader: {:?}:\n{}",
        rogue.obeyed(),
        victim.tail(40)
    );
    cluster
        .wait_all_healthy(HEALTH)
        .await
        .expect("the victim is a healthy node of the real cluster");
    assert!(
        rogue.obeyed().is_empty(),
        "the victim followed the rogue later: {:?}",
        rogue.obeyed()
    );
}

/// The victim kept its data, runs, and logged a SECURITY warning naming the rogue.
fn assert_kept(victim: &Node, data_before: &[PathBuf], rogue: &Rogue, security: &[String]) {
    let data_after = test_support::fs::files_below(&victim.data_dir());
    let lost: Vec<&PathBuf> = data_before
        .iter()
        .filter(|f| !data_after.contains(f))
        .collect();
    assert!(
        lost.is_empty(),
        "the victim lost {lost:?} (exit: {:?}); the rogue saw {:?}:\n{}",
        victim.exit(),
        rogue.calls(),
        victim.tail(40)
    );
    assert!(
        victim.is_running(),
        "the victim stopped ({:?}):\n{}",
        victim.exit(),
        victim.tail(40)
    );
    assert!(
        !security.is_empty(),
        "the victim did not log a SECURITY warning naming the rogue; the rogue saw {:?}:\n{}",
        rogue.calls(),
        victim.tail(40)
    );
}

/// The rogue holds the certificate of a deleted node: revoked in the cluster CRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_curator_is_refused() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let cluster = cluster(&block).await;
    clock.lap("cluster of 3 launched");
    let (id0, id1, id2) = (
        cluster.id_of(0).expect("id"),
        cluster.id_of(1).expect("id"),
        cluster.id_of(2).expect("id"),
    );
    let (node0, node1, victim) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let stolen = stolen_credentials(node1);

    // Node 1 is deleted (its certificate revoked) while the victim runs.
    node1.kill().await.expect("node 1 powered off");
    cluster.mark_removed(1);
    cluster.refresh_leader_channel().expect("leader channel");
    cluster
        .management()
        .delete(
            &id1,
            DeleteBypass {
                has_roles: false,
                not_decommissioned: true,
            },
        )
        .await
        .expect("delete node 1");
    cluster
        .wait_node_gone(1, HEALTH)
        .await
        .expect("node 1 deleted");
    clock.lap("node 1 deleted");

    // The victim reboots with the deleted node's address first in its directory, and there
    // is the rogue with node 1's certificate.
    victim.stop().await.expect("victim stopped");
    write_directory(
        victim,
        &[
            (&id1, node1.address().to_string()),
            (&id0, node0.address().to_string()),
        ],
    );
    let data_before = test_support::fs::files_below(&victim.data_dir());
    let rogue = Rogue::start(curator_addr(node1), stolen, id2.clone()).await;
    victim.start().expect("victim started");
    let security = verdict(victim, &rogue, &id1).await;
    clock.lap("victim decided");
    assert_unharmed(&cluster, victim, &data_before, &rogue, &security).await;
    clock.lap("victim unharmed and healthy");
    drop(rogue);
    cluster.shutdown().await;
}

/// The rogue holds the valid certificate of a node without the ConsensusMember role (its
/// machine taken over), at an address the victim's directory lists without a node ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_curator_is_refused() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let cluster = cluster(&block).await;
    clock.lap("cluster of 3 launched");
    let (id0, id1, id2) = (
        cluster.id_of(0).expect("id"),
        cluster.id_of(1).expect("id"),
        cluster.id_of(2).expect("id"),
    );
    let (node0, node1, victim) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let stolen = stolen_credentials(node1);
    node1.kill().await.expect("node 1 powered off");
    // Node 1 stays a member (UP, no roles); the harness just stops expecting it.
    cluster.mark_removed(1);
    cluster.refresh_leader_channel().expect("leader channel");

    victim.stop().await.expect("victim stopped");
    write_directory(
        victim,
        &[
            ("", node1.address().to_string()),
            (&id0, node0.address().to_string()),
        ],
    );
    let data_before = test_support::fs::files_below(&victim.data_dir());
    let rogue = Rogue::start(curator_addr(node1), stolen, id2.clone()).await;
    victim.start().expect("victim started");
    let security = verdict(victim, &rogue, &id1).await;
    clock.lap("victim decided");
    assert_unharmed(&cluster, victim, &data_before, &rogue, &security).await;
    clock.lap("victim unharmed and healthy");
    drop(rogue);
    cluster.shutdown().await;
}

/// The rogue holds the certificate of a deleted consensus member that the victim, down at
/// the time, still takes for one; the genuine curator is frozen while the victim comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_order_is_not_obeyed() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let mut options = common::options(3, &block);
    options.storage_policy = StorageSecurityPolicy::NeedsInsecure;
    options.consensus_members = 1;
    let cluster = common::start(options).await;
    clock.lap("cluster of 3 launched, node 1 a consensus member");
    let (id0, id1, id2) = (
        cluster.id_of(0).expect("id"),
        cluster.id_of(1).expect("id"),
        cluster.id_of(2).expect("id"),
    );
    let (node0, node1, victim) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let stolen = stolen_credentials(node1);

    // The victim is down while consensus member node 1 is deleted: it keeps its old CRL and
    // its directory listing node 1 as a consensus member.
    victim.stop().await.expect("victim stopped");
    write_directory(
        victim,
        &[
            (&id1, node1.address().to_string()),
            (&id0, node0.address().to_string()),
        ],
    );
    // First its ConsensusMember role goes (removing its etcd member, so node 0 keeps a
    // quorum; etcd refuses while the new member has not been connected for long, so this is
    // retried), then the node is deleted.
    cluster.mark_removed(1);
    cluster.refresh_leader_channel().expect("leader channel");
    let deadline = Instant::now() + HEALTH;
    while let Err(e) = cluster
        .management()
        .set_roles(&id1, Some(false), None, None)
        .await
    {
        assert!(
            Instant::now() < deadline,
            "node 1 keeps its ConsensusMember role: {e}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    node1.kill().await.expect("node 1 powered off");
    cluster
        .management()
        .delete(
            &id1,
            DeleteBypass {
                has_roles: false,
                not_decommissioned: true,
            },
        )
        .await
        .expect("delete node 1");
    // (Not `wait_node_gone`: that one fails on the victim being down.)
    let deadline = Instant::now() + HEALTH;
    while cluster
        .management()
        .get_nodes("")
        .await
        .expect("GetNodes")
        .iter()
        .any(|n| n.id == id1)
    {
        assert!(Instant::now() < deadline, "node 1 still listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    clock.lap("consensus member node 1 deleted while the victim was down");

    // The victim comes back while the only genuine curator hangs, and finds the rogue.
    let data_before = test_support::fs::files_below(&victim.data_dir());
    let rogue = Rogue::start(curator_addr(node1), stolen, id2.clone()).await;
    node0.freeze();
    victim.start().expect("victim started");
    let security = verdict(victim, &rogue, &id1).await;
    clock.lap("victim decided while node 0 was frozen");
    node0.thaw();
    // The harness's own client may have learned node 1's address when node 1 led for a
    // while, and followed the rogue while node 0 was frozen (it does not check roles); start
    // it afresh from the nodes still in the cluster.
    cluster.refresh_leader_channel().expect("leader channel");
    assert_kept(victim, &data_before, &rogue, &security);
    assert!(
        !rogue
            .calls()
            .iter()
            .any(|c| c == "Curator.ReportDecommission"),
        "the victim started decommissioning on the rogue's word: {:?}",
        rogue.calls()
    );

    // With node 0 back, the victim learns the revocation and follows the real leader.
    cluster
        .wait_all_healthy(HEALTH)
        .await
        .expect("the victim is a healthy node of the real cluster again");
    clock.lap("node 0 thawed, victim healthy");
    let data_after = test_support::fs::files_below(&victim.data_dir());
    assert!(
        data_before.iter().all(|f| data_after.contains(f)),
        "the victim lost data after all: {data_after:?}"
    );

    // A genuine decommissioning still works.
    cluster
        .management()
        .decommission(&id2)
        .await
        .expect("decommission the victim");
    cluster.mark_removed(2);
    cluster
        .wait_node_state(2, NodeState::Decommissioned, GONE)
        .await
        .expect("victim DECOMMISSIONED");
    let exit = victim.wait_exit(GONE).await.expect("victim stops");
    assert_eq!(exit, Exit::Code(3), "{}", victim.tail(30));
    let leftovers = test_support::fs::files_below(&victim.data_dir());
    assert!(leftovers.is_empty(), "victim kept {leftovers:?}");
    clock.lap("genuine decommissioning of the victim done");
    drop(rogue);
    cluster.shutdown().await;
}
