//! A client channel that follows the curator leader (upstream's `metropolis:///control`
//! resolver).
//!
//! Only the curator leader serves Management, AAA and Curator; followers serve nothing but
//! `CuratorLocal`, whose `GetCurrentLeader` stream names the leader. A [`LeaderChannel`] owns a
//! background *leader updater* task that, like upstream's:
//!
//! 1. picks the next known curator endpoint (round robin over the seeds plus every leader
//!    address learned since, plus [`LeaderChannel::add_endpoints`]),
//! 2. dials it with the caller's credentials, checking only that the server holds a node
//!    certificate of the cluster CA that the cluster CRL does not revoke (any node may answer
//!    discovery), and, if the caller gave a [`ClusterCrl`], first asks it for the cluster CRL
//!    (installed only if it verifies and is newer, see [`crate::crl`]),
//! 3. streams `GetCurrentLeader`; for every response naming a new leader it dials
//!    `leader_host:leader_port` **pinned to `leader_node_id`**, refuses it if its certificate
//!    is revoked or the caller's [`LeaderCheck`] refuses it, and only then publishes that
//!    channel. A follower (or anything that got hold of a node certificate) can therefore name
//!    the wrong address, but can never redirect the client to a server that is not that node,
//!    nor to a node the caller does not accept as leader. A leader that reported no address is
//!    reached through the local override map (a node maps its own ID to its own address), or
//!    not at all,
//! 4. on any error or end of the stream, records why and continues with the next endpoint: at
//!    once while some known endpoint has not been tried since the last usable answer (after a
//!    failover another curator knows the new leader), and only after every one of them failed
//!    in a row with an exponential pause ([`LeaderOptions::discovery_backoff`], reset after
//!    every usable answer). It never gives up while a handle is alive.
//!
//! Handles are cheap clones sharing one updater; dropping the last one drops the updater, which
//! closes its discovery connection. A published leader stays published until a newer one is
//! confirmed: a stale channel answers fast (a follower says Unavailable "not the leader") where
//! an empty one would make every caller wait.
//!
//! Calls are not redirected transparently: [`LeaderChannel::call`] re-issues a call that failed
//! transiently ([`crate::retry::is_transient`]) on the then-current leader's channel, under a
//! [`RetryPolicy`]. Between attempts it waits for the policy's pause, which a newly published
//! leader ends at once: a known new leader is tried without delay.
//!
//! Who may be leader. Upstream follows whatever node a discovery answer names, as long as it
//! holds a node certificate of the cluster; a deleted node (its key stolen, or its machine
//! simply still running) or any node at all could then pose as the leader and order its
//! clients around. Here `Updater::connect_leader` refuses, before anything is published:
//!
//! * a leader whose certificate the cluster CRL revokes (with [`LeaderOptions::crl`]). The
//!   updater keeps that CRL current: when it starts it fetches the CRL from every known
//!   curator at once, then from every curator it asks for the leader, from all of them again
//!   every [`CRL_REFRESH_INTERVAL`], and whenever [`LeaderChannel::refresh_crl`] is called. When a newer CRL revokes the
//!   published leader, the leader is withdrawn, every connection to it is severed (open
//!   calls and streams fail at once, so their owners come back for the next leader) and
//!   discovery starts over;
//! * a leader the caller's [`LeaderCheck`] refuses ([`LeaderOptions::leader_check`]): nodes
//!   accept only nodes holding the ConsensusMember role, which they know independently of the
//!   leader (their own etcd member, or their cluster directory).
//!
//! Each refusal is logged as a warning starting with `SECURITY:` and naming the node. A
//! redirect learned from a failed call (a follower naming the leader) would be handed to the
//! updater the same way a `GetCurrentLeader` answer is, and the pause of
//! [`LeaderChannel::call`] ends as soon as it is published.
//!
//! All waiting uses tokio's clock. Nothing here logs credentials: [`ClientCredentials`]'s
//! `Debug` shows the public key only.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use proto::curator_api::{GetCurrentLeaderRequest, GetCurrentLeaderResponse};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::Error;
use crate::client_tls::{self, ClientCredentials, Presented, ServerVerification};
use crate::crl::{self, ClusterCrl, Refresh};
use crate::error::error_chain;
use crate::retry::{Backoff, Delays, RetryPolicy, Run, is_transient};

