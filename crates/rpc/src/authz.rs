//! The authorization tower layer: for every call it looks up the method's policy in the
//! build-time table (`proto::authz`), classifies the caller from its TLS certificate, checks
//! the needed permissions and either answers with upstream's error code or passes the request
//! on with a [`PeerInfo`] in its extensions.
//!
//! Codes: path not `/pkg.Service/Method` or unknown method → InvalidArgument;
//! certificate problems and unauthenticated callers of authenticated methods → Unauthenticated;
//! a node lacking a permission → PermissionDenied. gRPC reflection is exempt: it serves the
//! public protobuf schema only and standard tools call it without credentials.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use proto::ext::Permission;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use crate::peer::{self, NODE_PERMISSIONS, PeerInfo};
use crate::revocation::RevocationSet;

/// Paths served without any authorization: gRPC server reflection (schema only).
const EXEMPT_SERVICES: &[&str] = &[
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

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
}

impl ServerSecurity {
    /// Security for a cluster with this CA and the default node permissions.
    pub fn new(cluster_ca: Vec<u8>, revocations: RevocationSet) -> Self {
        Self {
            cluster_ca: Arc::new(cluster_ca),
            revocations,
            node_permissions: Arc::new(NODE_PERMISSIONS.to_vec()),
        }
    }

    /// Decides one call: the peer to hand to the handler, or the status to answer with.
    pub fn authorize(
        &self,
        path: &str,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Result<PeerInfo, Status> {
        let Some((service, method)) = split_path(path) else {
            return Err(Status::invalid_argument(format!(
                "malformed method path {path:?}"
            )));
        };
        if EXEMPT_SERVICES.contains(&service) {
            return Ok(peer::classify_unauthenticated(certs));
        }
        let Some(policy) = proto::authz::policy_for(path) else {
            return Err(Status::invalid_argument(format!(
                "unknown method {service}.{method}"
            )));
        };
        if policy.is_unauthenticated() {
            return Ok(peer::classify_unauthenticated(certs));
        }
        let peer = peer::classify_authenticated(
            certs,
            &self.cluster_ca,
            &self.revocations,
            &self.node_permissions,
        )?;
        peer::check_permissions(&peer, policy.need)?;
        Ok(peer)
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
        match self.security.authorize(&path, certs) {
            Ok(peer) => {
                tracing::debug!(%path, peer = %describe(&peer), "rpc authorized");
                req.extensions_mut().insert(peer);
                // The instance that was polled ready serves this call; a fresh clone waits
                // for the next poll_ready (the usual tower pattern for cloneable services).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                inner.call(req).boxed()
            }
            Err(status) => {
                tracing::debug!(%path, code = ?status.code(), message = status.message(), "rpc refused");
                futures::future::ready(Ok(status.into_http())).boxed()
            }
        }
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
}
