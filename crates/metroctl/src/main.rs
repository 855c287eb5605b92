//! The `metroctl` binary: parse, run, print the error as advice, exit with its kind's code.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use metroctl::cli::Cli;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("metroctl: cannot start the async runtime: {e}");
            return ExitCode::from(metroctl::Kind::Local.exit_code());
        }
    };
    match runtime.block_on(metroctl::cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metroctl: {e}");
            e.exit_code()
        }
    }
}

/// Warnings only, unless `-v` (or RUST_LOG) asks for more; always to standard error, so
/// standard output stays parseable.
fn init_logging(verbose: bool) {
    let default = if verbose {
        "info,rpc=debug,metroctl=debug"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