/// Default for [`LeaderOptions::wait_timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses between discovery attempts: 100 ms at first, then up to upstream's maximum backoff
/// interval: a dead cluster is retried every 10 s, forever. No jitter: the endpoints are tried
/// round robin, so clients that lost the same leader spread over the curators anyway.
pub const DISCOVERY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// The pause before the next endpoint while not all known ones have failed in a row.
const NEXT_ENDPOINT_PAUSE: Duration = Duration::from_millis(10);

/// How long a discovery server may take to send its first answer. Curators answer at once
/// (the listener only runs once the election status is known); after the first answer the
/// stream may legitimately stay silent for as long as leadership does not change, and HTTP/2
/// keepalive detects dead peers.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a channel with a CRL fetches it from every known curator. Revocations (node
/// deletions) are rare and a client learns them sooner from every curator it asks for the
/// leader; this bounds how long a client that follows one leader's discovery stream (a
/// leader that may itself have been deleted meanwhile) can go without hearing of one.
pub const CRL_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Upper bound of the endpoint list: responses add addresses, and a misbehaving server must
/// not make it grow without bound.
const MAX_ENDPOINTS: usize = 64;

/// A check a named leader must pass before a [`LeaderChannel`] uses it, on top of the
/// certificate checks (see the module documentation).
pub trait LeaderCheck: Send + Sync + std::fmt::Debug {
    /// `Ok` if `leader` (whose certificate was verified to be that node's, and not revoked)
    /// may be used as the curator leader; otherwise why not.
    fn check<'a>(&'a self, leader: &'a LeaderInfo) -> BoxFuture<'a, Result<(), String>>;
}

/// Tuning of a [`LeaderChannel`].
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// How long [`LeaderChannel::channel`] waits for a leader before answering Unavailable;
    /// [`LeaderChannel::call`] waits as long per attempt, at most until its deadline.
    pub wait_timeout: Duration,
    /// Where to reach a leader that did not report an address (`node_id → host:port`); a node
    /// maps its own ID to its own curator address.
    pub local_overrides: HashMap<String, String>,
    /// Pauses between discovery attempts.
    pub discovery_backoff: Backoff,
    /// The cluster CRL (of the same CA): curators it revokes are refused, and the channel
    /// keeps it current (see the module documentation). Without it, revocation is not
    /// checked (upstream's behaviour).
    pub crl: Option<ClusterCrl>,
    /// A check every leader must pass before it is used.
    pub leader_check: Option<Arc<dyn LeaderCheck>>,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        Self {
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            local_overrides: HashMap::new(),
            discovery_backoff: DISCOVERY_BACKOFF,
            crl: None,
            leader_check: None,
        }
    }
}

/// The curator leader a [`LeaderChannel`] currently talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Node ID of the leader, verified against its certificate on every connection.
    pub node_id: String,
    /// `host:port` the channel connects to.
    pub endpoint: String,
}

/// A handle yielding a channel to the current curator leader; see the module documentation.
#[derive(Clone)]
pub struct LeaderChannel {
    handle: Arc<Handle>,
}

/// What all clones of a [`LeaderChannel`] share. Dropping it drops `_stop`, which ends the
/// updater task.
struct Handle {
    shared: Arc<Shared>,
    leader: watch::Receiver<Option<Published>>,
    info: watch::Receiver<Option<LeaderInfo>>,
    wait_timeout: Duration,
    _stop: oneshot::Sender<()>,
}

/// A confirmed leader and the (already connected) channel to it.
#[derive(Clone)]
struct Published {
    info: LeaderInfo,
    channel: Channel,
    /// The certificate it presented (DER), re-checked when the CRL changes.
    certificate: Option<Vec<u8>>,
    /// Severs every connection to it (when its certificate is revoked).
    sever: CancellationToken,
}

