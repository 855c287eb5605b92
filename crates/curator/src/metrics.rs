//! The curator's Prometheus metrics (the node serves them as its `curator` exporter).
//!
//! Kept as a thin layer over the curator: RPCs are counted by the tower layer of
//! [`rpc::metrics`] on the listener (by method and gRPC code, with latency), registrations and
//! deletions are derived from the calls that succeeded, leadership from the election status
//! the listener follows, and what only a leader knows — nodes by state and health, the age of
//! their last heartbeats — is computed from the leader's own state when scraped.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use proto::api::node::Health;
use proto::common::NodeState;
use rpc::RevocationSet;
use rpc::metrics::{RpcMetrics, RpcMetricsLayer};
use tonic::Code;

use crate::leader::Leader;

/// Heartbeat age buckets (seconds), around the 5 s interval and the 10 s timeout.
const HEARTBEAT_AGE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 30.0, 60.0];

/// Ages beyond this mean "never heartbeat" (the tracker reports ~292 years then).
const NO_HEARTBEAT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The curator's metrics: one set per node, kept across elections and restarts of the
/// curator (counters must not go back).
pub struct CuratorMetrics {
    registry: Registry,
    rpc: RpcMetrics,
    is_leader: IntGauge,
    elections_won: IntCounter,
    registrations: IntCounter,
    deletions: IntCounter,
    decommissions: IntCounter,
    leader: Mutex<Weak<Leader>>,
    revocations: Mutex<Option<RevocationSet>>,
}

impl std::fmt::Debug for CuratorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CuratorMetrics")
            .field("is_leader", &self.is_leader.get())
            .finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl CuratorMetrics {
    /// A fresh set in a registry of its own.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let rpc = RpcMetrics::new("metropolis_curator", &registry)?;
        let is_leader = IntGauge::new(
            "metropolis_curator_is_leader",
            "1 while this node's curator is the cluster's leader, else 0.",
        )?;
        registry.register(Box::new(is_leader.clone()))?;
        let elections_won = counter(
            &registry,
            "metropolis_curator_elections_won_total",
            "Leader elections this node's curator won.",
        )?;
        let registrations = counter(
            &registry,
            "metropolis_curator_registrations_total",
            "Nodes registered through this curator (successful RegisterNode calls).",
        )?;
        let deletions = counter(
            &registry,
            "metropolis_curator_deletions_total",
            "Nodes deleted through this curator (successful DeleteNode calls).",
        )?;
        let decommissions = counter(
            &registry,
            "metropolis_curator_decommissions_total",
            "Nodes decommissioned through this curator (successful DecommissionNode calls).",
        )?;
        Ok(Arc::new(Self {
            registry,
            rpc,
            is_leader,
            elections_won,
            registrations,
            deletions,
            decommissions,
            leader: Mutex::new(Weak::new()),
            revocations: Mutex::new(None),
        }))
    }

    /// The tower layer recording this curator's calls.
    pub fn layer(self: &Arc<Self>) -> RpcMetricsLayer {
        let this = Arc::downgrade(self);
        let hook: rpc::metrics::CallHook = Arc::new(move |service, method, code| {
            if code != Code::Ok {
                return;
            }
            let Some(m) = this.upgrade() else { return };
            match (service, method) {
                ("metropolis.node.core.curator.proto.api.Curator", "RegisterNode") => {
                    m.registrations.inc()
                }
                ("metropolis.proto.api.Management", "DeleteNode") => m.deletions.inc(),
                ("metropolis.proto.api.Management", "DecommissionNode") => m.decommissions.inc(),
                _ => {}
            }
        });
        RpcMetricsLayer::new(Some(self.rpc.clone()), Some(hook))
    }

    /// The per-call metrics (tests read counters through it).
    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// The revocation set whose size is exported.
    pub fn set_revocations(&self, revocations: RevocationSet) {
        *lock(&self.revocations) = Some(revocations);
    }

    /// This curator became leader with `leader`.
    pub fn leading(&self, leader: &Arc<Leader>) {
        *lock(&self.leader) = Arc::downgrade(leader);
        self.is_leader.set(1);
        self.elections_won.inc();
    }

    /// This curator is not (or no longer) the leader.
    pub fn not_leading(&self) {
        *lock(&self.leader) = Weak::new();
        self.is_leader.set(0);
    }

    /// The metrics in Prometheus' text format, with the leader's node gauges computed now.
    pub async fn render(&self) -> Result<String, String> {
        let mut families = self.registry.gather();
        let snapshot = Registry::new();
        if let Some(set) = lock(&self.revocations).clone() {
            let revoked = IntGauge::new(
                "metropolis_curator_revocations",
                "Node IDs and certificate serials this curator refuses (its revocation set).",
            )
            .map_err(|e| e.to_string())?;
            revoked.set(i64::try_from(set.len()).unwrap_or(i64::MAX));
            snapshot
                .register(Box::new(revoked))
                .map_err(|e| e.to_string())?;
        }
        let leader = lock(&self.leader).upgrade();
        if let Some(leader) = leader {
            leader_snapshot(&leader, &snapshot).await?;
        }
        families.extend(snapshot.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// What a leader knows about the nodes, as gauges and a histogram in `registry`.
async fn leader_snapshot(leader: &Leader, registry: &Registry) -> Result<(), String> {
    let nodes = IntGaugeVec::new(
        Opts::new(
            "metropolis_curator_nodes",
            "Nodes of the cluster by state and health (exported by the leader only).",
        ),
        &["state", "health"],
    )
    .map_err(|e| e.to_string())?;
    let ages = Histogram::with_opts(
        HistogramOpts::new(
            "metropolis_curator_heartbeat_age_seconds",
            "Time since each node's last heartbeat, at scrape time (leader only; nodes that \
             never sent one since the election are left out).",
        )
        .buckets(HEARTBEAT_AGE_BUCKETS.to_vec()),
    )
    .map_err(|e| e.to_string())?;
    let records = crate::state::node::load_all(&leader.leadership)
        .await
        .map_err(|e| format!("reading nodes: {e}"))?;
    let now = leader.heartbeats.now();
    // Every combination present, zeros included: absent series would read as "no data".
    for state in [
        NodeState::New,
        NodeState::Standby,
        NodeState::Up,
        NodeState::Decommissioned,
    ] {
        for health in [Health::Unknown, Health::Healthy, Health::HeartbeatTimeout] {
            nodes.with_label_values(&[state_name(state), health.as_str_name()]);
        }
    }
    for record in &records {
        let state = record.state();
        let (health, since) = leader.heartbeats.health(&record.id, state, now);
        nodes
            .with_label_values(&[state_name(state), health.as_str_name()])
            .inc();
        if since < NO_HEARTBEAT {
            ages.observe(since.as_secs_f64());
        }
    }
    registry
        .register(Box::new(nodes))
        .map_err(|e| e.to_string())?;
    registry
        .register(Box::new(ages))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `NODE_STATE_UP` → `UP`.
fn state_name(state: NodeState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("NODE_STATE_").unwrap_or(name)
}

// A poisoned lock only means a panic while swapping a pointer; the value is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
