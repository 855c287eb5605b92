//! Crash consistency of the node: a real `metropolis-node` built with failpoints is made to
//! exit at a crash point (`FAILPOINTS=<name>=return`, exit code 77: no destructor, no
//! shutdown step runs, as after a power cut at that line), then started again on the same
//! state directory without failpoints. Whatever the crash left on disk, the node must come
//! back in a consistent state: enrolled nodes boot and join, decommissioned ones finish their
//! wipe and stay gone.
//!
//! Only compiled with the `failpoints` feature (which `make test` enables): without it the
//! binary has no crash points.

#![cfg(feature = "failpoints")]

mod common;

use std::path::Path;
use std::time::Duration;

use ::node::failpoint::CRASH_EXIT_CODE;
use common::{START_TIMEOUT, bootstrap_params, cluster_ca, register_params, write_params};
use identity::SigningKey;
use prost::Message;
use proto::api::management_client::ManagementClient;
use proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, GetClusterInfoRequest, GetRegisterTicketRequest,
    decommission_node_request,
};
use proto::common::ClusterDirectory;
use proto::common::cluster_configuration::StorageSecurityPolicy;
use proto::private::SealedConfiguration;
use test_support::LoopbackBlock;
use test_support::node::{self, Exit, Node, TestNode};
use tonic::transport::Channel;

/// A node like [`node::start`]'s, with `failpoints` armed through `FAILPOINTS`.
fn start_with_failpoints(
    index: usize,
    dir: &Path,
    address: std::net::Ipv4Addr,
    parameters: Option<&Path>,
    failpoints: &str,
) -> Node {
    let mut config = node::config(index, dir, address, parameters);
    if !failpoints.is_empty() {
        config
            .env
            .push(("FAILPOINTS".to_string(), failpoints.to_string()));
    }
    let n = Node::new(config);
    n.start()
        .unwrap_or_else(|e| panic!("starting node {index}: {e}"));
    n
}

/// Waits for the node to die at a crash point and checks that it was that one.
async fn expect_crash(n: &Node, point: &str) {
    assert_eq!(
        n.expect_exit(START_TIMEOUT).await,
        Exit::Code(CRASH_EXIT_CODE),
        "the node should have crashed at {point}"
    );
    let err = n.stderr_text();
    assert!(err.contains(point), "crashed elsewhere: {err}");
}

fn sealed_configuration(state: &Path) -> Option<SealedConfiguration> {
    let bytes = std::fs::read(state.join("esp/metropolis/sealed_configuration.pb")).ok()?;
    Some(SealedConfiguration::decode(bytes.as_slice()).expect("decode sealed configuration"))
}

fn cluster_directory(state: &Path) -> Option<ClusterDirectory> {
    let bytes = std::fs::read(state.join("esp/metropolis/cluster_directory.pb")).ok()?;
    Some(ClusterDirectory::decode(bytes.as_slice()).expect("decode cluster directory"))
}

/// A node killed between sealing its configuration and writing its cluster directory
/// (bootstrap) still boots: it finds its cluster again and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_crash_between_seal_and_directory_boots() {
    let block = LoopbackBlock::allocate();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("node0");
    let owner = SigningKey::generate().expect("owner key");
    let params = write_params(
        dir.path(),
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );
    let point = "node::enrol::after_seal";
    let n = start_with_failpoints(
        0,
        &state,
        block.addr(1),
        Some(&params),
        &format!("{point}=return"),
    );
    let id = n.expect_id(START_TIMEOUT).await;
    expect_crash(&n, point).await;
    assert!(
        sealed_configuration(&state).is_some(),
        "sealed before the crash"
    );
    drop(n);

    let n = node::start(0, &state, block.addr(1), Some(&params));
    assert_eq!(n.expect_id(START_TIMEOUT).await, id);
    n.expect_line("Joined the cluster.", START_TIMEOUT).await;
    n.expect_line("NODE_READY", START_TIMEOUT).await;
    let directory = cluster_directory(&state).expect("cluster directory written on boot");
    assert!(
        directory
            .nodes
            .iter()
            .any(|d| d.addresses.iter().any(|a| a.host == block.host(1))),
        "{directory:?}"
    );
    // And again, from what the repaired boot left behind.
    assert_eq!(n.expect_stop(Duration::from_secs(30)).await, Exit::Code(0));
    n.start().expect("start again");
    n.expect_line("Joined the cluster.", START_TIMEOUT).await;
}

/// Approves the registering node `n` once it waits for approval.
async fn approve(n: &Node, mgmt: &mut ManagementClient<Channel>) {
    let line = n.expect_line("waiting for approval", START_TIMEOUT).await;
    let hex_key = line
        .rsplit("node public key ")
        .next()
        .map(|s| s.trim_end_matches(')').trim())
        .expect("public key in line");
    let pubkey = hex::decode(hex_key).expect("hex public key");
    mgmt.approve_node(ApproveNodeRequest { pubkey })
        .await
        .expect("ApproveNode");
}

/// Asks the cluster to decommission `id`.
async fn decommission(mgmt: &mut ManagementClient<Channel>, id: &str) {
    mgmt.decommission_node(DecommissionNodeRequest {
        node: Some(decommission_node_request::Node::Id(id.to_string())),
    })
    .await
    .expect("DecommissionNode");
}

