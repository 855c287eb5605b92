//! Tests of issuance (templates) and verification together: upstream's TestCertificates cases
//! plus the §1.2 issuance rules, interop with OpenSSL, and rejection of non-Ed25519 and
//! malformed input.

use std::net::IpAddr;

use crate::error::Error;
use crate::keys::{PublicKey, SigningKey};
use crate::node_id::node_id;
use crate::templates::{self, CertificateTemplate, KeyUsage, Signer, UNKNOWN_NOT_AFTER_UNIX};
use crate::verify::{self, CertificateInfo};

fn key() -> SigningKey {
    SigningKey::generate().expect("key")
}

struct Ca {
    key: SigningKey,
    cert: Vec<u8>,
}

fn cluster_ca() -> Ca {
    let key = key();
    let cert = templates::cluster_ca(&key).expect("ca");
    Ca { key, cert }
}

/// Issues without any policy (no CA check, no IsCA forcing), to make broken certificates.
fn raw_issue(t: &CertificateTemplate, subject: &PublicKey, ca: &Ca) -> Vec<u8> {
    templates::build(
        t,
        Signer::Ca {
            subject,
            key: &ca.key,
            cert: &ca.cert,
        },
        vec![0x42],
    )
    .expect("build")
}

fn info(der: &[u8]) -> CertificateInfo {
    verify::inspect(der).expect("inspect")
}

// ---- Upstream TestCertificates ----

#[test]
fn valid_ca_node_and_user() {
    let ca = cluster_ca();
    verify::check_ca(&ca.cert).expect("CA sane");
    let node = key();
    let node_cert = templates::node_cert(&ca.key, &ca.cert, &node.public_key()).expect("node");
    assert_eq!(
        verify::verify_node_cert(&node_cert, &ca.cert).expect("node valid"),
        node.public_key()
    );
    let user = key();
    let user_cert =
        templates::user_cert(&ca.key, &ca.cert, &user.public_key(), "owner").expect("user");
    assert_eq!(
        verify::verify_user_cert(&user_cert, &ca.cert).expect("user valid"),
        "owner"
    );
    assert_eq!(
        verify::check_in_cluster(&user_cert, &ca.cert).expect("in cluster"),
        user.public_key()
    );
}

#[test]
fn ca_without_is_ca_fails_node_and_user() {
    let key = key();
    let mut t = CertificateTemplate::ca(templates::CLUSTER_CA_CN);
    t.is_ca = false;
    let bad = Ca {
        cert: templates::self_sign(&t, &key).expect("self-sign"),
        key,
    };
    assert!(matches!(
        verify::check_ca(&bad.cert),
        Err(Error::NotCa { .. })
    ));
    let node = key_pub();
    let node_cert = raw_issue(&CertificateTemplate::node(&node), &node, &bad);
    assert!(matches!(
        verify::verify_node_cert(&node_cert, &bad.cert),
        Err(Error::NotCa { .. })
    ));
    let user_cert = raw_issue(&CertificateTemplate::user("owner"), &node, &bad);
    assert!(matches!(
        verify::verify_user_cert(&user_cert, &bad.cert),
        Err(Error::NotCa { .. })
    ));
    // The issuing API refuses such a CA outright.
    assert!(matches!(
        templates::node_cert(&bad.key, &bad.cert, &node),
        Err(Error::NotCa { .. })
    ));
}

#[test]
fn ca_with_key_usage_but_no_cert_sign_is_not_a_ca() {
    let key = key();
    let mut t = CertificateTemplate::ca("x");
    t.key_usage = vec![KeyUsage::DigitalSignature];
    let cert = templates::self_sign(&t, &key).expect("self-sign");
    assert!(matches!(
        verify::check_ca(&cert),
        Err(Error::NotCa { reason }) if reason.contains("CertSign")
    ));
    // No KeyUsage at all is acceptable (Go's rule).
    t.key_usage.clear();
    let cert = templates::self_sign(&t, &key).expect("self-sign");
    verify::check_ca(&cert).expect("CA without KeyUsage");
}

