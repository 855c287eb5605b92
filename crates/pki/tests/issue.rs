//! Issuing and storing certificates against a real etcd.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use common::{cluster_ca, curator, new_key, raw_get};
use identity::SigningKey;
use identity::templates::CLUSTER_CA_CN;
use identity::verify;
use pki::{Certificate, Error, Issuer, Mode, Template};
use test_support::etcd::TestEtcd;

#[tokio::test]
async fn ca_ensure_is_idempotent_and_stored_at_upstream_keys() {
    let (etcd, kv) = curator().await;
    let ca = Certificate::cluster_ca();
    let first = ca.ensure(&kv).await.expect("ensure");
    let second = ca.ensure(&kv).await.expect("ensure again");
    assert_eq!(first, second);

    verify::check_ca(&first).expect("a usable CA");
    let info = verify::inspect(&first).expect("inspect");
    assert_eq!(info.common_name.as_deref(), Some(CLUSTER_CA_CN));
    assert_eq!(info.not_after, identity::templates::UNKNOWN_NOT_AFTER_UNIX);

    let key_bytes = raw_get(
        &etcd,
        "namespaced:curator//cluster-pki/keys/cluster-ca-privkey.bin",
    )
    .await
    .expect("key stored at the upstream key");
    assert_eq!(key_bytes.len(), 64);
    let key = SigningKey::from_keypair_bytes(&key_bytes).expect("seed || public key");
    assert_eq!(
        Some(key.public_key()),
        info.public_key,
        "stored key is the CA's"
    );
    assert_eq!(
        raw_get(
            &etcd,
            "namespaced:curator//cluster-pki/issued/cluster-ca-cert.der"
        )
        .await,
        Some(first)
    );
    assert_eq!(
        ca.key(&kv).await.expect("key").public_key(),
        key.public_key()
    );
}

#[tokio::test]
async fn external_node_certificate_verifies_against_the_ca() {
    let (etcd, kv) = curator().await;
    let ca = cluster_ca();
    let node_key = new_key();
    let node = Certificate::node(&ca, node_key);
    assert_eq!(node.name, format!("node-{}", node_key.node_id()));
    let der = node.ensure(&kv).await.expect("ensure node");
    let ca_der = ca.ensure(&kv).await.expect("ca");
    assert_eq!(
        verify::verify_node_cert(&der, &ca_der).expect("valid node cert"),
        node_key
    );
    assert_eq!(node.ensure(&kv).await.expect("again"), der);
    assert_eq!(node.get(&kv).await.expect("get"), Some(der.clone()));
    assert_eq!(
        raw_get(
            &etcd,
            &format!(
                "namespaced:curator//cluster-pki/issued/node-{}-cert.der",
                node_key.node_id()
            )
        )
        .await,
        Some(der)
    );
    // External: no private key anywhere.
    assert!(
        kv.get_prefix("/cluster-pki/keys/node-")
            .await
            .expect("get")
            .kvs()
            .is_empty()
    );
    assert!(matches!(node.key(&kv).await, Err(Error::NotManaged { .. })));
}

#[tokio::test]
async fn user_certificate_verifies_as_user() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let owner = Certificate::user(&ca, pki::OWNER_NAME, "owner", new_key());
    let der = owner.ensure(&kv).await.expect("ensure owner");
    let ca_der = ca.ensure(&kv).await.expect("ca");
    assert_eq!(
        verify::verify_user_cert(&der, &ca_der).expect("user cert"),
        "owner"
    );
    assert!(verify::verify_node_cert(&der, &ca_der).is_err());
}

