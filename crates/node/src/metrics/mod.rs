//! The metrics service: every node serves Prometheus metrics on `https://<address>:7840`
//! (upstream's metrics port) to the cluster owner only ([`tls`]):
//!
//! * `/metrics/node`: this node process: the standard process metrics (CPU, memory, open
//!   files), the heartbeat round trip, enrolment and roles, the data directory's space, and the
//!   restarts of every supervised runnable;
//! * `/metrics/etcd`: the local etcd member's own metrics ([`etcd`]), while one runs;
//! * `/metrics/curator`: the local curator's ([`curator::metrics`]), while one runs;
//! * `/discovery`: every node's targets for Prometheus' HTTP service discovery ([`discovery`]).
//!
//! An exporter that does not run on this node answers 404 (Prometheus shows the target down);
//! discovery only lists the exporters each node runs.

pub mod discovery;
pub mod etcd;
pub mod tls;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use curator::metrics::CuratorMetrics;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use supervisor::{Context, Runnable, RunnableResult};
use tokio_stream::StreamExt;

use crate::roleserve::{Roleserve, describe_roles};

/// The metrics port (upstream's `MetricsPort`).
pub const METRICS_PORT: u16 = 7840;

/// The exporters a node may serve, in the order they are listed.
pub const EXPORTERS: &[&str] = &["node", "etcd", "curator"];

/// Prometheus' text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Heartbeat round trip buckets (seconds): loopback milliseconds up to the 10 s timeout.
const HEARTBEAT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Connections the metrics listener accepts at once: a few Prometheus servers and operators.
const MAX_CONNECTIONS: usize = 64;

/// The metrics a node collects as it runs (what is read when scraped is not kept here).
pub struct NodeMetrics {
    registry: Registry,
    /// Time from sending a heartbeat to its answer.
    pub heartbeat_round_trip: Histogram,
    /// The local curator's metrics (kept across its restarts).
    pub curator: Arc<CuratorMetrics>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// A fresh set, with the process collector of this process.
    pub fn new() -> Arc<Self> {
        // The definitions are static: registering them fails only on a programming error
        // (a duplicate name), which every test run would show.
        let registry = Registry::new();
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        let heartbeat_round_trip = Histogram::with_opts(
            HistogramOpts::new(
                "metropolis_node_heartbeat_round_trip_seconds",
                "Time from sending a heartbeat to the curator leader to its answer.",
            )
            .buckets(HEARTBEAT_BUCKETS.to_vec()),
        )
        .expect("heartbeat histogram");
        registry
            .register(Box::new(heartbeat_round_trip.clone()))
            .expect("heartbeat histogram");
        Arc::new(Self {
            registry,
            heartbeat_round_trip,
            curator: CuratorMetrics::new().expect("curator metrics"),
        })
    }

