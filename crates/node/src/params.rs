//! NodeParameters: installing them on the ESP and checking what they say.
//!
//! As upstream, parameters are required on every boot, even when the node re-joins from its
//! sealed configuration and does not use them. Their contents are checked only when they are
//! used (bootstrap or register), with messages saying what is wrong.

use std::net::IpAddr;
use std::path::Path;

use identity::PublicKey;
use prost::Message;
use proto::api::NodeParameters;
use proto::api::node_parameters::{ClusterBootstrap, ClusterRegister};
use proto::common::{ClusterConfiguration, ClusterDirectory};
use zeroize::Zeroizing;

use crate::storage::Esp;

/// Copies the parameters file (if given) to the ESP, then reads the ESP's parameters.
pub fn install(esp: &Esp, from: Option<&Path>) -> Result<NodeParameters, String> {
    if let Some(from) = from {
        let bytes = std::fs::read(from)
            .map_err(|e| format!("cannot read parameters file {}: {e}", from.display()))?;
        NodeParameters::decode(bytes.as_slice()).map_err(|e| {
            format!(
                "parameters file {} is not a valid NodeParameters protobuf: {e}",
                from.display()
            )
        })?;
        // Booting with the parameters already installed writes nothing: a node whose disk is
        // full must still boot (and free space by compacting) rather than die on a rewrite.
        let installed = std::fs::read(esp.path(crate::storage::esp::PARAMETERS)).ok();
        if installed.as_deref() != Some(bytes.as_slice()) {
            esp.write_parameters_raw(&bytes)
                .map_err(|e| format!("cannot install parameters: {e}"))?;
        }
    }
    match esp.parameters() {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!(
            "no node parameters: {} does not exist. Parameters are required on every boot \
             (as upstream); pass --parameters FILE",
            esp.path(crate::storage::esp::PARAMETERS).display()
        )),
        Err(e) => Err(format!("invalid node parameters: {e}")),
    }
}

/// Checked bootstrap parameters.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The owner's public key.
    pub owner_key: PublicKey,
    /// The initial cluster configuration (upstream's defaults if none was given).
    pub configuration: ClusterConfiguration,
}

/// Checks `cluster_bootstrap`.
pub fn bootstrap(b: &ClusterBootstrap) -> Result<Bootstrap, String> {
    let owner_key = PublicKey::from_slice(&b.owner_public_key).map_err(|_| {
        format!(
            "cluster_bootstrap.owner_public_key must be a 32-byte Ed25519 public key, got {} bytes",
            b.owner_public_key.len()
        )
    })?;
    let configuration = match &b.initial_cluster_configuration {
        Some(c) => {
            curator::state::cluster::validate_configuration(c)
                .map_err(|e| format!("cluster_bootstrap.initial_cluster_configuration: {e}"))?;
            c.clone()
        }
        None => curator::state::cluster::default_configuration(),
    };
    Ok(Bootstrap {
        owner_key,
        configuration,
    })
}

/// Checked register parameters.
#[derive(Debug, Clone)]
pub struct Register {
    /// The cluster CA (DER), a sane CA certificate.
    pub ca: Vec<u8>,
    /// The register ticket, wiped when dropped.
    pub ticket: Zeroizing<Vec<u8>>,
    /// The directory with public keys stripped (they are untrusted and unused).
    pub directory: ClusterDirectory,
}

/// Checks `cluster_register` before registration starts: the CA is a sane CA certificate, the
/// ticket is not empty, the directory has at least one node and every node at least one address,
/// each a literal IP. Unlike the baseline, nodes need not carry a public key: later upstream
/// Monogon replaced it by the node ID, and nothing uses it.
pub fn register(r: &ClusterRegister) -> Result<Register, String> {
    identity::verify::check_ca(&r.ca_certificate)
        .map_err(|e| format!("cluster_register.ca_certificate: {e}"))?;
    if r.register_ticket.is_empty() {
        return Err("cluster_register.register_ticket is empty".to_string());
    }
    let mut directory = r
        .cluster_directory
        .clone()
        .ok_or("cluster_register.cluster_directory is missing")?;
    if directory.nodes.is_empty() {
        return Err("cluster_register.cluster_directory has no nodes".to_string());
    }
    for (i, node) in directory.nodes.iter_mut().enumerate() {
        if node.addresses.is_empty() {
            return Err(format!(
                "cluster_register.cluster_directory node {i} has no addresses"
            ));
        }
        for a in &node.addresses {
            a.host.parse::<IpAddr>().map_err(|_| {
                format!(
                    "cluster_register.cluster_directory node {i}: address {:?} is not a literal IP address",
                    a.host
                )
            })?;
        }
        node.public_key.clear();
    }
    Ok(Register {
        ca: r.ca_certificate.clone(),
        ticket: Zeroizing::new(r.register_ticket.clone()),
        directory,
    })
}

/// `host:port` of the curator of every directory node (first address of each), as upstream's
/// resolver is seeded.
pub fn curator_endpoints(directory: &ClusterDirectory) -> Vec<String> {
    let mut out = Vec::new();
    for node in &directory.nodes {
        let Some(a) = node.addresses.first() else {
            continue;
        };
        let Ok(ip) = a.host.parse::<IpAddr>() else {
            continue;
        };
        let e = std::net::SocketAddr::new(ip, rpc::CURATOR_PORT).to_string();
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::cluster_directory::{Node, node::Address};

    fn dir(hosts: &[&[&str]]) -> ClusterDirectory {
        ClusterDirectory {
            nodes: hosts
                .iter()
                .map(|hs| Node {
                    public_key: vec![1; 32],
                    addresses: hs
                        .iter()
                        .map(|h| Address {
                            host: h.to_string(),
                        })
                        .collect(),
                    id: String::new(),
                })
                .collect(),
        }
    }

    /// Installing the parameters already installed leaves the file alone (same inode): a
    /// rewrite on every boot made a node on a full disk fail to boot at all.
    #[test]
    fn installing_the_same_parameters_again_writes_nothing() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = Esp::new(dir.path().join("esp"));
        std::fs::create_dir_all(dir.path().join("esp")).expect("esp dir");
        let given = dir.path().join("params.pb");
        let params = NodeParameters {
            cluster: Some(proto::api::node_parameters::Cluster::ClusterBootstrap(
                ClusterBootstrap {
                    owner_public_key: vec![7; 32],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        std::fs::write(&given, params.encode_to_vec()).expect("write");
        let installed = esp.path(crate::storage::esp::PARAMETERS);
        install(&esp, Some(&given)).expect("first install");
        let inode = std::fs::metadata(&installed).expect("installed").ino();
        assert_eq!(install(&esp, Some(&given)).expect("again"), params);
        assert_eq!(std::fs::metadata(&installed).expect("still").ino(), inode);

        let changed = NodeParameters::default();
        std::fs::write(&given, changed.encode_to_vec()).expect("write");
        assert_eq!(install(&esp, Some(&given)).expect("changed"), changed);
        assert_ne!(
            std::fs::metadata(&installed).expect("replaced").ino(),
            inode
        );
    }

    #[test]
    fn endpoints_use_first_address_and_bracket_ipv6() {
        let d = dir(&[&["10.0.0.1", "10.0.0.9"], &["fd00::1"], &["10.0.0.1"]]);
        assert_eq!(
            curator_endpoints(&d),
            vec!["10.0.0.1:7835".to_string(), "[fd00::1]:7835".to_string()]
        );
    }
}
