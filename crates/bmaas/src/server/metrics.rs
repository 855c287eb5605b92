//! The server's Prometheus metrics on `--srv-prometheus-listen-address` (upstream's flag):
//! `GET /metrics` over TLS with the component certificate, clients authenticated by the
//! component CA like the internal gRPC listener, or plain HTTP with `--srv-prometheus-insecure`.
//!
//! Two sources: the server's own gRPC calls (counted by method and code by
//! [`rpc::metrics`]; agent heartbeats are also counted on their own, so their rate is one
//! `rate()` away), and the BMDB, read when scraped: live sessions by component, work running,
//! the work history's events by process (started, finished, failed, canceled), machines in
//! backoff by process, agents seen, hardware reports stored and machines known.

use std::convert::Infallible;
use std::sync::Arc;

use bmdb::Bmdb;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rpc::metrics::{RpcMetrics, RpcMetricsLayer};
use tokio::net::TcpListener;
use tonic::Code;

use crate::{Error, Result};

/// Prometheus' text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The gRPC methods the server labels by name (everything else is `unknown`).
const METHODS: &[&str] = &[
    "/cloud.bmaas.server.api.AgentCallback/Heartbeat",
    "/cloud.bmaas.server.api.Operator/EnrollMachine",
    "/cloud.bmaas.server.api.Operator/ListMachines",
    "/cloud.bmaas.server.api.Operator/RequestOSInstallation",
];

/// What the server counts as it runs.
pub struct ServerMetrics {
    registry: Registry,
    rpc: RpcMetrics,
    heartbeats: IntCounter,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl ServerMetrics {
    /// A fresh set.
    pub fn new() -> Result<Arc<Self>> {
        let registry = Registry::new();
        let rpc = RpcMetrics::new("bmaas_server", &registry).map_err(metrics_error)?;
        let heartbeats = IntCounter::new(
            "bmaas_server_agent_heartbeats_total",
            "Agent heartbeats the server accepted.",
        )
        .map_err(metrics_error)?;
        registry
            .register(Box::new(heartbeats.clone()))
            .map_err(metrics_error)?;
        Ok(Arc::new(Self {
            registry,
            rpc,
            heartbeats,
        }))
    }

    /// The tower layer recording the server's gRPC calls.
    pub fn layer(self: &Arc<Self>) -> RpcMetricsLayer {
        let heartbeats = self.heartbeats.clone();
        let hook: rpc::metrics::CallHook = Arc::new(move |service, method, code| {
            if code == Code::Ok
                && service == "cloud.bmaas.server.api.AgentCallback"
                && method == "Heartbeat"
            {
                heartbeats.inc();
            }
        });
        RpcMetricsLayer::new(Some(self.rpc.clone()), Some(hook)).with_methods(METHODS)
    }

    /// Everything in the text format, the BMDB read now.
    pub async fn render(&self, bmdb: &Bmdb) -> Result<String> {
        let mut families = self.registry.gather();
        let now = Registry::new();
        bmdb_snapshot(bmdb, &now).await?;
        families.extend(now.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(metrics_error)?;
        String::from_utf8(out).map_err(|e| Error::Config(e.to_string()))
    }
}

fn metrics_error(e: prometheus::Error) -> Error {
    Error::Config(format!("metrics: {e}"))
}

/// Rows of `(label, label, count)`.
async fn counts2(bmdb: &Bmdb, sql: &'static str) -> Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(sql)
        .fetch_all(bmdb.pool())
        .await
        .map_err(bmdb::Error::from)?)
}

/// Rows of `(label, count)`.
async fn counts1(bmdb: &Bmdb, sql: &'static str) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(sql)
        .fetch_all(bmdb.pool())
        .await
        .map_err(bmdb::Error::from)?)
}

async fn count(bmdb: &Bmdb, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .fetch_one(bmdb.pool())
        .await
        .map_err(bmdb::Error::from)?)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    rows: &[(String, i64)],
) -> Result<()> {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).map_err(metrics_error)?;
    for (value, n) in rows {
        g.with_label_values(&[value.as_str()]).set(*n);
    }
    registry.register(Box::new(g)).map_err(metrics_error)
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) -> Result<()> {
    let g = IntGauge::new(name, help).map_err(metrics_error)?;
    g.set(value);
    registry.register(Box::new(g)).map_err(metrics_error)
}

/// The BMDB's state as metrics in `registry`.
async fn bmdb_snapshot(bmdb: &Bmdb, registry: &Registry) -> Result<()> {
    let sessions = counts1(
        bmdb,
        "SELECT session_component_name, count(*) FROM sessions \
         WHERE session_deadline > now() GROUP BY 1",
    )
    .await?;
    gauge_vec(
        registry,
        "bmdb_sessions",
        "Live BMDB sessions (deadline not passed) by component.",
        "component",
        &sessions,
    )?;
    let running = counts1(bmdb, "SELECT process::text, count(*) FROM work GROUP BY 1").await?;
    gauge_vec(
        registry,
        "bmdb_work_running",
        "Work items being worked on now, by process.",
        "process",
        &running,
    )?;
    let events = counts2(
        bmdb,
        "SELECT process::text, lower(event::text), count(*) FROM work_history GROUP BY 1, 2",
    )
    .await?;
    let history = IntCounterVec::new(
        Opts::new(
            "bmdb_work_events_total",
            "Work history events by process and event (started, finished, failed, canceled).",
        ),
        &["process", "event"],
    )
    .map_err(metrics_error)?;
    for (process, event, n) in &events {
        history
            .with_label_values(&[process.as_str(), event.as_str()])
            .inc_by(u64::try_from(*n).unwrap_or(0));
    }
    registry
        .register(Box::new(history))
        .map_err(metrics_error)?;
    let backoffs = counts1(
        bmdb,
        "SELECT process::text, count(*) FROM work_backoff WHERE until > now() GROUP BY 1",
    )
    .await?;
    gauge_vec(
        registry,
        "bmdb_work_backoffs",
        "Machines in backoff after failed work, by process.",
        "process",
        &backoffs,
    )?;
    gauge(
        registry,
        "bmdb_agents_seen",
        "Machines whose agent has sent a heartbeat at least once.",
        count(bmdb, "SELECT count(*) FROM machine_agent_heartbeat").await?,
    )?;
    gauge(
        registry,
        "bmdb_hardware_reports",
        "Hardware reports stored (one per machine, the latest).",
        count(bmdb, "SELECT count(*) FROM machine_hardware_report").await?,
    )?;
    gauge(
        registry,
        "bmdb_machines",
        "Machines known to the BMDB.",
        count(bmdb, "SELECT count(*) FROM machines").await?,
    )?;
    Ok(())
}

/// Serves `GET /metrics` on `listener` (TLS unless `tls` is None) until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Arc<ServerMetrics>,
    bmdb: Bmdb,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return Ok(()),
        };
        let (metrics, bmdb, acceptor) = (metrics.clone(), bmdb.clone(), acceptor.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (metrics, bmdb) = (metrics.clone(), bmdb.clone());
                async move { Ok::<_, Infallible>(handle(&metrics, &bmdb, req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    );
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = http.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}

async fn handle<B>(
    metrics: &ServerMetrics,
    bmdb: &Bmdb,
    req: http::Request<B>,
) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = if req.method() != http::Method::GET {
        (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".to_string(),
        )
    } else if req.uri().path() != "/metrics" {
        (
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are served at /metrics\n".to_string(),
        )
    } else {
        match metrics.render(bmdb).await {
            Ok(text) => (http::StatusCode::OK, TEXT_FORMAT, text),
            Err(e) => (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        }
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
