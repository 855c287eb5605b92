//! Roleserve: the reactive workers of an enrolled node, and the state they share.
//!
//! Enrolment and workers communicate through watched values in [`Roleserve`], upstream's
//! event values: the bootstrap plan (first boot of the first node), the credentials the
//! control plane produced while bootstrapping, the node's [`Membership`] (credentials, data
//! directory and the shared leader-following curator channel, once enrolled), its roles and
//! whether its control plane runs. Workers are supervised runnables under `root.role`:
//!
//! * `controlplane`: etcd member + curator while the node has ConsensusMember (or bootstraps),
//! * `rolefetch`: persisted roles, then Curator.Watch of the node itself (deletion,
//!   decommissioning),
//! * `statuspush`: UpdateNodeStatus whenever the status changes,
//! * `heartbeat`: Curator.Heartbeat every 5 s,
//! * `nodemgmt`: the NodeManagement service on port 7839,
//! * `revocations`: what the cluster revoked (Curator.WatchRevocations), for this node's
//!   servers,
//! * `clusterdirectory`: keeps `esp/metropolis/cluster_directory.pb` current,
//! * `crl`: keeps the cluster CRL current and persisted,
//! * `metrics`: the metrics service on port 7840 ([`crate::metrics`]).
//!
//! Which curator the node listens to, and when it acts on a destructive order, is decided in
//! [`trust`] and [`confirm`].

pub mod clusterdir;
pub mod confirm;
pub mod controlplane;
pub mod crl;
pub mod heartbeat;
pub mod membership;
pub mod nodemgmt;
pub mod revocations;
pub mod rolefetch;
pub mod statuspush;
pub mod trust;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use identity::{NodeCredentials, PublicKey, SigningKey};
use proto::common::{ClusterConfiguration, NodeRoles, NodeStorageSecurity, NodeTpmUsage};
use rpc::RevocationSet;
use supervisor::{Context, Runnable, RunnableResult};
use tokio::sync::{mpsc, watch};

pub use membership::Membership;

use crate::exit::{Exit, Outcome};
use crate::layout::Layout;
use crate::storage::UnlockKeys;

/// What a node process is configured with (from the command line).
#[derive(Debug, Clone)]
pub struct NodeEnv {
    /// Where its state lives.
    pub layout: Layout,
    /// Its own address; all its servers listen there.
    pub address: Ipv4Addr,
    /// The etcd binary.
    pub etcd_binary: PathBuf,
    /// etcd's backend quota (`--quota-backend-bytes`); None: etcd's default.
    pub etcd_quota_backend_bytes: Option<u64>,
    /// etcd's peer client-SAN check ([`consensus::Config::peer_client_san_check`]).
    pub etcd_peer_client_san_check: bool,
    /// Curator leader lease TTL.
    pub leader_ttl: Duration,
    /// Extra CA certificates (PEM file) trusted for update downloads.
    pub update_ca: Option<PathBuf>,
    /// Revoked certificates, shared by all servers of this node (fed by the `revocations`
    /// worker, and by the local curator where one runs).
    pub revocations: RevocationSet,
    /// Identifies this run of the node (NodeStatus.boot_id, a field of later upstream Monogon,
    /// not in the 8456ddf0 baseline): upstream reads the kernel's boot ID; for a node process,
    /// every start is a boot.
    pub boot_id: Vec<u8>,
}

impl NodeEnv {
    /// This node's curator endpoint `address:7835`.
    pub fn curator_endpoint(&self) -> String {
        SocketAddr::new(IpAddr::V4(self.address), rpc::CURATOR_PORT).to_string()
    }

    /// Whether the etcd binary exists (a path, or a name found on PATH).
    pub fn etcd_binary_found(&self) -> bool {
        let bin = &self.etcd_binary;
        if bin.components().count() > 1 {
            return bin.is_file();
        }
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
    }
}

