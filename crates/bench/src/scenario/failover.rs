//! Scenario 4: a 3-node cluster (all three consensus members), then a 5-node one (all five,
//! the size operators run); the curator leader is SIGKILLed (and, in a second round, stopped
//! gracefully with SIGTERM), and we time how long until a Management write (UpdateNodeLabels)
//! succeeds through the leader-following client.
//!
//! Baseline: the store underneath — from the same instant, a raw etcd put on a surviving
//! member's socket is retried until it succeeds. Its time is what etcd itself needs (a raft
//! election if the killed member led raft); the difference is the curator's own failover
//! (lease expiry, election, clients finding the new leader).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use launch::Cluster;
use tokio::time::Instant;

use crate::cluster;
use crate::report::{Row, ScenarioResult, Unit};
use crate::stats::median;

const NAME: &str = "failover";
/// The clusters: nodes (all consensus members), loopback block, row label prefix.
const CLUSTERS: [(usize, &str, &str); 2] = [(3, "127.90.4", ""), (5, "127.90.10", "5 nodes: ")];
/// How long one write may be retried through a failover before the round fails.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// One raw etcd attempt; a put stuck on a member without quorum is abandoned and retried.
const RAW_ATTEMPT: Duration = Duration::from_millis(500);

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Rounds of each kind (median reported).
    pub rounds: usize,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Kill,
    Stop,
}

/// Runs the scenario.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let mut result = ScenarioResult {
        baseline: "from the same instant, a raw etcd put on a surviving member's socket, \
            retried until it succeeds"
            .into(),
        parameters: format!(
            "3 nodes (3 consensus members), then 5 nodes (5 members), median of {} round(s) \
             each",
            p.rounds
        ),
        ..Default::default()
    };
    for (nodes, block, prefix) in CLUSTERS {
        // The 3-node rows are kept if the 5-node cluster fails.
        let rows = async {
            let cluster = cluster::start(block, nodes, nodes - 1).await?;
            let rows = measure(&cluster, p, prefix).await;
            cluster.shutdown().await;
            rows
        }
        .await;
        match rows {
            Ok(rows) => result.rows.extend(rows),
            Err(e) if result.rows.is_empty() => return Err(e),
            Err(e) => {
                result.error = Some(format!("{nodes}-node cluster: {e:#}"));
                break;
            }
        }
    }
    Ok(result)
}

async fn measure(cluster: &Cluster, p: &Params, prefix: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (kind, label) in [
        (Kind::Kill, "SIGKILL leader → write OK"),
        (Kind::Stop, "graceful stop of leader → write OK"),
    ] {
        let label = format!("{prefix}{label}");
        let label = label.as_str();
        let (mut ours, mut base, mut known) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..p.rounds.max(1) {
            let r = one_round(cluster, kind, round)
                .await
                .with_context(|| format!("{kind:?} round {round}"))?;
            ours.push(r.write);
            base.push(r.raw);
            known.extend(r.published);
        }
        rows.push(Row::pair(
            NAME,
            label,
            Unit::Seconds,
            median(&ours),
            median(&base),
        ));
        if ours.len() > 1 {
            // Failover times are bimodal (a race decides, see BENCHMARKS.md): the worst round
            // says more than a median of three.
            let worst = ours.iter().copied().fold(0.0, f64::max);
            rows.push(Row::single(
                NAME,
                &format!("{label} (worst of {})", ours.len()),
                Unit::Seconds,
                worst,
            ));
        }
        if !known.is_empty() {
            rows.push(Row::single(
                NAME,
                &format!(
                    "{}: client knows the new leader",
                    label.split(" →").next().unwrap_or(label)
                ),
                Unit::Seconds,
                median(&known),
            ));
        }
    }
    Ok(rows)
}

/// Seconds from taking the leader down until…
struct Round {
    /// …our write succeeded.
    write: f64,
    /// …the raw etcd put succeeded.
    raw: f64,
    /// …the leader-following client had found the new leader (splits the curator's election
    /// from the client's retries).
    published: Option<f64>,
}

/// Takes the leader down, times both writes, brings it back and waits for a healthy cluster.
async fn one_round(cluster: &Cluster, kind: Kind, round: usize) -> Result<Round> {
    let leader = cluster::leader_index(cluster).await?;
    let survivor = (leader + 1) % cluster.nodes().len();
    let target = cluster.id_of(survivor)?;
    let mut raw = cluster::etcd_client(cluster, survivor).await?;
    let management = cluster.management().with_deadline(WRITE_DEADLINE);
    let value = format!("{kind:?}-{round}").to_lowercase();

    let node = cluster.node(leader).clone();
    let old = management.current_leader();
    let mut leaders = cluster.leader_channel().watch();
    let t0 = Instant::now();
    let down = tokio::spawn(async move {
        let exit = match kind {
            Kind::Kill => node.kill().await,
            Kind::Stop => node.stop().await,
        };
        (exit, t0.elapsed())
    });
    // When the client learns of the new leader: tells the curator's election apart from the
    // client's rediscovery in the total.
    let mut published = tokio::spawn(async move {
        while leaders.changed().await.is_ok() {
            let now = leaders
                .borrow_and_update()
                .as_ref()
                .map(|l| l.node_id.clone());
            if now.is_some() && now != old {
                return Some(t0.elapsed());
            }
        }
        None
    });
    let ours = async {
        management
            .update_labels(&target, &[("bench-failover", &value)], &[])
            .await?;
        anyhow::Ok(t0.elapsed().as_secs_f64())
    };
    let base = async {
        loop {
            let put = raw.put("bench/failover-probe", value.clone(), None);
            if let Ok(Ok(_)) = tokio::time::timeout(RAW_ATTEMPT, put).await {
                return t0.elapsed().as_secs_f64();
            }
            if t0.elapsed() > WRITE_DEADLINE {
                return f64::NAN;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ours, base) = tokio::join!(ours, base);
    let ours = ours?;
    if base.is_nan() {
        bail!("the raw etcd put did not succeed within {WRITE_DEADLINE:?}");
    }
    let (exit, exited) = down.await?;
    exit.context("taking the leader down")?;
    // Bounded: a write that got through without a leader change leaves nothing to wait for.
    let published = match tokio::time::timeout(Duration::from_secs(10), &mut published).await {
        Ok(Ok(known)) => known.map(|d| d.as_secs_f64()),
        _ => {
            published.abort();
            None
        }
    };
    tracing::info!(
        "{kind:?}: leader process gone after {exited:.2?}, new leader known to the client after \
         {published:?} s, write OK after {ours:.2} s, raw etcd put OK after {base:.3} s"
    );

    cluster.node(leader).start()?;
    cluster
        .node(leader)
        .wait_ready(Duration::from_secs(120))
        .await?;
    cluster.wait_all_healthy(Duration::from_secs(120)).await?;
    Ok(Round {
        write: ours,
        raw: base,
        published,
    })
}
