//! Helpers for tests that run the real `metropolis-node` binary (through
//! `test_support::node`): parameters files, the cluster CA a node keeps, and owner access to
//! the cluster.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use identity::SigningKey;
use prost::Message;
use proto::api::EscrowFromClient;
use proto::api::NodeParameters;
use proto::api::aaa_client::AaaClient;
use proto::api::escrow_from_client::Parameters;
use proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use proto::common::ClusterConfiguration;
use proto::common::ClusterDirectory;
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use rpc::{ClientCredentials, ServerVerification};
use test_support::eventually;
use test_support::node::{Node, TestNode};
use tonic::transport::Channel;

/// Long enough for etcd + curator start on a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Bootstrap parameters for `owner` with a configuration this node can satisfy (no TPM).
pub fn bootstrap_params(owner: &SigningKey, storage: StorageSecurityPolicy) -> NodeParameters {
    NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: owner.public_key().as_bytes().to_vec(),
            initial_cluster_configuration: Some(ClusterConfiguration {
                tpm_mode: TpmMode::Disabled as i32,
                storage_security_policy: storage as i32,
                ..Default::default()
            }),
            labels: None,
        })),
        network_config: None,
    }
}

/// Writes `params` to `dir/params.pb` and returns the path.
pub fn write_params(dir: &Path, params: &NodeParameters) -> PathBuf {
    let path = dir.join("params.pb");
    std::fs::write(&path, params.encode_to_vec()).expect("write params");
    path
}

/// A channel to `endpoint` verifying it is node `node_id` of the cluster with `ca`.
pub fn channel(endpoint: &str, creds: ClientCredentials, ca: &[u8], node_id: &str) -> Channel {
    let verification = ServerVerification::Cluster {
        ca: ca.to_vec(),
        node_id: Some(node_id.to_string()),
        crl: None,
    };
    let config = rpc::client_tls::client_config(&creds, verification).expect("client config");
    rpc::client_tls::connect_lazy(endpoint, config).expect("endpoint")
}

/// The cluster CA from a node's sealed configuration (plain on the ESP, as upstream without
/// TPM).
pub fn cluster_ca(state_dir: &Path) -> Vec<u8> {
    let bytes = std::fs::read(state_dir.join("esp/metropolis/sealed_configuration.pb"))
        .expect("sealed configuration");
    proto::private::SealedConfiguration::decode(bytes.as_slice())
        .expect("decode")
        .cluster_ca
}

/// Takes ownership (AAA.Escrow with a self-signed owner certificate), retrying while the
/// curator is still starting; returns the owner certificate.
pub async fn escrow(address: &str, owner: &SigningKey, ca: &[u8], node_id: &str) -> Vec<u8> {
    eventually(Duration::from_secs(60), async || {
        let ch = channel(
            &format!("{address}:7835"),
            ClientCredentials::Ephemeral(owner.clone()),
            ca,
            node_id,
        );
        let request = EscrowFromClient {
            parameters: Some(Parameters {
                requested_identity_name: "owner".to_string(),
                public_key: owner.public_key().as_bytes().to_vec(),
            }),
            proofs: None,
        };
        let mut stream = AaaClient::new(ch)
            .escrow(tokio_stream::iter([request]))
            .await?
            .into_inner();
        while let Some(msg) = stream.message().await? {
            if !msg.emitted_certificate.is_empty() {
                return Ok(msg.emitted_certificate);
            }
        }
        Err(tonic::Status::unknown("escrow ended without a certificate"))
    })
    .await
    .expect("taking ownership (AAA.Escrow)")
}

/// A channel authenticated with the owner certificate.
pub fn owner_channel(
    address: &str,
    port: u16,
    owner: &SigningKey,
    cert: &[u8],
    ca: &[u8],
    id: &str,
) -> Channel {
    channel(
        &format!("{address}:{port}"),
        ClientCredentials::Authenticated {
            certificate: cert.to_vec(),
            key: owner.clone(),
        },
        ca,
        id,
    )
}

/// Parameters that register a node with the cluster of `directory`.
pub fn register_params(
    directory: ClusterDirectory,
    ticket: Vec<u8>,
    ca: Vec<u8>,
) -> NodeParameters {
    NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: Some(directory),
            register_ticket: ticket,
            ca_certificate: ca,
            labels: None,
        })),
        network_config: None,
    }
}

/// The public key a registering node logs while it waits for approval.
pub async fn logged_public_key(node: &Node) -> Vec<u8> {
    let line = node
        .expect_line("waiting for approval", START_TIMEOUT)
        .await;
    let hex_key = line
        .rsplit("node public key ")
        .next()
        .map(|s| s.trim_end_matches(')').trim())
        .expect("public key in line");
    hex::decode(hex_key).expect("hex public key")
}
