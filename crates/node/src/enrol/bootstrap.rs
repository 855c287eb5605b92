//! Bootstrap: the first node of a new cluster.
//!
//! [`plan`] checks the parameters and prepares keys: the cluster configuration (upstream's
//! defaults if none is given), the node's TPM usage (there is no TPM, so a configuration with
//! TPM_MODE_REQUIRED is refused, as upstream refuses a TPM-less node), the recommended storage
//! security, NUK and CUK, the node and join keys. The control plane worker then starts etcd,
//! adds the node as its first member and writes the initial cluster state. [`run`] waits for
//! the resulting credentials and persists everything: credentials into the (encrypted) data
//! directory, the sealed configuration including the cluster CA, and the cluster directory
//! naming this node.
//!
//! Upstream seals the configuration before the cluster exists and again with the CA; we seal
//! once, at the end, so that a crash before it leaves no sealed configuration and the next
//! start reports the leftover data instead of trying to join a cluster that never existed.

use identity::SigningKey;
use proto::api::node_parameters::ClusterBootstrap;
use proto::common::ClusterDirectory;
use proto::common::cluster_directory::{Node, node::Address};
use proto::private::SealedConfiguration;

use super::{announce_node_id, fatal};
use crate::exit::Exit;
use crate::params;
use crate::roleserve::{BootstrapPlan, Membership, Roleserve};
use crate::storage::{DataDir, UnlockKeys, contents};

/// Checks the parameters and prepares the bootstrap.
pub fn plan(rs: &Roleserve, b: &ClusterBootstrap) -> Result<BootstrapPlan, Exit> {
    let p =
        params::bootstrap(b).map_err(|e| Exit::fatal(format!("invalid NodeParameters: {e}")))?;
    let tpm_usage = curator::state::cluster::tpm_usage(&p.configuration, false).map_err(|e| {
        Exit::fatal(format!(
            "cannot bootstrap: {e}. This node has no TPM (none is emulated); bootstrap with \
             tpm_mode TPM_MODE_DISABLED or TPM_MODE_BEST_EFFORT in \
             initial_cluster_configuration"
        ))
    })?;
    let storage = curator::state::cluster::recommended_storage(&p.configuration);
    let unlock_keys = UnlockKeys::generate(storage).map_err(fatal("cannot set up storage"))?;
    let generate =
        || SigningKey::generate().map_err(|e| Exit::fatal(format!("key generation: {e}")));
    let node_key = generate()?;
    let join_key = generate()?;
    let node_id = node_key.public_key().node_id();
    announce_node_id(&node_id);
    tracing::info!(
        "Bootstrapping a new cluster as {node_id}. Node public key: {}, join public key: {}, \
         storage: {}",
        hex::encode(node_key.public_key().as_bytes()),
        hex::encode(join_key.public_key().as_bytes()),
        storage.as_str_name()
    );
    if !rs.env.etcd_binary_found() {
        return Err(Exit::fatal(format!(
            "cannot bootstrap: the etcd binary {} was not found (pass --etcd PATH)",
            rs.env.etcd_binary.display()
        )));
    }
    Ok(BootstrapPlan {
        node_key,
        join_key,
        owner_key: p.owner_key,
        configuration: p.configuration,
        tpm_usage,
        storage,
        unlock_keys,
    })
}

/// Waits for the control plane to bootstrap the cluster, then persists the node's state and
/// publishes its membership.
pub async fn run(rs: &Roleserve) -> Result<(), Exit> {
    let plan = rs
        .bootstrap()
        .cloned()
        .ok_or_else(|| Exit::fatal("bootstrap plan missing"))?;
    let creds = rs.bootstrapped().await;
    let env = &rs.env;
    let key = plan
        .unlock_keys
        .data_key(plan.storage)
        .map_err(fatal("cannot set up storage"))?;
    let data = DataDir::create(&env.layout.data, key).map_err(fatal("cannot set up storage"))?;
    contents::save_credentials(&data, &creds).map_err(fatal("cannot save node credentials"))?;
    let sealed = SealedConfiguration {
        node_unlock_key: plan.unlock_keys.nuk.to_vec(),
        join_key: plan.join_key.to_keypair_bytes().to_vec(),
        cluster_ca: creds.ca().to_vec(),
        storage_security: plan.storage as i32,
    };
    env.layout
        .esp
        .write_sealed_configuration(&sealed)
        .map_err(fatal("cannot write the sealed configuration"))?;
    crate::failpoint::crash_point("node::enrol::after_seal");
    let directory = ClusterDirectory {
        nodes: vec![Node {
            public_key: Vec::new(),
            addresses: vec![Address {
                host: env.address.to_string(),
            }],
            id: creds.node_id(),
        }],
    };
    env.layout
        .esp
        .write_cluster_directory(&directory)
        .map_err(fatal("cannot write the cluster directory"))?;
    let crl = rpc::ClusterCrl::new(creds.ca().to_vec());
    let membership = Membership::new(
        rs,
        creds,
        data,
        plan.join_key.clone(),
        vec![env.curator_endpoint()],
        crl,
    )
    .map_err(|e| Exit::fatal(format!("cannot set up the curator connection: {e}")))?;
    rs.set_membership(membership);
    tracing::info!("Cluster enrolment done.");
    Ok(())
}
