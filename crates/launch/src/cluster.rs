//! A whole local cluster: bootstrap, ownership, registration, approval, consensus roles, and
//! the waits and faults end-to-end tests are made of (spec 10 describes upstream's harness,
//! this follows it step by step).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use identity::SigningKey;
use identity::files::{PRIVATE_MODE, PUBLIC_MODE, write_atomic};
use prost::Message as _;
use proto::api::node::Health;
use proto::api::node_parameters::{Cluster as ClusterParams, ClusterBootstrap, ClusterRegister};
use proto::api::{GetClusterInfoResponse, NodeParameters};
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::{ClusterConfiguration, NodeState};
use proto::curator_api::GetCurrentLeaderRequest;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use rpc::client_tls;
use rpc::{ClientCredentials, LeaderChannel, LeaderOptions, ServerVerification};
use tokio::time::Instant;
use tonic::Code;

use crate::error::{Error, Result};
use crate::node::{Exit, Node, NodeConfig, RestartPolicy};
use crate::owner;
use rpc::Management;

/// metroctl's owner key file (PEM "METROPOLIS INITIAL OWNER PRIVATE KEY", 0600).
pub const OWNER_KEY_FILE: &str = "owner-key.pem";
/// The same key as PKCS#8 PEM (0600), for tools like grpcurl or openssl.
pub const OWNER_PKCS8_KEY_FILE: &str = "owner.key";
/// metroctl's owner certificate file (PEM).
pub const OWNER_CERT_FILE: &str = "owner.pem";
/// metroctl's pinned cluster CA (PEM).
pub const CA_FILE: &str = "ca.pem";
/// Where the node parameters of node `i` are written (inside its directory).
pub const PARAMETERS_FILE: &str = "parameters.pb";

