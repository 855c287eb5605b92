//! The scenarios of the campaign. Each runs `runs` times (a fresh cluster per run unless it
//! says otherwise), each run bounded by [`RUN_LIMIT`], and returns an [`Outcome`].
//!
//! | # | scenario | recovery measured |
//! |---|---|---|
//! | 1 | leader partitioned from the majority | partition → the majority's new leader serves |
//! | 2 | follower partitioned, then healed | heal → its heartbeat HEALTHY again |
//! | 3 | cold restarts of 3 nodes / 3 members | power on → all HEALTHY (per cycle) |
//! | 4 | leader SIGKILLed during 100 registrations | SIGKILL → the others' new leader serves |
//! | 5 | leader SIGSTOPped for 2 × TTL | SIGSTOP → the others' new leader serves |
//! | 6 | state directory on a full filesystem; etcd NOSPACE | space freed → HEALTHY and caught up; alarm → writes again |
//! | 7 | packet loss (and delay, where the kernel has netem) | - (writes' worst latency noted) |
//! | 8 | failpoints in kill/restart cycles (one cluster) | crash → the process serves again |

mod disk;
mod failpoints;
mod faults;
mod registrations;
mod restarts;

use std::time::Duration;

use tokio::time::Instant;

use crate::{Outcome, Result, RunResult};

/// The longest one run may take before it counts as failed.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);
/// How long the cluster gets to become HEALTHY again after a fault.
pub const HEALTH: Duration = Duration::from_secs(60);

/// A scenario of the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    LeaderPartition,
    FollowerPartition,
    ColdRestarts,
    KillDuringRegistrations,
    LeaderFreeze,
    FullDisk,
    Lossy,
    Failpoints,
}

impl Scenario {
    /// Every scenario, in the order.
    pub const ALL: [Scenario; 8] = [
        Scenario::LeaderPartition,
        Scenario::FollowerPartition,
        Scenario::ColdRestarts,
        Scenario::KillDuringRegistrations,
        Scenario::LeaderFreeze,
        Scenario::FullDisk,
        Scenario::Lossy,
        Scenario::Failpoints,
    ];

    /// Its number (1-8).
    pub fn number(self) -> u8 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u8 + 1
    }

    /// Its row title.
    pub fn title(self) -> String {
        let name = match self {
            Scenario::LeaderPartition => "leader partitioned from the majority",
            Scenario::FollowerPartition => "follower partitioned, then healed",
            Scenario::ColdRestarts => "cold restarts, 3 nodes / 3 members",
            Scenario::KillDuringRegistrations => "leader SIGKILLed during registrations",
            Scenario::LeaderFreeze => "leader SIGSTOPped for 2 x lease TTL",
            Scenario::FullDisk => "state directory on a full filesystem",
            Scenario::Lossy => "10 % loss (+ 100 ms delay with netem) between nodes",
            Scenario::Failpoints => "failpoints in kill/restart loops",
        };
        format!("{} {name}", self.number())
    }

    /// Runs of the full campaign.
    pub fn default_runs(self) -> u32 {
        match self {
            Scenario::ColdRestarts => 20,
            // Failpoints alternate between odd and even cycles: two of each.
            Scenario::Failpoints => 4,
            _ => 3,
        }
    }

    /// Runs the scenario `runs` times.
    pub async fn run(self, runs: u32) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome::new(&self.title());
        match self {
            // One cluster for all cycles: the point is restarting the same cluster.
            Scenario::ColdRestarts => {
                let result = bounded(
                    RUN_LIMIT + Duration::from_secs(90) * runs,
                    restarts::cold_restarts(runs),
                )
                .await;
                match result {
                    Ok(cycles) => {
                        outcome.runs = cycles.runs;
                        outcome.passed = cycles.passed;
                        outcome.records_lost = cycles.lost;
                        outcome.worst_recovery = cycles.worst;
                        outcome.notes = cycles.notes;
                    }
                    Err(e) => {
                        outcome.runs = runs;
                        outcome.notes.push(format!("FAILED: {e}"));
                    }
                }
            }
            // One cluster for all cycles; each cycle brings a fresh machine.
            Scenario::Failpoints => {
                let result = bounded(
                    RUN_LIMIT + Duration::from_secs(240) * runs,
                    failpoints::cycles(runs),
                )
                .await;
                match result {
                    Ok(cycles) => {
                        outcome.runs = cycles.runs;
                        outcome.passed = cycles.passed;
                        outcome.worst_recovery = cycles.worst;
                        outcome.notes = cycles.notes;
                    }
                    Err(e) => {
                        outcome.runs = runs;
                        outcome.notes.push(format!("FAILED: {e}"));
                    }
                }
            }
            _ => {
                for run in 1..=runs {
                    tracing::info!("{}: run {run}/{runs}", outcome.scenario);
                    let result = bounded(RUN_LIMIT, self.once()).await;
                    outcome.record(run, result);
                }
            }
        }
        outcome.took = started.elapsed();
        outcome
    }

    async fn once(self) -> Result<RunResult> {
        match self {
            Scenario::LeaderPartition => faults::leader_partition().await,
            Scenario::FollowerPartition => faults::follower_partition().await,
            Scenario::LeaderFreeze => faults::leader_freeze().await,
            Scenario::Lossy => faults::lossy().await,
            Scenario::KillDuringRegistrations => registrations::once().await,
            Scenario::FullDisk => disk::once().await,
            _ => Err(crate::Error::Check("not a per-run scenario".into())),
        }
    }
}

/// `future`, failed if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, future: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(crate::Error::Check(format!("run exceeded {limit:?}"))))
}
