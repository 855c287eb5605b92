//! The command line: every command, flag and its help text (with an example each), as clap
//! derive types. Parsing only; `cmd` carries the commands out.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::roles::Role;

/// Top-level help shown by `metroctl --help`.
const ABOUT: &str = "Operate a Metropolis cluster: take ownership, inspect and approve nodes, \
manage roles, read node logs, update and restart nodes, decommission and delete nodes.";

const LONG_ABOUT: &str = "\
Operate a Metropolis cluster: take ownership, inspect and approve nodes, manage roles, read \
node logs, update and restart nodes, decommission and delete nodes.

metroctl keeps its state in a config directory (--config, default $XDG_CONFIG_HOME/metroctl):
  owner-key.pem   the owner's private key (0600), made when the cluster was bootstrapped
  owner.pem       the owner certificate, written by `metroctl takeownership`
  ca.pem          the cluster CA, pinned on first contact after you confirm its fingerprint
  endpoints       the node addresses used when --endpoints is not given

Exit codes: 0 success, 1 local failure (files, timeouts, aborted), 2 usage error, 3 refused by \
the cluster, 4 cluster unreachable, 5 cluster identity not trusted (CA not accepted or changed).";

const AFTER_HELP: &str = "\
Examples:
  metroctl --endpoints 127.0.1.1 takeownership
  metroctl node describe
  metroctl approve
  metroctl node logs metropolis-0123456789abcdef -f
  metroctl node update --bundle-url https://mirror.example/metropolis-0.2.0.tar all";

/// Help heading of the flags every command accepts, so each command's own flags stand out.
const GLOBAL: &str = "Global options";

/// `metroctl`: the Metropolis operator CLI.
#[derive(Debug, Parser)]
#[command(name = "metroctl", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts (before or after the command name).
#[derive(Debug, Args)]
pub struct Global {
    /// Addresses of cluster nodes (any node: metroctl finds the leader itself), as HOST or
    /// HOST:PORT; the curator port 7835 is the default. Comma-separated or repeated. Defaults
    /// to the endpoints saved by `takeownership`.
    #[arg(long, global = true, help_heading = GLOBAL, value_delimiter = ',', env = "METROCTL_ENDPOINTS")]
    pub endpoints: Vec<String>,

    /// Config directory with owner-key.pem, owner.pem and ca.pem [default:
    /// $XDG_CONFIG_HOME/metroctl].
    #[arg(long, global = true, help_heading = GLOBAL, env = "METROCTL_CONFIG", value_name = "DIR")]
    pub config: Option<PathBuf>,

    /// On first contact, pin the cluster CA without asking if its fingerprint is this one
    /// (SHA256:<hex>, as shown by the prompt and by `metroctl cluster info`). For scripts.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "SHA256:HEX")]
    pub accept_ca_fingerprint: Option<String>,

