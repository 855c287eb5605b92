//! Certificates, CRLs and keys from the wire or from disk: X.509 verification of arbitrary DER
//! (`identity::verify`, the TLS client verifier of `rpc`), CRL reading (`pki`) and PKCS#8 /
//! raw key parsing (`identity::keys`).

use std::sync::{Arc, LazyLock};

use identity::verify;
use identity::{PublicKey, SigningKey, templates};
use rpc::RevocationSet;
use rpc::peer::{self, NODE_PERMISSIONS, PeerInfo};
use rpc::server_tls::ClusterOrSelfSignedVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

/// A cluster built once per process: the CA every target checks against and sample
/// certificates of it (the seeds of the corpora).
#[derive(Debug)]
pub struct Cluster {
    /// The CA key; a fixed seed, so certificates in the corpora stay signed by it.
    pub ca_key: SigningKey,
    /// The CA certificate (DER).
    pub ca: Vec<u8>,
    /// A node's key.
    pub node_key: SigningKey,
    /// The node's certificate, issued by the CA.
    pub node: Vec<u8>,
    /// A user certificate for the node's key, issued by the CA.
    pub user: Vec<u8>,
    /// A self-signed (ephemeral) certificate of the node's key.
    pub ephemeral: Vec<u8>,
    /// A node certificate of a node removed from the cluster (its ID is in [`Self::revoked`]).
    pub removed_node: Vec<u8>,
    /// A user certificate whose serial is in [`Self::revoked`].
    pub revoked_user: Vec<u8>,
    /// The revocations the authorization target classifies under.
    pub revoked: RevocationSet,
    /// The TLS client verifier of the cluster's servers.
    pub verifier: Arc<ClusterOrSelfSignedVerifier>,
}

/// The process-wide [`Cluster`].
pub fn cluster() -> &'static Cluster {
    static CLUSTER: LazyLock<Cluster> = LazyLock::new(|| {
        let ca_key = SigningKey::from_seed(&[0xca; 32]);
        let ca = templates::cluster_ca(&ca_key).expect("cluster CA");
        let node_key = SigningKey::from_seed(&[0x0d; 32]);
        let node = templates::node_cert(&ca_key, &ca, &node_key.public_key()).expect("node");
        let user =
            templates::user_cert(&ca_key, &ca, &node_key.public_key(), "owner").expect("user");
        let ephemeral = templates::ephemeral_cert(&node_key).expect("ephemeral");
        let removed_key = SigningKey::from_seed(&[0xde; 32]).public_key();
        let removed_node = templates::node_cert(&ca_key, &ca, &removed_key).expect("node");
        let revoked_user =
            templates::user_cert(&ca_key, &ca, &removed_key, "revoked-user").expect("user");
        let revoked = RevocationSet::new();
        revoked.revoke_node(&identity::node_id(&removed_key));
        revoked.revoke_serial(&verify::cert_serial(&revoked_user).expect("serial"));
        let verifier = Arc::new(ClusterOrSelfSignedVerifier::new(ca.clone()));
        Cluster {
            ca_key,
            ca,
            node_key,
            node,
            user,
            ephemeral,
            removed_node,
            revoked_user,
            revoked,
            verifier,
        }
    });
    &CLUSTER
}

/// Whether `der` is a certificate whose signature verifies with the CA's key, checked with
/// ring directly rather than through the verifier under test.
pub fn signed_by_ca(der: &[u8], c: &Cluster) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let ca_key = c.ca_key.public_key();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, ca_key.as_ref())
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .is_ok()
}

/// Whether `der` is a certificate signed by the key in its own SubjectPublicKeyInfo, checked
/// with ring directly.
fn self_signed_by(der: &[u8], key: &PublicKey) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.as_ref()
        && ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.as_ref())
            .verify(
                cert.tbs_certificate.as_ref(),
                cert.signature_value.data.as_ref(),
            )
            .is_ok()
}