    /// The `node` exporter's metrics in the text format, with the state read now.
    pub fn render_node(&self, rs: &Roleserve, ctx: &Context) -> Result<String, String> {
        let mut families = self.registry.gather();
        let now = Registry::new();
        node_snapshot(rs, ctx, &now).map_err(|e| e.to_string())?;
        families.extend(now.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        encode(&families)
    }
}

fn encode(families: &[prometheus::proto::MetricFamily]) -> Result<String, String> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(families, &mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) -> prometheus::Result<()> {
    let g = IntGauge::new(name, help)?;
    g.set(value);
    registry.register(Box::new(g))
}

/// What the node is now: enrolment, roles, storage, its runnables.
fn node_snapshot(rs: &Roleserve, ctx: &Context, registry: &Registry) -> prometheus::Result<()> {
    let membership = rs.membership_now();
    let info = IntGaugeVec::new(
        Opts::new(
            "metropolis_node_info",
            "Always 1; labels name the node and the version it runs.",
        ),
        &["node_id", "version"],
    )?;
    let node_id = membership.as_ref().map(|m| m.node_id()).unwrap_or_default();
    info.with_label_values(&[node_id.as_str(), crate::version::text()])
        .set(1);
    registry.register(Box::new(info))?;
    gauge(
        registry,
        "metropolis_node_enrolled",
        "1 once the node is a member of its cluster (bootstrapped, registered or joined).",
        i64::from(membership.is_some()),
    )?;
    gauge(
        registry,
        "metropolis_node_ready",
        "1 once the node is enrolled and has reported its status.",
        i64::from(rs.is_ready()),
    )?;
    gauge(
        registry,
        "metropolis_node_control_plane_running",
        "1 while this node runs an etcd member and a curator.",
        i64::from(*rs.watch_control_plane().borrow()),
    )?;
    let roles = IntGaugeVec::new(
        Opts::new(
            "metropolis_node_role",
            "1 for each role the node holds, 0 for the others.",
        ),
        &["role"],
    )?;
    let held = rs
        .roles_now()
        .map(|r| describe_roles(&r))
        .unwrap_or_default();
    for (role, name) in [
        ("consensus_member", "ConsensusMember"),
        ("kubernetes_controller", "KubernetesController"),
        ("kubernetes_worker", "KubernetesWorker"),
    ] {
        roles
            .with_label_values(&[role])
            .set(i64::from(held.split(", ").any(|r| r == name)));
    }
    registry.register(Box::new(roles))?;
    match rustix::fs::statvfs(&rs.env.layout.data) {
        Ok(st) => {
            let size = st.f_blocks.saturating_mul(st.f_frsize);
            let available = st.f_bavail.saturating_mul(st.f_frsize);
            gauge(
                registry,
                "metropolis_node_data_size_bytes",
                "Size of the filesystem holding the node's data directory.",
                i64::try_from(size).unwrap_or(i64::MAX),
            )?;
            gauge(
                registry,
                "metropolis_node_data_available_bytes",
                "Space available to the node on the filesystem of its data directory.",
                i64::try_from(available).unwrap_or(i64::MAX),
            )?;
        }
        Err(e) => tracing::debug!("statvfs of the data directory: {e}"),
    }
    let restarts = IntGaugeVec::new(
        Opts::new(
            "metropolis_supervisor_runnable_restarts",
            "Restarts of each supervised runnable since its parent (re)started it.",
        ),
        &["dn"],
    )?;
    let healthy = IntGaugeVec::new(
        Opts::new(
            "metropolis_supervisor_runnable_healthy",
            "1 while a supervised runnable is healthy (or done), else 0.",
        ),
        &["dn"],
    )?;
    for status in ctx.tree_status() {
        restarts
            .with_label_values(&[status.dn.as_str()])
            .set(i64::from(status.restarts));
        healthy
            .with_label_values(&[status.dn.as_str()])
            .set(i64::from(matches!(
                status.state,
                supervisor::State::Healthy | supervisor::State::Done
            )));
    }
    registry.register(Box::new(restarts))?;
    registry.register(Box::new(healthy))?;
    Ok(())
}

/// The `metrics` worker.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move { run(rs, ctx).await }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let m = tokio::select! {
        m = rs.membership() => m,
        _ = ctx.cancelled() => return Ok(()),
    };
    let addr = SocketAddr::new(IpAddr::V4(rs.env.address), METRICS_PORT);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let tls = tls::server_config(&m.credentials, rs.env.revocations.clone())
        .map_err(|e| format!("metrics TLS: {e}"))?;
    let limits = rpc::serve::Limits {
        max_connections: MAX_CONNECTIONS,
        ..rpc::serve::Limits::default()
    };
    let mut incoming = rpc::serve::tls_incoming_with(listener, tls, limits, ctx.token());
    tracing::info!("metrics serving on https://{addr}");
    ctx.signal_healthy();
    loop {
        let conn = tokio::select! {
            c = incoming.next() => c,
            _ = ctx.cancelled() => return Ok(()),
        };
        let Some(conn) = conn else {
            return Err("the metrics listener stopped".into());
        };
        let Ok(conn) = conn else { continue };
        let (rs, ctx) = (rs.clone(), ctx.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (rs, ctx) = (rs.clone(), ctx.clone());
                async move { Ok::<_, Infallible>(handle(&rs, &ctx, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

type Response = http::Response<Full<Bytes>>;

fn answer(status: http::StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn error(status: http::StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    answer(status, "text/plain; charset=utf-8", text)
}

async fn handle(rs: &Roleserve, ctx: &Context, req: http::Request<Incoming>) -> Response {
    use http::StatusCode;
    if req.method() != http::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let path = req.uri().path();
    if path == "/discovery" {
        let Some(m) = rs.membership_now() else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the node is not enrolled");
        };
        return match discovery::targets(&m).await {
            Ok(groups) => match serde_json::to_vec(&groups) {
                Ok(json) => answer(StatusCode::OK, "application/json", json),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        };
    }
    let Some(exporter) = path.strip_prefix("/metrics/") else {
        return error(
            StatusCode::NOT_FOUND,
            "paths: /metrics/<exporter> (node, etcd, curator) and /discovery",
        );
    };
    let metrics = rs.metrics();
    let rendered = match exporter {
        "node" => metrics.render_node(rs, ctx),
        "curator" if *rs.watch_control_plane().borrow() => metrics.curator.render().await,
        "etcd" if rs.consensus_now().is_some() => {
            let socket = consensus::Config::metrics_socket_in(&rs.env.layout.consensus_ephemeral());
            return match etcd::scrape(&socket).await {
                Ok((content_type, body)) => answer(StatusCode::OK, &content_type, body),
                Err(e) => error(StatusCode::BAD_GATEWAY, e),
            };
        }
        "curator" | "etcd" => {
            return error(
                StatusCode::NOT_FOUND,
                format!("this node does not run {exporter} (it is no consensus member)"),
            );
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no exporter {other:?}; exporters: {}", EXPORTERS.join(", ")),
            );
        }
    };
    match rendered {
        Ok(text) => answer(StatusCode::OK, TEXT_FORMAT, text),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