    /// On first contact, pin whatever CA the cluster presents, without asking. Only for
    /// throwaway test clusters: it gives up protection against impersonation of the cluster.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        alias = "insecure-accept-and-persist-first-encountered-ca"
    )]
    pub insecure_accept_any_ca: bool,

    /// How long a call may keep looking for the cluster's curator leader (following leadership
    /// changes, retrying transient failures) before giving up, in seconds.
    #[arg(long, global = true, help_heading = GLOBAL, default_value_t = 15, value_name = "SECONDS")]
    pub connect_timeout: u64,

    /// Output format of commands that print data.
    #[arg(short = 'o', long, global = true, help_heading = GLOBAL, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Write the output to FILE instead of standard output.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Log what metroctl does (connections, leader changes) to standard error.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub verbose: bool,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with an upper-case header.
    Table,
    /// A JSON array (one object per node); one document per line with --watch.
    Json,
    /// A YAML sequence; documents separated by `---` with --watch.
    Yaml,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take ownership of a freshly bootstrapped cluster (escrow the owner certificate).
    #[command(
        long_about = "Take ownership of a cluster: prove possession of the owner key the cluster \
was bootstrapped with (owner-key.pem in the config directory) and save the owner certificate \
(owner.pem) that every other command uses. Repeating it fetches the same certificate again. \
Also saves --endpoints as the default for later commands.",
        after_help = "Example:\n  metroctl --config ./cluster/metroctl --endpoints 127.0.1.1 takeownership"
    )]
    Takeownership,

    /// Cluster-wide information and the parameters new nodes need.
    #[command(subcommand)]
    Cluster(ClusterCommand),

    /// Inspect and manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),

    /// Approve nodes waiting in state NEW; without IDs, list them with their public keys.
    #[command(
        long_about = "Approve nodes that registered with the register ticket and wait in state \
NEW. Compare the public key shown by `metroctl approve` with the one the new node logged \
before approving it. Approved nodes become STANDBY, then UP once they committed.",
        after_help = "Examples:\n  metroctl approve\n  metroctl approve metropolis-0123456789abcdef"
    )]
    Approve {
        /// IDs of the nodes to approve.
        ids: Vec<String>,
    },

    /// Serve a local, read-only web page of the cluster that updates itself.
    #[command(
        long_about = "Serve a read-only web page of the cluster on this machine, through this \
config's owner credentials: the nodes (state, health, roles, address, version, heartbeat age, \
labels; filtered with the same CEL expressions as --filter), the curator leader, the consensus \
members with their etcd status, and a page per node with its recent logs. The page updates \
itself as the cluster changes (Curator.Watch, pushed to the browser as server-sent events). \
It listens on loopback only, unless --allow-remote.",
        after_help = "Examples:\n  metroctl dashboard\n  metroctl dashboard --listen 127.0.0.1:8000\n  \
ssh -L 7850:127.0.0.1:7850 admin-host metroctl dashboard"
    )]
    Dashboard {
        /// Address (IP:PORT) to serve the page on; port 0 picks a free one.
        #[arg(long, default_value = crate::dashboard::DEFAULT_LISTEN, value_name = "IP:PORT")]
        listen: String,
        /// Allow a --listen address that is not loopback: whoever reaches it sees the cluster
        /// through your owner credentials.
        #[arg(long)]
        allow_remote: bool,
    },

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  metroctl completion bash > /etc/bash_completion.d/metroctl"
    )]
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// `metroctl cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the cluster CA fingerprint, the leader, the configuration and the directory.
    #[command(after_help = "Example:\n  metroctl cluster info -o json")]
    Info,

    /// Show the register ticket new nodes need, or replace it with --rotate.
    #[command(
        long_about = "Show the register ticket (hex) that new nodes present when registering. \
With --rotate, replace it with a new random one: nodes that have not registered yet then need \
new parameters (metroctl cluster node-params); registered nodes are not affected.",
        after_help = "Examples:\n  metroctl cluster ticket\n  metroctl cluster ticket --rotate"
    )]
    Ticket {
        /// Replace the ticket with a new one (e.g. after it leaked).
        #[arg(long)]
        rotate: bool,
    },

    /// Write the NodeParameters file a new node needs to register into this cluster.
    #[command(
        long_about = "Write the NodeParameters (binary protobuf) that make a new node register \
into this cluster: the cluster directory, the register ticket and the CA certificate. The file \
holds the ticket, so it is written with mode 0600. Place it as the node's \
esp/metropolis/parameters.pb, start the node, then approve it (metroctl approve).",
        after_help = "Example:\n  metroctl cluster node-params ./node3/esp/metropolis/parameters.pb"
    )]
    NodeParams {
        /// Where to write the parameters.
        file: PathBuf,
        /// Label the node registers with, KEY=VALUE (repeatable). Keys are an optional
        /// lowercase DNS name and '/', then a name (e.g. example.com/zone); checked here,
        /// because the cluster drops invalid labels when the node registers.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },

    /// Write the NodeParameters that bootstrap a new cluster owned by this config's owner key.
    #[command(
        long_about = "Write the NodeParameters (binary protobuf) that make a node bootstrap a \
new cluster owned by the owner key of the config directory (created, mode 0600, if there is \
none). Then start the node with it and run `metroctl takeownership`. No cluster is contacted.",
        after_help = "Example:\n  metroctl cluster bootstrap-params --tpm-mode disabled \
--storage-security permissive ./node1/esp/metropolis/parameters.pb"
    )]
    BootstrapParams {
        /// Where to write the parameters.
        file: PathBuf,
        /// TPM policy of the new cluster [default: the cluster's, required].
        #[arg(long, value_enum)]
        tpm_mode: Option<TpmMode>,
        /// Storage security policy of the new cluster [default: the cluster's,
        /// needs-encryption-and-authentication].
        #[arg(long, value_enum)]
        storage_security: Option<StoragePolicy>,
    },
}