/// A leader connected to but not published yet.
struct Connected {
    channel: Channel,
    certificate: Option<Vec<u8>>,
    sever: CancellationToken,
}

/// State the handles and the updater both touch. Only short, non-async critical sections.
struct Shared {
    endpoints: Mutex<Vec<String>>,
    endpoints_added: Notify,
    diagnostics: Mutex<Diagnostics>,
    /// The caller's credentials and CRL, for [`LeaderChannel::refresh_crl`].
    creds: ClientCredentials,
    crl: Option<ClusterCrl>,
}

/// Why no leader is known yet, for the Unavailable message.
#[derive(Default)]
struct Diagnostics {
    tried: Vec<String>,
    last_error: Option<String>,
}

impl LeaderChannel {
    /// Starts following the leader of the cluster whose CA certificate (DER) is `ca`, starting
    /// from `seeds` (`host:port` of curators). Fails on unusable credentials or a malformed
    /// seed or override. Must be called within a Tokio runtime (it spawns the updater).
    pub fn new(
        seeds: Vec<String>,
        creds: ClientCredentials,
        ca: Vec<u8>,
        options: LeaderOptions,
    ) -> Result<Self, Error> {
        validate_endpoints(seeds.iter().chain(options.local_overrides.values()))?;
        if let Some(crl) = &options.crl
            && crl.ca() != ca.as_slice()
        {
            return Err(Error::Crl {
                reason: "the CRL given belongs to another cluster CA than the channel".to_string(),
            });
        }
        let discovery = client_tls::client_config(
            &creds,
            ServerVerification::Cluster {
                ca: ca.clone(),
                node_id: None,
                crl: options.crl.clone(),
            },
        )?;
        let shared = Arc::new(Shared {
            endpoints: Mutex::new(Vec::new()),
            endpoints_added: Notify::new(),
            diagnostics: Mutex::new(Diagnostics::default()),
            creds: creds.clone(),
            crl: options.crl.clone(),
        });
        shared.add_endpoints(seeds);
        let (leader_tx, leader) = watch::channel(None);
        let (info_tx, info) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let updater = Updater {
            shared: shared.clone(),
            creds,
            ca,
            discovery,
            overrides: options.local_overrides,
            backoff: options.discovery_backoff.delays(),
            failed_in_a_row: 0,
            cursor: 0,
            crl: options.crl,
            leader_check: options.leader_check,
            leader_tx,
            info_tx,
        };
        tokio::spawn(updater.run_until(stopped));
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                leader,
                info,
                wait_timeout: options.wait_timeout,
                _stop: stop,
            }),
        })
    }

    /// A channel to the current leader, waiting up to [`LeaderOptions::wait_timeout`] for one
    /// to be found. Unavailable (naming the endpoints tried and the last error) otherwise.
    pub async fn channel(&self) -> Result<Channel, Status> {
        let mut leader = self.handle.leader.clone();
        Ok(self
            .wait_leader(&mut leader, self.handle.wait_timeout)
            .await?
            .channel)
    }

    /// The current leader and a channel to it, waiting like [`LeaderChannel::channel`]: for
    /// callers that must know which curator they act on the word of.
    pub async fn leader(&self) -> Result<(LeaderInfo, Channel), Status> {
        let mut leader = self.handle.leader.clone();
        let published = self
            .wait_leader(&mut leader, self.handle.wait_timeout)
            .await?;
        Ok((published.info, published.channel))
    }

    /// The cluster CRL this channel checks curators against, if it was given one.
    pub fn crl(&self) -> Option<&ClusterCrl> {
        self.handle.shared.crl.as_ref()
    }

    /// Fetches the cluster CRL from every known curator endpoint at once and installs the
    /// newest valid one ([`crl::refresh`]); a newer CRL that revokes the published leader
    /// withdraws it. `None` if the channel has no CRL.
    pub async fn refresh_crl(&self) -> Option<Refresh> {
        let crl = self.handle.shared.crl.as_ref()?;
        Some(crl::refresh(crl, &self.handle.shared.creds, &self.endpoints()).await)
    }

    /// The leader currently published, if any.
    pub fn current_leader(&self) -> Option<LeaderInfo> {
        self.handle.info.borrow().clone()
    }

    /// Follows leader changes. The sender side lives in the updater: once the last handle is
    /// dropped, `changed()` on this receiver fails.
    pub fn watch(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.handle.info.clone()
    }

    /// The curator endpoints known so far (seeds first, then learned ones).
    pub fn endpoints(&self) -> Vec<String> {
        lock(&self.handle.shared.endpoints).clone()
    }

    /// Adds curator endpoints (`host:port`) to try, e.g. from a cluster directory. All are
    /// validated before any is added.
    pub fn add_endpoints(&self, endpoints: impl IntoIterator<Item = String>) -> Result<(), Error> {
        let endpoints: Vec<String> = endpoints.into_iter().collect();
        validate_endpoints(&endpoints)?;
        self.handle.shared.add_endpoints(endpoints);
        Ok(())
    }

    /// Runs `f` with the leader's channel until it succeeds, fails for good or `policy` gives
    /// up (see [`crate::retry`]). Finding no leader within [`LeaderOptions::wait_timeout`] (or
    /// the time left) counts as a failed attempt with Unavailable.
    ///
    /// Unimplemented is retried only if the leader changed since the attempt was sent, or
    /// changes during the pause: that is what a just-demoted upstream leader answers, while
    /// the leader itself answering it means the method is missing.
    ///
    /// Between attempts it waits for the policy's pause, or until a new leader is published,
    /// whichever comes first.
    pub async fn call<T, F, Fut>(&self, policy: &RetryPolicy, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut run = Run::new(policy);
        loop {
            let mut leader = self.handle.leader.clone();
            let wait = run
                .bounded(Some(self.handle.wait_timeout))
                .unwrap_or_default();
            let waiting = tokio::time::Instant::now();
            let used = match self.wait_leader(&mut leader, wait).await {
                Ok(used) => used,
                Err(status) => {
                    run.count_attempt();
                    let pause = run.pause_after(status, true)?;
                    // The wait is the pause, unless it ended early (no updater any more):
                    // never spin.
                    if waiting.elapsed() < wait {
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            };
            let status = match run.attempt(f(used.channel)).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let transient = is_transient(status.code());
            let unimplemented = (status.code() == Code::Unimplemented).then(|| status.clone());
            let pause = run.pause_after(status, transient)?;
            // `leader` has seen the value `used` came from, so this returns at once if a new
            // leader was published during the call.
            let changed = tokio::time::timeout(pause, leader.changed()).await.is_ok()
                || self.current_leader().as_ref() != Some(&used.info);
            if let Some(status) = unimplemented
                && !changed
            {
                return Err(run.gave_up(status));
            }
        }
    }

    /// Waits up to `wait` for a published leader and marks it seen in `leader`.
    async fn wait_leader(
        &self,
        leader: &mut watch::Receiver<Option<Published>>,
        wait: Duration,
    ) -> Result<Published, Status> {
        let waited = tokio::time::timeout(wait, leader.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(published)) => published.clone().ok_or_else(|| self.unavailable(wait)),
            // Timed out, or the updater is gone (cannot happen while a handle lives).
            _ => Err(self.unavailable(wait)),
        }
    }

    fn unavailable(&self, waited: Duration) -> Status {
        let diagnostics = lock(&self.handle.shared.diagnostics);
        let tried = if diagnostics.tried.is_empty() {
            "none".to_string()
        } else {
            diagnostics.tried.join(", ")
        };
        let last = diagnostics.last_error.as_deref().unwrap_or("none");
        Status::unavailable(format!(
            "no curator leader found within {waited:?}; endpoints tried: {tried}; last error: \
             {last}"
        ))
    }
}