/// The end state of a decommissioned node: no data, no unlock key, no join key, and every
/// further boot exits as gone (exit code 3) without joining.
async fn assert_decommissioned(n: &Node, state: &Path) {
    assert!(!state.join("data").exists(), "data directory deleted");
    let sealed = sealed_configuration(state).expect("sealed configuration kept (cluster CA)");
    assert!(sealed.node_unlock_key.is_empty(), "NUK cleared");
    assert!(sealed.join_key.is_empty(), "join key cleared");
    n.start().expect("start again");
    assert_eq!(
        n.expect_exit(Duration::from_secs(60)).await,
        Exit::Code(3),
        "a decommissioned node stays gone"
    );
    assert!(
        !n.boot_logs()
            .iter()
            .any(|l| l.contains("Joined the cluster.")),
        "it did not join"
    );
}

/// A bootstrapped node 0 (on `block`'s first address), an owner's Management client to it,
/// and register parameters for further nodes, written into `dir`.
async fn cluster_for_registration(
    block: &LoopbackBlock,
    dir: &Path,
) -> (Node, ManagementClient<Channel>, std::path::PathBuf) {
    let owner = SigningKey::generate().expect("owner");
    let p0 = write_params(
        dir,
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );
    let node0 = node::start(0, &dir.join("node0"), block.addr(1), Some(&p0));
    let id0 = node0.expect_id(START_TIMEOUT).await;
    node0.expect_line("NODE_READY", START_TIMEOUT).await;
    let host0 = block.host(1);
    let ca = cluster_ca(node0.dir());
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
        .expect("cluster info")
        .into_inner()
        .cluster_directory
        .expect("directory");
    let params = dir.join("register.pb");
    std::fs::write(
        &params,
        register_params(directory, ticket, ca).encode_to_vec(),
    )
    .expect("write");
    (node0, mgmt, params)
}

/// A registering node killed between sealing its configuration and writing its cluster
/// directory (after CommitNode: it is UP in the cluster) boots from the directory of its
/// parameters and joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_crash_between_seal_and_directory_boots() {
    let block = LoopbackBlock::allocate();
    let dir = tempfile::tempdir().expect("tempdir");
    let (node0, mut mgmt, params) = cluster_for_registration(&block, dir.path()).await;
    let state = dir.path().join("node1");
    let point = "node::enrol::after_seal";
    let n = start_with_failpoints(
        1,
        &state,
        block.addr(2),
        Some(&params),
        &format!("{point}=return"),
    );
    let id = n.expect_id(START_TIMEOUT).await;
    approve(&n, &mut mgmt).await;
    expect_crash(&n, point).await;
    assert!(
        sealed_configuration(&state).is_some(),
        "sealed before the crash"
    );
    assert!(
        cluster_directory(&state).is_none(),
        "cut before the directory"
    );
    drop(n);

    let n = node::start(1, &state, block.addr(2), None);
    n.expect_line("Joined the cluster.", START_TIMEOUT).await;
    assert_eq!(n.expect_id(START_TIMEOUT).await, id);
    n.expect_line("NODE_READY", START_TIMEOUT).await;
    let directory = cluster_directory(&state).expect("cluster directory restored on boot");
    assert!(
        directory
            .nodes
            .iter()
            .any(|d| d.addresses.iter().any(|a| a.host == block.host(1))),
        "{directory:?}"
    );
    drop(node0);
}

/// Decommissioning with a crash in the middle of the wipe, and one after it: every restart
/// converges to a wiped node that stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_crashes_converge() {
    let block = LoopbackBlock::allocate();
    let dir = tempfile::tempdir().expect("tempdir");
    let (node0, mut mgmt, params) = cluster_for_registration(&block, dir.path()).await;
    let state1 = dir.path().join("node1");
    let midway = "node::decommission::wipe_midway";
    let n1 = start_with_failpoints(
        1,
        &state1,
        block.addr(2),
        Some(&params),
        &format!("{midway}=return"),
    );
    let id1 = n1.expect_id(START_TIMEOUT).await;
    approve(&n1, &mut mgmt).await;
    n1.expect_line("NODE_READY", START_TIMEOUT).await;

    // Decommissioned, it crashes half-way through its wipe; the next boot finishes it.
    decommission(&mut mgmt, &id1).await;
    expect_crash(&n1, midway).await;
    drop(n1);
    let n1 = node::start(1, &state1, block.addr(2), None);
    assert_eq!(
        n1.expect_exit(Duration::from_secs(60)).await,
        Exit::Code(3),
        "a node restarted half-wiped finishes the wipe and exits as gone"
    );
    assert_decommissioned(&n1, &state1).await;

    // Node 2 crashes after its wipe, before it reports completion.
    let state2 = dir.path().join("node2");
    let after = "node::decommission::after_wipe";
    let n2 = start_with_failpoints(
        2,
        &state2,
        block.addr(3),
        Some(&params),
        &format!("{after}=return"),
    );
    let id2 = n2.expect_id(START_TIMEOUT).await;
    approve(&n2, &mut mgmt).await;
    n2.expect_line("NODE_READY", START_TIMEOUT).await;
    decommission(&mut mgmt, &id2).await;
    expect_crash(&n2, after).await;
    assert_decommissioned(&n2, &state2).await;
    drop(node0);
}
