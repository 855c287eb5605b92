//! Node health from heartbeats kept in the leader's memory, with an injectable
//! clock so tests can move time.
//!
//! Heartbeat timestamps are volatile: a new leader starts with none and gives every node a
//! grace period of [`HEARTBEAT_TIMEOUT`] after its election before calling it timed out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::api::node::Health;
use proto::common::NodeState;

/// How often nodes heartbeat (upstream constant).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A node whose last heartbeat is older than this is HEARTBEAT_TIMEOUT (upstream constant).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// A source of monotonic time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock tests move forward by hand.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset_ms: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            offset_ms: AtomicU64::new(0),
        }
    }
}

impl ManualClock {
    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.offset_ms.fetch_add(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// Last heartbeat per node, in the leader's memory.
#[derive(Debug)]
pub struct Heartbeats {
    clock: Arc<dyn Clock>,
    leader_since: Instant,
    last: Mutex<HashMap<String, Instant>>,
}

impl Heartbeats {
    /// A fresh tracker: leadership starts now.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let leader_since = clock.now();
        Self {
            clock,
            leader_since,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Records a heartbeat of `node_id` now.
    pub fn beat(&self, node_id: &str) {
        let now = self.clock.now();
        self.lock().insert(node_id.to_string(), now);
    }

    /// Forgets a node (deleted nodes).
    pub fn forget(&self, node_id: &str) {
        self.lock().remove(node_id);
    }

    /// The clock's now, to evaluate many nodes against one instant (as upstream does per
    /// GetNodes call).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Health and time since the last heartbeat of a node in `state` at `now`.
    /// Without any heartbeat the duration is the maximum (upstream: Go's saturating
    /// subtraction, ~292 years).
    pub fn health(&self, node_id: &str, state: NodeState, now: Instant) -> (Health, Duration) {
        let last = self.lock().get(node_id).copied();
        let since = match last {
            Some(ts) => now.saturating_duration_since(ts),
            None => Duration::from_nanos(u64::try_from(i64::MAX).unwrap_or(u64::MAX)),
        };
        // Not UP, or no heartbeat yet within the grace period after the election: unknown.
        let in_grace =
            last.is_none() && now.saturating_duration_since(self.leader_since) < HEARTBEAT_TIMEOUT;
        let health = if state != NodeState::Up || in_grace {
            Health::Unknown
        } else if since > HEARTBEAT_TIMEOUT {
            Health::HeartbeatTimeout
        } else {
            Health::Healthy
        };
        (health, since)
    }

    // A poisoned map only means a panic mid-insert; the timestamps are still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Duration` → protobuf Duration.
pub fn to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream TestClusterHeartbeat, on the tracker.
    #[test]
    fn heartbeat_health() {
        let clock = Arc::new(ManualClock::default());
        let hb = Heartbeats::new(clock.clone());
        let id = "metropolis-aa";
        // Fresh leader, no heartbeats: UNKNOWN (grace period).
        assert_eq!(hb.health(id, NodeState::Up, hb.now()).0, Health::Unknown);
        // Leader start beyond the timeout, still no heartbeat: HEARTBEAT_TIMEOUT.
        clock.advance(HEARTBEAT_TIMEOUT + Duration::from_secs(1));
        let (h, since) = hb.health(id, NodeState::Up, hb.now());
        assert_eq!(h, Health::HeartbeatTimeout);
        assert_eq!(to_proto(since).seconds, i64::MAX / 1_000_000_000);
        // After a heartbeat: HEALTHY.
        hb.beat(id);
        clock.advance(Duration::from_secs(2));
        let (h, since) = hb.health(id, NodeState::Up, hb.now());
        assert_eq!((h, since), (Health::Healthy, Duration::from_secs(2)));
        // Heartbeat 10+ s old: HEARTBEAT_TIMEOUT.
        clock.advance(HEARTBEAT_TIMEOUT);
        assert_eq!(
            hb.health(id, NodeState::Up, hb.now()).0,
            Health::HeartbeatTimeout
        );
        // Not UP: UNKNOWN whatever the heartbeats.
        hb.beat(id);
        assert_eq!(
            hb.health(id, NodeState::Standby, hb.now()).0,
            Health::Unknown
        );
        hb.forget(id);
        assert_eq!(
            hb.health(id, NodeState::Up, hb.now()).0,
            Health::HeartbeatTimeout
        );
    }
}
