//! Who may read a node's metrics: the cluster owner only. The listener requires a client
//! certificate and admits a user certificate of this cluster's CA whose identity is `owner`
//! and whose serial is not revoked; node certificates (ServerAuth only) and anything else are
//! refused during the handshake, before a single byte of metrics is served.
//!
//! Upstream admits any certificate of the cluster CA (its code carries a TODO to restrict it):
//! here another node, which holds a cluster certificate too, cannot read this node's metrics.

use std::sync::Arc;

use identity::NodeCredentials;
use rpc::RevocationSet;
use rpc::tls_verify::{HandshakeSignatures, refused};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

/// The identity (CommonName) of the owner's certificate, as the curator issues it.
pub const OWNER_IDENTITY: &str = "owner";

/// Admits the owner's certificate only.
#[derive(Debug)]
pub struct OwnerOnlyVerifier {
    cluster_ca: Vec<u8>,
    revocations: RevocationSet,
    signatures: HandshakeSignatures,
}

impl OwnerOnlyVerifier {
    /// A verifier for the cluster with this CA (DER) and revocation set.
    pub fn new(cluster_ca: Vec<u8>, revocations: RevocationSet) -> Self {
        Self {
            cluster_ca,
            revocations,
            signatures: HandshakeSignatures::default(),
        }
    }

    /// The check itself, on a DER certificate.
    pub fn check(&self, certificate: &[u8]) -> Result<(), String> {
        let identity = identity::verify::verify_user_cert(certificate, &self.cluster_ca)
            .map_err(|e| format!("not a user certificate of this cluster: {e}"))?;
        if identity != OWNER_IDENTITY {
            return Err(format!(
                "certificate of {identity:?}; only the owner may read metrics"
            ));
        }
        let serial = identity::verify::cert_serial(certificate).map_err(|e| e.to_string())?;
        if self.revocations.is_serial_revoked(&serial) {
            return Err("the certificate is revoked".to_string());
        }
        Ok(())
    }
}

impl ClientCertVerifier for OwnerOnlyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity.as_ref())
            .map(|()| ClientCertVerified::assertion())
            .map_err(refused)
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

/// The metrics listener's TLS: the node certificate, owner-only client authentication,
/// HTTP/1.1 (what Prometheus speaks to its targets).
pub fn server_config(
    creds: &NodeCredentials,
    revocations: RevocationSet,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = Arc::new(OwnerOnlyVerifier::new(creds.ca().to_vec(), revocations));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        creds.key().to_pkcs8_der().to_vec(),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(rpc::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(creds.certificate().to_vec())],
            key,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use identity::{SigningKey, templates};
    use rpc::ClientCredentials;
    use rpc::client_tls::{self, ServerVerification};

    use super::*;

    struct Cluster {
        ca_key: SigningKey,
        ca: Vec<u8>,
    }

    impl Cluster {
        fn new() -> Self {
            let ca_key = SigningKey::generate().expect("key");
            let ca = templates::cluster_ca(&ca_key).expect("ca");
            Self { ca_key, ca }
        }

        fn node(&self) -> NodeCredentials {
            let key = SigningKey::generate().expect("key");
            let cert =
                templates::node_cert(&self.ca_key, &self.ca, &key.public_key()).expect("node cert");
            NodeCredentials::new(key, cert, self.ca.clone()).expect("credentials")
        }

        fn user(&self, identity: &str) -> ClientCredentials {
            let key = SigningKey::generate().expect("key");
            let certificate =
                templates::user_cert(&self.ca_key, &self.ca, &key.public_key(), identity)
                    .expect("user cert");
            ClientCredentials::Authenticated { certificate, key }
        }
    }

    /// A metrics-style listener answering every admitted request with 200.
    async fn serve(creds: &NodeCredentials, revocations: RevocationSet) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(
            server_config(creds, revocations).expect("server config"),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn get(
        addr: std::net::SocketAddr,
        server: &NodeCredentials,
        creds: &ClientCredentials,
    ) -> Result<rpc::https::Answer, String> {
        let verification = ServerVerification::Cluster {
            ca: server.ca().to_vec(),
            node_id: Some(server.node_id()),
            crl: None,
        };
        let config = client_tls::client_config(creds, verification).expect("client config");
        rpc::https::get(
            "127.0.0.1",
            addr.port(),
            "/metrics/node",
            &config,
            Duration::from_secs(10),
            1 << 20,
        )
        .await
    }

    /// Only the owner gets in; another node of the same cluster, another user, a foreign
    /// cluster's owner, no certificate, a self-signed one and a revoked owner certificate are
    /// all refused in the handshake.
    #[tokio::test]
    async fn only_the_owner_is_admitted() {
        let cluster = Cluster::new();
        let node = cluster.node();
        let revocations = RevocationSet::new();
        let addr = serve(&node, revocations.clone()).await;

        let owner = cluster.user(OWNER_IDENTITY);
        let answer = get(addr, &node, &owner)
            .await
            .expect("the owner is admitted");
        assert_eq!(answer.status, 200);

        let other_node = cluster.node();
        let as_node = ClientCredentials::Authenticated {
            certificate: other_node.certificate().to_vec(),
            key: other_node.key().clone(),
        };
        let foreign = Cluster::new().user(OWNER_IDENTITY);
        let ephemeral = ClientCredentials::Ephemeral(SigningKey::generate().expect("key"));
        for (what, creds) in [
            ("another node's certificate", as_node),
            ("another user's certificate", cluster.user("someone")),
            ("a foreign cluster's owner", foreign),
            ("no certificate", ClientCredentials::None),
            ("a self-signed certificate", ephemeral),
        ] {
            let refused = get(addr, &node, &creds).await;
            assert!(refused.is_err(), "{what} was admitted: {refused:?}");
        }

        let ClientCredentials::Authenticated { certificate, .. } = &owner else {
            unreachable!()
        };
        revocations.revoke_serial(&identity::verify::cert_serial(certificate).expect("serial"));
        let refused = get(addr, &node, &owner).await;
        assert!(refused.is_err(), "a revoked owner certificate was admitted");
    }
}