/// How often cluster state is polled while waiting.
const POLL: Duration = Duration::from_millis(500);
/// The longest a single GetNodes call inside a wait may be retried before the wait polls again.
const POLL_CALL_DEADLINE: Duration = Duration::from_secs(20);
/// Highest node count one /24 block can hold (.1 … .254).
const MAX_NODES: usize = 254;

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
    /// Timeouts of each phase.
    pub timeouts: Timeouts,
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
            timeouts: Timeouts::default(),
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
        let [a, b, c] = parse_block(&self.block)?;
        let last = u8::try_from(index + 1)
            .ok()
            .filter(|n| *n < 255)
            .ok_or_else(|| {
                Error::Invalid(format!("node index {index} does not fit a /24 block"))
            })?;
        Ok(Ipv4Addr::new(a, b, c, last))
    }

    fn validate(&self) -> Result<()> {
        parse_block(&self.block)?;
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
fn parse_block(block: &str) -> Result<[u8; 3]> {
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

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Finds `metropolis-node`: `explicit`, else `$METROPOLIS_NODE_BIN`, else
/// `$CARGO_BIN_EXE_metropolis-node`, else next to the running executable (the launcher in
/// `target/<profile>/`), else in the parent of its directory (a test binary in
/// `target/<profile>/deps/`).
pub fn find_node_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::NodeBinaryNotFound {
                looked: path.display().to_string(),
            })
        };
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["METROPOLIS_NODE_BIN", "CARGO_BIN_EXE_metropolis-node"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(value));
        }
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("metropolis-node"));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join("metropolis-node"));
        }
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| Error::NodeBinaryNotFound {
            looked: candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The result of making a node a consensus member.
#[derive(Debug, Clone)]
pub struct ConsensusJoin {
    /// Whether the member was seen as a learner before it became a voter.
    pub saw_learner: bool,
    /// How long it took from the role change to a serving curator.
    pub took: Duration,
}

/// A running local cluster. Dropping it kills every node it started (SIGKILL); use
/// [`Cluster::shutdown`] for a clean stop.
pub struct Cluster {
    options: ClusterOptions,
    state_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    owner_key: SigningKey,
    owner_certificate: Vec<u8>,
    ca_certificate: Vec<u8>,
    leader: Mutex<LeaderChannel>,
    removed: Mutex<HashSet<usize>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("state_dir", &self.state_dir)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Parts of a cluster in construction: owns the nodes (so an error kills them) and the
/// temporary directory.
struct Launch {
    options: ClusterOptions,
    state_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Launches a cluster as described by `options` and returns once every node is UP and
    /// HEALTHY (and the extra consensus members are voters with running curators).
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        options.validate()?;
        let binary = find_node_binary(options.node_binary.as_deref())?;
        let (state_dir, temp) = prepare_state_dir(options.state_dir.as_deref())?;
        let mut launch = Launch {
            options,
            state_dir,
            temp,
            nodes: Vec::new(),
        };
        // The age of the binary: nothing rebuilds it for us, and a stale one explains a lot.
        let age = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or_else(|| "unknown".to_string(), |d| format!("{}s", d.as_secs()));
        tracing::info!(
            "launching {} nodes on {}.0/24 with {} (built {age} ago), state in {}",
            launch.options.nodes,
            launch.options.block,
            binary.display(),
            launch.state_dir.display()
        );
        for index in 0..launch.options.nodes {
            let config = NodeConfig {
                index,
                address: launch.options.address(index)?,
                dir: launch.state_dir.join(format!("node{index}")),
                binary: binary.clone(),
                parameters: Some(
                    launch
                        .state_dir
                        .join(format!("node{index}"))
                        .join(PARAMETERS_FILE),
                ),
                etcd: launch.options.etcd_binary.clone(),
                leader_ttl: launch.options.leader_ttl,
                extra_args: Vec::new(),
                echo: launch.options.echo_logs,
                restart: launch.options.restart,
            };
            launch.nodes.push(Node::new(config));
        }
        match Self::bring_up(&mut launch).await {
            Ok(mut cluster) => {
                cluster.temp = launch.temp.take();
                Ok(cluster)
            }
            Err(e) => {
                // Everything that explains the failure stays: the nodes are dead by now (the
                // cluster being built was dropped), their logs are on disk.
                for node in launch.nodes.iter().filter(|n| n.boot() > 0) {
                    node.kill_now();
                    eprintln!(
                        "--- node {} ({}) log tail, full log: {}\n{}",
                        node.index(),
                        node.id().unwrap_or_default(),
                        node.log_path().display(),
                        node.tail(40)
                    );
                }
                let dir = match launch.temp.take() {
                    Some(temp) => temp.keep(),
                    None => launch.state_dir.clone(),
                };
                eprintln!(
                    "launching the cluster failed; state kept in {}",
                    dir.display()
                );
                Err(e)
            }
        }
    }

    async fn bring_up(launch: &mut Launch) -> Result<Cluster> {
        let timeouts = launch.options.timeouts.clone();
        let state_dir = launch.state_dir.clone();

        // The owner key, in metroctl's format, so metroctl can use this state dir as --config.
        let owner_key = SigningKey::generate().map_err(|source| Error::Identity {
            what: "generating the owner key",
            source,
        })?;
        write_file(
            &state_dir.join(OWNER_KEY_FILE),
            owner_key.to_owner_key_pem().as_bytes(),
            PRIVATE_MODE,
        )?;
        write_file(
            &state_dir.join(OWNER_PKCS8_KEY_FILE),
            owner_key.to_pkcs8_pem().as_bytes(),
            PRIVATE_MODE,
        )?;

        // Node 0 bootstraps the cluster with our owner key.
        let bootstrap = NodeParameters {
            cluster: Some(ClusterParams::ClusterBootstrap(ClusterBootstrap {
                owner_public_key: owner_key.public_key().as_bytes().to_vec(),
                initial_cluster_configuration: Some(ClusterConfiguration {
                    tpm_mode: launch.options.tpm_mode as i32,
                    storage_security_policy: launch.options.storage_policy as i32,
                    ..Default::default()
                }),
                labels: None,
            })),
            network_config: None,
        };
        let node0 = launch.nodes[0].clone();
        set_parameters(&node0, &bootstrap)?;
        node0.start()?;
        let id0 = node0.wait_id(timeouts.node_ready).await?;
        tracing::info!("node 0 is {id0}, bootstrapping");
        node0.wait_ready(timeouts.node_ready).await?;

        // Take ownership, like `metroctl takeownership`.
        let ownership =
            owner::take_ownership(&node0.curator_endpoint(), &owner_key, timeouts.ownership)
                .await?;
        write_file(
            &state_dir.join(OWNER_CERT_FILE),
            identity::files::certificate_to_pem(&ownership.owner_certificate).as_bytes(),
            PUBLIC_MODE,
        )?;
        write_file(
            &state_dir.join(CA_FILE),
            identity::files::certificate_to_pem(&ownership.ca_certificate).as_bytes(),
            PUBLIC_MODE,
        )?;
        tracing::info!(
            "ownership taken, owner certificate in {}",
            state_dir.display()
        );

        let leader = leader_channel(
            &launch.nodes[..1],
            &owner_key,
            &ownership.owner_certificate,
            &ownership.ca_certificate,
        )?;
        let cluster = Cluster {
            options: launch.options.clone(),
            state_dir: state_dir.clone(),
            // Moved in by `start` on success only, so a failed launch keeps its state.
            temp: None,
            nodes: launch.nodes.clone(),
            owner_key,
            owner_certificate: ownership.owner_certificate,
            ca_certificate: ownership.ca_certificate,
            leader: Mutex::new(leader),
            removed: Mutex::new(HashSet::new()),
        };

        if cluster.nodes.len() > 1 {
            cluster.register_others().await?;
        }
        cluster.refresh_leader_channel()?;
        for index in 1..=cluster.options.consensus_members {
            let join = cluster.add_consensus_member(index).await?;
            tracing::info!(
                "node {index} is a consensus member after {:?} (seen as learner: {})",
                join.took,
                join.saw_learner
            );
        }
        cluster.wait_all_healthy(timeouts.health).await?;
        tracing::info!("cluster is up");
        Ok(cluster)
    }

    /// Registers nodes 1.. with a ticket, approves them and waits until they are UP and ready.
    async fn register_others(&self) -> Result<()> {
        let timeouts = &self.options.timeouts;
        let management = self.management();
        let ticket = management.register_ticket().await?;
        let info = self.wait_directory(timeouts.directory).await?;
        let register = NodeParameters {
            cluster: Some(ClusterParams::ClusterRegister(ClusterRegister {
                cluster_directory: info.cluster_directory,
                register_ticket: ticket,
                ca_certificate: info.ca_certificate,
                labels: None,
            })),
            network_config: None,
        };
        let others = &self.nodes[1..];
        for node in others {
            set_parameters(node, &register)?;
            node.start()?;
        }
        let ids =
            futures::future::try_join_all(others.iter().map(|n| n.wait_id(timeouts.node_ready)))
                .await?;
        tracing::info!("registering {}", ids.join(", "));

        // Approve each node as soon as it shows up as NEW, until all are UP.
        let pending: HashSet<String> = ids.iter().cloned().collect();
        let mut approved = HashSet::new();
        let deadline = Instant::now() + timeouts.enrolment;
        loop {
            self.check_alive("nodes to register", others)?;
            let nodes = self.poll_nodes().await;
            let mut up = 0;
            if let Ok(nodes) = &nodes {
                for node in nodes.iter().filter(|n| pending.contains(&n.id)) {
                    match node.state() {
                        NodeState::New if !approved.contains(&node.id) => {
                            management.approve(&node.pubkey).await?;
                            tracing::info!("approved {}", node.id);
                            approved.insert(node.id.clone());
                        }
                        NodeState::Up => up += 1,
                        _ => {}
                    }
                }
            }
            if up == pending.len() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("nodes {} to register and become UP", ids.join(", ")),
                    after: timeouts.enrolment,
                    last: describe_result(&nodes),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        futures::future::try_join_all(others.iter().map(|n| n.wait_ready(timeouts.node_ready)))
            .await?;
        Ok(())
    }

    /// Waits until GetClusterInfo lists at least one node with an address (the bootstrap
    /// node has pushed its status), which registering nodes need to find the cluster.
    async fn wait_directory(&self, timeout: Duration) -> Result<GetClusterInfoResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self
                .management()
                .with_deadline(POLL_CALL_DEADLINE)
                .cluster_info()
                .await;
            let last = match info {
                Ok(info)
                    if info
                        .cluster_directory
                        .as_ref()
                        .is_some_and(|d| d.nodes.iter().any(|n| !n.addresses.is_empty())) =>
                {
                    return Ok(info);
                }
                Ok(info) => format!("directory {:?}", info.cluster_directory),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the cluster directory to list the bootstrap node's address".into(),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The nodes of this cluster (including removed ones, whose processes may have exited).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index`. Panics on an index out of range, like slice indexing.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// The options it was launched with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The directory holding everything: `node<i>/` per node and the owner credentials (usable
    /// as metroctl's `--config`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// metroctl's owner key file.
    pub fn owner_key_path(&self) -> PathBuf {
        self.state_dir.join(OWNER_KEY_FILE)
    }

    /// The owner key as PKCS#8 PEM (for grpcurl and friends).
    pub fn owner_pkcs8_key_path(&self) -> PathBuf {
        self.state_dir.join(OWNER_PKCS8_KEY_FILE)
    }

    /// The owner certificate file.
    pub fn owner_cert_path(&self) -> PathBuf {
        self.state_dir.join(OWNER_CERT_FILE)
    }

    /// The cluster CA file.
    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join(CA_FILE)
    }

    /// The cluster CA certificate (DER).
    pub fn ca_certificate(&self) -> &[u8] {
        &self.ca_certificate
    }

    /// Owner credentials for clients.
    pub fn owner_credentials(&self) -> ClientCredentials {
        ClientCredentials::Authenticated {
            certificate: self.owner_certificate.clone(),
            key: self.owner_key.clone(),
        }
    }

    /// Index of the node with this ID.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.id().as_deref() == Some(id))
    }

    /// `host:7835` of every node not removed from the cluster.
    pub fn curator_endpoints(&self) -> Vec<String> {
        let removed = self.removed();
        self.nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .map(Node::curator_endpoint)
            .collect()
    }

    /// The leader-following channel (owner credentials) all calls of [`Cluster::management`]
    /// share.
    pub fn leader_channel(&self) -> LeaderChannel {
        lock(&self.leader).clone()
    }

    /// A leader-following Management/Curator client with the owner's credentials.
    pub fn management(&self) -> Management {
        Management::new(self.leader_channel())
    }

    /// Rebuilds the leader channel seeded with the curator address of every node not removed
    /// and a local override for every known node ID (a leader that has not reported an
    /// address yet is still reachable). Clients made before keep their old channel.
    pub fn refresh_leader_channel(&self) -> Result<()> {
        let removed = self.removed();
        let live: Vec<Node> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .cloned()
            .collect();
        let channel = leader_channel(
            &live,
            &self.owner_key,
            &self.owner_certificate,
            &self.ca_certificate,
        )?;
        *lock(&self.leader) = channel;
        Ok(())
    }

    fn removed(&self) -> HashSet<usize> {
        lock(&self.removed).clone()
    }

    /// Marks node `index` as no longer part of the cluster (deleted or decommissioned): waits
    /// no longer expect it, and its exit is no failure.
    pub fn mark_removed(&self, index: usize) {
        lock(&self.removed).insert(index);
    }

    /// The IDs of the nodes expected in the cluster (not removed).
    pub fn expected_ids(&self) -> Result<Vec<String>> {
        let removed = self.removed();
        self.nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .map(|n| {
                n.id().ok_or_else(|| {
                    Error::Invalid(format!("node {} never announced its ID", n.index()))
                })
            })
            .collect()
    }

    /// Fails with [`Error::NodeExited`] if one of `nodes` (not removed) has died and is not
    /// being restarted.
    fn check_alive(&self, what: &str, nodes: &[Node]) -> Result<()> {
        let removed = self.removed();
        for node in nodes.iter().filter(|n| !removed.contains(&n.index())) {
            if let Some(exit) = node.exit() {
                return Err(Error::NodeExited {
                    index: node.index(),
                    status: exit.to_string(),
                    what: what.to_string(),
                    tail: node.tail(30),
                });
            }
        }
        Ok(())
    }

    async fn poll_nodes(&self) -> Result<Vec<proto::api::Node>> {
        self.management()
            .with_deadline(POLL_CALL_DEADLINE)
            .get_nodes("")
            .await
            .map_err(Error::from)
    }

    /// Polls GetNodes until `done` holds, failing early if a node that should be running
    /// died. `what` describes the condition for the timeout error.
    pub async fn wait_nodes(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[proto::api::Node]) -> bool,
    ) -> Result<Vec<proto::api::Node>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive(what, &self.nodes)?;
            let nodes = self.poll_nodes().await;
            if let Ok(nodes) = &nodes
                && done(nodes)
            {
                return Ok(nodes.clone());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    last: describe_result(&nodes),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every node not removed is UP and HEALTHY.
    pub async fn wait_all_healthy(&self, timeout: Duration) -> Result<Vec<proto::api::Node>> {
        let expected = self.expected_ids()?;
        self.wait_nodes("all nodes to be UP and HEALTHY", timeout, |nodes| {
            expected.iter().all(|id| {
                nodes.iter().any(|n| {
                    &n.id == id && n.state() == NodeState::Up && n.health() == Health::Healthy
                })
            })
        })
        .await
    }

    /// Waits until node `index` is in `state` according to the cluster.
    pub async fn wait_node_state(
        &self,
        index: usize,
        state: NodeState,
        timeout: Duration,
    ) -> Result<proto::api::Node> {
        let id = self.id_of(index)?;
        let nodes = self
            .wait_nodes(
                &format!("node {index} ({id}) to be {}", state.as_str_name()),
                timeout,
                |nodes| nodes.iter().any(|n| n.id == id && n.state() == state),
            )
            .await?;
        nodes
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::Invalid(format!("node {id} vanished")))
    }

    /// Waits until the cluster no longer lists node `index`.
    pub async fn wait_node_gone(&self, index: usize, timeout: Duration) -> Result<()> {
        let id = self.id_of(index)?;
        self.wait_nodes(
            &format!("node {index} ({id}) to be gone"),
            timeout,
            |nodes| nodes.iter().all(|n| n.id != id),
        )
        .await?;
        Ok(())
    }

    /// The ID node `index` announced.
    pub fn id_of(&self, index: usize) -> Result<String> {
        self.nodes
            .get(index)
            .and_then(Node::id)
            .ok_or_else(|| Error::Invalid(format!("node {index} has no known ID")))
    }

    /// Makes node `index` a ConsensusMember and waits until its etcd member is a voter and its
    /// curator serves. etcd admits one learner at a time, so call this for one node after the
    /// other.
    pub async fn add_consensus_member(&self, index: usize) -> Result<ConsensusJoin> {
        let id = self.id_of(index)?;
        let timeout = self.options.timeouts.consensus;
        let start = Instant::now();
        let deadline = start + timeout;
        let management = self.management();
        management.set_roles(&id, Some(true), None, None).await?;

        let mut saw_learner = false;
        let mut last;
        loop {
            self.check_alive(
                &format!("node {index} to become a consensus member"),
                &self.nodes,
            )?;
            match management
                .clone()
                .with_deadline(POLL_CALL_DEADLINE)
                .consensus_status()
                .await
            {
                Ok(members) => {
                    let status = members.iter().find(|m| m.id == id).map(|m| m.status());
                    saw_learner |= status == Some(MemberStatus::Learner);
                    if status == Some(MemberStatus::Full) {
                        break;
                    }
                    last = format!("{members:?}");
                }
                // Without GetConsensusStatus the role is all we can see; the curator check
                // below still proves a voting member (a curator runs only on one).
                Err(e) if e.code() == Code::Unimplemented => break,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("node {index} ({id}) to become a voting etcd member"),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
        self.wait_curator_serving(index, deadline.saturating_duration_since(Instant::now()))
            .await?;
        Ok(ConsensusJoin {
            saw_learner,
            took: start.elapsed(),
        })
    }

    /// Waits until node `index` runs a curator: its port answers `GetCurrentLeader` with a
    /// node certificate of this cluster for that very node.
    pub async fn wait_curator_serving(&self, index: usize, timeout: Duration) -> Result<()> {
        let id = self.id_of(index)?;
        let endpoint = self.nodes[index].curator_endpoint();
        let config = client_tls::client_config(
            &self.owner_credentials(),
            ServerVerification::Cluster {
                ca: self.ca_certificate.clone(),
                node_id: Some(id.clone()),
            },
        )
        .map_err(|source| Error::Client {
            what: "configuring a curator client",
            source,
        })?;
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = async {
                let channel = client_tls::connect(&endpoint, config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut stream = CuratorLocalClient::new(channel)
                    .get_current_leader(GetCurrentLeaderRequest {})
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                match stream.message().await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("stream ended".to_string()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            };
            let last = match tokio::time::timeout(POLL_CALL_DEADLINE, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "no answer".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("a curator to serve on node {index} ({endpoint})"),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reboots node `index` (clean stop, start on the same state) and waits until it is ready
    /// again (joined) and the leader has received a heartbeat from its new boot.
    pub async fn reboot_node(&self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        node.stop().await?;
        let started = Instant::now();
        node.start()?;
        node.wait_ready(self.options.timeouts.rejoin).await?;
        self.wait_heartbeat_since(index, started, self.options.timeouts.health)
            .await
    }

    /// Waits until the cluster has a heartbeat of node `index` sent after `since` (and counts
    /// it HEALTHY). Right after a restart its health still reflects heartbeats of the previous
    /// boot; this tells that the new boot is in contact.
    pub async fn wait_heartbeat_since(
        &self,
        index: usize,
        since: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let id = self.id_of(index)?;
        self.wait_nodes(
            &format!("a heartbeat of node {index} ({id}) sent after its restart"),
            timeout,
            |nodes| {
                let elapsed = since.elapsed();
                nodes.iter().any(|n| {
                    n.id == id
                        && n.health() == Health::Healthy
                        && n.time_since_heartbeat
                            .as_ref()
                            .is_some_and(|d| Duration::try_from(*d).is_ok_and(|d| d < elapsed))
                })
            },
        )
        .await?;
        Ok(())
    }

    /// Powers off every node not removed at once (SIGKILL).
    pub async fn kill_all(&self) -> Result<Vec<Exit>> {
        let removed = self.removed();
        let nodes: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .collect();
        futures::future::try_join_all(nodes.iter().map(|n| n.kill())).await
    }

    /// Powers on every node not removed and waits until all are ready.
    pub async fn start_all(&self) -> Result<()> {
        let removed = self.removed();
        let nodes: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .collect();
        for node in &nodes {
            node.start()?;
        }
        let timeout = self.options.timeouts.rejoin;
        futures::future::try_join_all(nodes.iter().map(|n| n.wait_ready(timeout))).await?;
        Ok(())
    }

    /// A metroctl-style table of the nodes (`node describe`), with our node index.
    pub async fn describe(&self) -> Result<String> {
        let nodes = self.management().get_nodes("").await?;
        let index: HashMap<String, usize> = self
            .nodes
            .iter()
            .filter_map(|n| n.id().map(|id| (id, n.index())))
            .collect();
        Ok(describe_nodes(&nodes, &index))
    }

    /// Stops every running node cleanly (SIGTERM, SIGKILL after the grace period), all at
    /// once, and returns how each ended.
    pub async fn shutdown(self) -> Vec<(usize, Result<Exit>)> {
        let exits = futures::future::join_all(
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| async { (n.index(), n.stop().await) }),
        )
        .await;
        drop(self);
        exits
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in &self.nodes {
            if panicking {
                eprintln!(
                    "--- node {} ({}) log tail, full log: {}\n{}",
                    node.index(),
                    node.id().unwrap_or_default(),
                    node.log_path().display(),
                    node.tail(40)
                );
            }
            node.kill_now();
        }
        if (panicking || env_flag("LAUNCH_KEEP_STATE"))
            && let Some(temp) = self.temp.take()
        {
            let kept = temp.keep();
            eprintln!("cluster state kept in {}", kept.display());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn prepare_state_dir(given: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(Error::io("creating state directory", dir))?;
            let mut entries =
                std::fs::read_dir(dir).map_err(Error::io("reading state directory", dir))?;
            if entries.next().is_some() {
                return Err(Error::Invalid(format!(
                    "state directory {} is not empty: a launched cluster cannot be resumed, \
                     pick a new directory (or remove this one)",
                    dir.display()
                )));
            }
            let dir = std::fs::canonicalize(dir).map_err(Error::io("resolving", dir))?;
            Ok((dir, None))
        }
        None => {
            // Short paths under /tmp: etcd's unix socket lives in there and socket paths are
            // limited to 108 bytes.
            let temp = tempfile::Builder::new()
                .prefix("metropolis-")
                .tempdir()
                .map_err(Error::io(
                    "creating a temporary state directory",
                    std::env::temp_dir(),
                ))?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    write_atomic(path, contents, mode).map_err(|source| Error::Identity {
        what: "writing a credentials file",
        source,
    })
}

/// Writes the parameters file the node passes on every boot (0600: register parameters hold
/// the ticket).
fn set_parameters(node: &Node, parameters: &NodeParameters) -> Result<()> {
    let path =
        node.config().parameters.clone().ok_or_else(|| {
            Error::Invalid(format!("node {} has no parameters file", node.index()))
        })?;
    let dir = node.dir();
    std::fs::create_dir_all(dir).map_err(Error::io("creating node directory", dir))?;
    write_file(&path, &parameters.encode_to_vec(), PRIVATE_MODE)
}

/// A leader channel with owner credentials seeded with these nodes' curator endpoints.
fn leader_channel(
    nodes: &[Node],
    owner_key: &SigningKey,
    owner_certificate: &[u8],
    ca: &[u8],
) -> Result<LeaderChannel> {
    let seeds = nodes.iter().map(Node::curator_endpoint).collect();
    let local_overrides = nodes
        .iter()
        .filter_map(|n| n.id().map(|id| (id, n.curator_endpoint())))
        .collect();
    LeaderChannel::new(
        seeds,
        ClientCredentials::Authenticated {
            certificate: owner_certificate.to_vec(),
            key: owner_key.clone(),
        },
        ca.to_vec(),
        LeaderOptions {
            local_overrides,
            ..LeaderOptions::default()
        },
    )
    .map_err(|source| Error::Client {
        what: "building the leader channel",
        source,
    })
}

fn describe_result(nodes: &Result<Vec<proto::api::Node>>) -> String {
    match nodes {
        Ok(nodes) => format!("\n{}", describe_nodes(nodes, &HashMap::new())),
        Err(e) => e.to_string(),
    }
}

/// `NODE_STATE_UP` → `UP`.
fn state_name(state: NodeState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("NODE_STATE_").unwrap_or(name)
}

/// A table like `metroctl node describe` (plus our index when known).
pub fn describe_nodes(nodes: &[proto::api::Node], index: &HashMap<String, usize>) -> String {
    let mut rows = vec![[
        "#".to_string(),
        "NODE ID".to_string(),
        "STATE".to_string(),
        "ADDRESS".to_string(),
        "HEALTH".to_string(),
        "ROLES".to_string(),
        "HEARTBEAT".to_string(),
    ]];
    // In our node order where known (the cluster lists nodes by ID).
    let mut nodes: Vec<&proto::api::Node> = nodes.iter().collect();
    nodes.sort_by_key(|n| {
        (
            index.get(&n.id).copied().unwrap_or(usize::MAX),
            n.id.clone(),
        )
    });
    for node in nodes {
        let roles = node
            .roles
            .as_ref()
            .map(|r| {
                let mut names = Vec::new();
                if r.consensus_member.is_some() {
                    names.push("ConsensusMember");
                }
                if r.kubernetes_controller.is_some() {
                    names.push("KubernetesController");
                }
                if r.kubernetes_worker.is_some() {
                    names.push("KubernetesWorker");
                }
                names.join(",")
            })
            .unwrap_or_default();
        let address = node
            .status
            .as_ref()
            .map(|s| s.external_address.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        let heartbeat = match (&node.time_since_heartbeat, node.health()) {
            (Some(d), Health::Healthy | Health::HeartbeatTimeout) => format!("{}s", d.seconds),
            _ => "-".to_string(),
        };
        rows.push([
            index
                .get(&node.id)
                .map(|i| i.to_string())
                .unwrap_or_default(),
            node.id.clone(),
            state_name(node.state()).to_string(),
            address,
            node.health().as_str_name().to_string(),
            roles,
            heartbeat,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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

    #[test]
    fn explicit_missing_binary_is_an_error() {
        let err = find_node_binary(Some(Path::new("/nonexistent/metropolis-node")))
            .expect_err("must fail");
        assert!(err.to_string().contains("cargo build -p node"), "{err}");
    }

    #[test]
    fn describe_table() {
        let node = proto::api::Node {
            id: "metropolis-abc".to_string(),
            state: NodeState::Up as i32,
            health: Health::Healthy as i32,
            ..Default::default()
        };
        let table = describe_nodes(&[node], &HashMap::from([("metropolis-abc".to_string(), 0)]));
        let mut lines = table.lines();
        assert!(lines.next().is_some_and(|l| l.starts_with("#  NODE ID")));
        let row = lines.next().expect("row");
        assert!(
            row.contains("metropolis-abc") && row.contains("UP") && row.contains("HEALTHY"),
            "{row}"
        );
    }
}
