//! Who is calling: classification of the TLS client certificate into a [`PeerInfo`], and the
//! helpers handlers use to insist on a particular kind of caller.
//!
//! The rules are upstream's: on the authenticated path exactly one Ed25519
//! certificate issued by the cluster CA is required; a node certificate (ServerAuth, CN and DNS
//! SAN = node ID) makes a Node peer, a user certificate (ClientAuth, non-empty CN) a User peer.
//! On the unauthenticated path nothing fails: a single valid self-signed Ed25519 certificate
//! yields its public key, anything else is ignored.

use identity::PublicKey;
use proto::ext::Permission;
use rustls_pki_types::CertificateDer;
use tonic::Status;

use crate::revocation::RevocationSet;

/// Permissions a node certificate carries. Users currently hold every permission.
pub const NODE_PERMISSIONS: &[Permission] =
    &[Permission::ReadClusterStatus, Permission::UpdateNodeSelf];

/// The authenticated identity of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePeer {
    /// `metropolis-…` ID derived from the public key.
    pub id: String,
    /// The node's Ed25519 public key.
    pub public_key: PublicKey,
    /// What the node may do.
    pub permissions: Vec<Permission>,
}

/// The caller of an RPC, as established by the authorization layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerInfo {
    /// A cluster node, authenticated by its node certificate.
    Node(NodePeer),
    /// A user (the owner), authenticated by a user certificate; `identity` is its CN.
    User { identity: String },
    /// An unauthenticated caller; `self_signed_key` is the key of its self-signed certificate,
    /// which is what RegisterNode, CommitNode, JoinNode and Escrow authenticate with.
    Unauthenticated { self_signed_key: Option<PublicKey> },
}

impl PeerInfo {
    /// The peer the authorization layer attached to this request.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<&PeerInfo, Status> {
        req.extensions().get::<PeerInfo>().ok_or_else(|| {
            Status::internal("no peer information: the authorization layer is not installed")
        })
    }

    /// The calling node, or PermissionDenied: users pass every permission check, so this is what
    /// keeps an owner out of node-only RPCs.
    pub fn require_node(&self) -> Result<&NodePeer, Status> {
        match self {
            PeerInfo::Node(n) => Ok(n),
            _ => Err(Status::permission_denied("only nodes may call this method")),
        }
    }

    /// The key of the caller's self-signed certificate, if it presented one on an
    /// unauthenticated method.
    pub fn self_signed_key(&self) -> Option<&PublicKey> {
        match self {
            PeerInfo::Unauthenticated { self_signed_key } => self_signed_key.as_ref(),
            _ => None,
        }
    }
}

/// Who an authenticated caller's certificate says it is, before revocation and permissions
/// are looked at: a pure function of the certificate and the cluster CA, so servers may
/// remember it (see `crate::authz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A node certificate.
    Node {
        /// `metropolis-…` ID derived from the public key.
        id: String,
        /// The node's Ed25519 public key.
        public_key: PublicKey,
    },
    /// A user certificate with this CN.
    User {
        /// The certificate's CN.
        identity: String,
    },
}