/// The authorization decision of `rpc::peer` (what the authorization layer runs on every
/// call) over arbitrary DER (first byte 0) or over the sample certificates with bytes
/// overwritten (first byte 1 to 4 picks the certificate; then 3-byte steps: a big-endian
/// position and the byte to put there). Properties: the result is Node or User only for a
/// certificate signed by the CA key (checked with ring), never for a removed node or a revoked
/// serial; a Node is the node of the certificate's key; every refusal is Unauthenticated; the
/// unauthenticated path yields a key only for a certificate signed by that key.
pub fn authz(data: &[u8]) {
    let c = cluster();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let der = match mode % 5 {
        0 => rest.to_vec(),
        n => {
            let mut der =
                [&c.node, &c.user, &c.removed_node, &c.revoked_user][usize::from(n - 1)].clone();
            for step in rest.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([step[0], step[1]])) % der.len();
                der[at] = step[2];
            }
            der
        }
    };
    let certs = [CertificateDer::from(der.as_slice())];
    match peer::classify_authenticated(Some(&certs), &c.ca, &c.revoked, NODE_PERMISSIONS) {
        Ok(PeerInfo::Node(node)) => {
            assert!(signed_by_ca(&der, c), "a node not signed by the CA");
            assert_eq!(node.id, identity::node_id(&node.public_key));
            assert_eq!(verify::cert_public_key(&der).ok(), Some(node.public_key));
            assert!(
                !c.revoked.is_node_revoked(&node.id),
                "a removed node admitted"
            );
            assert_eq!(node.permissions, NODE_PERMISSIONS);
            assert_not_revoked(&der, c);
        }
        Ok(PeerInfo::User { identity }) => {
            assert!(signed_by_ca(&der, c), "a user not signed by the CA");
            assert!(!identity.is_empty());
            assert_not_revoked(&der, c);
        }
        Ok(other) => panic!("the authenticated path returned {other:?}"),
        Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}"),
    }
    if let PeerInfo::Unauthenticated {
        self_signed_key: Some(key),
    } = peer::classify_unauthenticated(Some(&certs))
    {
        assert!(
            self_signed_by(&der, &key),
            "a self-signed key without its signature"
        );
    }
}

fn assert_not_revoked(der: &[u8], c: &Cluster) {
    if let Ok(serial) = verify::cert_serial(der) {
        assert!(
            !c.revoked.is_serial_revoked(&serial),
            "a revoked serial admitted"
        );
    }
}

/// Every certificate check of `identity::verify` and the TLS client verifier over `data`,
/// taken as a certificate of the cluster and as a cluster CA. Properties: node and user
/// certificates are in the cluster; anything in the cluster is signed by the CA key; the
/// verifier accepts exactly what is in the cluster or validly self-signed; a node
/// certificate's CN is the node ID of its key; a CA that admits the sample node passes
/// `check_ca`.
pub fn cert_verify(data: &[u8]) {
    let c = cluster();
    let info = verify::inspect(data);
    let _ = verify::cert_public_key(data);
    let _ = verify::cert_serial(data);
    let _ = verify::check_ca(data);
    let in_cluster = verify::check_in_cluster(data, &c.ca);
    let node = verify::verify_node_cert(data, &c.ca);
    let user = verify::verify_user_cert(data, &c.ca);
    let self_signed = verify::verify_self_signed(data);

    if let Ok(key) = &in_cluster {
        assert!(
            signed_by_ca(data, c),
            "in the cluster without the CA's signature"
        );
        assert_eq!(info.as_ref().ok().and_then(|i| i.public_key), Some(*key));
    }
    if let Ok(key) = &node {
        assert_eq!(
            in_cluster.as_ref().ok(),
            Some(key),
            "node certificate not in cluster"
        );
        let info = info.as_ref().expect("a node certificate parses");
        assert!(info.server_auth);
        assert_eq!(info.common_name, Some(identity::node_id(key)));
    }
    if let Ok(name) = &user {
        assert!(in_cluster.is_ok(), "user certificate not in cluster");
        assert!(!name.is_empty());
    }
    if let Ok(key) = &self_signed {
        assert_eq!(verify::cert_public_key(data).ok(), Some(*key));
    }

    let accepted = c
        .verifier
        .verify_client_cert(&CertificateDer::from(data), &[], UnixTime::now())
        .is_ok();
    assert_eq!(
        accepted,
        in_cluster.is_ok() || self_signed.is_ok(),
        "TLS verifier disagrees with identity::verify"
    );

    // The same bytes as the CA of a cluster.
    if verify::check_in_cluster(&c.node, data).is_ok() {
        assert!(
            verify::check_ca(data).is_ok(),
            "a CA that fails check_ca admits a node"
        );
    }
}

