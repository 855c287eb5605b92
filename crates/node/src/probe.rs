//! Telling "the cluster is not reachable (yet)" apart from "these addresses belong to another
//! cluster" before enrolling.
//!
//! The leader-following channel refuses servers that are not nodes of the expected cluster,
//! but from the outside that looks like an unreachable cluster, and a node would retry
//! forever. So before registering or joining, the node looks at the certificate each curator
//! endpoint presents (a TLS handshake without verification, then the node-certificate check
//! against the expected CA). If every endpoint that answers is a node of another cluster, the
//! node stops with an error naming it.

use std::sync::Arc;
use std::time::Duration;

use rpc::{ClientCredentials, ServerVerification};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// How long one probe (TCP connect + TLS handshake) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What an endpoint turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A node of the expected cluster.
    Ours,
    /// Something that is not a node of the expected cluster (why).
    Foreign(String),
    /// Nothing usable answered (why).
    Unreachable(String),
}

/// What probing all endpoints found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// At least one endpoint is a node of the expected cluster.
    Reachable,
    /// Endpoints answered, and all of them are foreign (endpoint: reason).
    Foreign(Vec<String>),
    /// Nothing answered (endpoint: reason).
    Unreachable(Vec<String>),
}

/// Probes all `endpoints` (`host:port`) concurrently against the cluster CA `ca` (DER).
pub async fn probe_all(endpoints: &[String], ca: &[u8]) -> Verdict {
    let results = futures::future::join_all(endpoints.iter().map(|e| probe(e, ca.to_vec()))).await;
    let mut foreign = Vec::new();
    let mut unreachable = Vec::new();
    for (endpoint, result) in endpoints.iter().zip(results) {
        match result {
            Probe::Ours => return Verdict::Reachable,
            Probe::Foreign(why) => foreign.push(format!("{endpoint}: {why}")),
            Probe::Unreachable(why) => unreachable.push(format!("{endpoint}: {why}")),
        }
    }
    if foreign.is_empty() {
        Verdict::Unreachable(unreachable)
    } else {
        Verdict::Foreign(foreign)
    }
}

/// Probes one endpoint.
pub async fn probe(endpoint: &str, ca: Vec<u8>) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, presented_certificate(endpoint)).await {
        Err(_) => Probe::Unreachable(format!("no TLS answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(why)) => Probe::Unreachable(why),
        Ok(Ok(None)) => Probe::Foreign("server presented no certificate".to_string()),
        Ok(Ok(Some(cert))) => match identity::verify::verify_node_cert(&cert, &ca) {
            Ok(_) => Probe::Ours,
            Err(e) => Probe::Foreign(format!("server is not a node of this node's cluster ({e})")),
        },
    }
}

/// Connects without verifying the server and returns the certificate it presented.
async fn presented_certificate(endpoint: &str) -> Result<Option<Vec<u8>>, String> {
    let config =
        rpc::client_tls::client_config(&ClientCredentials::None, ServerVerification::Insecure)
            .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(endpoint)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(endpoint)
        .to_string();
    let name = ServerName::try_from(host).map_err(|e| format!("server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec()))
}