#[test]
fn leaf_with_is_ca_fails() {
    let ca = cluster_ca();
    let pk = key_pub();
    let mut t = CertificateTemplate::node(&pk);
    t.is_ca = true;
    let node_cert = raw_issue(&t, &pk, &ca);
    assert!(info(&node_cert).is_ca);
    assert!(matches!(
        verify::verify_node_cert(&node_cert, &ca.cert),
        Err(Error::UnexpectedCa)
    ));
    let mut t = CertificateTemplate::user("owner");
    t.is_ca = true;
    let user_cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_user_cert(&user_cert, &ca.cert),
        Err(Error::UnexpectedCa)
    ));
}

#[test]
fn node_without_id_in_dns_fails() {
    let ca = cluster_ca();
    let pk = key_pub();
    let mut t = CertificateTemplate::node(&pk);
    t.dns_names = vec!["metropolis-00".to_string()];
    let cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_node_cert(&cert, &ca.cert),
        Err(Error::IdMismatch { node_id: id, problem }) if id == node_id(&pk) && problem.contains("DNS")
    ));
    t.dns_names.clear();
    let cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_node_cert(&cert, &ca.cert),
        Err(Error::IdMismatch { .. })
    ));
}

#[test]
fn node_without_id_in_cn_fails() {
    let ca = cluster_ca();
    let pk = key_pub();
    let mut t = CertificateTemplate::node(&pk);
    t.common_name = Some("foo".to_string());
    let cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_node_cert(&cert, &ca.cert),
        Err(Error::IdMismatch { problem, .. }) if problem.contains("\"foo\"")
    ));
    t.common_name = None;
    let cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_node_cert(&cert, &ca.cert),
        Err(Error::IdMismatch { .. })
    ));
}

#[test]
fn user_without_cn_fails() {
    let ca = cluster_ca();
    let pk = key_pub();
    let mut t = CertificateTemplate::user("owner");
    t.common_name = None;
    let cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_user_cert(&cert, &ca.cert),
        Err(Error::MissingCommonName)
    ));
    t.common_name = Some(String::new());
    let cert = raw_issue(&t, &pk, &ca);
    assert!(matches!(
        verify::verify_user_cert(&cert, &ca.cert),
        Err(Error::MissingCommonName)
    ));
}

#[test]
fn node_is_never_user_and_vice_versa() {
    let ca = cluster_ca();
    let pk = key_pub();
    let node_cert = templates::node_cert(&ca.key, &ca.cert, &pk).expect("node");
    assert!(matches!(
        verify::verify_user_cert(&node_cert, &ca.cert),
        Err(Error::WrongEku {
            wanted: "ClientAuth"
        })
    ));
    // Even a user certificate whose CN and SANs look exactly like a node's is not a node.
    let mut t = CertificateTemplate::user(&node_id(&pk));
    t.dns_names = vec![node_id(&pk)];
    let user_cert = templates::issue(&t, &pk, &ca.key, &ca.cert).expect("user");
    assert!(matches!(
        verify::verify_node_cert(&user_cert, &ca.cert),
        Err(Error::WrongEku {
            wanted: "ServerAuth"
        })
    ));
}

#[test]
fn cert_from_other_cluster_fails() {
    let ca = cluster_ca();
    let other = cluster_ca();
    let pk = key_pub();
    let cert = templates::node_cert(&other.key, &other.cert, &pk).expect("node");
    assert!(matches!(
        verify::verify_node_cert(&cert, &ca.cert),
        Err(Error::SignatureInvalid(_))
    ));
}

// ---- Issuance rules (§1.2) and templates (§1.3) ----

fn key_pub() -> PublicKey {
    key().public_key()
}