#[tokio::test]
async fn same_name_with_another_key_is_a_key_mismatch() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let (first, second) = (new_key(), new_key());
    let owner = |key| Certificate::user(&ca, "owner", "owner", key);
    owner(first).ensure(&kv).await.expect("first escrow");
    match owner(second).ensure(&kv).await {
        Err(Error::KeyMismatch {
            name,
            stored,
            requested,
        }) => {
            assert_eq!(name, "owner");
            assert_eq!(stored, first);
            assert_eq!(requested, second);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The rightful key still gets its certificate.
    owner(first).ensure(&kv).await.expect("first again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_ensures_get_the_same_certificate() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    // Nothing exists yet, so both also race to create the CA.
    for round in 0..5 {
        let node = Certificate::node(&ca, new_key());
        let (a, b) = tokio::join!(node.ensure(&kv), node.ensure(&kv));
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_eq!(a, b, "round {round}");
        assert_eq!(node.get(&kv).await.expect("get"), Some(a));
    }
    let (a, b) = tokio::join!(ca.ensure(&kv), ca.ensure(&kv));
    assert_eq!(a.expect("a"), b.expect("b"));
    assert_eq!(
        kv.get_prefix("/cluster-pki/keys/")
            .await
            .expect("keys")
            .kvs()
            .len(),
        1,
        "exactly one CA key survived the races"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_different_keys_for_one_name_have_one_winner() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    ca.ensure(&kv).await.expect("ca");
    let (k1, k2) = (new_key(), new_key());
    let (c1, c2) = (
        Certificate::user(&ca, "owner", "owner", k1),
        Certificate::user(&ca, "owner", "owner", k2),
    );
    let (r1, r2) = tokio::join!(c1.ensure(&kv), c2.ensure(&kv));
    let winner = match (r1, r2) {
        (Ok(_), Err(Error::KeyMismatch { stored, .. })) => {
            assert_eq!(stored, k1);
            k1
        }
        (Err(Error::KeyMismatch { stored, .. }), Ok(_)) => {
            assert_eq!(stored, k2);
            k2
        }
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    let stored = c1.get(&kv).await.expect("get").expect("stored");
    assert_eq!(verify::cert_public_key(&stored).expect("key"), winner);
}

#[tokio::test]
async fn etcd_pki_lives_in_its_own_keyspace() {
    let etcd = TestEtcd::start().await.expect("etcd");
    let kv = etcd.namespaced("etcd-pki").expect("keyspace");
    let ca = Arc::new(Certificate::etcd_ca());
    let node_key = new_key();
    let extra = vec!["localhost".to_string()];
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let peer = Certificate::etcd_peer(&ca, node_key, extra, vec![ip]);
    let der = peer.ensure(&kv).await.expect("peer cert");
    let ca_der = ca.ensure(&kv).await.expect("ca");
    assert_eq!(
        verify::check_in_cluster(&der, &ca_der).expect("in cluster"),
        node_key
    );
    let info = verify::inspect(&der).expect("inspect");
    let id = node_key.node_id();
    assert_eq!(info.common_name.as_deref(), Some(id.as_str()));
    assert_eq!(info.dns_names, ["localhost".to_string(), id.clone()]);
    assert_eq!(info.ip_addresses, [ip]);
    assert!(info.server_auth && info.client_auth);
    assert!(
        raw_get(&etcd, "namespaced:etcd-pki//pki/keys/CA-privkey.bin")
            .await
            .is_some()
    );
    assert_eq!(
        raw_get(
            &etcd,
            &format!("namespaced:etcd-pki//pki/issued/{id}-cert.der")
        )
        .await,
        Some(der)
    );
    assert!(
        raw_get(&etcd, "namespaced:etcd-pki//pki/CA-crl.der")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn key_of_a_never_ensured_ca_is_not_found() {
    let (_etcd, kv) = curator().await;
    match Certificate::cluster_ca().key(&kv).await {
        Err(Error::NotFound { what }) => assert!(what.contains("cluster-ca-privkey.bin"), "{what}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_existing_managed_key_is_reused() {
    let (_etcd, kv) = curator().await;
    let ca = Certificate::cluster_ca();
    let key = SigningKey::generate().expect("key");
    kv.put(ca.key_path(), key.to_keypair_bytes().to_vec(), None)
        .await
        .expect("put key");
    let der = ca.ensure(&kv).await.expect("ensure");
    assert_eq!(
        verify::cert_public_key(&der).expect("key"),
        key.public_key()
    );
    ca.crl(&kv).await.expect("CRL created with the certificate");
}

#[tokio::test]
async fn corrupt_stored_data_is_reported_with_its_key() {
    let (_etcd, kv) = curator().await;
    let ca = Certificate::cluster_ca();
    kv.put(ca.key_path(), vec![1u8; 10], None)
        .await
        .expect("put garbage");
    match ca.ensure(&kv).await {
        Err(Error::Corrupt { key, reason }) => {
            assert_eq!(
                key,
                "namespaced:curator//cluster-pki/keys/cluster-ca-privkey.bin"
            );
            assert!(reason.contains("64"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    let ca = cluster_ca();
    let node = Certificate::node(&ca, new_key());
    kv.put(node.cert_path(), b"not a certificate".to_vec(), None)
        .await
        .expect("put garbage");
    assert!(matches!(node.ensure(&kv).await, Err(Error::Corrupt { .. })));
}

#[tokio::test]
async fn delete_issued_allows_reissuing_the_name() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let old = Certificate::user(&ca, "someone", "someone", new_key());
    old.ensure(&kv).await.expect("issue");
    assert!(ca.delete_issued(&kv, "someone").await.expect("delete"));
    assert_eq!(old.get(&kv).await.expect("get"), None);
    assert!(
        !ca.delete_issued(&kv, "someone")
            .await
            .expect("delete again")
    );

    let new_key = new_key();
    let new = Certificate::user(&ca, "someone", "someone", new_key);
    let der = new.ensure(&kv).await.expect("reissue to another key");
    assert_eq!(verify::cert_public_key(&der).expect("key"), new_key);
    // The CA itself is untouched.
    ca.key(&kv).await.expect("CA key still there");
}

#[tokio::test]
async fn self_signed_external_certificates_are_refused() {
    let (_etcd, kv) = curator().await;
    let cert = Certificate {
        namespace: "/x/".into(),
        name: "weird".into(),
        issuer: Issuer::SelfSigned,
        template: Template::Node,
        mode: Mode::External(new_key()),
    };
    assert!(matches!(cert.ensure(&kv).await, Err(Error::Invalid { .. })));
    assert_eq!(cert.get(&kv).await.expect("get"), None);
}
