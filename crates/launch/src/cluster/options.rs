//! What a cluster is launched with: its size, its loopback address block, the timeouts of its
//! waits, and the switches read from the environment.

use super::*;

/// Highest node count one /24 block can hold (.1 … .254).
pub(super) const MAX_NODES: usize = 254;

/// How long each phase may take. Upstream's e2e timings (60 s for the directory and rejoins,
/// 20 s for health) doubled: these clusters run on loaded 2-core CI machines.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From start to `NODE_READY` of a node enrolling (bootstrap or register+commit).
    pub node_ready: Duration,
    /// Taking ownership once node 0 is ready.
    pub ownership: Duration,
    /// The cluster directory listing node 0 with its address.
    pub directory: Duration,
    /// Registered nodes appearing as NEW, and approved ones becoming UP.
    pub enrolment: Duration,
    /// A new consensus member becoming a voter with a running curator.
    pub consensus: Duration,
    /// A restarted node joining again.
    pub rejoin: Duration,
    /// All nodes reporting HEALTHY.
    pub health: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            node_ready: Duration::from_secs(120),
            ownership: Duration::from_secs(60),
            directory: Duration::from_secs(120),
            enrolment: Duration::from_secs(120),
            consensus: Duration::from_secs(120),
            rejoin: Duration::from_secs(120),
            health: Duration::from_secs(40),
        }
    }
}

/// What cluster to launch.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (node 0 bootstraps, the others register).
    pub nodes: usize,
    /// The first three octets of the nodes' addresses, `127.x.y`; node `i` gets `127.x.y.(i+1)`.
    /// Clusters running side by side need distinct blocks (the ports are fixed).
    pub block: String,
    /// Where the cluster's state goes; a new temporary directory (removed on drop) if None.
    pub state_dir: Option<PathBuf>,
    /// The `metropolis-node` binary; found by [`find_node_binary`] if None.
    pub node_binary: Option<PathBuf>,
    /// `--etcd` for every node; the node's own default if None.
    pub etcd_binary: Option<PathBuf>,
    /// How many nodes besides node 0 become ConsensusMember, one at a time (nodes 1..=k).
    pub consensus_members: usize,
    /// Storage security policy of the cluster. PERMISSIVE lets nodes use the recommended
    /// authenticated encryption; NEEDS_INSECURE makes every node store data in the clear.
    pub storage_policy: StorageSecurityPolicy,
    /// TPM policy; DISABLED by default (no TPM here).
    pub tpm_mode: TpmMode,
    /// `--leader-ttl` of every node; the node's default if None.
    pub leader_ttl: Option<u32>,
    /// Echo all node output to stderr (default: env `LAUNCH_ECHO_LOGS` set and not "0").
    pub echo_logs: bool,
    /// Restart policy of every node.
    pub restart: RestartPolicy,
    /// `--update-ca` of every node: CA certificates (PEM) trusted for update bundle downloads
    /// besides the system's, e.g. a private mirror's.
    pub update_ca: Option<PathBuf>,
    /// Timeouts of each phase.
    pub timeouts: Timeouts,
    /// Test hosts: node `i` runs on `hosts[i]` (its address, and the command it is run
    /// through, e.g. `ip netns exec <ns>`) instead of on `block`. Empty: every node on `block`.
    pub hosts: Vec<NodeHost>,
    /// More `metropolis-node` arguments for every node (e.g. `--etcd-quota-backend-bytes`).
    pub node_args: Vec<String>,
}

/// Where one node runs when it is not on a loopback block: a host of its own, typically a
/// network namespace reachable from the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHost {
    /// The node's address on that host.
    pub address: Ipv4Addr,
    /// The command prefix that runs a program on that host ([`NodeConfig::wrapper`]).
    pub wrapper: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            block: "127.77.0".to_string(),
            state_dir: None,
            node_binary: None,
            etcd_binary: None,
            consensus_members: 0,
            storage_policy: StorageSecurityPolicy::Permissive,
            tpm_mode: TpmMode::Disabled,
            leader_ttl: None,
            echo_logs: env_flag("LAUNCH_ECHO_LOGS"),
            restart: RestartPolicy::default(),
            update_ca: None,
            timeouts: Timeouts::default(),
            hosts: Vec::new(),
            node_args: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// `nodes` nodes on the block `127.x.y`, everything else default.
    pub fn new(nodes: usize, block: &str) -> Self {
        Self {
            nodes,
            block: block.to_string(),
            ..Self::default()
        }
    }

    /// The address of node `index`.
    pub fn address(&self, index: usize) -> Result<Ipv4Addr> {
        if !self.hosts.is_empty() {
            return self
                .hosts
                .get(index)
                .map(|h| h.address)
                .ok_or_else(|| Error::Invalid(format!("node index {index} has no host")));
        }
        let [a, b, c] = parse_block(&self.block)?;
        let last = u8::try_from(index + 1)
            .ok()
            .filter(|n| *n < 255)
            .ok_or_else(|| {
                Error::Invalid(format!("node index {index} does not fit a /24 block"))
            })?;
        Ok(Ipv4Addr::new(a, b, c, last))
    }

    /// The command node `index` is run through (empty: none).
    pub fn wrapper(&self, index: usize) -> Vec<String> {
        self.hosts
            .get(index)
            .map(|h| h.wrapper.clone())
            .unwrap_or_default()
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.hosts.is_empty() {
            parse_block(&self.block)?;
        } else if self.hosts.len() < self.nodes {
            return Err(Error::Invalid(format!(
                "{} nodes need as many hosts, not {}",
                self.nodes,
                self.hosts.len()
            )));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(Error::Invalid(format!(
                "a cluster has 1 to {MAX_NODES} nodes, not {}",
                self.nodes
            )));
        }
        if self.consensus_members >= self.nodes {
            return Err(Error::Invalid(format!(
                "{} extra consensus members need at least {} nodes, not {}",
                self.consensus_members,
                self.consensus_members + 1,
                self.nodes
            )));
        }
        Ok(())
    }
}

/// `127.x.y` → its three octets; the first must be 127 (every 127/8 address is local on Linux,
/// any other would need a real interface).
pub(super) fn parse_block(block: &str) -> Result<[u8; 3]> {
    let invalid = || {
        Error::Invalid(format!(
            "address block {block:?} is not of the form 127.x.y (three octets of a loopback /24)"
        ))
    };
    let octets: Vec<u8> = block
        .split('.')
        .map(|o| o.parse::<u8>().map_err(|_| invalid()))
        .collect::<Result<_>>()?;
    match octets.as_slice() {
        [127, b, c] => Ok([127, *b, *c]),
        _ => Err(invalid()),
    }
}

pub(super) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_addresses() {
        let options = ClusterOptions::new(3, "127.88.1");
        assert_eq!(
            options.address(0).expect("address"),
            Ipv4Addr::new(127, 88, 1, 1)
        );
        assert_eq!(
            options.address(253).expect("address"),
            Ipv4Addr::new(127, 88, 1, 254)
        );
        assert!(options.address(254).is_err());
        for bad in ["10.0.0", "127.0", "127.0.0.1", "127.300.1", "", "127.a.b"] {
            assert!(parse_block(bad).is_err(), "{bad}");
        }
        assert!(
            ClusterOptions {
                consensus_members: 3,
                ..ClusterOptions::new(3, "127.1.1")
            }
            .validate()
            .is_err()
        );
        assert!(ClusterOptions::new(0, "127.1.1").validate().is_err());
    }
}
