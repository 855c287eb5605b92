//! Scenario 1: N nodes register (RegisterNode with an ephemeral certificate over a fresh TLS
//! connection), get approved by the owner (ApproveNode) and commit (CommitNode), against a
//! real single-node cluster.
//!
//! Baseline: the etcd operations those three calls make, in the same order, issued directly
//! with etcd-client on the same etcd (guarded transactions where the curator guards, plain
//! reads where the PKI reads), at the same concurrency. What the baseline leaves out is
//! exactly our cost: TLS handshakes, gRPC, authorization, certificate signing, and the
//! leader's locks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use curator::state::NodeRecord;
use curator::state::cluster::{CONFIGURATION_KEY, REGISTER_TICKET_KEY};
use curator::state::node::JOIN_KEYS_PREFIX;
use futures::{StreamExt, TryStreamExt};
use kv::etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;
use proto::common::{ClusterConfiguration, NodeState, NodeStorageSecurity, NodeTpmUsage};
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::{CommitNodeRequest, RegisterNodeRequest};
use proto::curator_private::Node;
use tonic::transport::Channel;

use crate::report::{Row, ScenarioResult, Unit};
use crate::setup::{self, Raw};
use crate::stats::Latencies;

const NAME: &str = "registration";
/// Key kinds (see `setup::key`) for the baseline's nodes, distinct from ours.
const BASE_NODE_KEY: u8 = 11;
const BASE_JOIN_KEY: u8 = 12;

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Nodes registering.
    pub nodes: usize,
    /// Nodes registering at the same time.
    pub concurrency: usize,
}

/// Per-step latencies of one run.
#[derive(Default)]
struct Steps {
    register: Latencies,
    approve: Latencies,
    commit: Latencies,
}

impl Steps {
    fn add(&mut self, [r, a, c]: [Duration; 3]) {
        self.register.push(r);
        self.approve.push(a);
        self.commit.push(c);
    }
}

/// Runs the scenario.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let t = setup::leader().await?;
    let result = measure(&t, p).await;
    t.stop().await;
    let (ours, ours_s, base, base_s) = result?;
    let n = p.nodes as f64;
    let mut rows = vec![Row::pair(
        NAME,
        "nodes/s (register → approve → commit)",
        Unit::PerSecond,
        n / ours_s,
        n / base_s,
    )];
    for (step, o, b) in [
        ("RegisterNode", &ours.register, &base.register),
        ("ApproveNode", &ours.approve, &base.approve),
        ("CommitNode", &ours.commit, &base.commit),
    ] {
        rows.push(Row::pair(
            NAME,
            &format!("{step} p50"),
            Unit::Seconds,
            o.p50(),
            b.p50(),
        ));
        rows.push(Row::pair(
            NAME,
            &format!("{step} p99"),
            Unit::Seconds,
            o.p99(),
            b.p99(),
        ));
    }
    Ok(ScenarioResult {
        rows,
        baseline: "the same etcd reads and guarded transactions per step, issued directly with \
            etcd-client at the same concurrency"
            .into(),
        parameters: format!("N={} nodes, {} at a time", p.nodes, p.concurrency),
        error: None,
    })
}

async fn measure(t: &curator::testing::TestLeader, p: &Params) -> Result<(Steps, f64, Steps, f64)> {
    let owner = t.owner().await;
    let ticket = rpc::Management::direct(owner.clone())
        .register_ticket()
        .await?;

    let started = Instant::now();
    let ours = futures::stream::iter(0..p.nodes)
        .map(|i| ours_one(t, &owner, &ticket, i))
        .buffer_unordered(p.concurrency)
        .try_fold(Steps::default(), |mut s, d| async move {
            s.add(d);
            Ok(s)
        })
        .await?;
    let ours_s = started.elapsed().as_secs_f64();

    let raw = Raw::of(t);
    let cert_size = t.ca.len();
    let started = Instant::now();
    let base = futures::stream::iter(0..p.nodes)
        .map(|i| base_one(&raw, i, cert_size))
        .buffer_unordered(p.concurrency)
        .try_fold(Steps::default(), |mut s, d| async move {
            s.add(d);
            Ok(s)
        })
        .await?;
    let base_s = started.elapsed().as_secs_f64();
    Ok((ours, ours_s, base, base_s))
}