impl std::fmt::Debug for LeaderChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderChannel")
            .field("leader", &self.current_leader())
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot leave the data inconsistent, so a panic elsewhere is no
    // reason to stop following the leader.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn validate_endpoints<'a>(endpoints: impl IntoIterator<Item = &'a String>) -> Result<(), Error> {
    for endpoint in endpoints {
        client_tls::endpoint(endpoint)?;
    }
    Ok(())
}

impl Shared {
    /// Appends the endpoints not known yet (up to [`MAX_ENDPOINTS`]) and wakes the updater if it
    /// waits for any.
    fn add_endpoints(&self, endpoints: impl IntoIterator<Item = String>) {
        let mut known = lock(&self.endpoints);
        let before = known.len();
        for endpoint in endpoints {
            if known.len() >= MAX_ENDPOINTS {
                tracing::warn!(%endpoint, "curator endpoint list full, not adding");
                break;
            }
            if !known.contains(&endpoint) {
                known.push(endpoint);
            }
        }
        if known.len() > before {
            self.endpoints_added.notify_one();
        }
    }

    fn endpoint_at(&self, cursor: usize) -> Option<String> {
        let known = lock(&self.endpoints);
        if known.is_empty() {
            return None;
        }
        Some(known[cursor % known.len()].clone())
    }

