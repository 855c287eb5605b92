//! Curator leader election over etcd, and the leadership guard every leader operation runs
//! under.
//!
//! The recipe is etcd's own: every candidate holds a lease and a key `/leader/<lease hex>`
//! bound to it; the key with the lowest create revision is the leader. Followers watch the
//! `/leader/` prefix, so a deleted leader key (lease revoked on graceful shutdown, or expired
//! after a crash) is noticed at once instead of by polling.
//!
//! Every read and write a leader makes is an etcd transaction guarded by
//! `CreateRevision(lock key) == lock revision` (the state layer's guarded transactions, see
//! [`crate::state`]); if another curator has taken over in the meantime the guard fails and
//! the caller gets "lost leadership", never a write based on stale leadership.
//!
//! The lease is what everything else rests on, so nothing the API does may delay a
//! keep-alive: [`spawn`] runs the election on an OS thread of its own, with a current-thread
//! runtime and an etcd connection of its own. A busy runtime (a CPU-heavy request, a flood of
//! calls) or a congested API connection (HTTP/2 flow control, queued requests) then slows the
//! API down but cannot cost the leader its lease. The [`Leadership`] it publishes carries the
//! API's namespace, so leader operations never travel on the election's connection.

use std::time::Duration;

use futures::StreamExt;
use kv::Namespaced;
use kv::etcd_client::{
    Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, WatchOptions,
};
use prost::Message;
use proto::curator_private::LeaderElectionValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Prefix of the election keys inside the curator keyspace.
pub const ELECTION_PREFIX: &str = "/leader/";

/// Default lease TTL. Upstream uses 10 s; we use 3 s so a crashed leader is replaced within
/// about 3 s (plus etcd's raft election and its lease extension, about 1.5 s at most, when the
/// crashed node's member also led raft: etcd's new raft leader restarts every lease). The
/// lease is refreshed every TTL/3 (1 s), so three consecutive refreshes must fail (or a 3 s
/// stall) before leadership is lost. 2 s was measured and flapped: on a 2-core machine at a
/// load of 13, the heartbeat benchmark's leader lost its lease four times in 26 s (see
/// BENCHMARKS.md). etcd's lease TTLs are whole seconds.
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(3);

/// Where this curator stands in the election.
// The Leader variant carries an etcd client handle; the status lives in a watch channel and is
// cloned only on changes, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionStatus {
    /// Between rounds, or before the first observation.
    Unknown,
    /// This curator leads; its writes are guarded by `leadership`.
    Leader(Leadership),
    /// Another curator leads.
    Follower {
        /// Node ID of the leader.
        leader_id: String,
    },
}

/// Proof of leadership: the election key and the revision it was created at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// Key (relative to the curator keyspace) of our election entry.
    pub lock_key: String,
    /// Its create revision.
    pub lock_rev: i64,
    ns: NamespacedEq,
}

/// `Namespaced` has no `PartialEq`; leadership equality is by key and revision only.
#[derive(Clone)]
struct NamespacedEq(Namespaced);

impl PartialEq for NamespacedEq {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for NamespacedEq {}
impl std::fmt::Debug for NamespacedEq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.prefix())
    }
}

impl Leadership {
    /// A leadership for tests and for the bootstrap node: `lock_key` must exist with `lock_rev`.
    pub fn new(ns: Namespaced, lock_key: String, lock_rev: i64) -> Self {
        Self {
            lock_key,
            lock_rev,
            ns: NamespacedEq(ns),
        }
    }

    /// The curator keyspace.
    pub fn namespace(&self) -> &Namespaced {
        &self.ns.0
    }
}

/// How long the election thread waits between attempts to open its etcd connection.
const CONNECT_RETRY: Duration = Duration::from_millis(200);

/// Pauses between failed election rounds (etcd unreachable, lease refused): quick at first,
/// so leadership is taken soon after etcd returns, capped so a long outage is not hammered.
const ROUND_BACKOFF: rpc::Backoff =
    rpc::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Runs the election ([`run`]) on a thread of its own with its own runtime and its own etcd
/// connection to `consensus`, until `cancel` fires. `api` is the curator keyspace on the
/// connection leader operations use; published [`Leadership`]s carry it.
pub fn spawn(
    consensus: consensus::Status,
    api: Namespaced,
    node_id: String,
    ttl: Duration,
    status: watch::Sender<ElectionStatus>,
    cancel: CancellationToken,
) -> std::io::Result<ElectionThread> {
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    // When the node stops, its etcd member waits for this hold (bounded) before it stops: the
    // round's lease revocation must reach etcd, or the successor waits for the lease to expire.
    let hold = consensus.hold();
    let thread = std::thread::Builder::new()
        .name("curator-election".to_string())
        .spawn(move || {
            // Dropped when the thread ends, however it ends: after the last round has given
            // its lease back.
            let _done = done_tx;
            let _hold = hold;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("cannot build the election runtime: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let Some(ns) = connect(&consensus, &cancel).await else {
                    return;
                };
                run_with(ns, api, node_id, ttl, status, cancel).await;
            });
        })?;
    Ok(ElectionThread { thread, done })
}

