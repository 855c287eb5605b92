//! One HTTPS GET to a node over HTTP/1.1 with our client TLS (the node's certificate checked
//! as [`crate::client_tls`] does for gRPC): how the owner reads a node's metrics service.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// What a GET answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// Its Content-Type, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// GETs `path` from `host:port` within `timeout`, reading at most `max_bytes` of body. The
/// configuration's ALPN is replaced by `http/1.1`.
pub async fn get(
    host: &str,
    port: u16,
    path: &str,
    config: &rustls::ClientConfig,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, fetch(host, port, path, config, max_bytes))
        .await
        .map_err(|_| format!("no answer from {host}:{port} within {timeout:?}"))?
}

async fn fetch(
    host: &str,
    port: u16,
    path: &str,
    config: &rustls::ClientConfig,
    max_bytes: usize,
) -> Result<Answer, String> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    // The name only feeds SNI: our verifier identifies servers by their node certificate.
    let name = ServerName::try_from(bare).map_err(|_| format!("invalid host {host:?}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {}", error_chain(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {host}:{port}: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path} from {host}:{port}: {}", error_chain(&e)))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading {path} from {host}:{port}: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
    .await;
    conn.abort();
    result
}

/// An error with its sources (a TLS alert's reason hides in them).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
