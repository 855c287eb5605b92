//! Certificate templates and issuance: the cluster CA, the etcd peer CA,
//! node, user, etcd peer and ephemeral certificates, and CA-signed CRLs.
//!
//! Every certificate follows the same rules as upstream's pki library so that Go tooling and
//! our own verifiers see identical certificates: random serial below 2^127, NotBefore = now,
//! NotAfter = 9999-12-31T23:59:59Z (RFC 5280 "no well-defined expiry"), BasicConstraints always
//! present, SubjectKeyId = SHA-1 of the raw public key, AuthorityKeyId = the issuer's SKID, and
//! IsCA forced off for anything a CA issues (there is exactly one CA level).
//!
//! Functions here only build and sign; storing, idempotency and CRL bookkeeping belong to the
//! pki crate.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use x509_parser::asn1_rs::Tag;
use x509_parser::prelude::{X509Certificate, X509Name};

use crate::error::{Error, Result};
use crate::keys::{PublicKey, SigningKey};
use crate::node_id::node_id;
use crate::verify;

/// CommonName of the cluster CA.
pub const CLUSTER_CA_CN: &str = "Metropolis Cluster CA";
/// CommonName of the etcd peer CA.
pub const ETCD_CA_CN: &str = "Metropolis etcd CA Certificate";

/// NotAfter of every certificate: 9999-12-31T23:59:59Z, RFC 5280's "no expiry" value.
pub const UNKNOWN_NOT_AFTER_UNIX: i64 = 253_402_300_799;

/// A KeyUsage bit Metropolis certificates use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// digitalSignature
    DigitalSignature,
    /// keyEncipherment (meaningless for Ed25519, kept because upstream sets it)
    KeyEncipherment,
    /// keyCertSign
    CertSign,
    /// cRLSign
    CrlSign,
}

/// An ExtendedKeyUsage Metropolis certificates use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtKeyUsage {
    /// id-kp-serverAuth: marks node certificates.
    ServerAuth,
    /// id-kp-clientAuth: marks user certificates.
    ClientAuth,
    /// id-kp-OCSPSigning
    OcspSigning,
}

/// What goes into a certificate, independent of who signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateTemplate {
    /// Subject CommonName; `None` gives an empty subject.
    pub common_name: Option<String>,
    /// DNS SANs, in order.
    pub dns_names: Vec<String>,
    /// IP SANs, in order.
    pub ip_addresses: Vec<IpAddr>,
    /// KeyUsage bits (extension omitted when empty).
    pub key_usage: Vec<KeyUsage>,
    /// ExtendedKeyUsage purposes (extension omitted when empty).
    pub ext_key_usage: Vec<ExtKeyUsage>,
    /// BasicConstraints cA flag; ignored (forced false) when a CA issues the certificate.
    pub is_ca: bool,
}

impl CertificateTemplate {
    /// A self-signed CA named `cn` (the cluster CA and the etcd peer CA share this shape).
    pub fn ca(cn: &str) -> Self {
        CertificateTemplate {
            common_name: Some(cn.to_string()),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            key_usage: vec![
                KeyUsage::CertSign,
                KeyUsage::CrlSign,
                KeyUsage::DigitalSignature,
            ],
            ext_key_usage: vec![
                ExtKeyUsage::ClientAuth,
                ExtKeyUsage::ServerAuth,
                ExtKeyUsage::OcspSigning,
            ],
            is_ca: true,
        }
    }

    /// A node certificate: CN and DNS SAN = node ID, ServerAuth only.
    pub fn node(node_pubkey: &PublicKey) -> Self {
        let id = node_id(node_pubkey);
        CertificateTemplate {
            common_name: Some(id.clone()),
            dns_names: vec![id],
            ip_addresses: Vec::new(),
            key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            ext_key_usage: vec![ExtKeyUsage::ServerAuth],
            is_ca: false,
        }
    }

    /// A user (e.g. owner) certificate: CN = identity, no SANs, ClientAuth only.
    pub fn user(identity: &str) -> Self {
        CertificateTemplate {
            common_name: Some(identity.to_string()),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            ext_key_usage: vec![ExtKeyUsage::ClientAuth],
            is_ca: false,
        }
    }

