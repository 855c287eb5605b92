//! Scenario 3: one 3-node cluster with 3 consensus members, powered off as a whole (SIGKILL
//! to every node and its etcd at once) and on again, cycle after cycle: every cycle must end
//! with all nodes HEALTHY and every record and acknowledged write intact.

use std::time::Duration;

use tokio::time::Instant;

use super::HEALTH;
use crate::{Error, Ledger, Result, Testbed};

/// What the cycles showed.
#[derive(Debug, Default)]
pub struct Cycles {
    pub runs: u32,
    pub passed: u32,
    pub lost: u64,
    pub worst: Option<Duration>,
    pub notes: Vec<String>,
}

/// Runs `cycles` cold restarts; stops at the first failed cycle (the cluster is gone then).
pub async fn cold_restarts(cycles: u32) -> Result<Cycles> {
    let bed = Testbed::start(3, 3).await?;
    let mut ledger = Ledger::new(&bed, 0, Duration::from_secs(60))?;
    ledger
        .write()
        .await
        .map_err(|e| Error::Check(format!("first write: {e}")))?;
    let mut out = Cycles::default();
    let mut times = Vec::new();
    for cycle in 1..=cycles {
        out.runs += 1;
        match one_cycle(&bed, &mut ledger).await {
            Ok((took, lost)) => {
                times.push(took);
                out.lost += lost;
                if lost == 0 {
                    out.passed += 1;
                } else {
                    out.notes
                        .push(format!("cycle {cycle}: {lost} records or writes lost"));
                }
                out.worst = Some(out.worst.unwrap_or_default().max(took));
            }
            Err(e) => {
                out.notes.push(format!("cycle {cycle} FAILED: {e}"));
                break;
            }
        }
    }
    if !times.is_empty() {
        let total: Duration = times.iter().sum();
        out.notes.push(format!(
            "power on → all HEALTHY per cycle: {} (mean {:.1} s)",
            times
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            total.as_secs_f64() / times.len() as f64
        ));
    }
    out.notes.push(format!(
        "{} acknowledged writes over all cycles",
        ledger.acked()
    ));
    Ok(out)
}

/// One power cycle: returns how long from power on to all HEALTHY, and what was lost.
async fn one_cycle(bed: &Testbed, ledger: &mut Ledger) -> Result<(Duration, u64)> {
    bed.cluster.kill_all().await?;
    let started = Instant::now();
    bed.cluster.start_all().await?;
    bed.cluster.wait_all_healthy(HEALTH).await?;
    // Health of the previous boot is still on record for a while: every node must have sent
    // a heartbeat from this boot.
    for index in 0..bed.len() {
        bed.cluster
            .wait_heartbeat_since(index, started, HEALTH)
            .await?;
    }
    let took = started.elapsed();
    let lost = ledger.lost().await? + bed.lost_records().await?;
    ledger
        .write()
        .await
        .map_err(|e| Error::Check(format!("write after the restart: {e}")))?;
    Ok((took, lost))
}
