//! Serving gRPC over TLS with bounded resources: everyone who can reach a port can spend the
//! server's memory, file descriptors and tasks, so every listener bounds what one connection
//! and what all of them together may hold.
//!
//! * **Accept loop** ([`tls_incoming_with`]): at most [`Limits::max_connections`] connections
//!   per listener, and at most [`Limits::max_connections_per_ip`] from one source address (an
//!   IPv6 /64 counts as one address: that is what one host gets). A connection over either cap
//!   is closed as soon as it is accepted, so the loop itself never waits and keeps draining the
//!   kernel's backlog; the client sees a closed connection and retries with its backoff. Each
//!   TLS handshake runs in its own task under [`Limits::handshake_timeout`] and holds its slot
//!   while it runs, so stalled handshakes count against the caps too.
//! * **Idle connections**: a connection without an open call (stream) for
//!   [`Limits::idle_timeout`] is closed, so that idle connections do not hold their slots (and
//!   descriptors) forever. Calls are counted by [`ActivityLayer`], which the server built by
//!   [`server`] installs; a call counts until its response body ends, so open Watch, Heartbeat
//!   and Logs streams keep their connection.
//! * **HTTP/2** ([`server`]): concurrent streams per connection, the reset-stream budgets that
//!   defuse the "rapid reset" flood (CVE-2023-44487: streams opened and reset at once never
//!   count as concurrent, so their number is bounded separately), flow-control windows (what a
//!   peer may make us buffer), header list size, a deadline for handlers, and keep-alive pings
//!   that find dead peers.
//!
//! Connections can also be severed all at once ([`tls_incoming_until`]): tonic's graceful
//! shutdown waits for open streams, but a curator losing leadership must break them (Watch,
//! GetCurrentLeader, Heartbeat) so clients re-resolve the leader at once.
//!
//! The numbers: with the defaults, one listener holds at most 4096 connections; each may have
//! 100 calls open, each buffering at most its service's maximum message size (set per service,
//! 64 KiB to 4 MiB) plus the stream window of received but unread data (256 KiB, and at most
//! 1 MiB per connection). Handlers that have not answered after [`REQUEST_TIMEOUT`] are
//! cancelled, which frees what a stalled request body holds.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower_layer::{Identity, Layer, Stack};
use tower_service::Service;

use crate::authz::{AuthLayer, ServerSecurity};
use crate::metrics::RpcMetricsLayer;

/// Upper bound for a TLS handshake (the default of [`Limits::handshake_timeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per listener. Each costs a descriptor and, idle, some tens of KiB (TLS and
/// HTTP/2 state, measured by the curator's connection-flood test); a cluster has at most a few
/// hundred nodes, each holding a handful of connections to a port.
pub const MAX_CONNECTIONS: usize = 4096;

/// Connections per source address: a quarter of a listener, so one host cannot take all of
/// it, while a host running many clients (a test runner, a NAT in front of operators) still
/// has room for hundreds of concurrent calls on separate connections.
pub const MAX_CONNECTIONS_PER_IP: usize = 1024;

/// A connection without open calls for this long is closed (the default of
/// [`Limits::idle_timeout`]). Nodes keep Watch and Heartbeat streams open and are never idle;
/// a client that comes back later reconnects transparently.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Concurrent streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; gRPC's common
/// default). A node holds a few; more calls than this queue in the client.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Streams the client reset before we accepted them, per connection, before the connection is
/// closed with ENHANCE_YOUR_CALM (h2's default; the rapid-reset defence).
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams we reset because the client misbehaved, per connection, before the connection is
/// closed (the other half of the rapid-reset defence: a client provoking errors on purpose).
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// Received, unread data per stream (HTTP/2 flow control): what a client can make us buffer
/// beyond what a handler has decoded.
pub const STREAM_WINDOW: u32 = 256 << 10;

/// Received, unread data per connection, over all its streams.
pub const CONNECTION_WINDOW: u32 = 1 << 20;