    fn note_attempt(&self, endpoint: &str) {
        let mut diagnostics = lock(&self.diagnostics);
        if !diagnostics.tried.iter().any(|e| e == endpoint) {
            diagnostics.tried.push(endpoint.to_string());
        }
    }

    fn note_error(&self, error: String) {
        lock(&self.diagnostics).last_error = Some(error);
    }
}

/// Why following one discovery endpoint stopped.
#[derive(Debug, thiserror::Error)]
enum DiscoveryError {
    #[error("{0}")]
    Connect(String),
    #[error("GetCurrentLeader failed: {0:?}: {1}")]
    Call(Code, String),
    #[error("no answer to GetCurrentLeader within {0:?}")]
    Silent(Duration),
    #[error("GetCurrentLeader stream ended")]
    Ended,
    #[error("answer names no leader")]
    NoLeaderId,
    #[error("leader {0} reported no address and there is no local override for it")]
    NoAddress(String),
    #[error("leader {node_id} reported an invalid address {endpoint:?}")]
    InvalidAddress { node_id: String, endpoint: String },
    #[error("cannot use leader {node_id} at {endpoint}: {reason}")]
    Leader {
        node_id: String,
        endpoint: String,
        reason: String,
    },
    #[error("leader {0} withdrawn: the cluster CRL now revokes its certificate")]
    Revoked(String),
}

impl From<Status> for DiscoveryError {
    fn from(status: Status) -> Self {
        DiscoveryError::Call(status.code(), status.message().to_string())
    }
}

