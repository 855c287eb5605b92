//! The agent's TLS client: an ephemeral self-signed certificate for the agent key (how the
//! server authenticates it) and verification of the server.
//!
//! With a CA from the init file the server must chain to that CA, but its name is not checked:
//! the endpoint is often an IP address while component certificates name `<component>.local`,
//! and the CA is BMaaS' own, so anything it issued for serving is the BMaaS server. Without a
//! CA the system roots are used with normal name checks (upstream: Go's system pool).

use std::path::Path;
use std::sync::Arc;

use identity::SigningKey;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::{Error, Result};

/// Debian's bundle of the system's trusted roots.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// WebPKI verification against a pinned CA, ignoring the server name (see module docs).
#[derive(Debug)]
struct PinnedCa {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // rustls checks the chain before the name, so a name error means the chain is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn webpki_verifier(roots: RootCertStore) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), rpc::crypto_provider())
        .build()
        .map_err(|e| Error::Config(format!("server verifier: {e}")))
}

fn system_roots() -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(Path::new(SYSTEM_ROOTS))
        .map_err(|e| Error::Config(format!("reading system roots {SYSTEM_ROOTS}: {e}")))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs.flatten());
    if added == 0 {
        return Err(Error::Config(format!(
            "no usable CA certificates in {SYSTEM_ROOTS}"
        )));
    }
    Ok(roots)
}

/// The agent's client configuration: an ephemeral certificate for `key`, and the server
/// verified against `ca` (DER) or the system roots.
pub fn client_config(key: &SigningKey, ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    let cert = identity::templates::ephemeral_cert(key)?;
    client_config_with_cert(vec![cert], key, ca)
}

/// How the agent verifies the server: chained to `ca` (DER, any name), or the system roots.
pub fn server_verifier(ca: Option<&[u8]>) -> Result<Arc<dyn ServerCertVerifier>> {
    Ok(match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(ca.to_vec()))?;
            Arc::new(PinnedCa {
                inner: webpki_verifier(roots)?,
            })
        }
        None => webpki_verifier(system_roots()?)?,
    })
}

/// Like [`client_config`] with a given certificate chain (tests, operators).
pub fn client_config_with_cert(
    chain: Vec<Vec<u8>>,
    key: &SigningKey,
    ca: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>> {
    let verifier = server_verifier(ca)?;
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der().to_vec()));
    let mut config = rustls::ClientConfig::builder_with_provider(rpc::crypto_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