/// Largest HTTP/2 header list (hyper's default, stated so it does not change under us):
/// metadata of our calls is a few hundred bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;

/// Handlers that have not produced their response by then are cancelled (Cancelled to the
/// caller). Streaming responses only need their first answer within it. The slowest unary
/// call we serve waits for an etcd write or a BMDB transaction, far below this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections whose handshake finished but that tonic has not picked up yet.
const ACCEPT_BACKLOG: usize = 128;

/// Refused connections are logged at warn at most this often (the others at debug), so a
/// flood does not become a log flood.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What one listener allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections at once, handshaking or established.
    pub max_connections: usize,
    /// Connections at once from one source address (an IPv6 /64 is one address).
    pub max_connections_per_ip: usize,
    /// Upper bound of a TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection without open calls for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// The connections [`tls_incoming_with`] yields.
pub type Incoming = ReceiverStream<Result<Severable<TlsStream<TcpStream>>, std::io::Error>>;

/// A stream of TLS connections accepted on `listener` under the default [`Limits`]; ends when
/// the stream is dropped. The listener may be shared (`Arc`) so a server can be torn down and
/// rebuilt on the same socket, as the curator does when leadership changes.
pub fn tls_incoming(
    listener: impl Into<Arc<TcpListener>>,
    config: Arc<rustls::ServerConfig>,
) -> Incoming {
    tls_incoming_with(
        listener,
        config,
        Limits::default(),
        CancellationToken::new(),
    )
}

/// Like [`tls_incoming`], but every connection it yields fails with ConnectionAborted as soon
/// as `sever` is cancelled, whatever streams are open on it.
pub fn tls_incoming_until(
    listener: impl Into<Arc<TcpListener>>,
    config: Arc<rustls::ServerConfig>,
    sever: CancellationToken,
) -> Incoming {
    tls_incoming_with(listener, config, Limits::default(), sever)
}