fn assert_common_rules(der: &[u8], subject: &PublicKey, issuer_skid: &[u8]) {
    let i = info(der);
    // Serial in [0, 2^127): at most 16 bytes, top bit of a 16-byte serial clear.
    assert!(i.serial.len() <= 16, "serial too long: {:?}", i.serial);
    if i.serial.len() == 16 {
        assert_eq!(i.serial[0] & 0x80, 0);
    }
    assert_eq!(i.not_after, UNKNOWN_NOT_AFTER_UNIX);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(i.not_before <= now && i.not_before > now - 60);
    assert!(i.basic_constraints, "BasicConstraints missing");
    assert_eq!(
        i.subject_key_id.as_deref(),
        Some(&templates::subject_key_id(subject)[..])
    );
    assert_eq!(i.authority_key_id.as_deref(), Some(issuer_skid));
    assert_eq!(i.public_key, Some(*subject));
}

#[test]
fn issuance_rules_hold_for_every_template() {
    let ca = cluster_ca();
    let ca_pk = ca.key.public_key();
    let ca_skid = templates::subject_key_id(&ca_pk);
    // Self-signed: AKI is its own SKID.
    assert_common_rules(&ca.cert, &ca_pk, &ca_skid);

    let pk = key_pub();
    let node = templates::node_cert(&ca.key, &ca.cert, &pk).expect("node");
    assert_common_rules(&node, &pk, &ca_skid);
    let user = templates::user_cert(&ca.key, &ca.cert, &pk, "owner").expect("user");
    assert_common_rules(&user, &pk, &ca_skid);

    let etcd_key = key();
    let etcd_ca = templates::etcd_ca(&etcd_key).expect("etcd ca");
    let etcd_skid = templates::subject_key_id(&etcd_key.public_key());
    assert_common_rules(&etcd_ca, &etcd_key.public_key(), &etcd_skid);
    let peer = templates::etcd_peer_cert(&etcd_key, &etcd_ca, &pk, &[], &[]).expect("peer");
    assert_common_rules(&peer, &pk, &etcd_skid);

    // Serials are random.
    let again = templates::node_cert(&ca.key, &ca.cert, &pk).expect("node");
    assert_ne!(info(&node).serial, info(&again).serial);
}

#[test]
fn skid_is_sha1_of_raw_key() {
    let k = SigningKey::from_seed(&[7u8; 32]);
    let expected = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        k.public_key().as_bytes(),
    );
    assert_eq!(
        templates::subject_key_id(&k.public_key()),
        expected.as_ref()
    );
    assert_eq!(templates::subject_key_id(&k.public_key()).len(), 20);
    let cert = templates::cluster_ca(&k).expect("ca");
    assert_eq!(
        info(&cert).subject_key_id.as_deref(),
        Some(expected.as_ref())
    );
}

#[test]
fn not_after_is_9999_12_31() {
    let ca = cluster_ca();
    let (_, cert) = x509_parser::parse_x509_certificate(&ca.cert).expect("parse");
    let na = cert.validity().not_after.to_datetime();
    assert_eq!((na.year(), u8::from(na.month()), na.day()), (9999, 12, 31));
    assert_eq!((na.hour(), na.minute(), na.second()), (23, 59, 59));
}

#[test]
fn cluster_ca_template() {
    let ca = cluster_ca();
    let (_, c) = x509_parser::parse_x509_certificate(&ca.cert).expect("parse");
    let i = info(&ca.cert);
    assert_eq!(i.common_name.as_deref(), Some("Metropolis Cluster CA"));
    assert!(i.is_ca);
    assert!(i.server_auth && i.client_auth);
    let ku = c.key_usage().expect("ku").expect("present").value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert!(!ku.key_encipherment());
    let eku = c.extended_key_usage().expect("eku").expect("present").value;
    assert!(eku.ocsp_signing);
    assert_eq!(c.subject().as_raw(), c.issuer().as_raw());
    assert_eq!(
        info(&templates::etcd_ca(&ca.key).expect("etcd"))
            .common_name
            .as_deref(),
        Some("Metropolis etcd CA Certificate")
    );
}

