//! `chaos`: runs the fault campaign (all scenarios, or those named) and writes CHAOS.md.
//! Needs root (network namespaces), `ip`, `tc`, `nft`, etcd, and a built `metropolis-node`
//! (found next to this binary, or `$METROPOLIS_NODE_BIN`).

use std::path::PathBuf;

use anyhow::Context as _;
use chaos::scenarios::Scenario;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    about = "Runs the Metropolis fault campaign and writes CHAOS.md"
)]
struct Args {
    /// Scenario numbers to run (1-8); all if none.
    scenarios: Vec<u8>,
    /// Runs per scenario instead of each scenario's default (cycles for scenario 3).
    #[arg(long)]
    runs: Option<u32>,
    /// Where the report goes.
    #[arg(long, default_value = "CHAOS.md")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    test_support::logging::init_with("chaos=info,launch=info");
    chaos::net::probe().context("test hosts need root, iproute2 (ip, tc) and nftables (nft)")?;
    let chosen: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|n| {
                Scenario::ALL
                    .into_iter()
                    .find(|s| s.number() == *n)
                    .with_context(|| format!("no scenario {n}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut outcomes = Vec::new();
    for scenario in chosen {
        let runs = args.runs.unwrap_or_else(|| scenario.default_runs());
        eprintln!("=== chaos: {} ({runs} runs)", scenario.title());
        let outcome = runtime.block_on(scenario.run(runs));
        eprintln!(
            "=== chaos: {}: {}/{} passed, {} lost, worst recovery {:?}, took {:.0?}",
            outcome.scenario,
            outcome.passed,
            outcome.runs,
            outcome.records_lost,
            outcome.worst_recovery,
            outcome.took
        );
        outcomes.push(outcome);
        // Written after every scenario, so an interrupted campaign keeps what it measured.
        write_report(&args.out, &outcomes)?;
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.scenario.as_str())
        .collect();
    eprintln!("=== chaos: report in {}", args.out.display());
    if !failed.is_empty() {
        anyhow::bail!("scenarios not passed: {}", failed.join("; "));
    }
    Ok(())
}

fn write_report(out: &PathBuf, outcomes: &[chaos::Outcome]) -> anyhow::Result<()> {
    let date = time::OffsetDateTime::now_utc().date().to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let text = chaos::report::render(outcomes, &date, cores, "make chaos");
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}
