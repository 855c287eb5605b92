//! The consensus runnable: PKI bootstrap, starting the member, waiting until it votes, and
//! publishing its [`Status`].

use std::sync::Arc;
use std::time::Duration;

use kv::Namespaced;
use kv::etcd_client::Client;
use supervisor::{Context, Runnable, RunnableResult};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::Error;
use crate::membership::{self, AUTOPROMOTE_INTERVAL};
use crate::peer_pki;
use crate::process::{EtcdProcess, Mode};
use crate::space;

/// How often we check whether the (freshly joined) member is still a learner (upstream: 1 s;
/// shorter here, since the node's curator starts only once its member votes).
const LEARNER_POLL: Duration = Duration::from_millis(200);
/// How often we retry connecting to a member that is starting.
const CONNECT_POLL: Duration = Duration::from_millis(100);
/// How long a cancelled member keeps running for the users that hold it ([`Status::hold`]),
/// at most. Long enough for a lease revocation on a healthy cluster, short against the
/// supervisor's cancellation grace.
pub const HOLD_GRACE: Duration = Duration::from_secs(1);

/// A running, voting member: a client on its socket and what membership operations need.
#[derive(Clone)]
pub struct Status {
    client: Client,
    /// This member's etcd ID.
    pub member_id: u64,
    /// This member's name (the node ID).
    pub name: String,
    /// The TLS peer URL it advertises.
    pub peer_url: String,
    /// The peer port every member of this cluster uses.
    pub peer_port: u16,
    /// DER of the etcd peer CA.
    pub ca_certificate: Vec<u8>,
    /// PID of the etcd process (diagnostics and fault-injection tests).
    pub pid: Option<u32>,
    /// The member's client socket: for users that need a connection of their own (the
    /// curator's election keeps its lease on one, so no other traffic can delay it).
    pub socket_path: std::path::PathBuf,
    holds: Holds,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("name", &self.name)
            .field("member_id", &self.member_id)
            .finish()
    }
}

impl Status {
    /// The raw client (root keyspace) of the local member.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A namespaced client: `namespaced(&["curator"])` has prefix `namespaced:curator/`.
    pub fn namespaced(&self, path: &[&str]) -> Result<Namespaced, Error> {
        let mut ns = Namespaced::root(self.client.clone());
        for part in path {
            ns = ns.sub(part)?;
        }
        Ok(ns)
    }

    /// A new client on its own connection to the local member (the [`Status::client`] is
    /// shared by everything else on this node). Its background work runs on the runtime that
    /// calls this.
    pub async fn connect_new(&self) -> Result<Client, Error> {
        Ok(kv::connect_unix(&self.socket_path).await?)
    }

    pub(crate) fn pki_namespace(&self) -> Result<Namespaced, Error> {
        self.namespaced(&[peer_pki::KEYSPACE])
    }

    /// Keeps the member running while the returned guard lives, when its runnable is
    /// cancelled (the node stops): etcd is stopped once every hold is dropped, or after
    /// [`HOLD_GRACE`]. For users that must still reach etcd as they stop: the curator's
    /// election revokes its lease, so a successor need not wait for it to expire. A member
    /// that exits or fails by itself is not held.
    pub fn hold(&self) -> Hold {
        self.holds.0.send_modify(|n| *n += 1);
        Hold(self.holds.clone())
    }
}

/// The count of live [`Hold`]s of a member.
#[derive(Clone, Default)]
struct Holds(Arc<watch::Sender<usize>>);

impl Holds {
    /// Waits until no hold is left, at most `grace`; returns how many were left.
    async fn released(&self, grace: Duration) -> usize {
        let mut count = self.0.subscribe();
        let _ = tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await;
        *count.borrow()
    }
}

/// Keeps a cancelled member running until dropped; see [`Status::hold`].
#[must_use = "the member is held only while the guard lives"]
pub struct Hold(Holds);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Receives the member's status: `None` while it is not (yet) a running voting member.
pub type StatusWatch = watch::Receiver<Option<Status>>;

/// The etcd member service of one node.
pub struct Service {
    config: Config,
    status: watch::Sender<Option<Status>>,
    holds: Holds,
}

