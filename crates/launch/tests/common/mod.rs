//! Shared pieces of the end-to-end tests: logging, timings, options, and the data-at-rest
//! scanner. Each `e2e_*.rs` file is its own test binary (nextest runs them in parallel), each
//! cluster in a loopback block of its own (`test_support::LoopbackBlock`).
//!
//! The node binary is not built by `cargo nextest run -p launch`: build it first with
//! `cargo build -p node` (tests find `target/debug/metropolis-node`, or $METROPOLIS_NODE_BIN).
//! Set LAUNCH_ECHO_LOGS=1 to see every node's output live, LAUNCH_KEEP_STATE=1 to keep the
//! state directories (they are always kept when a test fails).

#![allow(dead_code)] // Not every test binary uses every helper.

use std::path::Path;
use std::time::Duration;

use launch::proto::api::GetClusterInfoResponse;
use launch::{Cluster, ClusterOptions, Management};
use test_support::fs::files_below_except;
use test_support::{LoopbackBlock, eventually};
use tokio::time::Instant;

/// Upstream's 60 s for the cluster directory and for rejoins, doubled for loaded 2-core CI.
pub const REJOIN: Duration = Duration::from_secs(120);
/// Upstream's 20 s for all nodes to be HEALTHY, doubled.
pub const HEALTH: Duration = Duration::from_secs(40);
/// A node noticing it was deleted or decommissioned and exiting.
pub const GONE: Duration = Duration::from_secs(120);

/// Logs of the harness itself (not the nodes') to the test's captured stderr.
pub fn init() {
    test_support::logging::init_with("launch=info");
}

/// Prints how long each step took (shown by nextest for failing tests, or with
/// `--no-capture`).
pub struct Clock {
    start: Instant,
    step: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            step: now,
        }
    }

    pub fn lap(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "[{:>7.1?}] {what} (took {:.1?})",
            now - self.start,
            now - self.step
        );
        self.step = now;
    }
}

/// `nodes` nodes in `block`, which the test keeps until the cluster is gone.
pub fn options(nodes: usize, block: &LoopbackBlock) -> ClusterOptions {
    ClusterOptions::new(nodes, &block.prefix())
}

/// Starts a cluster or fails the test with the launcher's explanation.
pub async fn start(options: ClusterOptions) -> Cluster {
    match Cluster::start(options).await {
        Ok(cluster) => cluster,
        Err(e) => panic!("launching the cluster failed: {e}"),
    }
}

/// Polls GetClusterInfo until its directory lists exactly these addresses.
pub async fn wait_directory(
    management: &Management,
    addresses: &[String],
    timeout: Duration,
) -> GetClusterInfoResponse {
    let mut want: Vec<String> = addresses.to_vec();
    want.sort();
    eventually(timeout, async || {
        let info = management.cluster_info().await.map_err(|e| e.to_string())?;
        let mut got: Vec<String> = info
            .cluster_directory
            .iter()
            .flat_map(|d| d.nodes.iter())
            .flat_map(|n| n.addresses.iter().map(|a| a.host.clone()))
            .collect();
        got.sort();
        if got == want {
            Ok(info)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("cluster directory did not list {want:?}: {e}"))
}

/// DER of an Ed25519 private key inside PKCS#8 (v1 and v2): the algorithm OID 1.3.101.112
/// followed by OCTET STRING { OCTET STRING (32 bytes) }.
const PKCS8_ED25519_MARKER: [u8; 9] = [0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// What [`scan_for_secrets`] looks for.
pub struct Scan {
    /// Public keys whose private halves must not be stored in the clear (as seed‖public key,
    /// the raw 64-byte form etcd-backed PKI and Go use).
    pub private_of: Vec<(String, [u8; 32])>,
    /// Public keys that must not appear in the clear at all (a plaintext certificate, or a
    /// plaintext record, would contain them).
    pub public: Vec<(String, [u8; 32])>,
    /// Whether any PEM block at all (`-----BEGIN`) is a finding, or only PEM private keys.
    pub any_pem: bool,
}

/// Reads every file below `dir` (but not below `skip`) and lists each plaintext secret found, as
/// `<file>: <what>`. Also returns how many files were read, so a caller can tell an empty
/// directory (a vacuous pass) from a clean one.
pub fn scan_for_secrets(dir: &Path, skip: Option<&Path>, scan: &Scan) -> (usize, Vec<String>) {
    let mut findings = Vec::new();
    let files = files_below_except(dir, skip);
    for file in &files {
        let Ok(data) = std::fs::read(file) else {
            continue;
        };
        let name = file.display();
        if !find_all(&data, b"PRIVATE KEY-----").is_empty() {
            findings.push(format!("{name}: PEM private key"));
        } else if scan.any_pem && !find_all(&data, b"-----BEGIN").is_empty() {
            findings.push(format!("{name}: PEM block (plaintext certificate or key)"));
        }
        for at in find_all(&data, &PKCS8_ED25519_MARKER) {
            let seed =
                data.get(at + PKCS8_ED25519_MARKER.len()..at + PKCS8_ED25519_MARKER.len() + 32);
            let whose = seed
                .and_then(|s| identity::SigningKey::from_seed_slice(s).ok())
                .map(|k| k.public_key())
                .and_then(|pk| {
                    scan.private_of
                        .iter()
                        .chain(scan.public.iter())
                        .find(|(_, p)| p == pk.as_bytes())
                        .map(|(n, _)| n.clone())
                })
                .unwrap_or_else(|| "an unknown key".to_string());
            findings.push(format!(
                "{name}: DER PKCS#8 Ed25519 private key of {whose} at offset {at}"
            ));
        }
        for (who, public) in &scan.private_of {
            for at in find_all(&data, public) {
                let Some(seed) = at.checked_sub(32).map(|s| &data[s..at]) else {
                    continue;
                };
                let derived = identity::SigningKey::from_seed_slice(seed).map(|k| k.public_key());
                if derived.is_ok_and(|pk| pk.as_bytes() == public) {
                    findings.push(format!(
                        "{name}: raw private key (seed‖public key) of {who} at offset {}",
                        at - 32
                    ));
                }
            }
        }
        for (who, public) in &scan.public {
            if !find_all(&data, public).is_empty() {
                findings.push(format!("{name}: public key of {who} in the clear"));
            }
        }
    }
    (files.len(), findings)
}

/// The 32 bytes of a public key from an api.Node.
pub fn key_bytes(pubkey: &[u8]) -> [u8; 32] {
    pubkey.try_into().expect("node public keys are 32 bytes")
}
