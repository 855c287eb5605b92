//! Scenario 5: restart and bootstrap.
//!
//! * Bootstrap, in-process: from an empty directory to a Management API that answers
//!   (etcd started, cluster PKI and state written, leader elected, TLS serving, first
//!   GetNodes as the owner OK).
//! * With real node processes (`launch`): launching a 3-node cluster to all HEALTHY; one node
//!   restarted (clean stop, start, Join) until the leader has a heartbeat of its new boot; a
//!   cold restart of the whole cluster (every node SIGKILLed, all started) to all HEALTHY; and
//!   launching a 5-node cluster (five consensus members, the size operators run) to all
//!   HEALTHY.
//!
//! Baseline: the store's own start — a raw single-member etcd from an empty directory to its
//! first answered request (`test_support::etcd::TestEtcd`), median of the repeats. Every
//! restart of ours has to start at least that.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::cluster;
use crate::report::{Row, ScenarioResult, Unit};
use crate::setup;
use crate::stats::median;

const NAME: &str = "restart";
/// Most repeats of the in-process bootstrap: each takes a fresh loopback block (the allocator
/// never hands a process the block it just released, so no start waits for the previous one's
/// ports), and ten is plenty for a median.
pub const MAX_REPEATS: usize = 10;
const CLUSTER_BLOCK: &str = "127.90.7";
const CLUSTER_BLOCK_5: &str = "127.90.11";
const WAIT: Duration = Duration::from_secs(180);

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Repeats of the in-process bootstrap and of the raw etcd start.
    pub repeats: usize,
}

/// Runs the scenario; the in-process rows are kept even if the launched cluster fails.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let mut result = ScenarioResult {
        baseline: "raw single-member etcd (test_support::etcd::TestEtcd) from an empty directory \
            to its first answered request"
            .into(),
        parameters: format!(
            "bootstrap median of {} (in-process), 3-node launched cluster (3 consensus \
             members), 5-node launched cluster (5 consensus members)",
            p.repeats
        ),
        ..Default::default()
    };
    let mut etcd = Vec::new();
    let mut boot = Vec::new();
    for _ in 0..p.repeats.clamp(1, MAX_REPEATS) {
        etcd.push(raw_etcd_start().await?);
        boot.push(bootstrap().await?);
    }
    let base = median(&etcd);
    result.rows.push(Row::pair(
        NAME,
        "bootstrap: empty → Management API serving",
        Unit::Seconds,
        median(&boot),
        base,
    ));
    match launched(base).await {
        Ok(rows) => result.rows.extend(rows),
        Err(e) => result.error = Some(format!("launched cluster: {e:#}")),
    }
    match launched_5().await {
        Ok(launch) => result.rows.push(Row::pair(
            NAME,
            "launch 5-node cluster → all HEALTHY",
            Unit::Seconds,
            launch,
            base,
        )),
        Err(e) => {
            let e = format!("5-node cluster: {e:#}");
            result.error = Some(match result.error.take() {
                Some(before) => format!("{before}; {e}"),
                None => e,
            });
        }
    }
    Ok(result)
}

/// Seconds to launch a 5-node cluster (five consensus members) until all are HEALTHY.
async fn launched_5() -> Result<f64> {
    let start = Instant::now();
    let cluster = cluster::start(CLUSTER_BLOCK_5, 5, 4).await?;
    let launch = start.elapsed().as_secs_f64();
    cluster.shutdown().await;
    Ok(launch)
}

async fn raw_etcd_start() -> Result<f64> {
    let start = Instant::now();
    let etcd = test_support::etcd::TestEtcd::start().await?;
    let took = start.elapsed().as_secs_f64();
    drop(etcd);
    Ok(took)
}

async fn bootstrap() -> Result<f64> {
    let start = Instant::now();
    let t = setup::leader().await?;
    let answered = rpc::Management::direct(t.owner().await).get_nodes("").await;
    let took = start.elapsed().as_secs_f64();
    t.stop().await;
    answered.context("first GetNodes")?;
    Ok(took)
}

async fn launched(base: f64) -> Result<Vec<Row>> {
    let start = Instant::now();
    let cluster = cluster::start(CLUSTER_BLOCK, 3, 2).await?;
    let launch = start.elapsed().as_secs_f64();
    let result = async {
        // A follower: restarting the leader would measure failover, which scenario 4 does.
        let leader = cluster::leader_index(&cluster).await?;
        let index = (leader + 1) % 3;
        let node = cluster.node(index);
        node.stop().await?;
        let start = Instant::now();
        node.start()?;
        node.wait_ready(WAIT).await?;
        cluster.wait_heartbeat_since(index, start, WAIT).await?;
        let one = start.elapsed().as_secs_f64();

        cluster.kill_all().await?;
        let start = Instant::now();
        cluster.start_all().await?;
        cluster.wait_all_healthy(WAIT).await?;
        let cold = start.elapsed().as_secs_f64();
        anyhow::Ok((one, cold))
    }
    .await;
    cluster.shutdown().await;
    let (one, cold) = result?;
    Ok(vec![
        Row::pair(
            NAME,
            "launch 3-node cluster → all HEALTHY",
            Unit::Seconds,
            launch,
            base,
        ),
        Row::pair(
            NAME,
            "node restart → HEALTHY (new heartbeat)",
            Unit::Seconds,
            one,
            base,
        ),
        Row::pair(
            NAME,
            "cold restart of 3 nodes → all HEALTHY",
            Unit::Seconds,
            cold,
            base,
        ),
    ])
}
