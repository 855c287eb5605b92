//! `launch-cluster`: starts a local Metropolis cluster of `metropolis-node` processes on
//! 127.x.y.0/24, prints where its state is and how to talk to it, and keeps it running until
//! Ctrl-C (or SIGTERM), then stops every node it started. `make cluster` runs it.

#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use launch::{Cluster, ClusterOptions, RestartPolicy};

/// Start a local Metropolis cluster and keep it running until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "launch-cluster", version)]
struct Args {
    /// Number of nodes; node 0 bootstraps the cluster, the others register and are approved.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Directory for the cluster's state (must be empty or absent); a new one under the
    /// temporary directory by default. Kept after exit.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// First three octets of the node addresses (node i listens on BLOCK.(i+1)).
    #[arg(long, default_value = "127.77.0")]
    block: String,
    /// Nodes besides node 0 that become ConsensusMember (nodes 1..=K), one after the other.
    #[arg(long, default_value_t = 0)]
    consensus_members: usize,
    /// The metropolis-node binary (default: next to this binary, or $METROPOLIS_NODE_BIN).
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// The etcd binary every node runs (default: the node's own default).
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Storage security policy of the cluster.
    #[arg(long, value_enum, default_value_t = Storage::Permissive)]
    storage: Storage,
    /// Curator leader lease TTL in seconds passed to every node (default: the node's own).
    #[arg(long)]
    leader_ttl: Option<u32>,
    /// Echo every node's log lines to stderr, prefixed with the node index.
    #[arg(long)]
    echo_logs: bool,
    /// Restart nodes that exit with a fatal error (after 5 s), like machines rebooting.
    /// Nodes asking for a reboot (exit code 4) are always restarted.
    #[arg(long)]
    reboot_on_failure: bool,
    /// CA certificates (PEM) every node trusts for update bundle downloads (UpdateNode)
    /// besides the system's, e.g. a private mirror's.
    #[arg(long)]
    update_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Storage {
    Permissive,
    NeedsEncryption,
    NeedsEncryptionAndAuthentication,
    NeedsInsecure,
}

impl From<Storage> for StorageSecurityPolicy {
    fn from(s: Storage) -> Self {
        match s {
            Storage::Permissive => StorageSecurityPolicy::Permissive,
            Storage::NeedsEncryption => StorageSecurityPolicy::NeedsEncryption,
            Storage::NeedsEncryptionAndAuthentication => {
                StorageSecurityPolicy::NeedsEncryptionAndAuthentication
            }
            Storage::NeedsInsecure => StorageSecurityPolicy::NeedsInsecure,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("launch-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything is created: a missing binary is the most common first-run mistake.
    let node_binary = launch::find_node_binary(args.node_binary.as_deref())?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        // Our own directory rather than the library's self-removing one: logs and state
        // should outlive the launcher for a look afterwards.
        None => tempfile::Builder::new()
            .prefix("metropolis-cluster-")
            .tempdir()
            .context("creating a state directory")?
            .keep(),
    };
    let options = ClusterOptions {
        nodes: args.nodes,
        block: args.block.clone(),
        state_dir: Some(state_dir.clone()),
        node_binary: Some(node_binary),
        etcd_binary: args.etcd.clone(),
        consensus_members: args.consensus_members,
        storage_policy: args.storage.into(),
        leader_ttl: args.leader_ttl,
        echo_logs: args.echo_logs || ClusterOptions::default().echo_logs,
        restart: if args.reboot_on_failure {
            RestartPolicy::OnFailure
        } else {
            RestartPolicy::OnRebootRequest
        },
        update_ca: args.update_ca.clone(),
        ..ClusterOptions::default()
    };
    eprintln!(
        "launch-cluster: starting {} nodes on {}.0/24, state in {}",
        args.nodes,
        args.block,
        state_dir.display()
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let cluster = tokio::select! {
        cluster = Cluster::start(options) => cluster.with_context(|| {
            format!("launching the cluster (node logs: {}/node*/node.log)", state_dir.display())
        })?,
        // Dropping the launch kills every node started so far.
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted while starting; nodes killed"),
        _ = terminate.recv() => anyhow::bail!("terminated while starting; nodes killed"),
    };

    print_summary(&cluster).await;

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("\nlaunch-cluster: stopping every node (SIGTERM, SIGKILL after 10 s)...");
    for (index, exit) in cluster.shutdown().await {
        match exit {
            Ok(exit) => eprintln!("  node {index}: {exit}"),
            Err(e) => eprintln!("  node {index}: {e}"),
        }
    }
    eprintln!(
        "launch-cluster: stopped; state kept in {}",
        state_dir.display()
    );
    Ok(())
}

async fn print_summary(cluster: &Cluster) {
    let state = cluster.state_dir();
    let first = cluster.node(0).address();
    let endpoints: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.address().to_string())
        .collect();
    let leader = cluster.management().current_leader();
    let leader_node = leader
        .as_deref()
        .and_then(|id| cluster.index_of(id))
        .map(|i| cluster.node(i));

    let mut out = String::new();
    out.push_str(&format!(
        "\nMetropolis cluster is up: {} nodes, state in {}\n\n",
        cluster.nodes().len(),
        state.display()
    ));
    match cluster.describe().await {
        Ok(table) => out.push_str(&table),
        Err(e) => out.push_str(&format!("(could not list nodes: {e})\n")),
    }
    out.push_str("\nNodes (state directory, log):\n");
    for node in cluster.nodes() {
        out.push_str(&format!(
            "  node {}  {}  {}  {}\n",
            node.index(),
            node.id().unwrap_or_default(),
            node.address(),
            node.log_path().display()
        ));
    }
    out.push_str(&format!(
        "\nOwner credentials (metroctl --config {}):\n  owner key   {}\n  owner cert  {}\n  cluster CA  {}\n  key (PKCS#8, for grpcurl/openssl) {}\n",
        state.display(),
        path(&cluster.owner_key_path()),
        path(&cluster.owner_cert_path()),
        path(&cluster.ca_path()),
        path(&cluster.owner_pkcs8_key_path()),
    ));
    let config = state.display();
    out.push_str(&format!(
        "\nTalk to it:\n  metroctl --config {config} --endpoints {first} node describe\n  metroctl --config {config} --endpoints {} node list\n  metroctl --config {config} --endpoints {first} node logs {}\n  metroctl --config {config} --endpoints {first} approve\n",
        endpoints.join(","),
        cluster.node(0).id().unwrap_or_default(),
    ));
    if let Some(node) = leader_node {
        // Only the curator leader serves Management; the server name is its node ID (the
        // node certificate has no IP SAN).
        out.push_str(&format!(
            "  grpcurl -cacert {} -cert {} -key {} -servername {} {}:7835 metropolis.proto.api.Management/GetNodes\n",
            path(&cluster.ca_path()),
            path(&cluster.owner_cert_path()),
            path(&cluster.owner_pkcs8_key_path()),
            node.id().unwrap_or_default(),
            node.address(),
        ));
    }
    out.push_str("\nPress Ctrl-C to stop the cluster.\n");
    print!("{out}");
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
