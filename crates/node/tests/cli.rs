//! The binary's refusals: missing or invalid parameters and arguments, a
//! cluster configuration it cannot satisfy, leftovers of an unfinished enrolment, a
//! decommissioned state. Each must end with a clear message on stderr and the contract's
//! exit code, without starting anything.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{bootstrap_params, write_params};
use identity::{SigningKey, templates};
use prost::Message;
use proto::api::NodeParameters;
use proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use proto::common::ClusterDirectory;
use proto::common::cluster_configuration::StorageSecurityPolicy;
use proto::common::cluster_directory::{Node, node::Address};
use proto::private::SealedConfiguration;
use test_support::LoopbackBlock;
use test_support::node::{self, TestNode};

/// Runs the node to completion in a block of its own (it refuses before binding anything,
/// but a node that wrongly went on must not meet another test's); returns (exit code,
/// stderr), -1 for a death by signal.
fn run(state: &Path, params: Option<&Path>) -> (i32, String) {
    let block = LoopbackBlock::allocate();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let node = node::start(0, state, block.addr(1), params);
        let exit = node.expect_exit(Duration::from_secs(30)).await;
        (exit.code().unwrap_or(-1), node.stderr_text())
    })
}

fn register_params(ticket: &[u8], host: &str, ca: Vec<u8>) -> NodeParameters {
    NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: Some(ClusterDirectory {
                nodes: vec![Node {
                    public_key: vec![],
                    addresses: vec![Address {
                        host: host.to_string(),
                    }],
                    id: String::new(),
                }],
            }),
            register_ticket: ticket.to_vec(),
            ca_certificate: ca,
            labels: None,
        })),
        network_config: None,
    }
}

fn ca() -> Vec<u8> {
    templates::cluster_ca(&SigningKey::generate().expect("key")).expect("ca")
}

#[test]
fn missing_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = run(&dir.path().join("n"), None);
    assert_eq!(code, 1);
    assert!(err.contains("no node parameters"), "{err}");
    assert!(err.contains("--parameters"), "{err}");
}

#[test]
fn undecodable_and_empty_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.pb");
    std::fs::write(&garbage, b"\xff\xff\xff not a protobuf").expect("write");
    let (code, err) = run(&dir.path().join("n1"), Some(&garbage));
    assert_eq!(code, 1);
    assert!(err.contains("not a valid NodeParameters"), "{err}");

    let empty = write_params(dir.path(), &NodeParameters::default());
    let (code, err) = run(&dir.path().join("n2"), Some(&empty));
    assert_eq!(code, 1);
    assert!(
        err.contains("neither cluster_bootstrap nor cluster_register"),
        "{err}"
    );
}

#[test]
fn invalid_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_metropolis-node"))
        .args(["--state-dir", "/tmp/x", "--address", "not-an-ip"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--address"));
    let help = Command::new(env!("CARGO_BIN_EXE_metropolis-node"))
        .arg("--help")
        .output()
        .expect("run");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--leader-ttl"));
}

#[test]
fn bootstrap_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("key");

    // Without a configuration upstream's defaults apply: TPM required, and there is none.
    let no_config = NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: owner.public_key().as_bytes().to_vec(),
            initial_cluster_configuration: None,
            labels: None,
        })),
        network_config: None,
    };
    let p = write_params(dir.path(), &no_config);
    let (code, err) = run(&dir.path().join("tpm"), Some(&p));
    assert_eq!(code, 1);
    assert!(err.contains("TPM"), "{err}");

    let mut bad_owner = bootstrap_params(&owner, StorageSecurityPolicy::Permissive);
    if let Some(Cluster::ClusterBootstrap(b)) = &mut bad_owner.cluster {
        b.owner_public_key.truncate(5);
    }
    let p = write_params(dir.path(), &bad_owner);
    let (code, err) = run(&dir.path().join("owner"), Some(&p));
    assert_eq!(code, 1);
    assert!(err.contains("owner_public_key"), "{err}");
}

#[test]
fn register_parameter_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, NodeParameters, &str)> = vec![
        (
            "ticket",
            register_params(b"", "192.0.2.1", ca()),
            "register_ticket is empty",
        ),
        (
            "host",
            register_params(b"t", "node0.example", ca()),
            "not a literal IP",
        ),
        (
            "ca",
            register_params(b"t", "192.0.2.1", b"junk".to_vec()),
            "ca_certificate",
        ),
    ];
    for (name, params, want) in cases {
        let p = write_params(dir.path(), &params);
        let (code, err) = run(&dir.path().join(name), Some(&p));
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn leftovers_of_an_unfinished_enrolment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("n");
    std::fs::create_dir_all(state.join("data/etcd")).expect("mkdir");
    let owner = SigningKey::generate().expect("key");
    let p = write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::Permissive),
    );
    let (code, err) = run(&state, Some(&p));
    assert_eq!(code, 1);
    assert!(err.contains("unfinished enrolment"), "{err}");
}

#[test]
fn decommissioned_node_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("n");
    let esp = state.join("esp/metropolis");
    std::fs::create_dir_all(&esp).expect("mkdir");
    // What decommissioning leaves behind: no NUK, no join key.
    let sealed = SealedConfiguration {
        node_unlock_key: vec![],
        join_key: vec![],
        cluster_ca: ca(),
        storage_security: 3,
    };
    std::fs::write(esp.join("sealed_configuration.pb"), sealed.encode_to_vec()).expect("write");
    let owner = SigningKey::generate().expect("key");
    let p = write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::Permissive),
    );
    let (code, err) = run(&state, Some(&p));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("decommissioned"), "{err}");
    assert!(err.contains("Wipe"), "{err}");
}

#[test]
fn unusable_update_ca_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SigningKey::generate().expect("key");
    let params = write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::Permissive),
    );
    let not_pem = dir.path().join("mirror-ca.pem");
    std::fs::write(&not_pem, b"not a certificate").expect("write");
    let block = LoopbackBlock::allocate();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let state = dir.path().join("n");
    let (code, err) = runtime.block_on(async {
        let mut config = node::config(0, &state, block.addr(1), Some(&params));
        config.extra_args = vec!["--update-ca".into(), not_pem.display().to_string()];
        let n = node::Node::new(config);
        n.start().expect("start node");
        let exit = n.expect_exit(Duration::from_secs(30)).await;
        (exit.code().unwrap_or(-1), n.stderr_text())
    });
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--update-ca"), "{err}");
    assert!(err.contains("holds no CERTIFICATE"), "{err}");
}
