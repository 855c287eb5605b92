//! Certificate checks: is this a sane CA, is this certificate from our cluster, and
//! is it a node or a user certificate. The rpc crate classifies every peer with these, so they
//! decide who is who in the cluster.
//!
//! The checks are offline and deliberately ignore validity periods and CRLs, exactly like
//! upstream: Metropolis certificates never expire and nothing consults the CRL.
//! The only thing distinguishing a node from a user is the ServerAuth/ClientAuth EKU.

use std::net::IpAddr;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::prelude::X509Certificate;

use crate::error::{Error, Result};
use crate::keys::PublicKey;
use crate::node_id::node_id;

/// Parses DER as one X.509 certificate with nothing trailing.
pub(crate) fn parse<'a>(what: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::parse(what, e))?;
    if !rest.is_empty() {
        return Err(Error::parse(
            what,
            format!("{} trailing bytes after the certificate", rest.len()),
        ));
    }
    Ok(cert)
}

/// The Ed25519 key of a parsed certificate.
pub(crate) fn public_key_of(cert: &X509Certificate<'_>) -> Result<PublicKey> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return Err(Error::NotEd25519 {
            algorithm: spki.algorithm.algorithm.to_id_string(),
        });
    }
    PublicKey::from_slice(spki.subject_public_key.as_ref())
}

/// The Ed25519 public key in a certificate; any other key type is [`Error::NotEd25519`].
pub fn cert_public_key(cert_der: &[u8]) -> Result<PublicKey> {
    public_key_of(&parse("certificate", cert_der)?)
}

/// The certificate's serial number as a big-endian magnitude without leading zeros.
pub fn cert_serial(cert_der: &[u8]) -> Result<Vec<u8>> {
    let cert = parse("certificate", cert_der)?;
    Ok(strip_zeros(cert.raw_serial()).to_vec())
}

/// Checks that `ca_der` can act as a cluster CA: Ed25519 key, BasicConstraints present with
/// cA set, and CertSign among its KeyUsage bits if it has any.
pub fn check_ca(ca_der: &[u8]) -> Result<()> {
    check_ca_parsed(&parse("CA certificate", ca_der)?)
}

fn check_ca_parsed(ca: &X509Certificate<'_>) -> Result<()> {
    public_key_of(ca)?;
    let bc = ca
        .basic_constraints()
        .map_err(|e| Error::parse("CA certificate", e))?
        .ok_or(Error::NotCa {
            reason: "it has no BasicConstraints extension",
        })?;
    if !bc.value.ca {
        return Err(Error::NotCa {
            reason: "its BasicConstraints say it is not a CA",
        });
    }
    if let Some(ku) = ca
        .key_usage()
        .map_err(|e| Error::parse("CA certificate", e))?
        && ku.value.flags != 0
        && !ku.value.key_cert_sign()
    {
        return Err(Error::NotCa {
            reason: "its KeyUsage does not include CertSign",
        });
    }
    Ok(())
}

/// Checks that `cert_der` belongs to the cluster of `ca_der`: the CA is sane, the certificate's
/// signature verifies with the CA key, it is not itself a CA and has an Ed25519 key, which is
/// returned.
pub fn check_in_cluster(cert_der: &[u8], ca_der: &[u8]) -> Result<PublicKey> {
    let cert = parse("certificate", cert_der)?;
    let ca = parse("CA certificate", ca_der)?;
    check_in_cluster_parsed(&cert, &ca)
}

fn check_in_cluster_parsed(
    cert: &X509Certificate<'_>,
    ca: &X509Certificate<'_>,
) -> Result<PublicKey> {
    check_ca_parsed(ca)?;
    cert.verify_signature(Some(ca.public_key())).map_err(|e| {
        Error::SignatureInvalid(format!("certificate is not signed by the cluster CA: {e}"))
    })?;
    if cert
        .basic_constraints()
        .map_err(|e| Error::parse("certificate", e))?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(Error::UnexpectedCa);
    }
    public_key_of(cert)
}

/// Verifies a node certificate under `ca_der` and returns the node's public key: in cluster,
/// ServerAuth EKU, CN == node ID of the key, and the node ID among the DNS SANs.
pub fn verify_node_cert(cert_der: &[u8], ca_der: &[u8]) -> Result<PublicKey> {
    let cert = parse("certificate", cert_der)?;
    let ca = parse("CA certificate", ca_der)?;
    let key = check_in_cluster_parsed(&cert, &ca)?;
    if !eku(&cert)?.server_auth {
        return Err(Error::WrongEku {
            wanted: "ServerAuth",
        });
    }
    let id = node_id(&key);
    let cn = common_name(&cert)?;
    if cn.as_deref() != Some(id.as_str()) {
        return Err(Error::IdMismatch {
            node_id: id,
            problem: format!("has CommonName {:?}", cn.unwrap_or_default()),
        });
    }
    if !dns_names(&cert)?.contains(&id) {
        return Err(Error::IdMismatch {
            node_id: id,
            problem: "does not list it among its DNS names".to_string(),
        });
    }
    Ok(key)
}

/// Verifies a user certificate under `ca_der` and returns its identity (the CN): in cluster,
/// ClientAuth EKU, non-empty CN.
pub fn verify_user_cert(cert_der: &[u8], ca_der: &[u8]) -> Result<String> {
    let cert = parse("certificate", cert_der)?;
    let ca = parse("CA certificate", ca_der)?;
    check_in_cluster_parsed(&cert, &ca)?;
    if !eku(&cert)?.client_auth {
        return Err(Error::WrongEku {
            wanted: "ClientAuth",
        });
    }
    match common_name(&cert)? {
        Some(cn) if !cn.is_empty() => Ok(cn),
        _ => Err(Error::MissingCommonName),
    }
}