    /// An etcd peer certificate: CN = node ID, DNS SANs = extra names then node ID, IP SANs as
    /// given, ClientAuth + ServerAuth (etcd peers are both).
    pub fn etcd_peer(node_pubkey: &PublicKey, extra_names: &[String], ips: &[IpAddr]) -> Self {
        let id = node_id(node_pubkey);
        let mut dns_names = extra_names.to_vec();
        dns_names.push(id.clone());
        CertificateTemplate {
            common_name: Some(id),
            dns_names,
            ip_addresses: ips.to_vec(),
            key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            ext_key_usage: vec![ExtKeyUsage::ClientAuth, ExtKeyUsage::ServerAuth],
            is_ca: false,
        }
    }

    /// The client-side ephemeral certificate: empty subject, self-signed, ClientAuth.
    pub fn ephemeral() -> Self {
        CertificateTemplate {
            common_name: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            key_usage: vec![
                KeyUsage::KeyEncipherment,
                KeyUsage::DigitalSignature,
                KeyUsage::CertSign,
            ],
            ext_key_usage: vec![ExtKeyUsage::ClientAuth],
            is_ca: false,
        }
    }
}

/// Signs `template` with `key` for `key`'s own public key; returns DER.
pub fn self_sign(template: &CertificateTemplate, key: &SigningKey) -> Result<Vec<u8>> {
    build(template, Signer::SelfSigned(key), random_serial()?)
}

/// Issues `template` for `subject` under the CA (`ca_key`, `ca_cert_der`); returns DER.
///
/// The CA must pass [`verify::check_ca`] and `ca_key` must be the CA certificate's key, so a
/// mixed-up key or a corrupt CA is caught here rather than by every verifier later.
pub fn issue(
    template: &CertificateTemplate,
    subject: &PublicKey,
    ca_key: &SigningKey,
    ca_cert_der: &[u8],
) -> Result<Vec<u8>> {
    verify::check_ca(ca_cert_der)?;
    let mut template = template.clone();
    // Only one CA level exists; a CA-issued CA would be an authentication bypass.
    template.is_ca = false;
    build(
        &template,
        Signer::Ca {
            subject,
            key: ca_key,
            cert: ca_cert_der,
        },
        random_serial()?,
    )
}

/// A self-signed CA certificate with CommonName `cn`.
pub fn ca(key: &SigningKey, cn: &str) -> Result<Vec<u8>> {
    self_sign(&CertificateTemplate::ca(cn), key)
}

/// The self-signed cluster CA ("Metropolis Cluster CA").
pub fn cluster_ca(key: &SigningKey) -> Result<Vec<u8>> {
    ca(key, CLUSTER_CA_CN)
}

/// The self-signed etcd peer CA ("Metropolis etcd CA Certificate").
pub fn etcd_ca(key: &SigningKey) -> Result<Vec<u8>> {
    ca(key, ETCD_CA_CN)
}

/// A node certificate for `node_pubkey`, issued by the cluster CA.
pub fn node_cert(
    ca_key: &SigningKey,
    ca_cert_der: &[u8],
    node_pubkey: &PublicKey,
) -> Result<Vec<u8>> {
    issue(
        &CertificateTemplate::node(node_pubkey),
        node_pubkey,
        ca_key,
        ca_cert_der,
    )
}

/// A user certificate naming `identity` for `pubkey`, issued by the cluster CA.
pub fn user_cert(
    ca_key: &SigningKey,
    ca_cert_der: &[u8],
    pubkey: &PublicKey,
    identity: &str,
) -> Result<Vec<u8>> {
    issue(
        &CertificateTemplate::user(identity),
        pubkey,
        ca_key,
        ca_cert_der,
    )
}

/// An etcd peer certificate for `node_pubkey`, issued by the etcd peer CA.
pub fn etcd_peer_cert(
    ca_key: &SigningKey,
    ca_cert_der: &[u8],
    node_pubkey: &PublicKey,
    extra_names: &[String],
    extra_ips: &[IpAddr],
) -> Result<Vec<u8>> {
    issue(
        &CertificateTemplate::etcd_peer(node_pubkey, extra_names, extra_ips),
        node_pubkey,
        ca_key,
        ca_cert_der,
    )
}