#[test]
fn node_and_user_templates() {
    let ca = cluster_ca();
    let pk = key_pub();
    let id = node_id(&pk);
    let node = templates::node_cert(&ca.key, &ca.cert, &pk).expect("node");
    let (_, c) = x509_parser::parse_x509_certificate(&node).expect("parse");
    let i = info(&node);
    assert_eq!(i.common_name.as_deref(), Some(id.as_str()));
    assert_eq!(i.dns_names, vec![id.clone()]);
    assert!(i.server_auth && !i.client_auth && !i.is_ca);
    let ku = c.key_usage().expect("ku").expect("present").value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca.cert).expect("parse");
    assert_eq!(c.issuer().as_raw(), ca_parsed.subject().as_raw());

    let user = templates::user_cert(&ca.key, &ca.cert, &pk, "owner").expect("user");
    let i = info(&user);
    assert_eq!(i.common_name.as_deref(), Some("owner"));
    assert!(i.dns_names.is_empty() && i.ip_addresses.is_empty());
    assert!(i.client_auth && !i.server_auth && !i.is_ca);
}

#[test]
fn etcd_peer_template() {
    let ca_key = key();
    let ca = templates::etcd_ca(&ca_key).expect("etcd ca");
    let pk = key_pub();
    let ips: Vec<IpAddr> = vec!["127.0.1.1".parse().expect("ip"), "::1".parse().expect("ip")];
    let extra = vec!["localhost".to_string()];
    let cert = templates::etcd_peer_cert(&ca_key, &ca, &pk, &extra, &ips).expect("peer");
    let i = info(&cert);
    assert_eq!(i.common_name, Some(node_id(&pk)));
    assert_eq!(i.dns_names, vec!["localhost".to_string(), node_id(&pk)]);
    assert_eq!(i.ip_addresses, ips);
    assert!(i.client_auth && i.server_auth && !i.is_ca);
    // An etcd peer cert is in its CA's cluster and even passes as a node cert of that CA.
    assert_eq!(verify::verify_node_cert(&cert, &ca).expect("node"), pk);
}

#[test]
fn issue_forces_is_ca_false_and_checks_ca_key() {
    let ca = cluster_ca();
    let pk = key_pub();
    let mut t = CertificateTemplate::ca("sub CA");
    t.is_ca = true;
    let cert = templates::issue(&t, &pk, &ca.key, &ca.cert).expect("issue");
    let i = info(&cert);
    assert!(!i.is_ca && i.basic_constraints);

    let wrong = key();
    assert!(matches!(
        templates::node_cert(&wrong, &ca.cert, &pk),
        Err(Error::CertKeyMismatch { .. })
    ));
}

#[test]
fn ephemeral_cert_template_and_self_signed_check() {
    let k = key();
    let cert = templates::ephemeral_cert(&k).expect("ephemeral");
    let (_, c) = x509_parser::parse_x509_certificate(&cert).expect("parse");
    assert_eq!(c.raw_serial(), &[1]);
    assert_eq!(c.subject().iter_attributes().count(), 0);
    let i = info(&cert);
    assert!(i.basic_constraints && !i.is_ca);
    assert!(i.client_auth && !i.server_auth);
    assert_eq!(i.not_after, UNKNOWN_NOT_AFTER_UNIX);
    let ku = c.key_usage().expect("ku").expect("present").value;
    assert!(ku.key_encipherment() && ku.digital_signature() && ku.key_cert_sign());
    assert_eq!(
        verify::verify_self_signed(&cert).expect("self-signed"),
        k.public_key()
    );
    assert_eq!(verify::cert_serial(&cert).expect("serial"), vec![1]);

    // Ephemeral certificates are not cluster members.
    let ca = cluster_ca();
    assert!(verify::verify_node_cert(&cert, &ca.cert).is_err());
    assert!(verify::verify_user_cert(&cert, &ca.cert).is_err());
}

