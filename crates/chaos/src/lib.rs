//! chaos: the fault campaign of `make chaos`. Nodes run as test hosts (a network namespace and
//! an address each, see [`net`]), started by launch's node harness through `ip netns exec`;
//! faults are real: partitions and packet loss with nftables inside a host's namespace, links
//! taken down, processes frozen (SIGSTOP) or killed (SIGKILL) through launch's [`launch::Node`].
//!
//! Each scenario ([`scenarios`]) runs a bounded number of times with a bounded time per run
//! and yields an [`Outcome`]: runs, passed runs, records lost, the worst recovery time. The
//! `chaos` binary runs them and writes `CHAOS.md` ([`report`]); `make test` runs the smoke
//! scenario (one follower partition and heal) as a test of this crate.

#![forbid(unsafe_code)]

pub mod bed;
pub mod history;
pub mod net;
pub mod report;
pub mod scenarios;

use std::time::Duration;

pub use bed::{Ledger, Testbed};
pub use net::{NetError, TestNet};

/// What stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up or changing the test network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The launcher failed (cluster start, a node wait, a client call).
    #[error(transparent)]
    Launch(#[from] launch::Error),
    /// An invariant of the scenario did not hold.
    #[error("{0}")]
    Check(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The result of one scenario over all its runs.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its number and name, as in CHAOS.md.
    pub scenario: String,
    /// Runs started.
    pub runs: u32,
    /// Runs in which every invariant held.
    pub passed: u32,
    /// Acknowledged writes and node records missing at the end, over all runs.
    pub records_lost: u64,
    /// The slowest recovery of a run (what "recovery" is depends on the scenario).
    pub worst_recovery: Option<Duration>,
    /// What was measured besides, and why runs failed.
    pub notes: Vec<String>,
    /// Wall time of the whole scenario.
    pub took: Duration,
}

/// One run's measurements.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// How long recovery took, for scenarios that measure one.
    pub recovery: Option<Duration>,
    /// Acknowledged writes and node records missing at the end.
    pub lost: u64,
    /// Measurements worth a line in the report.
    pub notes: Vec<String>,
}

impl Outcome {
    fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_string(),
            runs: 0,
            passed: 0,
            records_lost: 0,
            worst_recovery: None,
            notes: Vec::new(),
            took: Duration::ZERO,
        }
    }

    /// Adds one run's result: it passed if it returned Ok with nothing lost.
    fn record(&mut self, run: u32, result: Result<RunResult>) {
        self.runs += 1;
        match result {
            Ok(r) => {
                if r.lost == 0 {
                    self.passed += 1;
                } else {
                    self.notes
                        .push(format!("run {run}: {} records lost", r.lost));
                }
                self.records_lost += r.lost;
                if let Some(recovery) = r.recovery {
                    self.worst_recovery =
                        Some(self.worst_recovery.unwrap_or_default().max(recovery));
                }
                for note in r.notes {
                    self.notes.push(format!("run {run}: {note}"));
                }
            }
            Err(e) => {
                tracing::error!("{} run {run} failed: {e}", self.scenario);
                self.notes.push(format!("run {run} FAILED: {e}"));
            }
        }
    }

    /// Whether every run passed.
    pub fn ok(&self) -> bool {
        self.runs > 0 && self.passed == self.runs
    }
}
