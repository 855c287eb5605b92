//! Downloading a bundle for UpdateNode: one HTTP/1.1 GET over TLS (rustls with ring),
//! trusting the operating system's CA certificates plus, optionally, a CA file the node was
//! given for a private mirror (`--update-ca`). Only `https://` URLs are accepted; redirects
//! are not followed. The download is bounded in size ([`FetchConfig::max_bytes`]) and in
//! time ([`FetchConfig::timeout`], the whole transfer) and goes to a file, never into memory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;

/// How bundles are fetched.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Who is trusted to serve bundles.
    pub roots: Arc<RootCertStore>,
    /// Bound on the whole download (connect, TLS, response, body).
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: u64,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one we fetch (answered with InvalidArgument).
    #[error("{0}")]
    InvalidUrl(String),
    /// The download failed.
    #[error("{0}")]
    Failed(String),
}

impl FetchConfig {
    /// The system's CA certificates plus the PEM certificates in `extra_ca` (if given).
    pub fn new(extra_ca: Option<&Path>, timeout: Duration, max_bytes: u64) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        // Unreadable system certificates only narrow whom we trust.
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            for cert in read_extra_ca(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(FetchConfig {
            roots: Arc::new(roots),
            timeout,
            max_bytes,
        })
    }
}

/// The certificates of an `--update-ca` file: PEM, at least one CERTIFICATE, each one a
/// certificate rustls can use as a trust anchor. Checked when the node starts, so that a wrong
/// file stops the node with a clear error instead of failing NodeManagement later.
pub fn read_extra_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("reading the update CA file {}: {e}", path.display()))?;
    let certs = pem::parse_many(&pem).map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = certs
        .iter()
        .filter(|c| c.tag() == "CERTIFICATE")
        .map(|c| CertificateDer::from(c.contents().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE", path.display()));
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(certs)
}

/// Checks that `url` is an `https://` URL with a host; returns it parsed.
pub fn check_url(url: &str) -> Result<Uri, FetchError> {
    let shown = super::clip(url);
    let uri: Uri = url
        .parse()
        .map_err(|e| FetchError::InvalidUrl(format!("bundle_url {shown:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(FetchError::InvalidUrl(format!(
                "bundle_url must be an https:// URL, not {other}:// ({shown:?})"
            )));
        }
        None => {
            return Err(FetchError::InvalidUrl(format!(
                "bundle_url must be an https:// URL ({shown:?})"
            )));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(FetchError::InvalidUrl(format!(
            "bundle_url {shown:?} has no host"
        )));
    }
    // Credentials in the URL would be sent nowhere useful (we do no HTTP authentication) and
    // would end up in logs; the message does not quote them.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(FetchError::InvalidUrl(format!(
            "bundle_url {:?} holds credentials (user@ or user:password@), which are not \
             supported",
            redacted(&uri)
        )));
    }
    Ok(uri)
}

/// `uri` as logs and error messages show it: scheme, host, port and path, without the query
/// (which may carry access tokens).
pub fn redacted(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    super::clip(&format!(
        "{}://{host}{port}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.path()
    ))
}

/// Downloads `uri` into a new file at `dest`; returns its size. `dest` may be left behind
/// (incomplete) on error: the caller removes it.
pub async fn fetch_to_file(uri: &Uri, cfg: &FetchConfig, dest: &Path) -> Result<u64, FetchError> {
    match tokio::time::timeout(cfg.timeout, fetch(uri, cfg, dest)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Failed(format!(
            "downloading {}: no complete response within {}s",
            redacted(uri),
            cfg.timeout.as_secs()
        ))),
    }
}

async fn fetch(uri: &Uri, cfg: &FetchConfig, dest: &Path) -> Result<u64, FetchError> {
    let shown = redacted(uri);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        FetchError::Failed(format!("downloading {shown}: {what}: {e}"))
    };
    let host = uri.host().unwrap_or_default();
    // IPv6 literals come bracketed in URLs.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| failed(&format!("connecting to {host}:{port}"), &e))?;
    let server_name =
        ServerName::try_from(bare_host.to_string()).map_err(|e| failed("server name", &e))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| failed("TLS setup", &e))?
    .with_root_certificates(cfg.roots.clone())
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| failed("TLS handshake", &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("HTTP handshake", &e))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // Host is host[:port] only (check_url refused userinfo; this keeps it out regardless).
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let request = http::Request::get(path)
        .header(http::header::HOST, host_header)
        .header(http::header::USER_AGENT, "metropolis-node")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| failed("request", &e))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed("request", &e))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Failed(format!(
                "downloading {shown}: the server answered {}",
                response.status()
            )));
        }
        let announced = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = announced
            && n > cfg.max_bytes
        {
            return Err(FetchError::Failed(format!(
                "downloading {shown}: the bundle has {n} bytes, at most {} are accepted",
                cfg.max_bytes
            )));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .await
            .map_err(|e| failed(&format!("creating {}", dest.display()), &e))?;
        let mut body = response.into_body();
        let mut size: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failed("reading the body", &e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len() as u64;
            if size > cfg.max_bytes {
                return Err(FetchError::Failed(format!(
                    "downloading {shown}: the bundle is larger than {} bytes",
                    cfg.max_bytes
                )));
            }
            file.write_all(&data)
                .await
                .map_err(|e| failed(&format!("writing {}", dest.display()), &e))?;
        }
        if let Some(n) = announced
            && n != size
        {
            return Err(FetchError::Failed(format!(
                "downloading {shown}: the connection ended after {size} of {n} bytes"
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| failed(&format!("writing {}", dest.display()), &e))?;
        Ok(size)
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_host() {
        assert!(check_url("https://mirror.example/bundle.tar").is_ok());
        assert!(check_url("https://127.0.0.1:8443/b.tar?x=1").is_ok());
        for bad in [
            "http://mirror.example/bundle.tar",
            "ftp://mirror.example/b.tar",
            "file:///tmp/b.tar",
            "/tmp/b.tar",
            "",
            "https:///b.tar",
            "https://user:secret@mirror.example/b.tar",
            "https://token@mirror.example/b.tar",
        ] {
            match check_url(bad) {
                Err(FetchError::InvalidUrl(m)) => {
                    assert!(m.contains("bundle_url"), "{m}");
                    assert!(!m.contains("secret") && !m.contains("token"), "{m}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn shown_urls_carry_no_query() {
        let uri = check_url("https://mirror.example:8443/b/bundle.tar?X-Amz-Signature=secret")
            .expect("url");
        assert_eq!(redacted(&uri), "https://mirror.example:8443/b/bundle.tar");
    }
}
