//! `metroctl node metrics <id> [--exporter E]`: GET `/metrics/<E>` from the node's metrics
//! service (port 7840) as the owner, the node verified as that node of the pinned cluster, and
//! print what it serves (Prometheus' text format) as it is.

use std::time::Duration;

use super::Env;
use crate::error::{Error, Result};
use crate::session::check_node_id;

/// The node's metrics port (upstream's MetricsPort).
const METRICS_PORT: u16 = 7840;

/// The exporters a node can serve.
const EXPORTERS: &[&str] = &["node", "etcd", "curator"];

/// How long one scrape may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Largest answer printed (a node's exporters serve a few hundred KiB at most).
const MAX_BYTES: usize = 32 << 20;

pub async fn run(env: &Env, id: &str, exporter: &str) -> Result<()> {
    check_node_id(id)?;
    if !EXPORTERS.contains(&exporter) {
        return Err(Error::usage(format!(
            "unknown exporter {exporter:?}; exporters: {}",
            EXPORTERS.join(", ")
        )));
    }
    let session = env.ctx.owner_session().await?;
    let node = session.node(id).await?;
    let address = node
        .status
        .as_ref()
        .map(|s| s.external_address.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            Error::refused(format!(
                "node {id} has not reported its address yet, so its metrics cannot be read; \
                 try again shortly (metroctl node describe {id} shows it)"
            ))
        })?;
    let tls = session.node_tls(id)?;
    let path = format!("/metrics/{exporter}");
    let answer = rpc::https::get(&address, METRICS_PORT, &path, &tls, TIMEOUT, MAX_BYTES)
        .await
        .map_err(|e| Error::unreachable(format!("reading the metrics of node {id}: {e}")))?;
    if !answer.status.is_success() {
        return Err(Error::refused(format!(
            "node {id} answered {} for {path}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        )));
    }
    env.output
        .write_document(&String::from_utf8_lossy(&answer.body))
}