/// Checks that a certificate is signed by its own Ed25519 key (ephemeral credentials) and
/// returns that key. Says nothing else about the certificate.
pub fn verify_self_signed(cert_der: &[u8]) -> Result<PublicKey> {
    let cert = parse("certificate", cert_der)?;
    let key = public_key_of(&cert)?;
    cert.verify_signature(None)
        .map_err(|e| Error::SignatureInvalid(format!("certificate is not self-signed: {e}")))?;
    Ok(key)
}

/// The fields of a certificate the rest of the system looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number, big-endian magnitude.
    pub serial: Vec<u8>,
    /// Subject CommonName, if any.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// BasicConstraints cA flag (false when absent).
    pub is_ca: bool,
    /// Whether a BasicConstraints extension is present.
    pub basic_constraints: bool,
    /// EKU contains ServerAuth.
    pub server_auth: bool,
    /// EKU contains ClientAuth.
    pub client_auth: bool,
    /// The Ed25519 key, `None` for other key types.
    pub public_key: Option<PublicKey>,
    /// SubjectKeyIdentifier, if present.
    pub subject_key_id: Option<Vec<u8>>,
    /// AuthorityKeyIdentifier keyIdentifier, if present.
    pub authority_key_id: Option<Vec<u8>>,
    /// NotBefore as unix seconds.
    pub not_before: i64,
    /// NotAfter as unix seconds.
    pub not_after: i64,
}

/// Parses a certificate into a [`CertificateInfo`] without verifying anything.
pub fn inspect(cert_der: &[u8]) -> Result<CertificateInfo> {
    let cert = parse("certificate", cert_der)?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| Error::parse("certificate", e))?;
    let eku = eku(&cert)?;
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in cert.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => {}
        }
    }
    Ok(CertificateInfo {
        serial: strip_zeros(cert.raw_serial()).to_vec(),
        common_name: common_name(&cert)?,
        dns_names: dns_names(&cert)?,
        ip_addresses: ip_addresses(&cert)?,
        is_ca: bc.as_ref().is_some_and(|bc| bc.value.ca),
        basic_constraints: bc.is_some(),
        server_auth: eku.server_auth,
        client_auth: eku.client_auth,
        public_key: public_key_of(&cert).ok(),
        subject_key_id,
        authority_key_id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The parts of a CRL the pki crate needs to extend it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// CRLNumber extension, if present and below 2^64.
    pub crl_number: Option<u64>,
    /// Revoked serials, big-endian magnitudes, in CRL order.
    pub revoked_serials: Vec<Vec<u8>>,
}

/// Parses a CRL and checks it is signed by the CA.
pub fn inspect_crl(crl_der: &[u8], ca_der: &[u8]) -> Result<CrlInfo> {
    let ca = parse("CA certificate", ca_der)?;
    let (rest, crl) = x509_parser::parse_x509_crl(crl_der).map_err(|e| Error::parse("CRL", e))?;
    if !rest.is_empty() {
        return Err(Error::parse("CRL", "trailing bytes after the CRL"));
    }
    crl.verify_signature(ca.public_key())
        .map_err(|e| Error::SignatureInvalid(format!("CRL is not signed by the CA: {e}")))?;
    Ok(CrlInfo {
        crl_number: crl.crl_number().and_then(|n| u64::try_from(n).ok()),
        revoked_serials: crl
            .iter_revoked_certificates()
            .map(|r| strip_zeros(r.raw_serial()).to_vec())
            .collect(),
    })
}

/// Extended key usage flags; an absent extension means none.
struct Eku {
    server_auth: bool,
    client_auth: bool,
}

fn eku(cert: &X509Certificate<'_>) -> Result<Eku> {
    let eku = cert
        .extended_key_usage()
        .map_err(|e| Error::parse("certificate", e))?;
    Ok(Eku {
        server_auth: eku.as_ref().is_some_and(|e| e.value.server_auth),
        client_auth: eku.as_ref().is_some_and(|e| e.value.client_auth),
    })
}

/// Subject CN. Go keeps the last CN attribute when there are several; so do we.
fn common_name(cert: &X509Certificate<'_>) -> Result<Option<String>> {
    cert.subject()
        .iter_common_name()
        .last()
        .map(|cn| {
            cn.as_str()
                .map(str::to_string)
                .map_err(|e| Error::parse("certificate", format!("CommonName: {e}")))
        })
        .transpose()
}

fn general_names<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a GeneralName<'a>>> {
    Ok(cert
        .subject_alternative_name()
        .map_err(|e| Error::parse("certificate", e))?
        .map(|san| san.value.general_names.iter().collect())
        .unwrap_or_default())
}

fn dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>> {
    Ok(general_names(cert)?
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) => Some(s.to_string()),
            _ => None,
        })
        .collect())
}

fn ip_addresses(cert: &X509Certificate<'_>) -> Result<Vec<IpAddr>> {
    general_names(cert)?
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::IPAddress(b) => Some(*b),
            _ => None,
        })
        .map(|b| match b.len() {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Ok(IpAddr::from(a))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                Ok(IpAddr::from(a))
            }
            n => Err(Error::parse("certificate", format!("IP SAN of {n} bytes"))),
        })
        .collect()
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}
