//! Serving gRPC over TLS: an accept loop that performs each TLS handshake in its own task under
//! a time bound (a client that stalls mid-handshake costs one task for at most
//! [`HANDSHAKE_TIMEOUT`], never the listener), feeding finished connections to tonic.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tower_layer::Stack;

use crate::authz::{AuthLayer, ServerSecurity};

/// Upper bound for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake finished but that tonic has not picked up yet.
const ACCEPT_BACKLOG: usize = 128;

/// A stream of TLS connections accepted on `listener`; ends when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Transient (EMFILE, ECONNABORTED): back off briefly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A tonic server builder with the authorization layer installed and our HTTP/2 settings.
pub fn server_builder(security: ServerSecurity) -> Server<Stack<AuthLayer, tower_layer::Identity>> {
    Server::builder()
        // Upstream keepalive policy: clients may ping every second, even without streams;
        // we ping idle clients so dead peers (powered-off nodes) are noticed.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(AuthLayer::new(security))
}
