//! The `etcd` exporter: etcd's own metrics, which the local member serves on a unix socket of
//! its own (`--listen-metrics-urls`, see [`consensus::Config::metrics_socket_path`]), fetched
//! over that socket for each scrape. Nothing but this node's processes can reach the socket.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Longest a scrape of etcd may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer taken from etcd (its metrics are a few hundred KiB).
const MAX_BYTES: usize = 16 << 20;

/// GET /metrics from the etcd member listening on `socket`: (content type, body).
pub async fn scrape(socket: &Path) -> Result<(String, Bytes), String> {
    tokio::time::timeout(TIMEOUT, fetch(socket))
        .await
        .map_err(|_| format!("etcd did not answer within {TIMEOUT:?}"))?
}

async fn fetch(socket: &Path) -> Result<(String, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to etcd's metrics socket: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("etcd metrics: {e}"))?;
    // The connection task ends with the response (or with this scrape, when it is dropped).
    let conn = tokio::spawn(conn);
    let request = http::Request::get("/metrics")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("etcd metrics: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("etcd answered {}", response.status()));
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/plain; version=0.0.4")
            .to_string();
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading etcd's metrics: {e}"))?
            .to_bytes();
        Ok((content_type, body))
    }
    .await;
    conn.abort();
    result
}