/// The thread [`spawn`] started.
#[derive(Debug)]
pub struct ElectionThread {
    thread: std::thread::JoinHandle<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl ElectionThread {
    /// Waits (without blocking the runtime) until the thread has ended; false if it panicked.
    pub async fn finished(self) -> bool {
        let _ = self.done.await;
        self.thread.join().is_ok()
    }
}

/// The election's own connection, retried until it opens or `cancel` fires.
async fn connect(consensus: &consensus::Status, cancel: &CancellationToken) -> Option<Namespaced> {
    loop {
        let attempt = async {
            let client = consensus.connect_new().await.map_err(|e| e.to_string())?;
            Namespaced::root(client)
                .sub(crate::KEYSPACE)
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(ns) => return Some(ns),
            Err(e) => tracing::warn!("election: connecting to etcd: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(CONNECT_RETRY) => {}
        }
    }
}

/// Runs election rounds on `ns` until `cancel` fires, publishing the status; leaderships
/// carry `ns` itself. [`spawn`] is what curators use.
pub async fn run(
    ns: Namespaced,
    node_id: String,
    ttl: Duration,
    status: watch::Sender<ElectionStatus>,
    cancel: CancellationToken,
) {
    run_with(ns.clone(), ns, node_id, ttl, status, cancel).await
}

/// Runs election rounds until `cancel` fires, publishing the status. Each round: clean up our
/// own stale key, grant a lease, create our key, then lead or follow until the lease is lost.
/// The election itself talks to etcd on `ns`; the leaderships it publishes carry `api`.
async fn run_with(
    ns: Namespaced,
    api: Namespaced,
    node_id: String,
    ttl: Duration,
    status: watch::Sender<ElectionStatus>,
    cancel: CancellationToken,
) {
    let mut delays = ROUND_BACKOFF.delays();
    while !cancel.is_cancelled() {
        status.send_replace(ElectionStatus::Unknown);
        match round(&ns, &api, &node_id, ttl, &status, &cancel).await {
            Ok(()) => delays.reset(),
            Err(e) => {
                tracing::warn!("election round failed: {e}");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = delays.wait() => {}
                }
            }
        }
    }
    status.send_replace(ElectionStatus::Unknown);
}

async fn round(
    ns: &Namespaced,
    api: &Namespaced,
    node_id: &str,
    ttl: Duration,
    status: &watch::Sender<ElectionStatus>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    clean_stale_key(ns, node_id).await?;
    let mut client = ns.client().clone();
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(10);
    let asked = Instant::now();
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| format!("lease grant: {e}"))?;
    // The lease runs from when etcd granted it, which is after we asked.
    let expires = asked + Duration::from_secs(u64::try_from(lease.ttl()).unwrap_or(0));
    let lease = lease.id();
    // The round lasts until the lease is lost (it could not be renewed before it expired, or
    // etcd says it expired), the campaign fails, or `cancel` fires.
    let result = tokio::select! {
        r = keep_alive(ns, ttl, lease, expires) => r,
        r = campaign(ns, api, node_id, ttl, lease, status) => r,
        _ = cancel.cancelled() => Ok(()),
    };
    // Whatever ended the round, we do not lead any more: say so before anything that may
    // block (the revoke waits for an etcd that may be unreachable).
    status.send_replace(ElectionStatus::Unknown);
    // Graceful end (or a failed round): give the lease back so a successor does not wait for
    // it to expire. Best effort, bounded: otherwise etcd expires it by itself.
    let _ = tokio::time::timeout(ttl, client.lease_revoke(lease)).await;
    result
}

/// How soon a failed renewal is tried again (on a new keep-alive stream).
const RENEW_RETRY: Duration = Duration::from_millis(200);

