//! Client-side TLS and channels: which certificate we present ([`ClientCredentials`]) and how
//! we check the server ([`ServerVerification`]), then a tonic [`Channel`] over it.
//!
//! Servers are identified by their node certificate, not by DNS names: the verifier ignores the
//! TLS server name and instead requires exactly one certificate that passes the node-certificate
//! check against the expected cluster CA, optionally with a given node ID. Beyond
//! upstream, a client holding the cluster CRL ([`ClusterCrl`]) also refuses a certificate it
//! revokes: a deleted node's certificate no longer makes a curator.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use identity::SigningKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;
use crate::crl::ClusterCrl;
use crate::serve::Severable;
use crate::tls_verify::{HandshakeSignatures, refused};

/// How long establishing a connection (TCP + TLS + HTTP/2) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The certificate a client presents.
#[derive(Clone)]
pub enum ClientCredentials {
    /// A certificate issued by the cluster CA (owner or node certificate) with its key.
    Authenticated {
        certificate: Vec<u8>,
        key: SigningKey,
    },
    /// A freshly made self-signed certificate for this key: how registering nodes (node key),
    /// joining nodes (join key), escrowing owners (owner key) and BMaaS agents authenticate.
    Ephemeral(SigningKey),
    /// No client certificate.
    None,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredentials::Authenticated { key, .. } => {
                write!(f, "Authenticated({})", key.public_key())
            }
            ClientCredentials::Ephemeral(key) => write!(f, "Ephemeral({})", key.public_key()),
            ClientCredentials::None => write!(f, "None"),
        }
    }
}

/// How a client checks the server it talks to.
#[derive(Debug, Clone)]
pub enum ServerVerification {
    /// The server must present a node certificate of this cluster CA (DER), not revoked by
    /// `crl` if one is given, and, if given, be node `node_id`.
    Cluster {
        ca: Vec<u8>,
        node_id: Option<String>,
        crl: Option<ClusterCrl>,
    },
    /// No verification at all: only for trust-on-first-use fetching of the cluster CA, whose
    /// fingerprint the user then confirms.
    Insecure,
}

/// Where a verifier leaves the certificate the server presented (accepted or not), for
/// callers that need to know it: the leader channel re-checks its leader when the CRL
/// changes, and a refused connection can be told apart from an unreachable server.
pub type Presented = Arc<Mutex<Option<Vec<u8>>>>;