/// Identifies a caller of an authenticated method from its certificate (signature checks
/// included; the expensive part); also returns the certificate's serial. `certs` is `None`
/// when the connection is not TLS at all. Every failure is Unauthenticated with a message
/// saying what was wrong.
pub fn identify(
    certs: Option<&[CertificateDer<'_>]>,
    cluster_ca: &[u8],
) -> Result<(Identity, Option<Vec<u8>>), Status> {
    let certs =
        certs.ok_or_else(|| Status::unauthenticated("connection is not TLS-authenticated"))?;
    let der = match certs {
        [] => return Err(Status::unauthenticated("no client certificate presented")),
        [one] => one.as_ref(),
        more => {
            return Err(Status::unauthenticated(format!(
                "expected exactly one client certificate, got {}",
                more.len()
            )));
        }
    };
    identity::verify::cert_public_key(der)
        .map_err(|e| Status::unauthenticated(format!("client certificate unusable: {e}")))?;
    identity::verify::check_in_cluster(der, cluster_ca).map_err(|e| {
        Status::unauthenticated(format!(
            "client certificate is not a certificate of this cluster: {e}"
        ))
    })?;
    let serial = identity::verify::cert_serial(der).ok();
    if let Ok(public_key) = identity::verify::verify_node_cert(der, cluster_ca) {
        let id = identity::node_id(&public_key);
        return Ok((Identity::Node { id, public_key }, serial));
    }
    if let Ok(identity) = identity::verify::verify_user_cert(der, cluster_ca) {
        return Ok((Identity::User { identity }, serial));
    }
    Err(Status::unauthenticated(
        "client certificate is neither a node nor a user certificate of this cluster",
    ))
}

/// Admits an identified caller unless its certificate (by serial) or, for a node, its node ID
/// is revoked: cheap lookups, made on every call.
pub fn admit(
    identity: Identity,
    serial: Option<&[u8]>,
    revocations: &RevocationSet,
    node_permissions: &[Permission],
) -> Result<PeerInfo, Status> {
    if serial.is_some_and(|s| revocations.is_serial_revoked(s)) {
        return Err(Status::unauthenticated(
            "client certificate has been revoked",
        ));
    }
    match identity {
        Identity::Node { id, public_key } => {
            if revocations.is_node_revoked(&id) {
                return Err(Status::unauthenticated(format!(
                    "node {id} has been removed from the cluster; its certificate is revoked"
                )));
            }
            Ok(PeerInfo::Node(NodePeer {
                id,
                public_key,
                permissions: node_permissions.to_vec(),
            }))
        }
        Identity::User { identity } => Ok(PeerInfo::User { identity }),
    }
}

/// Classifies a caller of an authenticated method: [`identify`], then [`admit`].
pub fn classify_authenticated(
    certs: Option<&[CertificateDer<'_>]>,
    cluster_ca: &[u8],
    revocations: &RevocationSet,
    node_permissions: &[Permission],
) -> Result<PeerInfo, Status> {
    let (identity, serial) = identify(certs, cluster_ca)?;
    admit(identity, serial.as_deref(), revocations, node_permissions)
}

/// Classifies a caller of an unauthenticated method; never fails: an unauthenticated
/// method serves anyone, with or without a certificate.
pub fn classify_unauthenticated(certs: Option<&[CertificateDer<'_>]>) -> PeerInfo {
    let self_signed_key = match certs {
        Some([one]) => identity::verify::verify_self_signed(one.as_ref()).ok(),
        _ => None,
    };
    PeerInfo::Unauthenticated { self_signed_key }
}

/// Checks a classified peer against the permissions a method needs.
pub fn check_permissions(peer: &PeerInfo, need: &[Permission]) -> Result<(), Status> {
    match peer {
        // Users hold every permission (upstream: "users currently hold every permission").
        PeerInfo::User { .. } => Ok(()),
        PeerInfo::Node(node) => match need.iter().find(|p| !node.permissions.contains(p)) {
            Some(missing) => Err(Status::permission_denied(format!(
                "node missing {} permission",
                missing.as_str_name()
            ))),
            None => Ok(()),
        },
        PeerInfo::Unauthenticated { .. } => Err(Status::unauthenticated(
            "this method requires authentication",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use identity::{SigningKey, templates};

    struct Cluster {
        ca_key: SigningKey,
        ca: Vec<u8>,
    }

    fn cluster() -> Cluster {
        let ca_key = SigningKey::generate().expect("keygen");
        let ca = templates::cluster_ca(&ca_key).expect("ca");
        Cluster { ca_key, ca }
    }

    fn classify(certs: Option<&[CertificateDer<'_>]>, c: &Cluster) -> Result<PeerInfo, Status> {
        classify_authenticated(certs, &c.ca, &RevocationSet::new(), NODE_PERMISSIONS)
    }

    fn unauthenticated_message(r: Result<PeerInfo, Status>) -> String {
        let status = r.expect_err("must be refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        status.message().to_string()
    }

    #[test]
    fn node_user_and_refusals() {
        let c = cluster();
        let node_key = SigningKey::generate().expect("keygen");
        let node = CertificateDer::from(
            templates::node_cert(&c.ca_key, &c.ca, &node_key.public_key()).expect("node"),
        );
        let user = CertificateDer::from(
            templates::user_cert(&c.ca_key, &c.ca, &node_key.public_key(), "owner").expect("user"),
        );
        match classify(Some(std::slice::from_ref(&node)), &c).expect("node accepted") {
            PeerInfo::Node(n) => assert_eq!(n.id, identity::node_id(&node_key.public_key())),
            other => panic!("expected node, got {other:?}"),
        }
        assert_eq!(
            classify(Some(std::slice::from_ref(&user)), &c).expect("user accepted"),
            PeerInfo::User {
                identity: "owner".into()
            }
        );
        assert!(unauthenticated_message(classify(None, &c)).contains("not TLS"));
        assert!(unauthenticated_message(classify(Some(&[]), &c)).contains("no client certificate"));
        assert!(
            unauthenticated_message(classify(Some(&[node.clone(), user.clone()]), &c))
                .contains("exactly one")
        );
        // A self-signed certificate is not a cluster certificate on the authenticated path.
        let eph = CertificateDer::from(templates::ephemeral_cert(&node_key).expect("eph"));
        assert!(
            unauthenticated_message(classify(Some(&[eph]), &c))
                .contains("not a certificate of this cluster")
        );
        // Another cluster's node.
        let other = cluster();
        let foreign = CertificateDer::from(
            templates::node_cert(&other.ca_key, &other.ca, &node_key.public_key()).expect("n"),
        );
        assert!(
            unauthenticated_message(classify(Some(&[foreign]), &c))
                .contains("not a certificate of this cluster")
        );
    }

    #[test]
    fn non_ed25519_certificates_are_refused() {
        let c = cluster();
        let ecdsa =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ecdsa key");
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .expect("params")
            .self_signed(&ecdsa)
            .expect("cert");
        let der = CertificateDer::from(cert.der().to_vec());
        assert!(
            unauthenticated_message(classify(Some(std::slice::from_ref(&der)), &c))
                .contains("unusable")
        );
        assert_eq!(
            classify_unauthenticated(Some(&[der])),
            PeerInfo::Unauthenticated {
                self_signed_key: None
            }
        );
    }

    #[test]
    fn unauthenticated_path_only_takes_self_signed_keys() {
        let c = cluster();
        let key = SigningKey::generate().expect("keygen");
        let eph = CertificateDer::from(templates::ephemeral_cert(&key).expect("eph"));
        assert_eq!(
            classify_unauthenticated(Some(std::slice::from_ref(&eph))),
            PeerInfo::Unauthenticated {
                self_signed_key: Some(key.public_key())
            }
        );
        let node = CertificateDer::from(
            templates::node_cert(&c.ca_key, &c.ca, &key.public_key()).expect("node"),
        );
        assert_eq!(
            classify_unauthenticated(Some(&[node])),
            PeerInfo::Unauthenticated {
                self_signed_key: None
            }
        );
        assert_eq!(
            classify_unauthenticated(Some(&[eph.clone(), eph])),
            PeerInfo::Unauthenticated {
                self_signed_key: None
            }
        );
        assert_eq!(
            classify_unauthenticated(None),
            PeerInfo::Unauthenticated {
                self_signed_key: None
            }
        );
    }

    #[test]
    fn permission_checks() {
        let key = SigningKey::generate().expect("keygen");
        let node = PeerInfo::Node(NodePeer {
            id: identity::node_id(&key.public_key()),
            public_key: key.public_key(),
            permissions: NODE_PERMISSIONS.to_vec(),
        });
        assert!(check_permissions(&node, &[Permission::ReadClusterStatus]).is_ok());
        let denied = check_permissions(&node, &[Permission::DeleteNode]).expect_err("denied");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "node missing PERMISSION_DELETE_NODE permission"
        );
        assert!(
            check_permissions(
                &PeerInfo::User {
                    identity: "owner".into()
                },
                &[Permission::DeleteNode]
            )
            .is_ok()
        );
        let anon = PeerInfo::Unauthenticated {
            self_signed_key: None,
        };
        assert_eq!(
            check_permissions(&anon, &[]).expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(node.require_node().expect("node").permissions.len(), 2);
        assert_eq!(
            anon.require_node().expect_err("not a node").code(),
            tonic::Code::PermissionDenied
        );
    }
}