impl Service {
    /// A service for `config`; run it with [`Service::runnable`].
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            status: watch::Sender::new(None),
            holds: Holds::default(),
        })
    }

    /// Watches the member's status.
    pub fn watch(&self) -> StatusWatch {
        self.status.subscribe()
    }

    /// Waits until the member is a running voting member and returns its status.
    pub async fn wait_running(&self) -> Status {
        let mut w = self.watch();
        loop {
            if let Some(s) = w.borrow_and_update().clone() {
                return s;
            }
            if w.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen while we are borrowed.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The supervisor runnable.
    pub fn runnable(self: &Arc<Self>) -> Runnable {
        let this = self.clone();
        supervisor::runnable(move |ctx| {
            let this = this.clone();
            async move { this.run(ctx).await }
        })
    }

    async fn run(self: Arc<Self>, ctx: Context) -> RunnableResult {
        self.status.send_replace(None);
        let log = ctx.logger();
        self.start_helpers(&ctx)?;

        let pki = self.config.peer_pki();
        let joining = self.config.join_cluster.as_ref();
        if let Some(jc) = joining {
            // Joining (or re-joining with a fresh role): always write what we were given.
            pki.write_all(
                &jc.node_certificate,
                &self.config.node_key,
                &jc.ca_certificate,
                &jc.initial_crl,
            )?;
        } else if !pki.complete() {
            self.bootstrap(&ctx).await?;
        } else {
            log.info(
                &logtree::caller_location(),
                "PKI data present, not bootstrapping.",
            );
        }
        let ca_certificate = pki.read_ca()?;

        let mode = Mode::Full {
            initial_cluster: joining
                .map(|j| j.existing_nodes.clone())
                .unwrap_or_default(),
            existing: joining.is_some(),
        };
        let mut etcd = EtcdProcess::spawn(
            &self.config,
            &mode,
            logtree::etcd_sink(ctx.logtree(), ctx.dn().clone()),
        )?;
        let pid = etcd.pid();
        let result: RunnableResult = tokio::select! {
            r = self.serve(&ctx, ca_certificate, pid) => r.map_err(Into::into),
            exit = etcd.wait() => Err(format!("etcd exited: {}", describe_exit(exit)).into()),
            _ = ctx.cancelled() => Ok(()),
        };
        self.status.send_replace(None);
        if ctx.is_cancelled() {
            // Stopping (not failing): the users that hold the member finish first, e.g. the
            // curator leader gives its lease back instead of leaving its successor to wait
            // for it to expire. They are cancelled together with us, so this is short.
            let left = self.holds.released(HOLD_GRACE).await;
            if left > 0 {
                log.warning(
                    &logtree::caller_location(),
                    format!(
                        "stopping etcd with {left} user(s) still holding it after {HOLD_GRACE:?}"
                    ),
                );
            }
        }
        etcd.stop().await;
        result
    }

    /// Connects, waits until the member votes, publishes the status, then serves forever.
    async fn serve(
        &self,
        ctx: &Context,
        ca_certificate: Vec<u8>,
        pid: Option<u32>,
    ) -> Result<(), Error> {
        let log = ctx.logger();
        let client = connect(&self.config).await?;
        let name = self.config.name();
        let member_id = loop {
            match client.clone().member_list().await {
                Ok(list) => {
                    if let Some(m) = list.members().iter().find(|m| m.name() == name) {
                        if !m.is_learner() {
                            break m.id();
                        }
                        log.info(
                            &logtree::caller_location(),
                            "still a learner, waiting for promotion...",
                        );
                    }
                }
                Err(e) => log.warning(
                    &logtree::caller_location(),
                    format!("member list failed: {e}"),
                ),
            }
            tokio::time::sleep(LEARNER_POLL).await;
        };
        log.info(&logtree::caller_location(), "etcd server ready");
        self.status.send_replace(Some(Status {
            client,
            member_id,
            name,
            peer_url: self.config.peer_url(),
            peer_port: self.config.peer_port,
            ca_certificate,
            pid,
            socket_path: self.config.socket_path(),
            holds: self.holds.clone(),
        }));
        ctx.signal_healthy();
        std::future::pending().await
    }

    /// Creates the peer PKI inside a temporary peer-less etcd and writes it to disk (see the
    /// crate documentation for why the PKI lives in etcd itself).
    async fn bootstrap(&self, ctx: &Context) -> Result<(), Error> {
        let log = ctx.logger();
        log.info(
            &logtree::caller_location(),
            "Bootstrapping PKI: starting etcd...",
        );
        let mut etcd = EtcdProcess::spawn(
            &self.config,
            &Mode::Bootstrap,
            logtree::etcd_sink(ctx.logtree(), ctx.dn().clone()),
        )?;
        let result = tokio::select! {
            r = async {
                let client = connect(&self.config).await?;
                log.info(&logtree::caller_location(), "Bootstrapping PKI: etcd running, building PKI...");
                let ns = Namespaced::root(client).sub(peer_pki::KEYSPACE)?;
                let ca = peer_pki::ensure_ca(&ns).await?;
                let key = &self.config.node_key;
                let member = peer_pki::ensure_member(&ns, &key.public_key(), self.config.address).await?;
                let crl = peer_pki::crl(&ns).await?;
                log.info(&logtree::caller_location(), "Bootstrapping PKI: certificates issued, writing to disk...");
                self.config.peer_pki().write_all(&member, key, &ca, &crl)
            } => r,
            exit = etcd.wait() => Err(Error::Process(format!("bootstrap etcd exited: {}", describe_exit(exit)))),
        };
        log.info(
            &logtree::caller_location(),
            "Bootstrapping PKI: done, stopping server...",
        );
        etcd.stop().await;
        result
    }

    fn start_helpers(self: &Arc<Self>, ctx: &Context) -> Result<(), supervisor::Error> {
        let watch = self.watch();
        ctx.run(
            "autopromoter",
            supervisor::runnable(move |ctx| {
                let mut watch = watch.clone();
                async move {
                    ctx.signal_healthy();
                    let body = async {
                        let status = wait_status(&mut watch).await;
                        let log = ctx.logger();
                        let mut tick = tokio::time::interval(AUTOPROMOTE_INTERVAL);
                        loop {
                            tick.tick().await;
                            membership::autopromote_once(&status.client, &log).await;
                        }
                    };
                    tokio::select! {
                        _ = body => Ok(()),
                        _ = ctx.cancelled() => Ok(()),
                    }
                }
            }),
        )?;
        let watch = self.watch();
        let quota = self.config.effective_quota();
        let interval = self.config.space_check_interval;
        ctx.run(
            "spacekeeper",
            supervisor::runnable(move |ctx| {
                let mut watch = watch.clone();
                async move {
                    ctx.signal_healthy();
                    let body = async {
                        let status = wait_status(&mut watch).await;
                        let log = ctx.logger();
                        let mut tick = tokio::time::interval(interval);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tick.tick().await;
                            if let Err(e) =
                                space::keep_once(&status.client, status.member_id, quota, &log)
                                    .await
                            {
                                log.warning(
                                    &logtree::caller_location(),
                                    format!("space keeper: {e}"),
                                );
                            }
                        }
                    };
                    tokio::select! {
                        _ = body => Ok(()),
                        _ = ctx.cancelled() => Ok(()),
                    }
                }
            }),
        )?;
        let watch = self.watch();
        ctx.run(
            "selfupdater",
            supervisor::runnable(move |ctx| {
                let mut watch = watch.clone();
                async move {
                    ctx.signal_healthy();
                    let body = async {
                        let status = wait_status(&mut watch).await;
                        membership::self_update(&status, &ctx.logger()).await;
                    };
                    tokio::select! {
                        _ = body => ctx.signal_done(),
                        _ = ctx.cancelled() => {}
                    }
                    Ok(())
                }
            }),
        )
    }
}

async fn wait_status(watch: &mut StatusWatch) -> Status {
    loop {
        if let Some(s) = watch.borrow_and_update().clone() {
            return s;
        }
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Connects to the member's socket, retrying while etcd starts. Unbounded: the caller races it
/// against etcd exiting and against cancellation.
async fn connect(config: &Config) -> Result<Client, Error> {
    let socket = config.socket_path();
    loop {
        if socket.exists()
            && let Ok(mut client) = kv::connect_unix(&socket).await
            && client.status().await.is_ok()
        {
            return Ok(client);
        }
        tokio::time::sleep(CONNECT_POLL).await;
    }
}

fn describe_exit(exit: Result<std::process::ExitStatus, Error>) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}
