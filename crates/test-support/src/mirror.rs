//! An HTTPS file server with a CA of its own, standing in for an update mirror in tests: the
//! node under test trusts the CA through `--update-ca`, as it would a private mirror's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// An HTTPS server on `addr` serving `files` (URL path → contents) with a certificate for
/// `addr`'s IP from a fresh CA; returns the CA certificate in PEM. Other paths get 404.
pub async fn serve_https(addr: SocketAddr, files: Vec<(String, Vec<u8>)>) -> String {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "update mirror test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![addr.ip().to_string()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let files = files.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let files = files.clone();
                    async move {
                        let found = files.iter().find(|(p, _)| p == req.uri().path());
                        let response = match found {
                            Some((_, data)) => {
                                http::Response::new(Full::new(Bytes::from(data.clone())))
                            }
                            None => {
                                let mut r = http::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    ca.pem()
}