/// TPM policies of a new cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TpmMode {
    Required,
    BestEffort,
    Disabled,
}

/// Storage security policies of a new cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoragePolicy {
    Permissive,
    NeedsEncryption,
    NeedsEncryptionAndAuthentication,
    NeedsInsecure,
}

/// `metroctl node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List node IDs.
    #[command(after_help = "Examples:\n  metroctl node list\n  metroctl node list \
--filter 'node.state == NODE_STATE_UP'\n  metroctl node list -o json")]
    List(SelectArgs),

    /// Show nodes: state, address, health, roles, TPM use, time since the last heartbeat.
    #[command(
        long_about = "Show nodes as a table (or JSON/YAML with -o): NODE ID, STATE, ADDRESS, \
HEALTH, ROLES, TPM, HEARTBEAT. Select nodes by ID (or `all`, the default) and/or a CEL \
--filter evaluated by the cluster on each `node` (a metropolis.proto.api.Node; constants \
NODE_STATE_* and HEALTHY, HEARTBEAT_TIMEOUT, … are defined). --watch re-renders whenever a \
node changes.",
        after_help = "Examples:\n  metroctl node describe\n  metroctl node describe \
metropolis-0123456789abcdef -o yaml\n  metroctl node describe --filter \
'has(node.roles.kubernetes_worker)' --columns id,address,roles\n  metroctl node describe \
--watch"
    )]
    Describe(SelectArgs),

    /// Give nodes a role: ConsensusMember (cm), KubernetesController (kc), KubernetesWorker (kw).
    #[command(after_help = "Example:\n  metroctl node add-role kw metropolis-0123456789abcdef")]
    AddRole(RoleArgs),

    /// Take a role from nodes: ConsensusMember (cm), KubernetesController (kc),
    /// KubernetesWorker (kw).
    #[command(
        after_help = "Example:\n  metroctl node remove-role KubernetesWorker metropolis-0123456789abcdef"
    )]
    RemoveRole(RoleArgs),

    /// Upstream's spelling: `node add role <role> <ids>`.
    #[command(hide = true, subcommand)]
    Add(RoleSubcommand),

    /// Upstream's spelling: `node remove role <role> <ids>`.
    #[command(hide = true, subcommand)]
    Remove(RoleSubcommand),

    /// Decommission an UP node without roles and wait until it is DECOMMISSIONED.
    #[command(
        long_about = "Ask the node to wipe its key material and leave the cluster, then wait \
(showing its progress) until it reports DECOMMISSIONED. The node must be UP and have no roles \
(remove them with `metroctl node remove-role`). Afterwards remove it with `metroctl node delete`. \
A node that is down or restarting when asked carries out the decommission when it next starts; \
one that will never come back is removed with `metroctl node delete <id> \
--bypass-not-decommissioned`.",
        after_help = "Example:\n  metroctl node decommission metropolis-0123456789abcdef"
    )]
    Decommission {
        /// ID of the node.
        id: String,
        /// How long to wait for DECOMMISSIONED, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
        /// Only request decommissioning, do not wait.
        #[arg(long)]
        no_wait: bool,
    },

    /// Delete a node from the cluster (NEW, STANDBY or DECOMMISSIONED; others need a bypass).
    #[command(
        long_about = "Delete a node: its record, join key and certificate are removed from the \
cluster. A node with roles, or one that is UP and not decommissioned, is only deleted with the \
matching safety bypass, after confirmation (or --yes). Use the bypasses for nodes that are gone \
for good.",
        after_help = "Examples:\n  metroctl node delete metropolis-0123456789abcdef\n  metroctl \
node delete metropolis-0123456789abcdef --bypass-not-decommissioned --yes"
    )]
    Delete {
        /// ID of the node.
        id: String,
        /// Delete even if the node still has roles.
        #[arg(long)]
        bypass_has_roles: bool,
        /// Delete even if the node is not DECOMMISSIONED (e.g. UP but dead).
        #[arg(long)]
        bypass_not_decommissioned: bool,
        /// Do not ask for confirmation when a bypass is used.
        #[arg(short, long)]
        yes: bool,
    },

    /// Print a node's Prometheus metrics (from its metrics service, port 7840).
    #[command(
        long_about = "Print the metrics one exporter of a node serves, in Prometheus' text \
format, as the owner: `node` (the node process), `etcd` (its etcd member) or `curator` (its \
curator); the last two only on consensus members.",
        after_help = "Examples:\n  metroctl node metrics metropolis-0123456789abcdef\n  \
metroctl node metrics metropolis-0123456789abcdef --exporter curator"
    )]
    Metrics {
        /// ID of the node.
        id: String,
        /// Which exporter: node, etcd or curator.
        #[arg(long, default_value = "node")]
        exporter: String,
    },

    /// Print the logs of a node (from its NodeManagement service, port 7839).
    #[command(
        long_about = "Print log entries of a node, rendered like upstream: \
`<DN> <I|W|E|F><MMDD HH:MM:SS.micro> file:line] message` for leveled entries, `<DN> R <line>` \
for raw ones. By default all entries at and below the DN (the whole tree); --exact only that DN.",
        after_help = "Examples:\n  metroctl node logs metropolis-0123456789abcdef\n  metroctl \
node logs metropolis-0123456789abcdef --dn root.role --backlog 100 -f --concise"
    )]
    Logs {
        /// ID of the node.
        id: String,
        /// DN to read (empty: the root, i.e. everything).
        #[arg(long, default_value = "")]
        dn: String,
        /// Only the DN itself, not its children.
        #[arg(short, long)]
        exact: bool,
        /// Keep streaming new entries (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// Entries of history: -1 all, 0 none, N the newest N.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
        backlog: i64,
        /// Shorten DNs to their last components.
        #[arg(short, long)]
        concise: bool,
    },

    /// Install a new version from an update bundle, rolling through the nodes.
    #[command(
        long_about = "Install the update bundle at --bundle-url (https:// only; every node \
downloads it itself, trusting the system CAs and its --update-ca) and activate it, node by \
node, so the cluster keeps answering. Nodes without the ConsensusMember role go first, up to \
--max-unavailable at a time; then consensus members strictly one at a time, the curator leader \
last, and only while every other member is HEALTHY with its curator running (so quorum is never \
at risk). After each node's UpdateNode metroctl waits until it has started again (a new boot \
ID), is HEALTHY and, for consensus members, runs its curator again, and until every consensus \
member is healthy before it touches the next one. The first node to come back names the \
version of the bundle (metroctl does not read the bundle); every node must come back on that \
version, and a node that comes back on the version it ran before stops the roll (its new \
version did not start and it rolled back, or the bundle holds the version it already ran). \
The roll stops at the first failure, naming the node and why, and lists the nodes not updated. \
With --activation none nothing restarts: the bundle is installed on every node and becomes \
active at each node's next start (no rolling wait).",
        after_help = "Examples:\n  metroctl node update --bundle-url https://mirror.example/metropolis-0.2.0.tar \
all --dry-run\n  metroctl node update --bundle-url https://mirror.example/metropolis-0.2.0.tar \
all\n  metroctl node update --bundle-url https://mirror.example/b.tar --activation reboot \
--max-unavailable 2 metropolis-0123456789abcdef metropolis-fedcba9876543210"
    )]
    Update(UpdateArgs),

    /// Restart nodes (their supervisor starts them again), or replace them in place (--kexec).
    #[command(
        long_about = "Restart nodes with NodeManagement.Reboot: by default a full restart \
(TYPE_FIRMWARE: the node stops and whatever supervises it starts it again); with --kexec the \
node replaces itself in place. With --rollback the node boots the other update slot (the \
version it ran before its last update) instead of the current one. Nodes are asked one after \
the other, without waiting for them to come back; several consensus members at once may cost \
the cluster its quorum until they are back.",
        after_help = "Examples:\n  metroctl node reboot metropolis-0123456789abcdef\n  \
metroctl node reboot --kexec --rollback metropolis-0123456789abcdef"
    )]
    Reboot {
        /// Replace the node in place (TYPE_KEXEC) instead of a full restart.
        #[arg(long)]
        kexec: bool,
        /// Boot the other update slot (the previous version) instead of the current one.
        #[arg(long)]
        rollback: bool,
        /// IDs of the nodes.
        #[arg(required = true)]
        ids: Vec<String>,
    },

    /// Stop nodes for good (they stay down until started by hand).
    #[command(
        long_about = "Stop nodes with NodeManagement.Reboot TYPE_POWER_OFF: the node stops and \
is not started again by its supervisor. Asks for confirmation unless --yes.",
        after_help = "Example:\n  metroctl node poweroff metropolis-0123456789abcdef --yes"
    )]
    Poweroff {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
        /// IDs of the nodes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `node update` arguments.
#[derive(Debug, Args, Clone)]
pub struct UpdateArgs {
    /// The https:// URL of the update bundle (made by metropolis-bundle).
    #[arg(long, value_name = "URL")]
    pub bundle_url: String,
    /// How nodes start the new version: kexec (in place), reboot (a full restart) or none
    /// (at the next start; no restart, no rolling wait).
    #[arg(long, value_enum, default_value_t = Activation::Kexec)]
    pub activation: Activation,
    /// How many nodes without the ConsensusMember role may be updating at once (consensus
    /// members always go one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_unavailable: u32,
    /// How long each node may take to come back healthy on the new version, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub node_timeout: u64,
    /// Print the plan (order and batches) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// IDs of the nodes, or `all` (every UP node).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// How an installed update is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Activation {
    /// Replace the running node in place (ACTIVATION_KEXEC).
    Kexec,
    /// A full restart (ACTIVATION_REBOOT).
    Reboot,
    /// At the node's next start (ACTIVATION_NONE).
    None,
}

/// Which nodes to show and how.
#[derive(Debug, Args, Clone)]
pub struct SelectArgs {
    /// Node IDs, or `all` (the default).
    pub ids: Vec<String>,
    /// CEL expression selecting nodes, evaluated by the cluster, e.g.
    /// 'node.state == NODE_STATE_UP'.
    #[arg(long)]
    pub filter: Option<String>,
    /// Comma-separated columns (table) or fields (JSON/YAML): id, state, address, health,
    /// roles, tpm, heartbeat, labels, pubkey, curator.
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Keep running and re-render whenever a node changes (Curator.Watch).
    #[arg(short, long)]
    pub watch: bool,
}

/// `add-role` / `remove-role` arguments.
#[derive(Debug, Args, Clone)]
pub struct RoleArgs {
    /// ConsensusMember|cm, KubernetesController|kc or KubernetesWorker|kw.
    pub role: Role,
    /// IDs of the nodes.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// The `role` level of upstream's `node add role …`.
#[derive(Debug, Subcommand)]
pub enum RoleSubcommand {
    /// Give or take a role.
    Role(RoleArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("metroctl").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_work_after_the_command() {
        let cli =
            parse(&["node", "describe", "-o", "json", "--endpoints", "a,b:1"]).expect("parses");
        assert_eq!(cli.global.format, Format::Json);
        assert_eq!(cli.global.endpoints, vec!["a", "b:1"]);
    }

    #[test]
    fn upstream_role_spelling_parses() {
        let cli = parse(&["node", "add", "role", "kw", "metropolis-00"]).expect("parses");
        match cli.command {
            Command::Node(NodeCommand::Add(RoleSubcommand::Role(args))) => {
                assert_eq!(args.role, Role::KubernetesWorker);
                assert_eq!(args.ids, vec!["metropolis-00"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_role_is_a_usage_error() {
        let err = parse(&["node", "add-role", "kx", "metropolis-00"]).expect_err("refused");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn negative_backlog_parses() {
        let cli = parse(&["node", "logs", "metropolis-00", "--backlog", "-1"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Logs { backlog: -1, .. })
        ));
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let name = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &name);
                    continue;
                }
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("metroctl"), "{name} has no example");
            }
        }
        walk(&Cli::command(), "metroctl");
    }
}