#[test]
fn ca_issued_cert_is_not_self_signed() {
    let ca = cluster_ca();
    let node = templates::node_cert(&ca.key, &ca.cert, &key_pub()).expect("node");
    assert!(matches!(
        verify::verify_self_signed(&node),
        Err(Error::SignatureInvalid(_))
    ));
    // A CA certificate is, by construction, self-signed.
    verify::verify_self_signed(&ca.cert).expect("CA is self-signed");
}

#[test]
fn ca_with_printable_string_name_is_reproduced_exactly() {
    // CAs made by Go encode the CN as PrintableString; issuing under one must keep it.
    let ca_key = key();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::PrintableString("Metropolis Cluster CA".try_into().expect("printable")),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = params
        .self_signed(&templates::RcgenKey(&ca_key))
        .expect("ca")
        .der()
        .to_vec();
    let pk = key_pub();
    let node = templates::node_cert(&ca_key, &ca_cert, &pk).expect("node");
    assert_eq!(
        verify::verify_node_cert(&node, &ca_cert).expect("valid"),
        pk
    );
    // rcgen gave this CA a truncated-SHA-256 SKID; the AKI must copy it, not recompute it.
    let ca_skid = info(&ca_cert).subject_key_id;
    assert!(ca_skid.is_some());
    assert_ne!(
        ca_skid,
        Some(templates::subject_key_id(&ca_key.public_key()))
    );
    assert_eq!(info(&node).authority_key_id, ca_skid);
}

// ---- Malformed and foreign input ----

fn ecdsa_self_signed_ca() -> (rcgen::KeyPair, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let mut params = rcgen::CertificateParams::new(vec!["example".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&kp).expect("ec cert").der().to_vec();
    (kp, cert)
}

#[test]
fn non_ed25519_certificates_are_rejected() {
    let (_, ec_cert) = ecdsa_self_signed_ca();
    assert!(matches!(
        verify::cert_public_key(&ec_cert),
        Err(Error::NotEd25519 { algorithm }) if algorithm == "1.2.840.10045.2.1"
    ));
    assert!(matches!(
        verify::verify_self_signed(&ec_cert),
        Err(Error::NotEd25519 { .. })
    ));
    assert!(matches!(
        verify::check_ca(&ec_cert),
        Err(Error::NotEd25519 { .. })
    ));
    let ca = cluster_ca();
    assert!(matches!(
        verify::verify_node_cert(&ec_cert, &ca.cert),
        Err(Error::SignatureInvalid(_))
    ));
    assert!(
        verify::inspect(&ec_cert)
            .expect("inspect")
            .public_key
            .is_none()
    );

    // An ECDSA subject key signed by our Ed25519 CA: signature fine, key type not.
    let ec_subject = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
    let parsed = verify::parse("CA", &ca.cert).expect("parse");
    let issuer = templates::ca_issuer(&ca.key, &parsed).expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "owner");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&ec_subject, &issuer)
        .expect("sign")
        .der()
        .to_vec();
    assert!(matches!(
        verify::verify_user_cert(&cert, &ca.cert),
        Err(Error::NotEd25519 { .. })
    ));
}