/// TLS connections accepted on `listener` under `limits`, severed when `sever` is cancelled.
pub fn tls_incoming_with(
    listener: impl Into<Arc<TcpListener>>,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
    sever: CancellationToken,
) -> Incoming {
    let listener: Arc<TcpListener> = listener.into();
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(Mutex::new(HashMap::new()));
    let mut refusals = RefusalLog::default();
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
            // Over a cap: dropping the socket closes it; nothing else was spent on it.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refusals.refused(
                    remote,
                    "the listener's connection limit",
                    limits.max_connections,
                );
                continue;
            };
            let Some(ip_slot) = IpSlot::take(&per_ip, remote.ip(), limits.max_connections_per_ip)
            else {
                refusals.refused(
                    remote,
                    "the per-address connection limit",
                    limits.max_connections_per_ip,
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let activity = tcp
                .local_addr()
                .ok()
                .map(|local| Activity::register(local, remote));
            let slots = Slots {
                _listener: slot,
                _ip: ip_slot,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let sever = sever.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn =
                            Severable::serving(tls, sever, slots, activity, limits.idle_timeout);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The layers every server of ours runs: [`ActivityLayer`] (outermost), the call metrics
/// (inert unless the server has any) and the authorization.
pub type Layers = Stack<AuthLayer, Stack<RpcMetricsLayer, Stack<ActivityLayer, Identity>>>;

/// A tonic server builder with our HTTP/2 limits and the [`ActivityLayer`], without
/// authorization (for servers that authenticate their callers themselves, as BMaaS does).
pub fn server() -> Server<Stack<ActivityLayer, Identity>> {
    Server::builder()
        // Upstream keepalive policy: clients may ping every second, even without streams;
        // we ping idle clients so dead peers (powered-off nodes) are noticed. TCP keep-alive
        // would be redundant (and tonic does not apply it to our own incoming stream).
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .timeout(REQUEST_TIMEOUT)
        .layer(ActivityLayer)
}

/// A tonic server builder with the authorization layer installed and our HTTP/2 limits.
pub fn server_builder(security: ServerSecurity) -> Server<Layers> {
    server_builder_observed(security, RpcMetricsLayer::default())
}

/// [`server_builder`] recording every call (authorized or refused) with `metrics`.
pub fn server_builder_observed(
    security: ServerSecurity,
    metrics: RpcMetricsLayer,
) -> Server<Layers> {
    server().layer(metrics).layer(AuthLayer::new(security))
}

/// Raises the process' open-file limit to its hard limit (servers call this as they start)
/// and warns when the result is below what its listeners need at their connection caps
/// (`connections`, the sum of their [`Limits::max_connections`]): past it, accepting fails
/// (EMFILE) before the caps are reached, which the accept loop survives but which also starves
/// everything else of descriptors.
pub fn raise_open_file_limit(connections: usize) {
    // Descriptors beyond the connections: sockets to etcd or the database, files, children.
    const RESERVE: u64 = 1024;
    let needed = u64::try_from(connections).unwrap_or(u64::MAX) + RESERVE;
    match sys::raise_open_file_limit() {
        Ok(limit) => {
            let show = |l: Option<u64>| l.map_or("unlimited".to_string(), |n| n.to_string());
            if limit.after.is_some_and(|n| n < needed) {
                tracing::warn!(
                    "open-file limit is {} (hard limit), below the {needed} that the listeners \
                     at their connection caps ({connections}) need",
                    show(limit.after)
                );
            } else if limit.before != limit.after {
                tracing::info!(
                    "open-file limit raised from {} to {}",
                    show(limit.before),
                    show(limit.after)
                );
            }
        }
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Logs refused connections without turning a flood into a log flood.
#[derive(Default)]
struct RefusalLog {
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn refused(&mut self, remote: SocketAddr, limit: &str, value: usize) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < REFUSAL_WARN_INTERVAL)
        {
            self.suppressed += 1;
            tracing::debug!(%remote, "connection refused: {limit} ({value}) is reached");
            return;
        }
        tracing::warn!(
            %remote,
            suppressed = self.suppressed,
            "connection refused: {limit} ({value}) is reached"
        );
        self.last_warning = Some(now);
        self.suppressed = 0;
    }
}

/// The caps a connection holds a place in; released when the connection is dropped.
struct Slots {
    _listener: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// Connections per source address of one listener.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place under the per-address cap.
struct IpSlot {
    counts: PerIp,
    key: IpAddr,
}

impl IpSlot {
    /// A place for a connection from `ip`, unless `max` connections from it are open.
    fn take(counts: &PerIp, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let key = address_key(ip);
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The address a connection counts against: IPv4 as is (also when it arrives IPv4-mapped on
/// an IPv6 socket), IPv6 by its /64, the smallest block a host is normally given.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Open calls of one connection, shared by the connection (which closes itself once idle too
/// long) and [`ActivityLayer`] (which counts the calls).
#[derive(Debug)]
pub struct Activity {
    key: (SocketAddr, SocketAddr),
    open_calls: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// Every tracked connection of the process, by (local, remote) address: the pair names a TCP
/// connection uniquely, and it is what tonic hands each request as its connect info, so the
/// layer finds a call's connection without a handle from the accept loop.
static CONNECTIONS: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Tracked connections by (local, remote) address.
type Registry = HashMap<(SocketAddr, SocketAddr), Weak<Activity>>;

impl Activity {
    /// Tracks a new connection; it leaves the registry when the last reference is dropped.
    fn register(local: SocketAddr, remote: SocketAddr) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            key: (local, remote),
            open_calls: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        });
        CONNECTIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((local, remote), Arc::downgrade(&activity));
        activity
    }

    fn lookup(local: SocketAddr, remote: SocketAddr) -> Option<Arc<Activity>> {
        CONNECTIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(local, remote))
            .and_then(Weak::upgrade)
    }

    /// Open calls now, and since when there have been none.
    fn state(&self) -> (usize, Instant) {
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        (self.open_calls.load(Ordering::Acquire), since)
    }

    fn call_started(self: &Arc<Self>) -> CallGuard {
        self.open_calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        let mut map = CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
        // A new connection may have reused the addresses already; only remove our own entry.
        if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&self.key);
        }
    }
}

/// One open call; the connection's idle clock restarts when the last one ends.
struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.open_calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// A tower layer counting each call on its connection from the request until the end of the
/// response body (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// The service produced by [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct ActivityService<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for ActivityService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| {
                let tcp = info.get_ref();
                Activity::lookup(tcp.local_addr()?, tcp.remote_addr()?)
            })
            .map(|activity| activity.call_started());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    Body::new(TrackedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it is finished or dropped.
struct TrackedBody {
    inner: Body,
    _guard: CallGuard,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A served connection: fails once its sever token is cancelled or once it has been idle for
/// too long (see the module documentation), and holds its places under the listener's caps.
pub struct Severable<S> {
    inner: S,
    severed: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Option<IdleCheck>,
    /// Held for as long as the connection lives (a server's connection counts).
    _slots: Option<Slots>,
    why: &'static str,
}

/// The idle clock of a connection.
struct IdleCheck {
    activity: Arc<Activity>,
    timeout: Duration,
    next_check: Pin<Box<Sleep>>,
}

impl IdleCheck {
    /// Whether the connection has been idle for too long; otherwise arms the timer for the
    /// earliest moment it could be.
    fn expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        while self.next_check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let (open_calls, idle_since) = self.activity.state();
            let next = if open_calls > 0 {
                now + self.timeout
            } else if now >= idle_since + self.timeout {
                return true;
            } else {
                idle_since + self.timeout
            };
            self.next_check.as_mut().reset(next);
        }
        false
    }
}