/// The self-signed ephemeral client certificate for `key` (serial 1, as upstream).
pub fn ephemeral_cert(key: &SigningKey) -> Result<Vec<u8>> {
    build(
        &CertificateTemplate::ephemeral(),
        Signer::SelfSigned(key),
        vec![1],
    )
}

/// A CRL signed by the CA listing `revoked_serials` (big-endian magnitudes, as returned by
/// [`verify::cert_serial`]); thisUpdate = now, nextUpdate = 9999-12-31T23:59:59Z.
pub fn crl(
    ca_key: &SigningKey,
    ca_cert_der: &[u8],
    revoked_serials: &[Vec<u8>],
    crl_number: u64,
) -> Result<Vec<u8>> {
    let ca = verify::parse("CA certificate", ca_cert_der)?;
    let issuer = ca_issuer(ca_key, &ca)?;
    let now = now();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: not_after()?,
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: revoked_serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::PreSpecified(ca_skid(&ca)?),
    };
    Ok(params.signed_by(&issuer)?.der().to_vec())
}

/// SubjectKeyId of a public key: SHA-1 over the subjectPublicKey BIT STRING contents, which for
/// Ed25519 is the 32 raw key bytes (RFC 5280 §4.2.1.2 method 1, what Go computes).
pub fn subject_key_id(public_key: &PublicKey) -> Vec<u8> {
    ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        public_key.as_bytes(),
    )
    .as_ref()
    .to_vec()
}

/// Who signs a certificate being built.
pub(crate) enum Signer<'a> {
    /// Subject and issuer are `key`.
    SelfSigned(&'a SigningKey),
    /// `key` (holder of `cert`) signs a certificate for `subject`.
    Ca {
        subject: &'a PublicKey,
        key: &'a SigningKey,
        cert: &'a [u8],
    },
}

