//! In-process pieces the scenarios share: a curator leader on real etcd with real TLS
//! ([`curator::testing::TestLeader`]), node records written in bulk, node certificates, and
//! [`Raw`], the baseline's direct view of the same etcd keys through etcd-client.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use curator::state::node::{JOIN_KEYS_PREFIX, NODES_PREFIX, NodeRecord};
use curator::testing::TestLeader;
use futures::{StreamExt, TryStreamExt};
use identity::SigningKey;
use kv::etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp, TxnOpResponse};
use prost::Message;
use proto::common::node_labels::Pair;
use proto::common::node_roles::KubernetesWorker;
use proto::common::{NodeLabels, NodeRoles, NodeState, NodeStatus, NodeTpmUsage};
use proto::curator_private::Node;

/// Node records per bulk transaction: etcd refuses transactions of more than 128 operations
/// (`--max-txn-ops` default), and each node takes two (record and join-key index).
const NODES_PER_TXN: usize = 64;
/// Concurrent certificate issuances while preparing nodes; etcd batches concurrent writes
/// into one fsync, so this makes preparing thousands of nodes take seconds, not minutes.
const ISSUE_CONCURRENCY: usize = 32;

/// Starts a leader in a loopback block of its own, with a timeout so a broken etcd fails the
/// scenario instead of hanging it.
pub async fn leader() -> Result<TestLeader> {
    tokio::time::timeout(Duration::from_secs(120), TestLeader::start())
        .await
        .context("the test leader did not start in 120 s")
}

/// The baseline's access to the curator keyspace: raw etcd-client calls on raw keys, guarded
/// by the leader's election key exactly like the curator's own transactions.
#[derive(Clone)]
pub struct Raw {
    kv: KvClient,
    prefix: String,
    lock_key: Vec<u8>,
    lock_rev: i64,
}

impl Raw {
    /// The raw view of `t`'s curator keyspace.
    pub fn of(t: &TestLeader) -> Raw {
        let ns = t.leader.ns();
        Raw {
            kv: t.consensus.client().kv_client(),
            prefix: ns.prefix().to_string(),
            lock_key: ns.key(&t.leader.leadership.lock_key),
            lock_rev: t.leader.leadership.lock_rev,
        }
    }

    /// A raw view of `keyspace` through `client` with no leadership to guard by (a launched
    /// cluster's etcd, written to from outside): only plain reads and writes work.
    pub fn unguarded(client: kv::etcd_client::Client, keyspace: &str) -> Result<Raw> {
        let ns = kv::Namespaced::root(client.clone()).sub(keyspace)?;
        Ok(Raw {
            kv: client.kv_client(),
            prefix: ns.prefix().to_string(),
            lock_key: Vec::new(),
            lock_rev: 0,
        })
    }

    /// The raw etcd key of a curator-relative key.
    pub fn key(&self, rel: &str) -> Vec<u8> {
        let mut k = self.prefix.as_bytes().to_vec();
        k.extend_from_slice(rel.as_bytes());
        k
    }

    /// Runs `ops` in one transaction guarded like the leader's (`Leadership::txn`).
    pub async fn guarded(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnOpResponse>> {
        if self.lock_key.is_empty() {
            bail!("no leadership to guard by");
        }
        let guard =
            Compare::create_revision(self.lock_key.clone(), CompareOp::Equal, self.lock_rev);
        let resp = self
            .kv
            .clone()
            .txn(Txn::new().when([guard]).and_then(ops))
            .await?;
        if !resp.succeeded() {
            bail!("guard failed: lost leadership");
        }
        Ok(resp.op_responses())
    }

    /// A guarded read of one key, as `Leadership::get`.
    pub async fn guarded_get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.guarded(vec![TxnOp::get(self.key(rel), None)]).await?;
        Ok(resp.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        }))
    }

    /// A plain read of one key (what the PKI does).
    pub async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.kv.clone().get(self.key(rel), None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// A plain transaction (no guard).
    pub async fn txn(&self, txn: Txn) -> Result<kv::etcd_client::TxnResponse> {
        Ok(self.kv.clone().txn(txn).await?)
    }

    /// The raw KV client.
    pub fn kv(&self) -> KvClient {
        self.kv.clone()
    }

    /// The raw key prefix of node records.
    pub fn nodes_prefix(&self) -> Vec<u8> {
        self.key(NODES_PREFIX)
    }

    /// Ops writing a record and its join-key index entry, as `state::node::save`.
    pub fn save_ops(&self, r: &NodeRecord) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(self.key(&r.key()), r.node.encode_to_vec(), None)];
        if !r.node.join_key.is_empty() {
            let index = format!("{JOIN_KEYS_PREFIX}{}", hex::encode(&r.node.join_key));
            ops.push(TxnOp::put(self.key(&index), r.id.clone(), None));
        }
        ops
    }
}

