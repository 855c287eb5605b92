//! The authorization tower layer: for every call it looks up the method's policy in the
//! build-time table (`proto::authz`), classifies the caller from its TLS certificate, checks
//! the needed permissions and either answers with upstream's error code or passes the request
//! on with a [`PeerInfo`] in its extensions.
//!
//! Codes: path not `/pkg.Service/Method` or unknown method → InvalidArgument;
//! certificate problems and unauthenticated callers of authenticated methods → Unauthenticated;
//! a node lacking a permission → PermissionDenied. gRPC reflection is exempt: it serves the
//! public protobuf schema only and standard tools call it without credentials.
//!
//! Authorization is not only checked when a call starts: the response of an authenticated
//! caller ends with Unauthenticated as soon as the caller's node ID or certificate is revoked
//! ([`RevocableBody`]), so a deleted node loses its open Watch, Heartbeat and Logs streams
//! too, not just its next call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use proto::ext::Permission;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use crate::peer::{self, Identity, NODE_PERMISSIONS, PeerInfo};
use crate::revocation::RevocationSet;

/// Paths served without any authorization: gRPC server reflection (schema only).
const EXEMPT_SERVICES: &[&str] = &[
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Most certificates whose classification a server remembers (per map). Classifying means
/// parsing the certificate and checking signatures — about half a millisecond for a
/// self-signed one and several for a cluster one in a debug build, tens of microseconds in a
/// release build — and it is a pure function of the certificate and the cluster CA, while a
/// connection presents the same certificate on every call. Remembering it keeps a flood of
/// calls on few connections cheap; a flood of fresh certificates costs what it would without
/// the cache (the maps are simply emptied when full).
const CLASSIFIED_CERTIFICATES: usize = 4096;

/// What a server needs to authorize calls: the cluster CA, the revocation set and the
/// permissions granted to node certificates.
#[derive(Debug, Clone)]
pub struct ServerSecurity {
    /// DER of the cluster CA certificate.
    pub cluster_ca: Arc<Vec<u8>>,
    /// Revoked nodes and certificates, shared with whoever keeps it up to date.
    pub revocations: RevocationSet,
    /// Permissions of node certificates; [`NODE_PERMISSIONS`] unless a test overrides it.
    pub node_permissions: Arc<Vec<Permission>>,
    /// Classifications already made (see [`CLASSIFIED_CERTIFICATES`]).
    classified: Arc<Mutex<Classified>>,
}

/// What [`peer::identify`] says about a certificate: who it is and its serial, or why not.
type Identified = Result<(Identity, Option<Vec<u8>>), Status>;

/// Remembered classifications, by certificate DER.
#[derive(Debug, Default)]
struct Classified {
    authenticated: HashMap<Vec<u8>, Identified>,
    unauthenticated: HashMap<Vec<u8>, PeerInfo>,
}

impl ServerSecurity {
    /// Security for a cluster with this CA and the default node permissions.
    pub fn new(cluster_ca: Vec<u8>, revocations: RevocationSet) -> Self {
        Self {
            cluster_ca: Arc::new(cluster_ca),
            revocations,
            node_permissions: Arc::new(NODE_PERMISSIONS.to_vec()),
            classified: Arc::default(),
        }
    }

    /// Decides one call: the peer to hand to the handler, or the status to answer with.
    pub fn authorize(
        &self,
        path: &str,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Result<PeerInfo, Status> {
        self.authorize_call(path, certs).map(|(peer, _)| peer)
    }

    /// [`Self::authorize`], also returning the caller's certificate serial if it was
    /// authenticated.
    fn authorize_call(
        &self,
        path: &str,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Result<(PeerInfo, Option<Vec<u8>>), Status> {
        let Some((service, method)) = split_path(path) else {
            return Err(Status::invalid_argument(format!(
                "malformed method path {path:?}"
            )));
        };
        if EXEMPT_SERVICES.contains(&service) {
            return Ok((self.unauthenticated(certs), None));
        }
        let Some(policy) = proto::authz::policy_for(path) else {
            return Err(Status::invalid_argument(format!(
                "unknown method {service}.{method}"
            )));
        };
        if policy.is_unauthenticated() {
            return Ok((self.unauthenticated(certs), None));
        }
        let (identity, serial) = self.identify(certs)?;
        let peer = peer::admit(
            identity,
            serial.as_deref(),
            &self.revocations,
            &self.node_permissions,
        )?;
        peer::check_permissions(&peer, policy.need)?;
        Ok((peer, serial))
    }

    /// [`peer::identify`], remembered per certificate.
    fn identify(&self, certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Identified {
        let Some([one]) = certs else {
            return peer::identify(certs, &self.cluster_ca);
        };
        if let Some(known) = self.classified().authenticated.get(one.as_ref()) {
            return known.clone();
        }
        let result = peer::identify(certs, &self.cluster_ca);
        let mut c = self.classified();
        if c.authenticated.len() >= CLASSIFIED_CERTIFICATES {
            c.authenticated.clear();
        }
        c.authenticated
            .insert(one.as_ref().to_vec(), result.clone());
        result
    }

    /// [`peer::classify_unauthenticated`], remembered per certificate.
    fn unauthenticated(&self, certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> PeerInfo {
        let Some([one]) = certs else {
            return peer::classify_unauthenticated(certs);
        };
        if let Some(known) = self.classified().unauthenticated.get(one.as_ref()) {
            return known.clone();
        }
        let peer = peer::classify_unauthenticated(certs);
        let mut c = self.classified();
        if c.unauthenticated.len() >= CLASSIFIED_CERTIFICATES {
            c.unauthenticated.clear();
        }
        c.unauthenticated
            .insert(one.as_ref().to_vec(), peer.clone());
        peer
    }

    // A poisoned lock only means a writer panicked mid-insert; the maps are still valid.
    fn classified(&self) -> std::sync::MutexGuard<'_, Classified> {
        self.classified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') || !service.contains('.') {
        return None;
    }
    Some((service, method))
}

/// Tower layer installing [`AuthService`] in front of a tonic router.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    security: ServerSecurity,
}

impl AuthLayer {
    /// A layer enforcing the method table with the given security settings.
    pub fn new(security: ServerSecurity) -> Self {
        Self { security }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            security: self.security.clone(),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    security: ServerSecurity,
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(|info| info.peer_certs());
        let certs = certs
            .as_ref()
            .map(|c| c.as_ref().map(|v| v.as_slice()).unwrap_or(&[]));
        match self.security.authorize_call(&path, certs) {
            Ok((peer, serial)) => {
                tracing::debug!(%path, peer = %describe(&peer), "rpc authorized");
                // An authenticated caller's response ends when the caller is revoked.
                let revocable = match &peer {
                    PeerInfo::Node(n) => Some((Some(n.id.clone()), serial)),
                    PeerInfo::User { .. } => Some((None, serial)),
                    PeerInfo::Unauthenticated { .. } => None,
                };
                req.extensions_mut().insert(peer);
                // The instance that was polled ready serves this call; a fresh clone waits
                // for the next poll_ready (the usual tower pattern for cloneable services).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let call = inner.call(req);
                let Some((node_id, serial)) = revocable else {
                    return call.boxed();
                };
                let revocations = self.security.revocations.clone();
                async move {
                    let response = call.await?;
                    Ok(response.map(|body| {
                        Body::new(RevocableBody::new(body, revocations, node_id, serial))
                    }))
                }
                .boxed()
            }
            Err(status) => {
                tracing::debug!(%path, code = ?status.code(), message = status.message(), "rpc refused");
                futures::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}

/// A response body that ends with Unauthenticated (in the trailers, where gRPC puts a
/// stream's status) once its caller is revoked, whatever the handler is still doing. The
/// handler's stream is dropped with it, which ends its work (an etcd watch, a heartbeat
/// loop, a log subscription).
pub struct RevocableBody {
    inner: Body,
    revoked: BoxFuture<'static, ()>,
    /// Trailers were sent (ours or the handler's): nothing more may follow.
    finished: bool,
}

impl RevocableBody {
    /// Wraps `inner` for a caller with this node ID (if it is a node) and certificate serial.
    pub fn new(
        inner: Body,
        revocations: RevocationSet,
        node_id: Option<String>,
        serial: Option<Vec<u8>>,
    ) -> Self {
        Self {
            inner,
            revoked: async move { revocations.until_revoked(node_id, serial).await }.boxed(),
            finished: false,
        }
    }
}

impl HttpBody for RevocableBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.revoked.as_mut().poll(cx).is_ready() {
            self.finished = true;
            let status = Status::unauthenticated(
                "the caller was removed from the cluster; its certificate is revoked",
            );
            // tonic encodes a status into headers only for a whole (trailers-only) response;
            // take its grpc-* headers as this stream's trailers.
            let mut trailers = http::HeaderMap::new();
            for (name, value) in status.into_http::<Body>().headers() {
                if name.as_str().starts_with("grpc-") {
                    trailers.insert(name.clone(), value.clone());
                }
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => self.finished = true,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finished = true,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Short, secret-free description of a peer for logs.
fn describe(peer: &PeerInfo) -> String {
    match peer {
        PeerInfo::Node(n) => format!("node {}", n.id),
        PeerInfo::User { identity } => format!("user {identity}"),
        PeerInfo::Unauthenticated {
            self_signed_key: Some(k),
        } => format!("self-signed {k}"),
        PeerInfo::Unauthenticated {
            self_signed_key: None,
        } => "anonymous".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths() {
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        assert_eq!(split_path("a.B/C"), None);
        assert_eq!(split_path("/a.B/"), None);
        assert_eq!(split_path("/B/C"), None);
        assert_eq!(split_path("/a.B/C/D"), None);
    }

    #[test]
    fn malformed_and_unknown_paths_are_invalid_argument() {
        let sec = ServerSecurity::new(vec![], RevocationSet::new());
        assert_eq!(
            sec.authorize("nonsense", None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            sec.authorize("/metropolis.proto.api.Management/NoSuchMethod", None)
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn reflection_is_exempt() {
        let sec = ServerSecurity::new(vec![], RevocationSet::new());
        let peer = sec
            .authorize(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
            )
            .expect("reflection is exempt");
        assert_eq!(
            peer,
            PeerInfo::Unauthenticated {
                self_signed_key: None
            }
        );
    }

    #[test]
    fn remembered_certificates_are_still_checked_for_revocation() {
        use identity::{SigningKey, templates};
        let ca_key = SigningKey::generate().expect("key");
        let ca = templates::cluster_ca(&ca_key).expect("ca");
        let key = SigningKey::generate().expect("key");
        let node = rustls_pki_types::CertificateDer::from(
            templates::node_cert(&ca_key, &ca, &key.public_key()).expect("node"),
        );
        let user = rustls_pki_types::CertificateDer::from(
            templates::user_cert(&ca_key, &ca, &key.public_key(), "owner").expect("user"),
        );
        let revocations = RevocationSet::new();
        let sec = ServerSecurity::new(ca, revocations.clone());
        let watch = "/metropolis.node.core.curator.proto.api.Curator/Watch";
        for _ in 0..2 {
            assert!(
                sec.authorize(watch, Some(std::slice::from_ref(&node)))
                    .is_ok()
            );
            assert!(
                sec.authorize(watch, Some(std::slice::from_ref(&user)))
                    .is_ok()
            );
        }
        revocations.revoke_node(&identity::node_id(&key.public_key()));
        let refused = sec
            .authorize(watch, Some(std::slice::from_ref(&node)))
            .expect_err("revoked node");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let serial = identity::verify::cert_serial(user.as_ref()).expect("serial");
        revocations.revoke_serial(&serial);
        let refused = sec
            .authorize(watch, Some(std::slice::from_ref(&user)))
            .expect_err("revoked certificate");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        // A remembered refusal stays a refusal.
        let foreign = SigningKey::generate().expect("key");
        let eph = rustls_pki_types::CertificateDer::from(
            templates::ephemeral_cert(&foreign).expect("eph"),
        );
        for _ in 0..2 {
            assert_eq!(
                sec.authorize(watch, Some(std::slice::from_ref(&eph)))
                    .expect_err("not a cluster certificate")
                    .code(),
                tonic::Code::Unauthenticated
            );
        }
    }
}
