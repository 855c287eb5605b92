//! The `metropolis-node` process: command line, logging (everything goes into the node's
//! logtree and is printed to stdout), the supervision tree rooted at enrolment, signals, and
//! how the process ends (see [`crate::exit::ExitCode`]).

use std::time::Duration;

use clap::Parser;
use logtree::{LogTree, LogTreeLayer};
use rpc::RevocationSet;
use supervisor::Supervisor;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::cli::Args;
use crate::exit::{Exit, ExitCode, Outcome};
use crate::layout::Layout;
use crate::logs::Printer;
use crate::roleserve::{NodeEnv, Roleserve};
use crate::{decommission, enrol, params};

/// How long the runtime may take to wind down after the node stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// Runs the process; returns its exit code.
pub fn main() -> i32 {
    // Failpoints (test builds only) are armed before anything runs and stay armed until exit.
    let _failpoints = crate::failpoint::setup();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help/--version print to stdout and succeed; usage errors are fatal (1).
            let code = if e.use_stderr() {
                ExitCode::Fatal.code()
            } else {
                ExitCode::Stopped.code()
            };
            let _ = e.print();
            return code;
        }
    };
    // The stable entry point: boot the slot the boot state names (does not return then).
    crate::update::loader::boot(&args.state_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("metropolis-node: cannot start the async runtime: {e}");
            return ExitCode::Fatal.code();
        }
    };
    let code = runtime.block_on(run(args));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    if code == ExitCode::Reboot.code() && crate::update::loader::kexec_requested() {
        // Our kexec: the stopped node becomes the entry point again, same PID, which boots
        // the new slot. If that fails the exit code still asks for a reboot.
        let err = crate::update::loader::exec_entry();
        eprintln!("metropolis-node: kexec failed ({err}); exiting for a reboot instead");
    }
    code
}

/// Runs a node until it stops; returns the exit code.
pub async fn run(args: Args) -> i32 {
    let tree = LogTree::new();
    install_tracing(&tree);
    let printer = match Printer::start(&tree) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("metropolis-node: cannot print logs: {e}");
            None
        }
    };
    let exit = run_node(args, tree).await;
    match exit.code {
        // A requested reboot (or kexec) is a clean stop too.
        ExitCode::Stopped | ExitCode::Reboot => tracing::info!("{}", exit.message),
        ExitCode::Gone => tracing::warn!("{}", exit.message),
        _ => tracing::error!("{}", exit.message),
    }
    if let Some(p) = printer {
        p.stop();
    }
    if !matches!(exit.code, ExitCode::Stopped | ExitCode::Reboot) {
        eprintln!("metropolis-node: {}", exit.message);
    }
    exit.code.code()
}

/// Files every `tracing` event into the logtree (DN of the enclosing runnable, else `root`).
/// Chatty transport crates only contribute warnings.
fn install_tracing(tree: &LogTree) {
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("h2", Level::WARN)
        .with_target("hyper", Level::WARN)
        .with_target("hyper_util", Level::WARN)
        .with_target("tower", Level::WARN)
        .with_target("rustls", Level::WARN)
        .with_target("tonic", Level::WARN);
    let layer = LogTreeLayer::new(tree.clone()).with_filter(filter);
    // Fails only if a subscriber is already installed (e.g. a test harness): keep that one.
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

async fn run_node(args: Args, tree: LogTree) -> Exit {
    let layout = match Layout::prepare(&args.state_dir) {
        Ok(l) => l,
        Err(e) => return Exit::fatal(format!("cannot prepare the state directory: {e}")),
    };
    tracing::info!(
        "metropolis-node {} starting from {}: state {}, address {}",
        crate::version::text(),
        crate::update::slots::describe(crate::update::loader::running_slot()),
        layout.root.display(),
        args.address
    );
    crate::update::loader::report_rollback(layout.esp.dir());
    // The curator and NodeManagement listeners at their connection caps.
    rpc::serve::raise_open_file_limit(
        curator::listener::MAX_CONNECTIONS + rpc::serve::MAX_CONNECTIONS,
    );
    if layout.ephemeral_relocated {
        tracing::info!(
            "the state directory path is too long for unix sockets; runtime files (etcd socket) \
             live in {}",
            layout.ephemeral.display()
        );
    }
    // A wrong --update-ca would otherwise only show when NodeManagement starts (and then fail
    // it over and over): refuse to start with the reason instead.
    if let Some(path) = args.update_ca.as_deref()
        && let Err(e) = crate::update::fetch::read_extra_ca(path)
    {
        return Exit::fatal(format!("--update-ca: {e}"));
    }
    let params = match params::install(&layout.esp, args.parameters.as_deref()) {
        Ok(p) => p,
        Err(e) => return Exit::fatal(e),
    };
    let env = NodeEnv {
        layout,
        address: args.address,
        etcd_binary: args.etcd,
        etcd_quota_backend_bytes: args.etcd_quota_backend_bytes,
        etcd_peer_client_san_check: !args.etcd_skip_peer_client_san_check,
        update_ca: args.update_ca,
        leader_ttl: Duration::from_secs(args.leader_ttl),
        revocations: RevocationSet::new(),
        boot_id: boot_id(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let rs = Roleserve::new(env, tx);
    let supervisor = Supervisor::start(tree, enrol::root(rs.clone(), params));

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!("received {signal}, shutting down");
            None
        }
        o = rx.recv() => o,
    };
    let exit = match outcome {
        None => Exit {
            code: ExitCode::Stopped,
            message: "stopped".to_string(),
        },
        Some(Outcome::Exit(exit)) => exit,
        Some(Outcome::Decommission) => decommission::run(&rs, &supervisor).await,
    };
    if let Err(e) = supervisor.shutdown().await {
        tracing::warn!("shutdown: {e}");
    }
    exit
}

/// 16 random bytes naming this start of the node.
fn boot_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    // A failing RNG leaves zeros: the boot ID is informational, not a secret.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
    id
}

/// Resolves on SIGTERM or SIGINT, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; only an exit request stops the node");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