/// Renews `lease` every TTL/3 until it is lost; returns why it was lost.
///
/// A failed renewal (the keep-alive stream broke, etcd briefly had no raft leader, the
/// connection was reset) does not end the lease: etcd keeps it until `expires`, and no other
/// candidate can lead before then. So a failure is retried on a fresh stream until the lease's
/// deadline, known from the last renewal etcd answered (counted from when we sent it, which is
/// before etcd applied it, so the deadline errs early). Only a lease that really lapsed, or that
/// etcd reports gone, ends leadership; a leader cut off from etcd steps down at the deadline,
/// no later than its lease expires on etcd.
async fn keep_alive(
    ns: &Namespaced,
    ttl: Duration,
    lease: i64,
    mut expires: Instant,
) -> Result<(), String> {
    let mut client = ns.client().clone();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut next = Instant::now() + ttl / 3;
    loop {
        tokio::time::sleep_until(next.min(expires)).await;
        if Instant::now() >= expires {
            return Err("lease expired: no renewal answered before its deadline".to_string());
        }
        let sent = Instant::now();
        let renewal = async {
            if stream.is_none() {
                stream = Some(
                    client
                        .lease_keep_alive(lease)
                        .await
                        .map_err(|e| format!("opening the lease keep-alive: {e}"))?,
                );
            }
            let Some((keeper, responses)) = stream.as_mut() else {
                return Err("no keep-alive stream".to_string());
            };
            keeper
                .keep_alive()
                .await
                .map_err(|e| format!("lease keep-alive: {e}"))?;
            match responses.message().await {
                Ok(Some(r)) => Ok(r.ttl()),
                Ok(None) => Err("lease keep-alive stream ended".to_string()),
                Err(e) => Err(format!("lease keep-alive: {e}")),
            }
        };
        match tokio::time::timeout_at(expires, renewal).await {
            Ok(Ok(granted)) if granted > 0 => {
                expires = sent + Duration::from_secs(u64::try_from(granted).unwrap_or(0));
                next = sent + ttl / 3;
            }
            Ok(Ok(_)) => return Err("lease expired (etcd no longer knows it)".to_string()),
            Ok(Err(e)) => {
                tracing::warn!(
                    "renewing the election lease failed, retrying until it expires in {:?}: {e}",
                    expires.saturating_duration_since(Instant::now())
                );
                stream = None;
                next = Instant::now() + RENEW_RETRY;
            }
            Err(_) => {
                return Err("lease expired: no renewal answered before its deadline".to_string());
            }
        }
    }
}

async fn campaign(
    ns: &Namespaced,
    api: &Namespaced,
    node_id: &str,
    ttl: Duration,
    lease: i64,
    status: &watch::Sender<ElectionStatus>,
) -> Result<(), String> {
    let key = format!("{ELECTION_PREFIX}{lease:x}");
    let value = LeaderElectionValue {
        node_id: node_id.to_string(),
        ttl: ttl.as_secs(),
    }
    .encode_to_vec();
    let create = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    ns.txn(create)
        .await
        .map_err(|e| format!("creating election key: {e}"))?;
    let mine = ns
        .get(key.clone(), None)
        .await
        .map_err(|e| format!("reading election key: {e}"))?;
    let my_rev = mine
        .kvs()
        .first()
        .map(|kv| kv.create_revision())
        .ok_or("election key vanished")?;

    loop {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let resp = ns
            .get(ELECTION_PREFIX, Some(opts))
            .await
            .map_err(|e| format!("reading election: {e}"))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let Some(first) = resp.kvs().first() else {
            return Err("our election key disappeared (lease lost)".to_string());
        };
        if first.key() == key.as_bytes() {
            status.send_replace(ElectionStatus::Leader(Leadership::new(
                api.clone(),
                key.clone(),
                my_rev,
            )));
            tracing::info!("became curator leader ({key} at revision {my_rev})");
            // Leadership lasts as long as the lease: the keep-alive branch ends the round.
            return std::future::pending().await;
        }
        let leader_id = LeaderElectionValue::decode(first.value())
            .map(|v| v.node_id)
            .unwrap_or_default();
        // Only a change is published: every publication restarts the curator's server (and
        // breaks its clients' discovery streams), and most watch events (another candidate
        // joining) leave the leader as it was.
        let follower = ElectionStatus::Follower { leader_id };
        status.send_if_modified(|s| {
            let changed = *s != follower;
            if changed {
                *s = follower.clone();
            }
            changed
        });
        // Wait for any change of the candidates (a leader key deleted or expired), from right
        // after the revision we read, so nothing in between is missed.
        let mut watch = ns
            .watch(
                ELECTION_PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| format!("watching election: {e}"))?;
        match watch.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("election watch: {e}")),
            None => return Err("election watch ended".to_string()),
        }
    }
}

/// After a crash and restart our old key may still lead until its lease expires; delete it
/// (only if unchanged) so the cluster does not wait a full TTL for us.
async fn clean_stale_key(ns: &Namespaced, node_id: &str) -> Result<(), String> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let resp = ns
        .get(ELECTION_PREFIX, Some(opts))
        .await
        .map_err(|e| format!("reading election: {e}"))?;
    let Some(first) = resp.kvs().first() else {
        return Ok(());
    };
    let Ok(value) = LeaderElectionValue::decode(first.value()) else {
        return Ok(());
    };
    if value.node_id != node_id {
        return Ok(());
    }
    let key = String::from_utf8_lossy(first.key()).into_owned();
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            first.mod_revision(),
        )])
        .and_then([TxnOp::delete(key.clone(), None)]);
    ns.txn(txn)
        .await
        .map_err(|e| format!("deleting stale election key: {e}"))?;
    tracing::info!("removed our stale election key {key}");
    Ok(())
}
