//! Shared setup of the pki integration tests: a real etcd per test and the usual keyspace.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::sync::Arc;

use identity::{PublicKey, SigningKey};
use kv::Namespaced;
use pki::Certificate;
use test_support::etcd::TestEtcd;

/// A fresh etcd and its `namespaced:curator/` keyspace, where the cluster PKI lives.
pub async fn curator() -> (TestEtcd, Namespaced) {
    let etcd = TestEtcd::start().await.expect("start etcd");
    let kv = etcd.namespaced("curator").expect("curator keyspace");
    (etcd, kv)
}

pub fn cluster_ca() -> Arc<Certificate> {
    Arc::new(Certificate::cluster_ca())
}

pub fn new_key() -> PublicKey {
    SigningKey::generate().expect("generate key").public_key()
}

/// The raw value at `raw_key` in the whole etcd keyspace.
pub async fn raw_get(etcd: &TestEtcd, raw_key: &str) -> Option<Vec<u8>> {
    etcd.root()
        .get(raw_key, None)
        .await
        .expect("raw get")
        .kvs()
        .first()
        .map(|kv| kv.value().to_vec())
}
