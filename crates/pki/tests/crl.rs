//! CRLs against a real etcd: creation with the CA, revocation, concurrency, watching.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster_ca, curator, new_key, raw_get};
use futures::StreamExt;
use identity::verify;
use pki::{Certificate, Crl, Error, revoked_serials};

const WAIT: Duration = Duration::from_secs(10);

/// Issues `n` node certificates under `ca`; returns (name, serial) pairs.
async fn issue_nodes(
    ca: &Arc<Certificate>,
    kv: &kv::Namespaced,
    n: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let node = Certificate::node(ca, new_key());
        let der = node.ensure(kv).await.expect("issue node");
        out.push((node.name, verify::cert_serial(&der).expect("serial")));
    }
    out
}

fn crl_number(crl: &Crl, ca_der: &[u8]) -> Option<u64> {
    verify::inspect_crl(&crl.der, ca_der)
        .expect("CRL signed by the CA")
        .crl_number
}

#[tokio::test]
async fn ca_creation_creates_an_empty_crl() {
    let (etcd, kv) = curator().await;
    let ca = Certificate::cluster_ca();
    let ca_der = ca.ensure(&kv).await.expect("ca");
    let crl = ca.crl(&kv).await.expect("crl");
    assert_eq!(
        raw_get(&etcd, "namespaced:curator//cluster-pki/cluster-ca-crl.der").await,
        Some(crl.der.clone())
    );
    assert!(revoked_serials(&crl.der).expect("parse").is_empty());
    assert_eq!(crl_number(&crl, &ca_der), Some(1));
    // Ensuring again leaves it alone.
    ca.ensure(&kv).await.expect("ca again");
    assert_eq!(ca.crl(&kv).await.expect("crl"), crl);
}

#[tokio::test]
async fn revoke_appends_the_serial_and_the_crl_verifies() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let nodes = issue_nodes(&ca, &kv, 2).await;
    let ca_der = ca.ensure(&kv).await.expect("ca");
    let before = ca.crl(&kv).await.expect("crl");

    ca.revoke_certificate(&kv, &nodes[0].0)
        .await
        .expect("revoke");
    let after = ca.crl(&kv).await.expect("crl");
    assert!(after.revision > before.revision);
    let info = verify::inspect_crl(&after.der, &ca_der).expect("signed by the CA");
    assert_eq!(info.revoked_serials, [nodes[0].1.clone()]);
    assert_eq!(info.crl_number, Some(2));

    ca.revoke_serial(&kv, &nodes[1].1).await.expect("revoke");
    assert_eq!(
        revoked_serials(&ca.crl(&kv).await.expect("crl").der).expect("parse"),
        [nodes[0].1.clone(), nodes[1].1.clone()]
    );
}

#[tokio::test]
async fn revoking_twice_is_a_noop() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let nodes = issue_nodes(&ca, &kv, 1).await;
    ca.revoke_certificate(&kv, &nodes[0].0)
        .await
        .expect("revoke");
    let once = ca.crl(&kv).await.expect("crl");
    ca.revoke_certificate(&kv, &nodes[0].0)
        .await
        .expect("revoke again");
    // Leading zeros do not make it another serial.
    let mut padded = vec![0u8];
    padded.extend_from_slice(&nodes[0].1);
    ca.revoke_serial(&kv, &padded).await.expect("revoke padded");
    assert_eq!(ca.crl(&kv).await.expect("crl"), once);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_all_land() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let nodes = issue_nodes(&ca, &kv, 6).await;
    let results = futures::future::join_all(
        nodes
            .iter()
            .map(|(name, _)| ca.revoke_certificate(&kv, name)),
    )
    .await;
    for r in results {
        r.expect("revoke");
    }
    let ca_der = ca.ensure(&kv).await.expect("ca");
    let crl = ca.crl(&kv).await.expect("crl");
    let mut revoked = revoked_serials(&crl.der).expect("parse");
    revoked.sort();
    let mut expected: Vec<_> = nodes.into_iter().map(|(_, s)| s).collect();
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(crl_number(&crl, &ca_der), Some(1 + 6));
}

#[tokio::test]
async fn watch_crl_sees_the_initial_crl_and_revocations() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let nodes = issue_nodes(&ca, &kv, 2).await;
    let mut watch = ca.watch_crl(&kv);
    let mut next = async || {
        tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("CRL update in time")
            .expect("stream open")
            .expect("CRL")
    };
    let initial = next().await;
    assert_eq!(initial, ca.crl(&kv).await.expect("crl"));
    assert!(revoked_serials(&initial.der).expect("parse").is_empty());

    ca.revoke_certificate(&kv, &nodes[0].0)
        .await
        .expect("revoke");
    let update = next().await;
    assert!(update.revision > initial.revision);
    assert_eq!(
        revoked_serials(&update.der).expect("parse"),
        [nodes[0].1.clone()]
    );

    ca.revoke_certificate(&kv, &nodes[1].0)
        .await
        .expect("revoke");
    assert_eq!(revoked_serials(&next().await.der).expect("parse").len(), 2);
}

#[tokio::test]
async fn watch_crl_of_a_missing_ca_fails() {
    let (_etcd, kv) = curator().await;
    let mut watch = Certificate::cluster_ca().watch_crl(&kv);
    assert!(matches!(
        watch.next().await,
        Some(Err(Error::NotFound { .. }))
    ));
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn revoke_by_dns_name() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    let key = new_key();
    let node = Certificate::node(&ca, key);
    let der = node.ensure(&kv).await.expect("node");
    issue_nodes(&ca, &kv, 1).await;
    assert_eq!(
        ca.revoke_dns_name(&kv, &key.node_id())
            .await
            .expect("revoke"),
        1
    );
    assert_eq!(
        revoked_serials(&ca.crl(&kv).await.expect("crl").der).expect("parse"),
        [verify::cert_serial(&der).expect("serial")]
    );
    assert!(matches!(
        ca.revoke_dns_name(&kv, "metropolis-0000").await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn revocation_errors() {
    let (_etcd, kv) = curator().await;
    let ca = cluster_ca();
    // Revoking does not conjure up a CA.
    assert!(matches!(
        ca.revoke_serial(&kv, &[1]).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(ca.get(&kv).await.expect("get"), None);
    ca.ensure(&kv).await.expect("ca");
    assert!(matches!(
        ca.revoke_certificate(&kv, "node-nobody").await,
        Err(Error::NotFound { .. })
    ));

    // A second CA in the same namespace: its certificates are not ours to revoke.
    let other = Arc::new(Certificate::self_signed_ca(
        pki::CLUSTER_PKI_NAMESPACE,
        "other-ca",
        "Other CA",
    ));
    let foreign = Certificate::node(&other, new_key());
    foreign.ensure(&kv).await.expect("foreign");
    assert!(matches!(
        ca.revoke_certificate(&kv, &foreign.name).await,
        Err(Error::Invalid { .. })
    ));

    let node = Certificate::node(&ca, new_key());
    node.ensure(&kv).await.expect("node");
    assert!(matches!(node.crl(&kv).await, Err(Error::NotCa { .. })));
    assert!(matches!(
        node.revoke_serial(&kv, &[1]).await,
        Err(Error::NotCa { .. })
    ));
}

#[test]
fn revoked_serials_rejects_garbage() {
    assert!(matches!(
        revoked_serials(b"not a CRL"),
        Err(Error::InvalidCrl(_))
    ));
}
