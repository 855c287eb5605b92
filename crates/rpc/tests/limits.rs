//! The limits of `rpc::serve` seen from a client: connections over a listener's caps are closed
//! at once while other clients keep being served, freed places are reused, idle connections
//! are closed and connections with an open stream are not.
//!
//! Clients here speak raw TLS and raw HTTP/2 (the `h2` crate), from chosen loopback source
//! addresses, so the tests see exactly when the server accepts, refuses or closes a connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use identity::{SigningKey, templates};
use prost::Message;
use proto::curator_api::curator_server::{Curator, CuratorServer};
use proto::curator_api::{UpdateNodeStatusRequest, UpdateNodeStatusResponse, WatchEvent};
use rpc::serve::Limits;
use rpc::{ClientCredentials, RevocationSet, ServerSecurity, ServerVerification};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Answers UpdateNodeStatus at once; Watch streams stay open until the client goes away.
struct Stub;

#[tonic::async_trait]
impl Curator for Stub {
    async fn update_node_status(
        &self,
        _request: Request<UpdateNodeStatusRequest>,
    ) -> Result<Response<UpdateNodeStatusResponse>, Status> {
        Ok(Response::new(UpdateNodeStatusResponse {}))
    }

    async fn watch(
        &self,
        _request: Request<proto::curator_api::WatchRequest>,
    ) -> Result<Response<BoxStream<WatchEvent>>, Status> {
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
}

const UPDATE_NODE_STATUS: &str = "/metropolis.node.core.curator.proto.api.Curator/UpdateNodeStatus";
const WATCH: &str = "/metropolis.node.core.curator.proto.api.Curator/Watch";

/// A server certificate and client configurations of one test cluster.
struct Pki {
    server_tls: Arc<rustls::ServerConfig>,
    ca: Vec<u8>,
    ca_key: SigningKey,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = SigningKey::generate().expect("keygen");
        let ca = templates::cluster_ca(&ca_key).expect("ca");
        let server_key = SigningKey::generate().expect("keygen");
        let cert =
            templates::node_cert(&ca_key, &ca, &server_key.public_key()).expect("server cert");
        let server_tls =
            rpc::server_tls::server_config_for(cert, &server_key.to_pkcs8_der(), ca.clone())
                .expect("server tls");
        Pki {
            server_tls,
            ca,
            ca_key,
        }
    }

    /// A client presenting no certificate.
    fn anonymous(&self) -> Arc<rustls::ClientConfig> {
        rpc::client_tls::client_config(&ClientCredentials::None, ServerVerification::Insecure)
            .expect("client config")
    }

    /// A client presenting a node certificate of this cluster.
    fn node(&self) -> Arc<rustls::ClientConfig> {
        let key = SigningKey::generate().expect("keygen");
        let certificate =
            templates::node_cert(&self.ca_key, &self.ca, &key.public_key()).expect("node cert");
        rpc::client_tls::client_config(
            &ClientCredentials::Authenticated { certificate, key },
            ServerVerification::Insecure,
        )
        .expect("client config")
    }
}

/// TCP from `from`, then TLS; an error if the server closes the connection instead.
async fn tls_connect(
    from: IpAddr,
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    let name = rustls_pki_types::ServerName::try_from("server").expect("server name");
    // A connection over a cap is closed before the server reads the ClientHello, so the
    // handshake fails; an accepted one completes.
    TlsConnector::from(config).connect(name, tcp).await
}

/// One gRPC message frame.
fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

/// An HTTP/2 client connection; `closed` resolves when the server closes it.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    closed: tokio::task::JoinHandle<()>,
}

async fn h2_connect(tls: TlsStream<TcpStream>) -> H2 {
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    H2 { send, closed }
}

