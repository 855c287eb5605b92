//! Data at rest: what a node leaves in its `data/` directory must not give away secrets.
//!
//! * `node_data_is_encrypted`: two nodes with the default PERMISSIVE policy (so both use the
//!   recommended authenticated encryption); the files the node itself keeps under `data/`
//!   (everything but etcd's own `data/etcd/`) hold no PEM block, no PKCS#8 private key, no
//!   raw private key of a node or of the cluster CA, and not even a node's public key in the
//!   clear (which a plaintext certificate would contain). Checked while running, after a
//!   power cut and after a clean stop.
//! * `etcd_data_holds_no_plaintext_private_key`: a single node's `data/etcd/` (written by
//!   etcd itself) holds no private key in the clear: no PEM private key, no PKCS#8 key, no raw
//!   private key of the node, of the cluster CA or of the etcd peer CA (the curator and the
//!   consensus PKI keep their CA keys in etcd).
//! * `scan_finds_the_credentials_of_an_insecure_node`: the control, on a NEEDS_INSECURE node
//!   whose credentials are plaintext by policy.

mod common;

use std::path::Path;

use common::{Clock, Scan};
use launch::Cluster;
use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use test_support::LoopbackBlock;
use test_support::fs::files_below;

async fn known_keys(cluster: &Cluster) -> Vec<(String, [u8; 32])> {
    let mut keys: Vec<(String, [u8; 32])> = cluster
        .management()
        .get_nodes("")
        .await
        .expect("GetNodes")
        .iter()
        .map(|n| (format!("node {}", n.id), common::key_bytes(&n.pubkey)))
        .collect();
    let ca = identity::verify::cert_public_key(cluster.ca_certificate()).expect("CA key");
    keys.push(("the cluster CA".to_string(), *ca.as_bytes()));
    keys
}

fn assert_clean(dir: &Path, skip: Option<&Path>, scan: &Scan, when: &str) {
    let (files, findings) = common::scan_for_secrets(dir, skip, scan);
    assert!(files > 0, "{when}: {} holds no files at all", dir.display());
    assert!(
        findings.is_empty(),
        "{when}: plaintext secrets under {}:\n  {}",
        dir.display(),
        findings.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_data_is_encrypted() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let cluster = common::start(common::options(2, &block)).await;
    clock.lap("cluster of 2 launched");
    let keys = known_keys(&cluster).await;
    let scan = Scan {
        public: keys
            .iter()
            .filter(|(name, _)| name.starts_with("node"))
            .cloned()
            .collect(),
        private_of: keys,
        any_pem: true,
    };

    let check = |when: &str| {
        for node in cluster.nodes() {
            let data = node.data_dir();
            let own = files_below(&data.join("node"));
            assert!(
                !own.is_empty(),
                "{when}: node {} keeps no files under {}/node",
                node.index(),
                data.display()
            );
            let when = format!("{when}, node {}", node.index());
            assert_clean(&data, Some(&data.join("etcd")), &scan, &when);
        }
    };
    check("running");
    clock.lap("data/ of both nodes clean while running");
    cluster.node(1).kill().await.expect("power off node 1");
    check("node 1 powered off");
    cluster.node(0).stop().await.expect("stop node 0");
    check("both stopped");
    clock.lap("data/ of both nodes clean at rest");
}

// Known gap, kept visible: etcd writes its data (cluster CA keys, CUKs) and the peer key in
// plain files under data/etcd/; encrypting them needs etcd itself on encrypted storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: data/etcd/ is plaintext (see README, storage emulation)"]
async fn etcd_data_holds_no_plaintext_private_key() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let cluster = common::start(common::options(1, &block)).await;
    clock.lap("single node launched");
    let mut keys = known_keys(&cluster).await;
    let node = cluster.node(0);
    let etcd = node.data_dir().join("etcd");
    // The etcd peer CA, whose certificate the node keeps next to etcd's data.
    let peer_ca = std::fs::read(etcd.join("peer_pki/ca.pem"))
        .ok()
        .and_then(|pem| identity::files::certificate_from_pem(pem).ok())
        .and_then(|der| identity::verify::cert_public_key(&der).ok());
    if let Some(key) = peer_ca {
        keys.push(("the etcd peer CA".to_string(), *key.as_bytes()));
    }
    let scan = Scan {
        private_of: keys,
        public: Vec::new(),
        any_pem: false,
    };
    node.stop().await.expect("stop node 0");
    assert_clean(&etcd, None, &scan, "stopped");
    clock.lap("data/etcd clean at rest");
}

/// The control: the same scan over an INSECURE node's data (stored in the clear by policy)
/// must find its plaintext credentials, or the checks above prove nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_the_credentials_of_an_insecure_node() {
    common::init();
    let block = LoopbackBlock::allocate();
    let mut options = common::options(1, &block);
    options.storage_policy = StorageSecurityPolicy::NeedsInsecure;
    let cluster = common::start(options).await;
    let keys = known_keys(&cluster).await;
    let scan = Scan {
        public: keys
            .iter()
            .filter(|(name, _)| name.starts_with("node"))
            .cloned()
            .collect(),
        private_of: keys,
        any_pem: true,
    };
    let data = cluster.node(0).data_dir();
    let (_, findings) = common::scan_for_secrets(&data, Some(&data.join("etcd")), &scan);
    let key_file = data
        .join("node/credentials/cert-key.pem")
        .display()
        .to_string();
    assert!(
        findings
            .iter()
            .any(|f| f.starts_with(&key_file) && f.contains("PEM private key")),
        "the plaintext node key was not found: {findings:?}"
    );
    assert!(
        findings.iter().any(|f| f.contains("public key of node")),
        "the plaintext node certificate was not found: {findings:?}"
    );
}
