//! Serving gRPC over TLS: an accept loop that performs each TLS handshake in its own task under
//! a time bound (a client that stalls mid-handshake costs one task for at most
//! [`HANDSHAKE_TIMEOUT`], never the listener), feeding finished connections to tonic.
//!
//! Connections can be severed all at once ([`tls_incoming_until`]): tonic's graceful shutdown
//! waits for open streams, but a curator losing leadership must break them (Watch,
//! GetCurrentLeader, Heartbeat) so clients re-resolve the leader at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tower_layer::Stack;

use crate::authz::{AuthLayer, ServerSecurity};

/// Upper bound for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake finished but that tonic has not picked up yet.
const ACCEPT_BACKLOG: usize = 128;

/// A stream of TLS connections accepted on `listener`; ends when the stream is dropped. The
/// listener may be shared (`Arc`) so a server can be torn down and rebuilt on the same socket,
/// as the curator does when leadership changes.
pub fn tls_incoming(
    listener: impl Into<Arc<TcpListener>>,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<Severable<TlsStream<TcpStream>>, std::io::Error>> {
    tls_incoming_until(listener, config, CancellationToken::new())
}

/// Like [`tls_incoming`], but every connection it yields fails with ConnectionAborted as soon
/// as `sever` is cancelled, whatever streams are open on it.
pub fn tls_incoming_until(
    listener: impl Into<Arc<TcpListener>>,
    config: Arc<rustls::ServerConfig>,
    sever: CancellationToken,
) -> ReceiverStream<Result<Severable<TlsStream<TcpStream>>, std::io::Error>> {
    let listener: Arc<TcpListener> = listener.into();
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
            let sever = sever.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx
                            .send(Ok(Severable::new(tls, sever, "server torn down")))
                            .await;
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

/// A connection that fails once its token is cancelled (see the module documentation).
pub struct Severable<S> {
    inner: S,
    severed: Pin<Box<WaitForCancellationFutureOwned>>,
    why: &'static str,
}

impl<S> Severable<S> {
    /// `inner`, failing with ConnectionAborted (saying `why`) once `token` is cancelled.
    pub(crate) fn new(inner: S, token: CancellationToken, why: &'static str) -> Self {
        Self {
            inner,
            severed: Box::pin(token.cancelled_owned()),
            why,
        }
    }

    /// Registers for cancellation and reports whether it happened.
    fn check(&mut self, cx: &mut TaskContext<'_>) -> std::io::Result<()> {
        if self.severed.as_mut().poll(cx).is_ready() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                self.why,
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// Keeps the peer-certificate connect info of the wrapped TLS stream, which the authorization
// layer reads.
impl<S: Connected> Connected for Severable<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