impl H2 {
    /// Starts a call; returns the response head's status and the open streams.
    async fn start(
        &mut self,
        path: &str,
        message: &impl Message,
    ) -> (h2::RecvStream, h2::SendStream<Bytes>, Option<String>) {
        let request = http::Request::post(format!("https://server{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (response, mut send) = self
            .send
            .clone()
            .ready()
            .await
            .expect("ready")
            .send_request(request, false)
            .expect("send request");
        send.send_data(grpc_frame(message), true)
            .expect("send data");
        let response = response.await.expect("response");
        // Calls refused before their handler answer in the head already.
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (response.into_body(), send, grpc_status)
    }

    /// A unary call to completion; its grpc-status.
    async fn unary(&mut self, path: &str, message: &impl Message) -> String {
        let (mut body, _send, head_status) = self.start(path, message).await;
        if let Some(status) = head_status {
            return status;
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body
            .trailers()
            .await
            .expect("trailers")
            .expect("some trailers");
        trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string()
    }
}

fn status_request() -> UpdateNodeStatusRequest {
    UpdateNodeStatusRequest::default()
}

/// Polls `check` until it is true, for at most `timeout`.
async fn eventually(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The default per-address cap: one host cannot take a listener. Connections over it are
/// closed at once, while a client from another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_whole_listener() {
    sys::raise_open_file_limit().expect("raising the open-file limit");
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let security = ServerSecurity::new(pki.ca.clone(), RevocationSet::new());
    let router = rpc::serve::server_builder(security).add_service(CuratorServer::new(Stub));
    tokio::spawn(
        router.serve_with_incoming(rpc::serve::tls_incoming(listener, pki.server_tls.clone())),
    );

    let attacker: IpAddr = "127.0.0.1".parse().expect("address");
    let config = pki.anonymous();
    let cap = rpc::serve::MAX_CONNECTIONS_PER_IP;
    let started = Instant::now();
    let mut held = Vec::with_capacity(cap);
    while held.len() < cap {
        let batch = (cap - held.len()).min(32);
        let connects = (0..batch).map(|_| tls_connect(attacker, addr, config.clone()));
        for r in futures::future::join_all(connects).await {
            held.push(r.expect("connections up to the cap are accepted"));
        }
    }
    eprintln!(
        "{cap} connections from one address in {:?}",
        started.elapsed()
    );

    let over = tls_connect(attacker, addr, config.clone()).await;
    assert!(
        over.is_err(),
        "connection {} from the same address must be closed",
        cap + 1
    );

    // Another host is served, promptly.
    let started = Instant::now();
    let other: IpAddr = "127.0.0.2".parse().expect("address");
    let tls = tls_connect(other, addr, pki.node())
        .await
        .expect("another address is accepted");
    let mut client = h2_connect(tls).await;
    assert_eq!(
        client.unary(UPDATE_NODE_STATUS, &status_request()).await,
        "0"
    );
    eprintln!("call from another address took {:?}", started.elapsed());

    // A freed place is taken again.
    held.truncate(cap - 1);
    eventually(
        Duration::from_secs(10),
        "a freed place is reused",
        async || tls_connect(attacker, addr, config.clone()).await.is_ok(),
    )
    .await;
}

fn small_limits() -> Limits {
    Limits {
        max_connections: 3,
        max_connections_per_ip: 100,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
    }
}

async fn serve_with(pki: &Pki, limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = rpc::serve::server().add_service(CuratorServer::new(Stub));
    let incoming = rpc::serve::tls_incoming_with(
        listener,
        pki.server_tls.clone(),
        limits,
        CancellationToken::new(),
    );
    tokio::spawn(router.serve_with_incoming(incoming));
    addr
}

/// The listener cap counts every source address; places are freed when connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_cap_refuses_and_frees() {
    let pki = Pki::new();
    let addr = serve_with(&pki, small_limits()).await;
    let config = pki.anonymous();
    let from = |i: u8| IpAddr::from([127, 0, 1, i]);
    let mut held = Vec::new();
    for i in 1..=3 {
        held.push(
            tls_connect(from(i), addr, config.clone())
                .await
                .expect("under the cap"),
        );
    }
    assert!(tls_connect(from(4), addr, config.clone()).await.is_err());
    held.pop();
    eventually(
        Duration::from_secs(10),
        "the freed place is reused",
        async || tls_connect(from(4), addr, config.clone()).await.is_ok(),
    )
    .await;
}

/// `connect_from` leaves from the address it is given: the per-address cap counts it there,
/// and another source address still gets in (how load generators stand in for many hosts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_from_uses_its_source_address() {
    let pki = Pki::new();
    let addr = serve_with(
        &pki,
        Limits {
            max_connections_per_ip: 1,
            ..small_limits()
        },
    )
    .await;
    let target = addr.to_string();
    let first: IpAddr = "127.0.2.1".parse().expect("address");
    let _held = rpc::client_tls::connect_from(&target, pki.anonymous(), first)
        .await
        .expect("the first connection from an address is accepted");
    // The server closes the second one from the same address during the handshake.
    assert!(
        tls_connect(first, addr, pki.anonymous()).await.is_err(),
        "the connect_from connection must count against 127.0.2.1"
    );
    let second: IpAddr = "127.0.2.2".parse().expect("address");
    rpc::client_tls::connect_from(&target, pki.anonymous(), second)
        .await
        .expect("another source address is accepted");
}

/// Connections without calls are closed after the idle timeout, whether they never made a
/// call or their last call ended; a connection with an open stream is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_streams_keep_theirs() {
    let pki = Pki::new();
    let idle = Duration::from_millis(500);
    let addr = serve_with(
        &pki,
        Limits {
            idle_timeout: idle,
            max_connections: 100,
            ..small_limits()
        },
    )
    .await;
    let local: IpAddr = "127.0.0.1".parse().expect("address");

    // TLS, then nothing at all.
    let started = Instant::now();
    let mut silent = tls_connect(local, addr, pki.anonymous())
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent connection is closed");
    assert!(started.elapsed() >= idle, "not before the idle timeout");

    // One call, then idle.
    let tls = tls_connect(local, addr, pki.anonymous())
        .await
        .expect("connect");
    let mut caller = h2_connect(tls).await;
    // The server's idle clock starts when it has sent the response, which is before this
    // side has read it: the bound this side can check is the call's start.
    let call_started = Instant::now();
    assert_eq!(
        caller.unary(UPDATE_NODE_STATUS, &status_request()).await,
        "0"
    );
    tokio::time::timeout(Duration::from_secs(10), &mut caller.closed)
        .await
        .expect("a connection whose call ended is closed once idle")
        .expect("connection task");
    assert!(
        call_started.elapsed() >= idle,
        "not before the idle timeout"
    );

    // An open stream keeps its connection for many idle timeouts, until it ends.
    let tls = tls_connect(local, addr, pki.anonymous())
        .await
        .expect("connect");
    let mut watcher = h2_connect(tls).await;
    let (body, mut send, head_status) = watcher
        .start(WATCH, &proto::curator_api::WatchRequest::default())
        .await;
    assert_eq!(head_status, None, "the watch is open");
    tokio::time::sleep(idle * 4).await;
    assert!(
        !watcher.closed.is_finished(),
        "a connection with an open stream is kept"
    );
    send.send_reset(h2::Reason::CANCEL);
    drop(body);
    let stream_ended = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), &mut watcher.closed)
        .await
        .expect("closed once the stream ended and the idle timeout passed")
        .expect("connection task");
    assert!(
        stream_ended.elapsed() >= idle,
        "not before the idle timeout"
    );
}