/// A deterministic key: fast to make in bulk and different for every `(kind, i)`.
pub fn key(kind: u8, i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[0] = kind;
    seed[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    // Varying the tail too keeps node IDs (a hash of the public key) well spread.
    seed[31] = 0xb5;
    SigningKey::from_seed(&seed)
}

/// Kinds of [`key`]s, so node and join keys never collide.
pub const NODE_KEY: u8 = 1;
/// See [`NODE_KEY`].
pub const JOIN_KEY: u8 = 2;

/// A record shaped like a real member of a big cluster: UP (every 20th STANDBY), a status
/// with an address and timestamp, every other node a KubernetesWorker, two labels.
pub fn realistic_record(i: usize, node_key: &SigningKey) -> NodeRecord {
    let state = if i.is_multiple_of(20) {
        NodeState::Standby
    } else {
        NodeState::Up
    };
    let roles = i.is_multiple_of(2).then(|| NodeRoles {
        kubernetes_worker: Some(KubernetesWorker {}),
        ..Default::default()
    });
    let public = node_key.public_key();
    NodeRecord::new(
        &public,
        Node {
            id: identity::node_id(&public),
            cluster_unlock_key: vec![0x42; 32],
            fsm_state: state as i32,
            roles,
            status: Some(NodeStatus {
                external_address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            join_key: key(JOIN_KEY, i).public_key().as_bytes().to_vec(),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent as i32,
            labels: Some(NodeLabels {
                pairs: vec![
                    Pair {
                        key: "rack".into(),
                        value: format!("r{}", i % 40),
                    },
                    Pair {
                        key: "example.com/zone".into(),
                        value: format!("z{}", i % 3),
                    },
                ],
            }),
            ..Default::default()
        },
    )
}

/// `n` realistic records with their node keys.
pub fn realistic_nodes(n: usize) -> Vec<(SigningKey, NodeRecord)> {
    (0..n)
        .map(|i| {
            let k = key(NODE_KEY, i);
            let r = realistic_record(i, &k);
            (k, r)
        })
        .collect()
}

/// Writes records (with their join-key index) straight into etcd, 64 nodes per transaction.
pub async fn write_records(raw: &Raw, records: &[NodeRecord]) -> Result<()> {
    futures::stream::iter(records.chunks(NODES_PER_TXN))
        .map(|chunk| async move {
            let ops: Vec<TxnOp> = chunk.iter().flat_map(|r| raw.save_ops(r)).collect();
            raw.txn(Txn::new().and_then(ops)).await.map(|_| ())
        })
        .buffer_unordered(4)
        .try_collect::<()>()
        .await
        .context("writing node records")
}

/// Issues (or reads back) the node certificate of each key, in order.
pub async fn node_certificates(t: &TestLeader, keys: &[SigningKey]) -> Result<Vec<Vec<u8>>> {
    let ns = t.leader.ns();
    futures::stream::iter(keys)
        .map(|k| async move {
            curator::state::pki::ensure_node_certificate(ns, &k.public_key()).await
        })
        .buffered(ISSUE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| anyhow::anyhow!("issuing node certificates: {e}"))
}
