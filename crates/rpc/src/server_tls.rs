//! Server-side TLS: the node presents its certificate (leaf only) and asks every client for a
//! certificate without requiring one.
//!
//! Accepted client certificates are those chaining to the cluster CA and valid self-signed
//! Ed25519 certificates (ephemeral credentials); anything else (a foreign cluster's certificate,
//! a non-Ed25519 key) is refused during the handshake. Whether an accepted certificate is good
//! enough for a given method is the authorization layer's decision, not this one's: a node
//! certificate carries only ServerAuth, so a stock WebPKI client verifier (which insists on
//! ClientAuth) cannot be used here.

use std::sync::Arc;

use identity::credentials::NodeCredentials;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::Error;
use crate::tls_verify::{HandshakeSignatures, refused};

/// Verifier accepting certificates of the cluster CA and valid self-signed Ed25519 ones.
#[derive(Debug)]
pub struct ClusterOrSelfSignedVerifier {
    cluster_ca: Vec<u8>,
    signatures: HandshakeSignatures,
}

impl ClusterOrSelfSignedVerifier {
    /// A verifier for the cluster whose CA certificate (DER) is given.
    pub fn new(cluster_ca: Vec<u8>) -> Self {
        Self {
            cluster_ca,
            signatures: HandshakeSignatures::default(),
        }
    }
}

impl ClientCertVerifier for ClusterOrSelfSignedVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // Optional: unauthenticated methods (GetCurrentLeader, …) accept callers without any
    // certificate; the authorization layer refuses them elsewhere.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // Must be empty: a client holding only a self-signed certificate would otherwise find no
    // matching issuer in the hints and send nothing.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let in_cluster = identity::verify::check_in_cluster(end_entity.as_ref(), &self.cluster_ca);
        if in_cluster.is_ok() || identity::verify::verify_self_signed(end_entity.as_ref()).is_ok() {
            return Ok(ClientCertVerified::assertion());
        }
        let reason = in_cluster.err().map(|e| e.to_string()).unwrap_or_default();
        Err(refused(format!(
            "client certificate is neither issued by this cluster's CA nor a valid self-signed Ed25519 certificate: {reason}"
        )))
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

/// The server configuration of a node: its certificate and key, the cluster CA for client
/// verification, ALPN h2.
pub fn server_config(creds: &NodeCredentials) -> Result<Arc<rustls::ServerConfig>, Error> {
    server_config_for(
        creds.certificate().to_vec(),
        &creds.key().to_pkcs8_der(),
        creds.ca().to_vec(),
    )
}

/// Like [`server_config`] from raw parts: a leaf certificate, its PKCS#8 key and the CA whose
/// certificates clients may present.
pub fn server_config_for(
    certificate: Vec<u8>,
    pkcs8_key: &[u8],
    cluster_ca: Vec<u8>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let verifier = Arc::new(ClusterOrSelfSignedVerifier::new(cluster_ca));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key.to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(certificate)], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