/// CRL reading: `pki::revoked_serials` (unverified) and `identity::verify::inspect_crl`
/// (signature checked against the CA). Property: a CRL the CA signed lists the same serials
/// through both.
pub fn crl(data: &[u8]) {
    let c = cluster();
    let unverified = pki::revoked_serials(data);
    if let Ok(info) = verify::inspect_crl(data, &c.ca) {
        let serials = unverified.expect("a signed CRL parses unverified too");
        assert_eq!(info.revoked_serials, serials);
        assert!(
            serials.iter().all(|s| s.first() != Some(&0)),
            "serial with leading zero"
        );
    }
}

/// Private and public key parsing: PKCS#8 DER and PEM, the owner key PEM, raw keypair bytes and
/// hex public keys. Property: whatever parses survives a write/read round trip unchanged.
pub fn pkcs8(data: &[u8]) {
    if let Ok(k) = SigningKey::from_pkcs8_der(data) {
        let again = SigningKey::from_pkcs8_der(&k.to_pkcs8_der()).expect("own PKCS#8 parses");
        assert_eq!(again, k);
    }
    if let Ok(k) = SigningKey::from_keypair_bytes(data) {
        assert_eq!(
            k.to_keypair_bytes().as_slice(),
            data,
            "keypair bytes changed"
        );
    }
    if let Ok(k) = PublicKey::from_slice(data) {
        assert_eq!(k.as_ref(), data);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = SigningKey::from_pkcs8_pem(text) {
        let again = SigningKey::from_pkcs8_pem(k.to_pkcs8_pem().as_bytes()).expect("own PEM");
        assert_eq!(again, k);
    }
    if let Ok(k) = SigningKey::from_owner_key_pem(text) {
        let again =
            SigningKey::from_owner_key_pem(k.to_owner_key_pem().as_bytes()).expect("own PEM");
        assert_eq!(again, k);
    }
    if let Ok(k) = text.parse::<PublicKey>() {
        assert_eq!(k.to_string().parse::<PublicKey>().ok(), Some(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample certificates are what the targets take them for, so their seeds reach the
    /// accepting paths.
    #[test]
    fn samples_classify_as_intended() {
        let c = cluster();
        let classify = |der: &[u8]| {
            peer::classify_authenticated(
                Some(&[CertificateDer::from(der)]),
                &c.ca,
                &c.revoked,
                NODE_PERMISSIONS,
            )
        };
        assert!(
            matches!(classify(&c.node), Ok(PeerInfo::Node(n)) if n.public_key == c.node_key.public_key())
        );
        assert!(
            matches!(classify(&c.user), Ok(PeerInfo::User { identity }) if identity == "owner")
        );
        assert!(classify(&c.removed_node).is_err());
        assert!(classify(&c.revoked_user).is_err());
        assert!(classify(&c.ephemeral).is_err());
        assert!(signed_by_ca(&c.node, c) && !signed_by_ca(&c.ephemeral, c));
        assert!(self_signed_by(&c.ephemeral, &c.node_key.public_key()));
        assert!(!self_signed_by(&c.node, &c.node_key.public_key()));
    }
}