/// `host:port`, with IPv6 literals in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The address a response reports for the leader, if it reports one.
fn reported_endpoint(
    response: &GetCurrentLeaderResponse,
) -> Result<Option<String>, DiscoveryError> {
    if response.leader_host.is_empty() {
        return Ok(None);
    }
    let invalid = || DiscoveryError::InvalidAddress {
        node_id: response.leader_node_id.clone(),
        endpoint: format!("{}:{}", response.leader_host, response.leader_port),
    };
    let port = u16::try_from(response.leader_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(invalid)?;
    let endpoint = join_host_port(&response.leader_host, port);
    client_tls::endpoint(&endpoint).map_err(|_| invalid())?;
    Ok(Some(endpoint))
}

/// The leader a response names and where to reach it (the reported address, else the local
/// override).
fn leader_from(
    response: &GetCurrentLeaderResponse,
    overrides: &HashMap<String, String>,
) -> Result<LeaderInfo, DiscoveryError> {
    if response.leader_node_id.is_empty() {
        return Err(DiscoveryError::NoLeaderId);
    }
    let node_id = response.leader_node_id.clone();
    let endpoint = match reported_endpoint(response)? {
        Some(endpoint) => endpoint,
        None => overrides
            .get(&node_id)
            .cloned()
            .ok_or_else(|| DiscoveryError::NoAddress(node_id.clone()))?,
    };
    Ok(LeaderInfo { node_id, endpoint })
}

/// Fetches the CRL from every known curator every [`CRL_REFRESH_INTERVAL`], for as long as
/// the updater runs (a client following a leader's discovery stream asks nobody else
/// otherwise); the updater reacts to a newer CRL (see `Updater::follow`).
async fn refresh_crl_periodically(shared: Arc<Shared>) {
    let Some(crl) = shared.crl.clone() else {
        return std::future::pending().await;
    };
    let start = tokio::time::Instant::now() + CRL_REFRESH_INTERVAL;
    let mut tick = tokio::time::interval_at(start, CRL_REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let endpoints = lock(&shared.endpoints).clone();
        let refresh = crl::refresh(&crl, &shared.creds, &endpoints).await;
        if refresh.answered.is_empty() {
            tracing::debug!(failed = ?refresh.failed, "no curator answered for the cluster CRL");
        }
    }
}

/// The background task behind a [`LeaderChannel`].
struct Updater {
    shared: Arc<Shared>,
    creds: ClientCredentials,
    ca: Vec<u8>,
    discovery: Arc<rustls::ClientConfig>,
    overrides: HashMap<String, String>,
    backoff: Delays,
    /// Endpoints that failed in a row since the last usable answer.
    failed_in_a_row: usize,
    cursor: usize,
    crl: Option<ClusterCrl>,
    leader_check: Option<Arc<dyn LeaderCheck>>,
    leader_tx: watch::Sender<Option<Published>>,
    info_tx: watch::Sender<Option<LeaderInfo>>,
}

impl Updater {
    /// Runs until the last handle is gone; dropping `run` closes every connection it holds.
    async fn run_until(self, stopped: oneshot::Receiver<()>) {
        let refresh = refresh_crl_periodically(self.shared.clone());
        tokio::select! {
            _ = stopped => tracing::debug!("leader updater stopped: no handle left"),
            _ = self.run() => {}
            _ = refresh => {}
        }
    }

    async fn run(mut self) {
        // Before trusting anyone's word on who leads, learn what every known curator knows
        // about revocations: one stale or lying discovery server must not be enough to make a
        // revoked node the leader.
        if let Some(crl) = &self.crl {
            let endpoints = lock(&self.shared.endpoints).clone();
            let refresh = crl::refresh(crl, &self.creds, &endpoints).await;
            tracing::debug!(
                answered = ?refresh.answered,
                failed = ?refresh.failed,
                "initial cluster CRL fetch"
            );
        }
        loop {
            let endpoint = self.next_endpoint().await;
            self.shared.note_attempt(&endpoint);
            let error = self.follow(&endpoint).await;
            tracing::debug!(%endpoint, "curator leader discovery: {error}");
            self.shared.note_error(format!("{endpoint}: {error}"));
            // The next curator may well know the leader (this one just died, or was a
            // follower that has only now learned of a new leader): pause only once every
            // known endpoint has failed in a row, i.e. while no leader can be found.
            self.failed_in_a_row += 1;
            if self.failed_in_a_row >= lock(&self.shared.endpoints).len() {
                self.failed_in_a_row = 0;
                self.backoff.wait().await;
            } else {
                // Never spin, even against a server that answers and hangs up every time.
                tokio::time::sleep(NEXT_ENDPOINT_PAUSE).await;
            }
        }
    }

    /// The next endpoint in round-robin order; waits while none is known.
    async fn next_endpoint(&mut self) -> String {
        loop {
            if let Some(endpoint) = self.shared.endpoint_at(self.cursor) {
                self.cursor = self.cursor.wrapping_add(1);
                return endpoint;
            }
            // notify_one keeps a permit, so an addition between the check and here is not lost.
            self.shared.endpoints_added.notified().await;
        }
    }

    /// Streams GetCurrentLeader from `endpoint` and applies every answer until something goes
    /// wrong; returns what did.
    async fn follow(&mut self, endpoint: &str) -> DiscoveryError {
        if let Err(error) = self.withdraw_revoked_leader() {
            return error;
        }
        let mut stream = match self.open_stream(endpoint).await {
            Ok(stream) => stream,
            Err(error) => return error,
        };
        let mut crl_changes = self.crl.as_ref().map(ClusterCrl::subscribe);
        let first_answer = tokio::time::Instant::now() + FIRST_ANSWER_TIMEOUT;
        let mut answered = false;
        loop {
            let message = async {
                if answered {
                    Ok(stream.message().await)
                } else {
                    tokio::time::timeout_at(first_answer, stream.message())
                        .await
                        .map_err(|_| DiscoveryError::Silent(FIRST_ANSWER_TIMEOUT))
                }
            };
            let crl_changed = async {
                match crl_changes.as_mut() {
                    Some(changes) => changes.changed().await.is_ok(),
                    None => false,
                }
            };
            let next = tokio::select! {
                next = message => match next {
                    Ok(next) => next,
                    Err(error) => return error,
                },
                true = crl_changed => {
                    if let Err(error) = self.withdraw_revoked_leader() {
                        return error;
                    }
                    continue;
                }
            };
            let response = match next {
                Ok(Some(response)) => response,
                Ok(None) => return DiscoveryError::Ended,
                Err(status) => return status.into(),
            };
            answered = true;
            if let Err(error) = self.apply(&response).await {
                return error;
            }
            self.backoff.reset();
            self.failed_in_a_row = 0;
        }
    }

    async fn open_stream(
        &self,
        endpoint: &str,
    ) -> Result<tonic::Streaming<GetCurrentLeaderResponse>, DiscoveryError> {
        let channel = client_tls::connect(endpoint, self.discovery.clone())
            .await
            .map_err(|e| DiscoveryError::Connect(error_chain(&e)))?;
        if let Some(crl) = &self.crl {
            // Curators that predate GetClusterCRL answer Unimplemented; that only means this
            // one cannot tell us about revocations.
            if let Err(why) = crl::fetch_on(crl, channel.clone(), endpoint).await {
                tracing::debug!(%endpoint, "no cluster CRL from this curator: {why}");
            }
        }
        let mut client = CuratorLocalClient::new(channel);
        let call = client.get_current_leader(GetCurrentLeaderRequest {});
        match tokio::time::timeout(FIRST_ANSWER_TIMEOUT, call).await {
            Ok(response) => Ok(response?.into_inner()),
            Err(_) => Err(DiscoveryError::Silent(FIRST_ANSWER_TIMEOUT)),
        }
    }

    /// Learns the reported address and switches to the named leader if it is a new one.
    async fn apply(&mut self, response: &GetCurrentLeaderResponse) -> Result<(), DiscoveryError> {
        if let Some(endpoint) = reported_endpoint(response)? {
            self.shared.add_endpoints([endpoint]);
        }
        let info = leader_from(response, &self.overrides)?;
        if self.info_tx.borrow().as_ref() == Some(&info) {
            return Ok(());
        }
        let connected = self.connect_leader(&info).await?;
        self.publish(info, connected);
        Ok(())
    }

    /// Connects to the leader, refusing any server that is not that very node of our cluster,
    /// whose certificate is revoked, or that the caller's check refuses; returns the channel
    /// and the certificate the leader presented.
    async fn connect_leader(&self, info: &LeaderInfo) -> Result<Connected, DiscoveryError> {
        let refused = |reason: String| DiscoveryError::Leader {
            node_id: info.node_id.clone(),
            endpoint: info.endpoint.clone(),
            reason,
        };
        let verification = ServerVerification::Cluster {
            ca: self.ca.clone(),
            node_id: Some(info.node_id.clone()),
            crl: self.crl.clone(),
        };
        let presented = Presented::default();
        let config =
            client_tls::client_config_presented(&self.creds, verification, Some(presented.clone()))
                .map_err(|e| refused(error_chain(&e)))?;
        let sever = CancellationToken::new();
        let channel = client_tls::connect_severable(&info.endpoint, config, sever.clone())
            .await
            .map_err(|e| refused(error_chain(&e)))?;
        if let Some(check) = &self.leader_check
            && let Err(reason) = check.check(info).await
        {
            tracing::warn!(
                leader = %info.node_id,
                endpoint = %info.endpoint,
                "SECURITY: refusing curator {} at {} as leader: {reason}",
                info.node_id,
                info.endpoint
            );
            return Err(refused(reason));
        }
        let certificate = presented.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(Connected {
            channel,
            certificate,
            sever,
        })
    }

    fn publish(&self, info: LeaderInfo, connected: Connected) {
        tracing::info!(leader = %info.node_id, endpoint = %info.endpoint, "curator leader changed");
        // The channel first: whoever sees the new info can already get its channel.
        self.leader_tx.send_replace(Some(Published {
            info: info.clone(),
            channel: connected.channel,
            certificate: connected.certificate,
            sever: connected.sever,
        }));
        self.info_tx.send_replace(Some(info));
    }

    /// Withdraws the published leader if the CRL now revokes its certificate, so that callers
    /// wait for a new one instead of obeying it.
    fn withdraw_revoked_leader(&self) -> Result<(), DiscoveryError> {
        let Some(crl) = &self.crl else {
            return Ok(());
        };
        let revoked = self.leader_tx.borrow().as_ref().and_then(|published| {
            let certificate = published.certificate.as_deref()?;
            crl.is_revoked(certificate)
                .then(|| (published.info.node_id.clone(), published.sever.clone()))
        });
        let Some((node_id, sever)) = revoked else {
            return Ok(());
        };
        // Calls and streams already open on it (a watch, a heartbeat stream) end now, so
        // their owners come back for the next leader.
        sever.cancel();
        tracing::warn!(
            leader = %node_id,
            "SECURITY: withdrawing curator leader {node_id}: the cluster CRL now revokes its \
             certificate"
        );
        self.leader_tx.send_replace(None);
        self.info_tx.send_replace(None);
        Err(DiscoveryError::Revoked(node_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str, host: &str, port: i32) -> GetCurrentLeaderResponse {
        GetCurrentLeaderResponse {
            leader_node_id: id.to_string(),
            leader_host: host.to_string(),
            leader_port: port,
            this_node_id: "metropolis-self".to_string(),
        }
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(join_host_port("10.0.0.1", 7835), "10.0.0.1:7835");
        assert_eq!(join_host_port("fd00::1", 7835), "[fd00::1]:7835");
        assert_eq!(join_host_port("[fd00::1]", 7835), "[fd00::1]:7835");
    }

    #[test]
    fn reported_address_wins_then_override_then_nothing() {
        let overrides = HashMap::from([("a".to_string(), "127.0.0.1:1".to_string())]);
        let info = leader_from(&response("a", "10.0.0.1", 7835), &overrides).expect("reported");
        assert_eq!(info.endpoint, "10.0.0.1:7835");
        let info = leader_from(&response("a", "", 0), &overrides).expect("override");
        assert_eq!(info.endpoint, "127.0.0.1:1");
        assert!(matches!(
            leader_from(&response("b", "", 0), &overrides),
            Err(DiscoveryError::NoAddress(_))
        ));
        assert!(matches!(
            leader_from(&response("", "10.0.0.1", 7835), &overrides),
            Err(DiscoveryError::NoLeaderId)
        ));
    }

    #[test]
    fn invalid_ports_are_refused() {
        for port in [0, -1, 70000] {
            assert!(
                matches!(
                    reported_endpoint(&response("a", "10.0.0.1", port)),
                    Err(DiscoveryError::InvalidAddress { .. })
                ),
                "port {port}"
            );
        }
    }
}