/// Builds and signs a certificate without any policy checks, so tests can make broken ones.
pub(crate) fn build(
    template: &CertificateTemplate,
    signer: Signer<'_>,
    serial: Vec<u8>,
) -> Result<Vec<u8>> {
    let subject = match &signer {
        Signer::SelfSigned(key) => key.public_key(),
        Signer::Ca { subject, .. } => **subject,
    };
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now();
    params.not_after = not_after()?;
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = &template.common_name {
        params
            .distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(cn.clone()));
    }
    for name in &template.dns_names {
        let name = name
            .clone()
            .try_into()
            .map_err(|e| Error::Generate(format!("DNS name {name:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.subject_alt_names.extend(
        template
            .ip_addresses
            .iter()
            .map(|ip| SanType::IpAddress(*ip)),
    );
    params.key_usages = template.key_usage.iter().map(|k| k.to_rcgen()).collect();
    params.extended_key_usages = template
        .ext_key_usage
        .iter()
        .map(|k| k.to_rcgen())
        .collect();
    // ExplicitNoCa still writes BasicConstraints (and the SKID), like Go's
    // BasicConstraintsValid = true; NoCa would omit both.
    params.is_ca = if template.is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    params.key_identifier_method = KeyIdMethod::PreSpecified(subject_key_id(&subject));
    params.use_authority_key_identifier_extension = true;

    match signer {
        Signer::SelfSigned(key) => Ok(params.self_signed(&RcgenKey(key))?.der().to_vec()),
        Signer::Ca { subject, key, cert } => {
            let ca = verify::parse("CA certificate", cert)?;
            let issuer = ca_issuer(key, &ca)?;
            let der = params
                .signed_by(&RcgenPublicKey(subject), &issuer)?
                .der()
                .to_vec();
            // The issuer name is re-encoded from the parsed CA subject; make sure it came out
            // byte-identical, or chain building (which compares raw names) would fail later.
            let issued = verify::parse("certificate", &der)?;
            if issued.issuer().as_raw() != ca.subject().as_raw() {
                return Err(Error::Generate(
                    "CA subject name cannot be reproduced byte-for-byte as issuer name".into(),
                ));
            }
            Ok(der)
        }
    }
}

/// An rcgen issuer for a CA we hold the key of, its name and SKID taken from the certificate.
pub(crate) fn ca_issuer<'k>(
    key: &'k SigningKey,
    ca: &X509Certificate<'_>,
) -> Result<rcgen::Issuer<'static, RcgenKey<'k>>> {
    let ca_pub = verify::public_key_of(ca)?;
    if ca_pub != key.public_key() {
        return Err(Error::CertKeyMismatch {
            cert_key: ca_pub.to_string(),
            key: key.public_key().to_string(),
        });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_x509(ca.subject())?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(ca_skid(ca)?);
    if let Ok(Some(ku)) = ca.key_usage() {
        let ku = ku.value;
        let bits = [
            (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
            (ku.non_repudiation(), KeyUsagePurpose::ContentCommitment),
            (ku.key_encipherment(), KeyUsagePurpose::KeyEncipherment),
            (ku.data_encipherment(), KeyUsagePurpose::DataEncipherment),
            (ku.key_agreement(), KeyUsagePurpose::KeyAgreement),
            (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
            (ku.crl_sign(), KeyUsagePurpose::CrlSign),
            (ku.encipher_only(), KeyUsagePurpose::EncipherOnly),
            (ku.decipher_only(), KeyUsagePurpose::DecipherOnly),
        ];
        params.key_usages = bits
            .into_iter()
            .filter_map(|(set, p)| set.then_some(p))
            .collect();
    }
    Ok(rcgen::Issuer::new(params, RcgenKey(key)))
}

/// The CA's SKID as written in its certificate, or computed if it has none (older CAs).
fn ca_skid(ca: &X509Certificate<'_>) -> Result<Vec<u8>> {
    use x509_parser::extensions::ParsedExtension;
    let skid = ca
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    match skid {
        Some(id) => Ok(id),
        None => Ok(subject_key_id(&verify::public_key_of(ca)?)),
    }
}

/// Rebuilds an rcgen name from a parsed one, keeping each attribute's string type.
fn dn_from_x509(name: &X509Name<'_>) -> Result<DistinguishedName> {
    let unsupported = |why: String| Error::Generate(format!("CA subject name: {why}"));
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let arcs: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("attribute OID too large".into()))?
            .collect();
        let s = attr
            .as_str()
            .map_err(|e| unsupported(format!("attribute is not a string: {e}")))?;
        let value = match attr.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(s.to_string()),
            Tag::PrintableString => DnValue::PrintableString(
                s.try_into()
                    .map_err(|e| unsupported(format!("PrintableString: {e}")))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                s.try_into()
                    .map_err(|e| unsupported(format!("IA5String: {e}")))?,
            ),
            t => return Err(unsupported(format!("unsupported string type {t}"))),
        };
        dn.push(DnType::from_oid(&arcs), value);
    }
    Ok(dn)
}

/// A random serial in [0, 2^127), like upstream's `rand.Int(rand.Reader, 2^127)`.
fn random_serial() -> Result<Vec<u8>> {
    let mut serial = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| Error::Rng)?;
    serial[0] &= 0x7f;
    Ok(serial)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn not_after() -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(UNKNOWN_NOT_AFTER_UNIX)
        .map_err(|e| Error::Generate(format!("NotAfter: {e}")))
}

impl KeyUsage {
    fn to_rcgen(self) -> KeyUsagePurpose {
        match self {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsage::CertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        }
    }
}

impl ExtKeyUsage {
    fn to_rcgen(self) -> ExtendedKeyUsagePurpose {
        match self {
            ExtKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            ExtKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            ExtKeyUsage::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
        }
    }
}

/// Lets rcgen sign with our key without ever seeing the seed.
pub(crate) struct RcgenKey<'a>(pub(crate) &'a SigningKey);

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_ref().as_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        Ok(self.0.sign(msg).to_vec())
    }
}

/// A raw Ed25519 public key as the subject of an "external" certificate.
struct RcgenPublicKey<'a>(&'a PublicKey);

impl rcgen::PublicKeyData for RcgenPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}
