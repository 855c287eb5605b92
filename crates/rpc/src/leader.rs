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
//!    certificate of the cluster CA (any node may answer discovery),
//! 3. streams `GetCurrentLeader`; for every response naming a new leader it dials
//!    `leader_host:leader_port` **pinned to `leader_node_id`** and only then publishes that
//!    channel. A follower (or anything that got hold of a node certificate) can therefore name
//!    the wrong address, but can never redirect the client to a server that is not that node.
//!    A leader that reported no address is reached through the local override map (a node maps
//!    its own ID to its own address), or not at all,
//! 4. on any error or end of the stream, records why, backs off exponentially
//!    ([`LeaderOptions::discovery_backoff`], reset after every usable answer) and continues with
//!    the next endpoint. It never gives up while a handle is alive.
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
//! Where later checks fit: whether a named leader may be used at all (e.g. refusing revoked
//! curators, or nodes without the ConsensusMember role) belongs to `Updater::connect_leader`,
//! before anything is published; a redirect learned from a failed call (a follower naming the
//! leader) would be handed to the updater the same way a `GetCurrentLeader` answer is, and
//! the pause of [`LeaderChannel::call`] ends as soon as it is published.
//!
//! All waiting uses tokio's clock. Nothing here logs credentials: [`ClientCredentials`]'s
//! `Debug` shows the public key only.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::curator_api::curator_local_client::CuratorLocalClient;
use proto::curator_api::{GetCurrentLeaderRequest, GetCurrentLeaderResponse};
use tokio::sync::{Notify, oneshot, watch};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::Error;
use crate::client_tls::{self, ClientCredentials, ServerVerification};
use crate::error::error_chain;
use crate::retry::{Backoff, Delays, RetryPolicy, Run, is_transient};

/// Default for [`LeaderOptions::wait_timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses between discovery attempts: 100 ms at first, then up to upstream's maximum backoff
/// interval: a dead cluster is retried every 10 s, forever. No jitter: the endpoints are tried
/// round robin, so clients that lost the same leader spread over the curators anyway.
pub const DISCOVERY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// How long a discovery server may take to send its first answer. Curators answer at once
/// (the listener only runs once the election status is known); after the first answer the
/// stream may legitimately stay silent for as long as leadership does not change, and HTTP/2
/// keepalive detects dead peers.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound of the endpoint list: responses add addresses, and a misbehaving server must
/// not make it grow without bound.
const MAX_ENDPOINTS: usize = 64;

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
}

impl Default for LeaderOptions {
    fn default() -> Self {
        Self {
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            local_overrides: HashMap::new(),
            discovery_backoff: DISCOVERY_BACKOFF,
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
}

/// State the handles and the updater both touch. Only short, non-async critical sections.
struct Shared {
    endpoints: Mutex<Vec<String>>,
    endpoints_added: Notify,
    diagnostics: Mutex<Diagnostics>,
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
        let discovery = client_tls::client_config(
            &creds,
            ServerVerification::Cluster {
                ca: ca.clone(),
                node_id: None,
            },
        )?;
        let shared = Arc::new(Shared {
            endpoints: Mutex::new(Vec::new()),
            endpoints_added: Notify::new(),
            diagnostics: Mutex::new(Diagnostics::default()),
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
            cursor: 0,
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

/// The background task behind a [`LeaderChannel`].
struct Updater {
    shared: Arc<Shared>,
    creds: ClientCredentials,
    ca: Vec<u8>,
    discovery: Arc<rustls::ClientConfig>,
    overrides: HashMap<String, String>,
    backoff: Delays,
    cursor: usize,
    leader_tx: watch::Sender<Option<Published>>,
    info_tx: watch::Sender<Option<LeaderInfo>>,
}

impl Updater {
    /// Runs until the last handle is gone; dropping `run` closes every connection it holds.
    async fn run_until(self, stopped: oneshot::Receiver<()>) {
        tokio::select! {
            _ = stopped => tracing::debug!("leader updater stopped: no handle left"),
            _ = self.run() => {}
        }
    }

    async fn run(mut self) {
        loop {
            let endpoint = self.next_endpoint().await;
            self.shared.note_attempt(&endpoint);
            let error = self.follow(&endpoint).await;
            tracing::debug!(%endpoint, "curator leader discovery: {error}");
            self.shared.note_error(format!("{endpoint}: {error}"));
            self.backoff.wait().await;
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
        let mut stream = match self.open_stream(endpoint).await {
            Ok(stream) => stream,
            Err(error) => return error,
        };
        let mut timeout = Some(FIRST_ANSWER_TIMEOUT);
        loop {
            let next = match timeout.take() {
                Some(t) => match tokio::time::timeout(t, stream.message()).await {
                    Ok(next) => next,
                    Err(_) => return DiscoveryError::Silent(t),
                },
                None => stream.message().await,
            };
            let response = match next {
                Ok(Some(response)) => response,
                Ok(None) => return DiscoveryError::Ended,
                Err(status) => return status.into(),
            };
            if let Err(error) = self.apply(&response).await {
                return error;
            }
            self.backoff.reset();
        }
    }

    async fn open_stream(
        &self,
        endpoint: &str,
    ) -> Result<tonic::Streaming<GetCurrentLeaderResponse>, DiscoveryError> {
        let channel = client_tls::connect(endpoint, self.discovery.clone())
            .await
            .map_err(|e| DiscoveryError::Connect(error_chain(&e)))?;
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
        let channel = self.connect_leader(&info).await?;
        self.publish(info, channel);
        Ok(())
    }

    /// Connects to the leader, refusing any server that is not that very node of our cluster.
    async fn connect_leader(&self, info: &LeaderInfo) -> Result<Channel, DiscoveryError> {
        let refused = |reason: String| DiscoveryError::Leader {
            node_id: info.node_id.clone(),
            endpoint: info.endpoint.clone(),
            reason,
        };
        let verification = ServerVerification::Cluster {
            ca: self.ca.clone(),
            node_id: Some(info.node_id.clone()),
        };
        let config = client_tls::client_config(&self.creds, verification)
            .map_err(|e| refused(error_chain(&e)))?;
        client_tls::connect(&info.endpoint, config)
            .await
            .map_err(|e| refused(error_chain(&e)))
    }

    fn publish(&self, info: LeaderInfo, channel: Channel) {
        tracing::info!(leader = %info.node_id, endpoint = %info.endpoint, "curator leader changed");
        // The channel first: whoever sees the new info can already get its channel.
        self.leader_tx.send_replace(Some(Published {
            info: info.clone(),
            channel,
        }));
        self.info_tx.send_replace(Some(info));
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
