//! Shared pieces of our custom rustls certificate verifiers: they decide *which* certificates
//! to accept (cluster membership, self-signed keys), while handshake signatures are checked the
//! standard way with the ring provider's algorithms.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::CertificateDer;

/// Standard TLS 1.2/1.3 handshake signature verification.
#[derive(Debug, Clone)]
pub struct HandshakeSignatures(Arc<CryptoProvider>);

impl Default for HandshakeSignatures {
    fn default() -> Self {
        Self(crate::crypto_provider())
    }
}

impl HandshakeSignatures {
    /// Verifies a TLS 1.2 handshake signature.
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// Verifies a TLS 1.3 handshake signature.
    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// The signature schemes we can verify.
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate refusal carrying our own explanation (shown in the peer's TLS error).
pub fn refused(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
        reason,
    )))))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);