/// Everything the first node needs to bootstrap the cluster, prepared by
/// enrolment and consumed by the control plane.
#[derive(Debug, Clone)]
pub struct BootstrapPlan {
    /// The new node key.
    pub node_key: SigningKey,
    /// The new join key.
    pub join_key: SigningKey,
    /// The owner's public key.
    pub owner_key: PublicKey,
    /// The initial cluster configuration.
    pub configuration: ClusterConfiguration,
    /// This node's TPM usage under it (always NOT_PRESENT: no TPM here).
    pub tpm_usage: NodeTpmUsage,
    /// Storage security of the data directory.
    pub storage: NodeStorageSecurity,
    /// NUK and CUK.
    pub unlock_keys: UnlockKeys,
}

/// State shared by enrolment and the roleserve workers.
pub struct Roleserve {
    /// The node's configuration.
    pub env: NodeEnv,
    bootstrap: OnceLock<BootstrapPlan>,
    bootstrapped: watch::Sender<Option<NodeCredentials>>,
    membership: watch::Sender<Option<Membership>>,
    roles: watch::Sender<Option<NodeRoles>>,
    control_plane: watch::Sender<bool>,
    consensus: watch::Sender<Option<consensus::Status>>,
    outcome: mpsc::UnboundedSender<Outcome>,
    ready: AtomicBool,
    /// The node's one updater (made by the first `nodemgmt` run): its lock must outlive
    /// restarts of that worker, since an install goes on after the worker is gone.
    updater: std::sync::Mutex<Option<Arc<crate::update::Updater>>>,
    /// What the node's metrics service exports.
    metrics: Arc<crate::metrics::NodeMetrics>,
}

impl std::fmt::Debug for Roleserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roleserve")
            .field("address", &self.env.address)
            .field("member", &self.membership.borrow().is_some())
            .field("control_plane", &*self.control_plane.borrow())
            .finish_non_exhaustive()
    }
}

impl Roleserve {
    /// Fresh state; outcomes (exit requests) go to `outcome`.
    pub fn new(env: NodeEnv, outcome: mpsc::UnboundedSender<Outcome>) -> Arc<Self> {
        Arc::new(Self {
            env,
            bootstrap: OnceLock::new(),
            bootstrapped: watch::Sender::new(None),
            membership: watch::Sender::new(None),
            roles: watch::Sender::new(None),
            control_plane: watch::Sender::new(false),
            consensus: watch::Sender::new(None),
            outcome,
            ready: AtomicBool::new(false),
            updater: std::sync::Mutex::new(None),
            metrics: crate::metrics::NodeMetrics::new(),
        })
    }