impl<S> Severable<S> {
    /// `inner`, failing with ConnectionAborted (saying `why`) once `token` is cancelled.
    pub(crate) fn new(inner: S, token: CancellationToken, why: &'static str) -> Self {
        Self {
            inner,
            severed: Box::pin(token.cancelled_owned()),
            idle: None,
            _slots: None,
            why,
        }
    }

    /// A served connection: severed with its server, holding its connection slots, and closed
    /// once idle for `idle_timeout` when `activity` tracks its calls.
    fn serving(
        inner: S,
        token: CancellationToken,
        slots: Slots,
        activity: Option<Arc<Activity>>,
        idle_timeout: Duration,
    ) -> Self {
        let idle = activity.map(|activity| {
            let (_, since) = activity.state();
            IdleCheck {
                activity,
                timeout: idle_timeout,
                next_check: Box::pin(tokio::time::sleep_until(since + idle_timeout)),
            }
        });
        Self {
            inner,
            severed: Box::pin(token.cancelled_owned()),
            idle,
            _slots: Some(slots),
            why: "server torn down",
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

    /// Like [`Self::check`], and also closes the connection once it has been idle too long
    /// (checked on reads only: the server always has a read pending, so the timer's wake-up
    /// arrives there).
    fn check_read(&mut self, cx: &mut TaskContext<'_>) -> std::io::Result<()> {
        self.check(cx)?;
        if let Some(idle) = &mut self.idle
            && idle.expired(cx)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle for too long",
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
        self.check_read(cx)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_grouped_per_host() {
        let key = |s: &str| address_key(s.parse().expect("address"));
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn per_address_slots_are_counted_and_released() {
        let counts: PerIp = Arc::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("address");
        let a = IpSlot::take(&counts, ip, 2).expect("first");
        let _b = IpSlot::take(&counts, ip, 2).expect("second");
        assert!(IpSlot::take(&counts, ip, 2).is_none());
        let other: IpAddr = "192.0.2.8".parse().expect("address");
        assert!(IpSlot::take(&counts, other, 2).is_some());
        drop(a);
        assert!(IpSlot::take(&counts, ip, 2).is_some());
    }
}
