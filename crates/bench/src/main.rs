//! bench: how fast the control plane and BMaaS are, measured against the raw stores under
//! them (etcd, PostgreSQL) in the same run, on whatever machine runs it.
//!
//! `bench <scenario>` runs one scenario in this process; `bench all` runs each scenario in a
//! child process of its own (so one scenario's memory and failures do not leak into the
//! next) and collects their rows. Either way the table is printed and the scenarios' rows in
//! BENCHMARKS.md are replaced (see [`report`]). `--quick` scales every size down for a smoke
//! run. Benchmarks, not tests: nothing here asserts a speed.

#![forbid(unsafe_code)]

mod cluster;
mod procfs;
mod report;
mod scenario;
mod setup;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use report::ScenarioResult;
use scenario::{bmaas, failover, getnodes, heartbeat, memory, registration, restart};

/// Longest one scenario may run under `all` before it is killed.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the control plane and BMaaS against their raw stores")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    sizes: Sizes,
    /// The file the results go to.
    #[arg(long, global = true, default_value_os_t = default_out())]
    out: PathBuf,
    /// Write the scenario's result as JSON here instead of updating --out (used by `all`).
    #[arg(long, global = true, hide = true)]
    emit: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Command {
    /// 1: RegisterNode → ApproveNode → CommitNode of N nodes vs the same etcd transactions.
    Registration,
    /// 2: GetNodes over R records (all and filtered) vs a raw range read + decode.
    Getnodes,
    /// 3: K nodes heartbeating every 5 s over TLS streams vs the raw etcd read per beat.
    Heartbeat,
    /// 4: SIGKILL / graceful stop of the leader of a 3- and a 5-node cluster until a write succeeds.
    Failover,
    /// 5: bootstrap, node restart and cold cluster restart vs a raw etcd start.
    Restart,
    /// 6: M BMaaS agents heartbeating back to back vs the same SQL through sqlx.
    Bmaas,
    /// 7: leader and follower RSS at R records vs etcd's.
    Memory,
    /// Every scenario, each in its own process.
    All,
    /// The heartbeat scenario's client process (internal).
    #[command(hide = true)]
    HbClient {
        /// The job file the parent wrote.
        job: PathBuf,
    },
}

/// Sizes and durations; unset ones take the defaults (or the `--quick` ones).
#[derive(Args, Debug, Clone)]
struct Sizes {
    /// Scale everything down for a smoke run.
    #[arg(long, global = true)]
    quick: bool,
    /// Registration: nodes registering [500; quick 50].
    #[arg(long, global = true)]
    nodes: Option<usize>,
    /// Registration: nodes registering at once [16].
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    /// GetNodes and memory: node records [10000; quick 1000].
    #[arg(long, global = true)]
    records: Option<usize>,
    /// GetNodes: calls per case, median reported [5; quick 3]. Restart: bootstraps [3; quick 1].
    #[arg(long, global = true)]
    repeats: Option<usize>,
    /// Heartbeat: simulated nodes [5000; quick 200].
    #[arg(long, global = true)]
    hb_nodes: Option<usize>,
    /// Heartbeat: seconds between one node's beats [5].
    #[arg(long, global = true)]
    hb_interval: Option<f64>,
    /// Heartbeat: measured seconds [60; quick 10].
    #[arg(long, global = true)]
    hb_duration: Option<u64>,
    /// BMaaS: agents [1000; quick 100].
    #[arg(long, global = true)]
    agents: Option<usize>,
    /// BMaaS: measured seconds per side [15; quick 5].
    #[arg(long, global = true)]
    bmaas_duration: Option<u64>,
    /// Failover: rounds of each kind, median and worst reported [3; quick 1].
    #[arg(long, global = true)]
    rounds: Option<usize>,
}

impl Sizes {
    fn pick<T>(&self, given: Option<T>, full: T, quick: T) -> T {
        given.unwrap_or(if self.quick { quick } else { full })
    }
}

fn default_out() -> PathBuf {
    // The workspace root (two levels above this crate), wherever the binary is run from.
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .join("BENCHMARKS.md")
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // sqlx logs PostgreSQL's "no transaction in progress" notice when a request
                // still running at the BMaaS server's shutdown is dropped; it is noise here.
                .unwrap_or_else(|_| "warn,bench=info,sqlx::postgres::notice=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let name = match &cli.command {
        Command::HbClient { job } => {
            return scenario::hb_client::main(&job.display().to_string()).await;
        }
        Command::All => return all(&cli).await,
        other => scenario_name(other),
    };
    eprintln!("bench: running {name}");
    let result = run_scenario(&cli.command, &cli.sizes).await;
    if let Some(path) = &cli.emit {
        std::fs::write(path, serde_json::to_vec(&result)?)?;
        return Ok(());
    }
    let results = vec![(name.to_string(), result)];
    finish(&cli, &results)
}