    /// The node's updater, made with `make` on first use.
    pub fn updater(
        &self,
        make: impl FnOnce() -> Result<Arc<crate::update::Updater>, String>,
    ) -> Result<Arc<crate::update::Updater>, String> {
        let mut held = self.updater.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = &*held {
            return Ok(u.clone());
        }
        let u = make()?;
        *held = Some(u.clone());
        Ok(u)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::NodeMetrics> {
        &self.metrics
    }

    /// Whether the node has printed `NODE_READY` (enrolled, status reported).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Asks the process to end (first request wins; later ones are ignored by the receiver).
    pub fn exit(&self, exit: Exit) {
        let _ = self.outcome.send(Outcome::Exit(exit));
    }

    /// Asks the process to run the decommissioning procedure.
    pub fn decommission(&self) {
        let _ = self.outcome.send(Outcome::Decommission);
    }

    /// Sets the bootstrap plan (once, before the workers start).
    pub fn set_bootstrap(&self, plan: BootstrapPlan) {
        let _ = self.bootstrap.set(plan);
    }

    /// The bootstrap plan, on the first boot of the first node.
    pub fn bootstrap(&self) -> Option<&BootstrapPlan> {
        self.bootstrap.get()
    }

    /// Publishes the credentials a bootstrap produced (control plane → enrolment).
    pub fn set_bootstrapped(&self, creds: NodeCredentials) {
        self.bootstrapped.send_replace(Some(creds));
    }

    /// The credentials of a bootstrap, if it happened.
    pub fn bootstrapped_now(&self) -> Option<NodeCredentials> {
        self.bootstrapped.borrow().clone()
    }

    /// Waits for the credentials of a bootstrap.
    pub async fn bootstrapped(&self) -> NodeCredentials {
        wait_some(self.bootstrapped.subscribe()).await
    }

    /// Publishes the node's membership (enrolment done).
    pub fn set_membership(&self, m: Membership) {
        self.membership.send_replace(Some(m));
    }

    /// The membership, if enrolled.
    pub fn membership_now(&self) -> Option<Membership> {
        self.membership.borrow().clone()
    }

    /// Waits until the node is enrolled.
    pub async fn membership(&self) -> Membership {
        wait_some(self.membership.subscribe()).await
    }

    /// Follows the membership.
    pub fn watch_membership(&self) -> watch::Receiver<Option<Membership>> {
        self.membership.subscribe()
    }

    /// Sets the node's roles; returns whether they changed.
    pub fn set_roles(&self, roles: NodeRoles) -> bool {
        self.roles.send_if_modified(|r| {
            if r.as_ref() == Some(&roles) {
                false
            } else {
                *r = Some(roles);
                true
            }
        })
    }

    /// The roles known so far.
    pub fn roles_now(&self) -> Option<NodeRoles> {
        self.roles.borrow().clone()
    }

    /// Follows the roles.
    pub fn watch_roles(&self) -> watch::Receiver<Option<NodeRoles>> {
        self.roles.subscribe()
    }

    /// Records whether the local curator runs.
    pub fn set_control_plane(&self, running: bool) {
        self.control_plane
            .send_if_modified(|c| std::mem::replace(c, running) != running);
    }

    /// Follows whether the local curator runs.
    pub fn watch_control_plane(&self) -> watch::Receiver<bool> {
        self.control_plane.subscribe()
    }

    /// Records the local etcd member while it runs as a voter (`None` otherwise).
    pub fn set_consensus(&self, status: Option<consensus::Status>) {
        self.consensus.send_replace(status);
    }

    /// The local etcd member, while it runs: the node's own, curator-independent view of the
    /// cluster state.
    pub fn consensus_now(&self) -> Option<consensus::Status> {
        self.consensus.borrow().clone()
    }

    /// Follows the local etcd member.
    pub fn watch_consensus(&self) -> watch::Receiver<Option<consensus::Status>> {
        self.consensus.subscribe()
    }

    /// The check every curator leader of this node must pass: it holds the ConsensusMember
    /// role (see [`trust`]).
    pub fn leader_check(&self) -> Arc<dyn rpc::LeaderCheck> {
        Arc::new(trust::ConsensusMembers::new(
            self.env.layout.esp.clone(),
            self.watch_consensus(),
        ))
    }

    /// Prints `NODE_READY` once (the launcher waits for it): enrolled and status pushed. A
    /// boot of a newly installed slot is confirmed first: the node is back in its cluster.
    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::SeqCst) {
            crate::update::loader::confirm_boot(self.env.layout.esp.dir());
            crate::logs::printer::print("NODE_READY");
            tracing::info!("node ready: enrolled and status reported");
        }
    }
}

