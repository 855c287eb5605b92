//! Scenario 2: Management.GetNodes over R node records (default 10,000), unfiltered and with
//! the CEL filter `node.state == NODE_STATE_UP && has(node.roles.kubernetes_worker)`; time to
//! the first and to the last streamed node, as the owner sees it over TLS.
//!
//! Baseline: one raw etcd range read of the same records and a protobuf decode of each (for
//! the filtered case plus the same predicate in plain Rust). Each measurement is repeated and
//! the median reported; a warm-up call first keeps one-time costs (TLS handshake, CEL
//! environment) out of the figures.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv::etcd_client::GetOptions;
use prost::Message;
use proto::api::GetNodesRequest;
use proto::api::management_client::ManagementClient;
use proto::common::NodeState;
use proto::curator_private::Node;
use tonic::transport::Channel;

use crate::report::{Row, ScenarioResult, Unit};
use crate::setup::{self, Raw};
use crate::stats::median;

const NAME: &str = "getnodes";
/// The filter of the issue: UP workers.
pub const FILTER: &str = "node.state == NODE_STATE_UP && has(node.roles.kubernetes_worker)";

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Node records in etcd.
    pub records: usize,
    /// Measurements per case (median reported).
    pub repeats: usize,
}

/// First and last node of one listing, and how many came.
struct Listing {
    first: Duration,
    last: Duration,
    count: usize,
}

/// Runs the scenario.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let t = setup::leader().await?;
    let result = measure(&t, p).await;
    t.stop().await;
    Ok(ScenarioResult {
        rows: result?,
        baseline: "one raw etcd range read of /nodes/ plus prost decode of every record (and \
            the same predicate in plain Rust when filtered)"
            .into(),
        parameters: format!("{} records, median of {} calls", p.records, p.repeats),
        error: None,
    })
}

async fn measure(t: &curator::testing::TestLeader, p: &Params) -> Result<Vec<Row>> {
    let raw = Raw::of(t);
    let records: Vec<_> = setup::realistic_nodes(p.records)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    setup::write_records(&raw, &records).await?;
    let owner = t.owner().await;

    let mut rows = Vec::new();
    for (case, filter) in [("all", ""), ("filtered", FILTER)] {
        ours_listing(&owner, filter).await?; // warm-up
        base_listing(&raw, !filter.is_empty()).await?;
        let (mut of, mut ol, mut bf, mut bl) = (vec![], vec![], vec![], vec![]);
        let (mut ours_count, mut base_count) = (0, 0);
        for _ in 0..p.repeats {
            let o = ours_listing(&owner, filter).await?;
            let b = base_listing(&raw, !filter.is_empty()).await?;
            of.push(o.first.as_secs_f64());
            ol.push(o.last.as_secs_f64());
            bf.push(b.first.as_secs_f64());
            bl.push(b.last.as_secs_f64());
            (ours_count, base_count) = (o.count, b.count);
        }
        if ours_count != base_count {
            bail!("GetNodes {case} returned {ours_count} nodes, the raw read {base_count}");
        }
        let label = format!("GetNodes {case} ({ours_count} nodes)");
        rows.push(Row::pair(
            NAME,
            &format!("{label}: first node"),
            Unit::Seconds,
            median(&of),
            median(&bf),
        ));
        rows.push(Row::pair(
            NAME,
            &format!("{label}: last node"),
            Unit::Seconds,
            median(&ol),
            median(&bl),
        ));
    }
    Ok(rows)
}

async fn ours_listing(owner: &Channel, filter: &str) -> Result<Listing> {
    let start = Instant::now();
    let mut stream = ManagementClient::new(owner.clone())
        .get_nodes(GetNodesRequest {
            filter: filter.to_string(),
        })
        .await
        .context("GetNodes")?
        .into_inner();
    let mut first = None;
    let mut count = 0;
    while stream.message().await.context("GetNodes stream")?.is_some() {
        first.get_or_insert_with(|| start.elapsed());
        count += 1;
    }
    let last = start.elapsed();
    Ok(Listing {
        first: first.unwrap_or(last),
        last,
        count,
    })
}

async fn base_listing(raw: &Raw, filtered: bool) -> Result<Listing> {
    let start = Instant::now();
    let resp = raw
        .kv()
        .get(raw.nodes_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut first = None;
    let mut count = 0;
    for kv in resp.kvs() {
        let node = Node::decode(kv.value())?;
        let selected = !filtered
            || (node.fsm_state == NodeState::Up as i32
                && node
                    .roles
                    .as_ref()
                    .is_some_and(|r| r.kubernetes_worker.is_some()));
        if selected {
            first.get_or_insert_with(|| start.elapsed());
            count += 1;
        }
    }
    let last = start.elapsed();
    Ok(Listing {
        first: first.unwrap_or(last),
        last,
        count,
    })
}
