//! TLS of the server's two gRPC listeners.
//!
//! * Public (agents): the component certificate; client certificates are *requested*, not
//!   required, and accepted whatever they are. Upstream's listener used Go's
//!   `RequestClientCert`, which verifies nothing; the Heartbeat handler then requires exactly
//!   one Ed25519 certificate (its first check; the certificate is not required to be
//!   self-signed, any issuer will do) and the BMDB lookup of its key is the authentication.
//!   Possession of the key is still proven: the TLS handshake verifies the client's signature
//!   with the certificate's key. Leaving the
//!   certificate checks to the handler gives clients a gRPC `Unauthenticated` rather than a
//!   bare TLS alert.
//! * Internal (operators, other components): mutual TLS; client certificates must chain to the
//!   component CA and carry ClientAuth (rustls' WebPKI verifier).

use std::sync::Arc;

use identity::PublicKey;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tonic::{Request, Status};

use rpc::tls_verify::HandshakeSignatures;

use crate::devcerts::ComponentTls;
use crate::{Error, Result};

/// Requests a client certificate and accepts any; see the module docs for why.
#[derive(Debug)]
struct AcceptAnyClientCert {
    signatures: HandshakeSignatures,
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // Empty: an agent holding only a self-signed certificate would otherwise find no matching
    // issuer in the hints and send nothing.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

fn key_der(tls: &ComponentTls) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.key.to_pkcs8_der().to_vec()))
}

/// The public (agent) listener's TLS configuration.
pub fn public_server_config(tls: &ComponentTls) -> Result<Arc<rustls::ServerConfig>> {
    let provider = rpc::crypto_provider();
    let verifier = Arc::new(AcceptAnyClientCert {
        signatures: HandshakeSignatures::default(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(tls.certificate.clone())],
            key_der(tls),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The metrics listener's TLS configuration: as the internal listener's, for HTTP/1.1.
pub fn metrics_server_config(tls: &ComponentTls) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = (*internal_server_config(tls)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The internal listener's TLS configuration: client certificates of the component CA only.
pub fn internal_server_config(tls: &ComponentTls) -> Result<Arc<rustls::ServerConfig>> {
    let provider = rpc::crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(tls.ca.clone()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(tls.certificate.clone())],
            key_der(tls),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The Ed25519 key of the single certificate the caller presented. Like the peer certificate
/// extraction of the node's cluster API: none, several or a non-Ed25519 one → Unauthenticated.
pub fn peer_public_key<T>(request: &Request<T>) -> Result<PublicKey, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    match certs.as_slice() {
        [] => Err(Status::unauthenticated("no client certificate presented")),
        [cert] => identity::verify::cert_public_key(cert.as_ref())
            .map_err(|e| Status::unauthenticated(format!("client certificate is not usable: {e}"))),
        _ => Err(Status::unauthenticated(
            "more than one client certificate presented",
        )),
    }
}

/// A rustls client configuration presenting `tls`'s certificate and verifying the server
/// against `tls.ca` (operators and tests calling the internal listener).
pub fn internal_client_config(tls: &ComponentTls) -> Result<Arc<rustls::ClientConfig>> {
    crate::agent::tls::client_config_with_cert(
        vec![tls.certificate.clone()],
        &tls.key,
        Some(&tls.ca),
    )
}