/// Waits until a watched option is set and returns it. Senders live in [`Roleserve`], which
/// outlives every waiter, so a closed channel only means the process is ending.
async fn wait_some<T: Clone>(mut rx: watch::Receiver<Option<T>>) -> T {
    loop {
        if let Some(v) = rx.borrow_and_update().clone() {
            return v;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The `role` runnable: starts every worker and stays up.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move { run(rs, ctx).await }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    ctx.run("controlplane", controlplane::runnable(rs.clone()))?;
    ctx.run("rolefetch", rolefetch::runnable(rs.clone()))?;
    ctx.run("statuspush", statuspush::runnable(rs.clone()))?;
    ctx.run("heartbeat", heartbeat::runnable(rs.clone()))?;
    ctx.run("nodemgmt", nodemgmt::runnable(rs.clone()))?;
    ctx.run("revocations", revocations::runnable(rs.clone()))?;
    ctx.run("clusterdirectory", clusterdir::runnable(rs.clone()))?;
    ctx.run("crl", crl::runnable(rs.clone()))?;
    ctx.run("metrics", crate::metrics::runnable(rs.clone()))?;
    ctx.signal_healthy();
    ctx.cancelled().await;
    Ok(())
}

/// Pauses of a worker between failed runs against the same curator leader: short at first,
/// capped so that a cluster without a leader is not hammered. A newly published leader ends a
/// pause at once.
const LEADER_RETRY: rpc::Backoff =
    rpc::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// A run that lasted this long before it failed starts the pauses over: its failure is a new
/// incident (a failover), not part of a series.
const LEADER_RETRY_RESET: Duration = Duration::from_secs(10);

/// Runs a worker body that talks to the curator leader (a stream such as Heartbeat or
/// Watch), again whenever it fails: at once if the node's leader channel has published
/// another leader since the run started, otherwise once it does or after a pause
/// ([`LEADER_RETRY`]), whichever comes first. The supervisor's own restart backoff grows
/// with every failure and knows nothing of leaders; after a failover the workers would wait
/// out up to seconds of it while the new leader is already known. The body returns only by
/// failing (or when the process exits).
pub(crate) async fn follow_leader<F, Fut>(rs: &Roleserve, what: &str, mut body: F) -> RunnableResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = RunnableResult>,
{
    let m = rs.membership().await;
    let mut leader = m.curator.watch();
    let mut delays = LEADER_RETRY.delays();
    loop {
        let used = leader.borrow_and_update().clone();
        let started = tokio::time::Instant::now();
        let error = match body().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if started.elapsed() >= LEADER_RETRY_RESET {
            delays.reset();
        }
        if *leader.borrow() != used {
            tracing::info!("{what}: {error}; again on the new curator leader");
            continue;
        }
        tracing::warn!("{what}: {error}; again when the curator leader changes, or after a pause");
        tokio::select! {
            changed = leader.changed() => if changed.is_err() {
                // No leader channel any more (cannot happen while `m` lives): the supervisor
                // takes over.
                return Err(error);
            },
            () = delays.wait() => {}
        }
    }
}

/// Wraps a worker body: runs it until the runnable is cancelled.
pub(crate) async fn until_cancelled<F>(ctx: &Context, body: F) -> RunnableResult
where
    F: std::future::Future<Output = RunnableResult>,
{
    tokio::select! {
        r = body => r,
        _ = ctx.cancelled() => Ok(()),
    }
}

/// Turns a failed curator call of a worker into its error, first checking whether the failure
/// means the node was removed from the cluster; if so, asks the process to exit (code 3) and
/// never returns, so the worker does not keep failing while the process shuts down.
pub(crate) async fn call_failed(
    rs: &Roleserve,
    m: &Membership,
    what: &str,
    status: tonic::Status,
) -> supervisor::RunnableError {
    if let Some(why) = m.confirm_gone(rs, &status).await {
        rs.exit(Exit::gone(gone_message(&rs.env, &why)));
        return std::future::pending().await;
    }
    format!("{what}: {:?}: {}", status.code(), status.message()).into()
}

/// The message of a node that is no longer a member.
pub fn gone_message(env: &NodeEnv, why: &str) -> String {
    format!(
        "this node was removed from the cluster ({why}); it will not rejoin. Wipe {} before \
         reusing the machine",
        env.layout.root.display()
    )
}

/// Role names for logs.
pub fn describe_roles(roles: &NodeRoles) -> String {
    let mut names = Vec::new();
    if roles.consensus_member.is_some() {
        names.push("ConsensusMember");
    }
    if roles.kubernetes_controller.is_some() {
        names.push("KubernetesController");
    }
    if roles.kubernetes_worker.is_some() {
        names.push("KubernetesWorker");
    }
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