/// One node through our API: its own connection with an ephemeral certificate (as a
/// registering node has), the owner's shared connection for the approval.
async fn ours_one(
    t: &curator::testing::TestLeader,
    owner: &Channel,
    ticket: &[u8],
    i: usize,
) -> Result<[Duration; 3]> {
    let node_key = setup::key(setup::NODE_KEY, i);
    let join_key = setup::key(setup::JOIN_KEY, i);
    let mut node = CuratorClient::new(t.ephemeral(&node_key));

    let s = Instant::now();
    node.register_node(RegisterNodeRequest {
        register_ticket: ticket.to_vec(),
        join_key: join_key.public_key().as_bytes().to_vec(),
        have_local_tpm: false,
        labels: None,
    })
    .await
    .with_context(|| format!("RegisterNode of node {i}"))?;
    let register = s.elapsed();

    let s = Instant::now();
    rpc::Management::direct(owner.clone())
        .approve(node_key.public_key().as_bytes())
        .await
        .with_context(|| format!("ApproveNode of node {i}"))?;
    let approve = s.elapsed();

    let s = Instant::now();
    node.commit_node(CommitNodeRequest {
        cluster_unlock_key: vec![7; 32],
        storage_security: NodeStorageSecurity::AuthenticatedEncrypted as i32,
    })
    .await
    .with_context(|| format!("CommitNode of node {i}"))?;
    Ok([register, approve, s.elapsed()])
}

/// One node's etcd operations, as the three handlers issue them.
async fn base_one(raw: &Raw, i: usize, cert_size: usize) -> Result<[Duration; 3]> {
    let node_key = setup::key(BASE_NODE_KEY, i);
    let join_key = setup::key(BASE_JOIN_KEY, i);
    let public = node_key.public_key();
    let id = identity::node_id(&public);
    let node_rel = format!("/nodes/{id}");
    let join_rel = format!(
        "{JOIN_KEYS_PREFIX}{}",
        hex::encode(join_key.public_key().as_bytes())
    );

    // RegisterNode: ticket, configuration, join-key index, existing record, then the save.
    let s = Instant::now();
    raw.guarded_get(REGISTER_TICKET_KEY).await?;
    let config = raw
        .guarded_get(CONFIGURATION_KEY)
        .await?
        .unwrap_or_default();
    ClusterConfiguration::decode(config.as_slice())?;
    raw.guarded_get(&join_rel).await?;
    raw.guarded_get(&node_rel).await?;
    let mut record = NodeRecord::new(
        &public,
        Node {
            join_key: join_key.public_key().as_bytes().to_vec(),
            fsm_state: NodeState::New as i32,
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent as i32,
            ..Default::default()
        },
    );
    raw.guarded(raw.save_ops(&record)).await?;
    let register = s.elapsed();

    // ApproveNode: load, save.
    let s = Instant::now();
    let stored = raw.guarded_get(&node_rel).await?.unwrap_or_default();
    Node::decode(stored.as_slice())?;
    // A raw record, as the handler's write would store it.
    record.node.fsm_state = NodeState::Standby as i32;
    raw.guarded(raw.save_ops(&record)).await?;
    let approve = s.elapsed();

    // CommitNode: configuration, record, CA certificate (ensure_ca), node certificate
    // (ensure: read it, read CA certificate and key, create-if-absent), save.
    let s = Instant::now();
    raw.guarded_get(CONFIGURATION_KEY).await?;
    let stored = raw.guarded_get(&node_rel).await?.unwrap_or_default();
    Node::decode(stored.as_slice())?;
    let ca = Arc::new(pki::Certificate::cluster_ca());
    let cert_path = pki::Certificate::node(&ca, public).cert_path();
    raw.get(&ca.cert_path()).await?;
    raw.get(&cert_path).await?;
    raw.get(&ca.cert_path()).await?;
    raw.get(&ca.key_path()).await?;
    // A stand-in of a certificate's size: signing is our cost, not the store's.
    let cert_key = raw.key(&cert_path);
    raw.txn(
        Txn::new()
            .when([Compare::create_revision(
                cert_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(cert_key.clone(), vec![0x30; cert_size], None)])
            .or_else([TxnOp::get(cert_key, None)]),
    )
    .await?;
    record.node.fsm_state = NodeState::Up as i32;
    record.node.cluster_unlock_key = vec![7; 32];
    raw.guarded(raw.save_ops(&record)).await?;
    Ok([register, approve, s.elapsed()])
}
