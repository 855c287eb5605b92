//! The command line of `metropolis-node`. It is a contract with the launcher (crates/launch):
//! flags, defaults and their meaning must not change without changing it too.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Runs one Metropolis node.
#[derive(Debug, Clone, Parser)]
#[command(name = "metropolis-node", version = crate::version::text(), about)]
pub struct Args {
    /// State directory: esp/ (parameters, sealed configuration, cluster directory), data/
    /// (encrypted node data, etcd) and ephemeral/ (sockets).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// This node's own IPv4 address; the node serves on its fixed ports (curator 7835, etcd
    /// peers 7834, NodeManagement 7839) on it.
    #[arg(long)]
    pub address: Ipv4Addr,
    /// A NodeParameters file (protobuf) to install as esp/metropolis/parameters.pb. Parameters
    /// are required on every boot; without this flag the installed file is used.
    #[arg(long)]
    pub parameters: Option<PathBuf>,
    /// The etcd binary to run when this node is a consensus member.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// etcd's backend quota in bytes when this node is a consensus member: past it etcd raises
    /// its NOSPACE alarm and refuses writes until the node has compacted, defragmented and
    /// disarmed it. Unset: etcd's default (2 GiB).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub etcd_quota_backend_bytes: Option<u64>,
    /// Let etcd accept peers whose certificate does not name the address they connect from.
    /// Only for several nodes sharing one host's loopback (they all connect from 127.0.0.1);
    /// a node with an address of its own keeps etcd's peer client-SAN check on.
    #[arg(long)]
    pub etcd_skip_peer_client_san_check: bool,
    /// Curator leader lease TTL in seconds: how long a crashed leader leads on.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub leader_ttl: u64,
    /// PEM CA certificates trusted for update bundle downloads (UpdateNode) besides the
    /// system's, e.g. a private mirror's CA.
    #[arg(long)]
    pub update_ca: Option<PathBuf>,
    /// Log output format on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log entries are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One rendered logtree line per entry (`<DN> I0501 12:00:00.000000 file:line] msg`).
    Text,
}
