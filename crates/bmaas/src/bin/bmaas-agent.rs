//! `bmaas-agent`: the BMaaS agent (see `bmaas::agent`). Reads its init file and heartbeats
//! to the BMaaS server until it is stopped.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bmaas::agent::{self, Config, Timing};
use bmaas::duration;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Flags; the timing defaults are upstream's.
#[derive(Debug, Parser)]
#[command(
    name = "bmaas-agent",
    about = "BMaaS agent: heartbeats, hardware report, installation"
)]
struct Flags {
    /// The init file: a serialized cloud.agent.api.AgentInit.
    #[arg(long, default_value = "/init.pb")]
    init: PathBuf,
    /// Directory installations are written to (parameters.pb, installation.json).
    #[arg(long, default_value = "/var/lib/bmaas-agent/install")]
    install_target: PathBuf,
    /// Wait between successful heartbeats.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    heartbeat_interval: Duration,
    /// Bound of one heartbeat call.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    heartbeat_timeout: Duration,
    /// First wait after a failed heartbeat.
    #[arg(long, default_value = "500ms", value_parser = duration::parse)]
    backoff_initial: Duration,
    /// Growth of the wait per consecutive failure.
    #[arg(long, default_value_t = 1.5)]
    backoff_multiplier: f64,
    /// Longest wait after failures.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
    backoff_max: Duration,
    /// Print the hardware report of this machine and exit (needs no init file).
    #[arg(long)]
    print_hardware_report: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let flags = Flags::parse();
    if flags.print_hardware_report {
        println!("{:#?}", bmaas::hwreport::gather());
        return Ok(());
    }
    let init = agent::read_init(&flags.init).context("reading the init file")?;
    let config = Config::from_init(
        init,
        flags.install_target,
        Timing {
            interval: flags.heartbeat_interval,
            timeout: flags.heartbeat_timeout,
            backoff_initial: flags.backoff_initial,
            backoff_multiplier: flags.backoff_multiplier,
            backoff_max: flags.backoff_max,
        },
    )?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    tokio::select! {
        r = agent::run(config) => r.context("agent"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = sigterm.recv() => Ok(()),
    }
}