fn scenario_name(c: &Command) -> &'static str {
    match c {
        Command::Registration => "registration",
        Command::Getnodes => "getnodes",
        Command::Heartbeat => "heartbeat",
        Command::Failover => "failover",
        Command::Restart => "restart",
        Command::Bmaas => "bmaas",
        Command::Memory => "memory",
        Command::All | Command::HbClient { .. } => "",
    }
}

/// Runs one scenario here; a failure becomes the result's error.
async fn run_scenario(command: &Command, s: &Sizes) -> ScenarioResult {
    let result = match command {
        Command::Registration => {
            registration::run(&registration::Params {
                nodes: s.pick(s.nodes, 500, 50),
                concurrency: s.pick(s.concurrency, 16, 16),
            })
            .await
        }
        Command::Getnodes => {
            getnodes::run(&getnodes::Params {
                records: s.pick(s.records, 10_000, 1_000),
                repeats: s.pick(s.repeats, 5, 3),
            })
            .await
        }
        Command::Heartbeat => {
            heartbeat::run(&heartbeat::Params {
                nodes: s.pick(s.hb_nodes, 5_000, 200),
                interval: Duration::from_secs_f64(s.pick(s.hb_interval, 5.0, 5.0)),
                duration: Duration::from_secs(s.pick(s.hb_duration, 60, 10)),
            })
            .await
        }
        Command::Failover => {
            failover::run(&failover::Params {
                rounds: s.pick(s.rounds, 3, 1),
            })
            .await
        }
        Command::Restart => {
            restart::run(&restart::Params {
                repeats: s.pick(s.repeats, 3, 1),
            })
            .await
        }
        Command::Bmaas => {
            bmaas::run(&bmaas::Params {
                agents: s.pick(s.agents, 1_000, 100),
                duration: Duration::from_secs(s.pick(s.bmaas_duration, 15, 5)),
            })
            .await
        }
        Command::Memory => {
            memory::run(&memory::Params {
                records: s.pick(s.records, 10_000, 1_000),
            })
            .await
        }
        Command::All | Command::HbClient { .. } => unreachable!("not a scenario"),
    };
    result.unwrap_or_else(|e| ScenarioResult {
        error: Some(format!("{e:#}")),
        ..Default::default()
    })
}

/// Runs every scenario in a child process of its own and collects the results.
async fn all(cli: &Cli) -> Result<()> {
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir()?;
    let mut results = Vec::new();
    for name in report::SCENARIOS {
        eprintln!("bench: running {name}");
        let emit = dir.path().join(format!("{name}.json"));
        // The same flags, with `all` replaced by the scenario.
        let mut child_args: Vec<String> = Vec::new();
        let mut replaced = false;
        for a in &args {
            if !replaced && a == "all" {
                child_args.push(name.to_string());
                replaced = true;
            } else {
                child_args.push(a.clone());
            }
        }
        let mut child = tokio::process::Command::new(&exe)
            .args(&child_args)
            .arg("--emit")
            .arg(&emit)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let status = tokio::time::timeout(SCENARIO_TIMEOUT, child.wait()).await;
        let result = match (status, std::fs::read(&emit)) {
            (Ok(Ok(s)), Ok(json)) if s.success() => serde_json::from_slice(&json)?,
            (Ok(Ok(s)), _) => ScenarioResult {
                error: Some(format!("the scenario process failed ({s})")),
                ..Default::default()
            },
            (Ok(Err(e)), _) => ScenarioResult {
                error: Some(format!("waiting for the scenario process: {e}")),
                ..Default::default()
            },
            (Err(_), _) => ScenarioResult {
                error: Some(format!("killed after {SCENARIO_TIMEOUT:?}")),
                ..Default::default()
            },
        };
        report::print(&[(name.to_string(), result.clone())]);
        results.push((name.to_string(), result));
    }
    println!();
    finish(cli, &results)
}

/// Prints the table, updates the results file, and fails if a scenario did.
fn finish(cli: &Cli, results: &[(String, ScenarioResult)]) -> Result<()> {
    report::print(results);
    let command = format!(
        "bench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    report::update_file(&cli.out, results, &command)?;
    println!("\nwritten to {}", cli.out.display());
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, r)| r.error.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