#[derive(Debug)]
struct NodeCertVerifier {
    verification: ServerVerification,
    signatures: HandshakeSignatures,
    presented: Option<Presented>,
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(presented) = &self.presented {
            *presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
        }
        let ServerVerification::Cluster { ca, node_id, crl } = &self.verification else {
            return Ok(ServerCertVerified::assertion());
        };
        if !intermediates.is_empty() {
            return Err(refused(
                "server presented more than one certificate".to_string(),
            ));
        }
        let key = identity::verify::verify_node_cert(end_entity.as_ref(), ca)
            .map_err(|e| refused(format!("server is not a node of the expected cluster: {e}")))?;
        let got = identity::node_id(&key);
        if let Some(want) = node_id
            && &got != want
        {
            return Err(refused(format!("server is node {got}, expected {want}")));
        }
        if crl
            .as_ref()
            .is_some_and(|crl| crl.is_revoked(end_entity.as_ref()))
        {
            tracing::warn!(
                node = %got,
                "SECURITY: refusing server {got}: its node certificate is revoked by the cluster \
                 CRL (the node was deleted; whoever presents it now is not a member)"
            );
            return Err(refused(format!(
                "server {got} presented a revoked node certificate"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Builds a rustls client configuration (ALPN h2) for these credentials and this verification.
pub fn client_config(
    creds: &ClientCredentials,
    verification: ServerVerification,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    client_config_presented(creds, verification, None)
}

/// [`client_config`], also leaving the certificate the server presents in `presented`.
pub fn client_config_presented(
    creds: &ClientCredentials,
    verification: ServerVerification,
    presented: Option<Presented>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = crate::crypto_provider();
    let verifier = Arc::new(NodeCertVerifier {
        verification,
        signatures: HandshakeSignatures::default(),
        presented,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match creds {
        ClientCredentials::Authenticated { certificate, key } => builder
            .with_client_auth_cert(vec![CertificateDer::from(certificate.clone())], pkcs8(key))?,
        ClientCredentials::Ephemeral(key) => {
            let cert = identity::templates::ephemeral_cert(key)?;
            builder.with_client_auth_cert(vec![CertificateDer::from(cert)], pkcs8(key))?
        }
        ClientCredentials::None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed TLS session skips certificate verification: a curator revoked (or found not
    // to lead) after the first handshake would be accepted again on a reconnect. Every
    // handshake verifies; the connections are long-lived, so the cost is small.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// rustls takes an owned key and drops it unwiped once loaded; our own copy is wiped.
fn pkcs8(key: &SigningKey) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der().to_vec()))
}

/// A tonic endpoint for `host:port` (IPv6 hosts in brackets) with our timeouts.
pub fn endpoint(addr: &str) -> Result<Endpoint, Error> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: addr.to_string(),
        reason: reason.to_string(),
    };
    // The scheme stays http: TLS is done by our connector, not by tonic.
    let ep =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| invalid(&e.to_string()))?;
    if ep.uri().port_u16().is_none() {
        return Err(invalid("missing port"));
    }
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// Connects to `host:port` over TLS with this configuration and waits until the connection is up.
pub async fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, Error> {
    endpoint(addr)?
        .connect_with_connector(connector(config))
        .await
        .map_err(|source| Error::Connect {
            endpoint: addr.to_string(),
            source,
        })
}

/// Like [`connect`], but the connection leaves from `source` (a local address of this host):
/// for load generators simulating many hosts from one, since servers cap connections per
/// source address.
pub async fn connect_from(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    source: IpAddr,
) -> Result<Channel, Error> {
    endpoint(addr)?
        .connect_with_connector(severable_connector(
            config,
            CancellationToken::new(),
            Some(source),
        ))
        .await
        .map_err(|source| Error::Connect {
            endpoint: addr.to_string(),
            source,
        })
}

/// Like [`connect`], but every connection of the channel (the first and any reconnection)
/// fails as soon as `sever` is cancelled: for dropping a server whose word is no longer taken
/// (the leader channel severs a leader whose certificate was revoked), whatever calls and
/// streams are open on it.
pub async fn connect_severable(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    sever: CancellationToken,
) -> Result<Channel, Error> {
    endpoint(addr)?
        .connect_with_connector(severable_connector(config, sever, None))
        .await
        .map_err(|source| Error::Connect {
            endpoint: addr.to_string(),
            source,
        })
}

/// Like [`connect`], but connects on first use (and reconnects after failures).
pub fn connect_lazy(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, Error> {
    Ok(endpoint(addr)?.connect_with_connector_lazy(connector(config)))
}

/// A connector for tonic: TCP, then TLS with the given configuration.
pub fn connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower_service::Service<
    Uri,
    Response = TokioIo<Severable<tokio_rustls::client::TlsStream<TcpStream>>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    severable_connector(config, CancellationToken::new(), None)
}

/// [`connector`] whose connections fail once `sever` is cancelled and leave from `source`
/// when one is given.
fn severable_connector(
    config: Arc<rustls::ClientConfig>,
    sever: CancellationToken,
    source: Option<IpAddr>,
) -> impl tower_service::Service<
    Uri,
    Response = TokioIo<Severable<tokio_rustls::client::TlsStream<TcpStream>>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        let sever = sever.clone();
        async move {
            let bad = |m: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {m}"))
            };
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = match source {
                None => TcpStream::connect((host.as_str(), port)).await?,
                Some(source) => connect_tcp_from(&host, port, source).await?,
            };
            tcp.set_nodelay(true)?;
            // The name only feeds SNI: our verifier identifies servers by their node certificate.
            let name = ServerName::try_from(host).map_err(|_| bad("invalid host"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Severable::new(
                tls,
                sever,
                "connection severed by the client",
            )))
        }
    })
}

/// A TCP connection to `host:port` (an IP address) from `source`.
async fn connect_tcp_from(host: &str, port: u16, source: IpAddr) -> std::io::Result<TcpStream> {
    let ip: IpAddr = host.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host}: a source address needs an IP address to connect to"),
        )
    })?;
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(SocketAddr::new(ip, port)).await
}