#[test]
fn garbage_and_truncated_certificates_are_rejected() {
    let ca = cluster_ca();
    let node = templates::node_cert(&ca.key, &ca.cert, &key_pub()).expect("node");
    for bad in [
        &b""[..],
        b"garbage",
        &node[..node.len() / 2],
        &node[..node.len() - 1],
    ] {
        assert!(matches!(
            verify::cert_public_key(bad),
            Err(Error::Parse { .. })
        ));
        assert!(matches!(
            verify::verify_node_cert(bad, &ca.cert),
            Err(Error::Parse { .. })
        ));
        assert!(matches!(
            verify::verify_node_cert(&node, bad),
            Err(Error::Parse { .. })
        ));
        assert!(matches!(
            verify::verify_self_signed(bad),
            Err(Error::Parse { .. })
        ));
    }
    let mut trailing = node.clone();
    trailing.push(0);
    assert!(matches!(
        verify::cert_serial(&trailing),
        Err(Error::Parse { .. })
    ));
    // A flipped bit in the signed part breaks the signature.
    let mut tampered = node.clone();
    let pos = tampered.len() - 100;
    tampered[pos] ^= 0x01;
    assert!(verify::verify_node_cert(&tampered, &ca.cert).is_err());
}

// ---- CRL ----

#[test]
fn crl_lists_given_serials() {
    let ca = cluster_ca();
    let a = templates::node_cert(&ca.key, &ca.cert, &key_pub()).expect("node");
    let b = templates::user_cert(&ca.key, &ca.cert, &key_pub(), "owner").expect("user");
    let serials = vec![
        verify::cert_serial(&a).expect("serial"),
        verify::cert_serial(&b).expect("serial"),
    ];
    let crl = templates::crl(&ca.key, &ca.cert, &serials, 7).expect("crl");

    let (rest, parsed) = x509_parser::parse_x509_crl(&crl).expect("x509-parser reads CRL");
    assert!(rest.is_empty());
    let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca.cert).expect("parse");
    assert_eq!(parsed.issuer().as_raw(), ca_parsed.subject().as_raw());
    parsed
        .verify_signature(ca_parsed.public_key())
        .expect("CRL signed by CA");
    assert_eq!(
        parsed
            .next_update()
            .expect("nextUpdate")
            .to_datetime()
            .year(),
        9999
    );

    let ci = verify::inspect_crl(&crl, &ca.cert).expect("inspect");
    assert_eq!(ci.crl_number, Some(7));
    assert_eq!(ci.revoked_serials, serials);

    let empty = templates::crl(&ca.key, &ca.cert, &[], 0).expect("empty crl");
    let ci = verify::inspect_crl(&empty, &ca.cert).expect("inspect");
    assert!(ci.revoked_serials.is_empty());

    let other = cluster_ca();
    assert!(matches!(
        verify::inspect_crl(&crl, &other.cert),
        Err(Error::SignatureInvalid(_))
    ));
    assert!(matches!(
        verify::inspect_crl(b"junk", &ca.cert),
        Err(Error::Parse { .. })
    ));
}

// ---- Interop ----

/// Runs openssl with `args`; `None` when openssl is not installed.
fn openssl(args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .ok()
}

#[test]
fn openssl_verifies_chain_and_parses_crl() {
    let ca = cluster_ca();
    let node = templates::node_cert(&ca.key, &ca.cert, &key_pub()).expect("node");
    let crl = templates::crl(&ca.key, &ca.cert, &[vec![5]], 1).expect("crl");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    let cert_path = dir.path().join("cert.pem");
    let crl_path = dir.path().join("crl.der");
    crate::files::save_certificate(&ca_path, &ca.cert).expect("save");
    crate::files::save_certificate(&cert_path, &node).expect("save");
    std::fs::write(&crl_path, &crl).expect("write crl");

    let Some(out) = openssl(&[
        "verify".as_ref(),
        "-CAfile".as_ref(),
        ca_path.as_os_str(),
        cert_path.as_os_str(),
    ]) else {
        eprintln!("openssl not on PATH; skipping");
        return;
    };
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = openssl(&[
        "crl".as_ref(),
        "-inform".as_ref(),
        "DER".as_ref(),
        "-noout".as_ref(),
        "-in".as_ref(),
        crl_path.as_os_str(),
        "-CAfile".as_ref(),
        ca_path.as_os_str(),
    ])
    .expect("openssl ran before");
    assert!(
        out.status.success(),
        "openssl crl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("verify OK"));
}
