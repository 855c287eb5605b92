//! Scenario 7: memory at R node records (default 10,000).
//!
//! * Leader, in-process: a curator leader whose etcd holds R realistic records, with a
//!   heartbeat recorded for each, after serving one unfiltered GetNodes (to a client in this
//!   process that drops every node as it arrives). Run in its own process (`all` starts one
//!   per scenario), so the RSS is the leader's.
//! * Follower and leader node processes (`launch`): a 3-node cluster whose etcd gets the same
//!   R records, after one GetNodes; RSS of the `metropolis-node` processes.
//!
//! Baseline: the RSS of the etcd process holding the same records — the store underneath.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster;
use crate::procfs;
use crate::report::{Row, ScenarioResult, Unit};
use crate::setup::{self, Raw};

const NAME: &str = "memory";
const CLUSTER_BLOCK: &str = "127.90.8";
/// Time the launched nodes get to take in the new records (watches, caches) before their
/// memory is read.
const SETTLE: Duration = Duration::from_secs(5);

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Node records.
    pub records: usize,
}

/// Runs the scenario; the in-process rows are kept even if the launched cluster fails.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let mut result = ScenarioResult {
        baseline: "RSS of the etcd process holding the same records".into(),
        parameters: format!("R={} records; launched cluster: 3 nodes", p.records),
        ..Default::default()
    };
    result.rows = in_process(p).await?;
    match launched(p).await {
        Ok(rows) => result.rows.extend(rows),
        Err(e) => result.error = Some(format!("launched cluster: {e:#}")),
    }
    Ok(result)
}

async fn in_process(p: &Params) -> Result<Vec<Row>> {
    let t = setup::leader().await?;
    let result = async {
        let before = procfs::rss(None)?;
        let raw = Raw::of(&t);
        let records: Vec<_> = setup::realistic_nodes(p.records)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        setup::write_records(&raw, &records).await?;
        for r in &records {
            t.leader.heartbeats.beat(&r.id);
        }
        drop(records);
        let n = rpc::Management::direct(t.owner().await)
            .get_nodes("")
            .await?
            .len();
        anyhow::ensure!(n > p.records, "GetNodes listed {n} nodes");
        let etcd = t.consensus.pid.context("etcd pid unknown")?;
        let rss = procfs::rss(None)?;
        Ok(vec![
            Row::pair(
                NAME,
                &format!("leader RSS at {} nodes", p.records),
                Unit::Bytes,
                rss,
                procfs::rss(Some(etcd))?,
            ),
            Row::pair(
                NAME,
                "leader peak RSS (VmHWM)",
                Unit::Bytes,
                procfs::peak_rss(None)?,
                procfs::peak_rss(Some(etcd))?,
            ),
            Row::single(
                NAME,
                "leader RSS growth per node record",
                Unit::Bytes,
                (rss - before) / p.records as f64,
            ),
        ])
    }
    .await;
    t.stop().await;
    result
}

async fn launched(p: &Params) -> Result<Vec<Row>> {
    let cluster = cluster::start(CLUSTER_BLOCK, 3, 2).await?;
    let result = async {
        let leader = cluster::leader_index(&cluster).await?;
        let follower = (leader + 1) % 3;
        let raw = Raw::unguarded(
            cluster::etcd_client(&cluster, leader).await?,
            curator::KEYSPACE,
        )?;
        let records: Vec<_> = setup::realistic_nodes(p.records)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        setup::write_records(&raw, &records).await?;
        tokio::time::sleep(SETTLE).await;
        let listed = cluster.management().get_nodes("").await?.len();
        anyhow::ensure!(listed > p.records, "GetNodes listed {listed} nodes");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut rows = Vec::new();
        for (role, index) in [("follower", follower), ("leader", leader)] {
            let (node, etcd) = cluster::pids(&cluster, index);
            let node = node.with_context(|| format!("no process of node {index}"))?;
            let etcd = etcd.with_context(|| format!("no etcd of node {index}"))?;
            rows.push(Row::pair(
                NAME,
                &format!("{role} node process RSS at {} nodes", p.records),
                Unit::Bytes,
                procfs::rss(Some(node))?,
                procfs::rss(Some(etcd))?,
            ));
        }
        anyhow::Ok(rows)
    }
    .await;
    cluster.shutdown().await;
    result
}
