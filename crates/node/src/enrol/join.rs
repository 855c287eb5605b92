//! Join: every boot of an enrolled node.
//!
//! The node reads its sealed configuration (NUK, join key, cluster CA, storage security),
//! calls JoinNode with an ephemeral certificate of its join key against the curators of its
//! cluster directory, retrying with unbounded exponential backoff while the cluster is
//! unreachable, unlocks its data directory with NUK ⊕ CUK and loads its credentials.
//!
//! Deviation: upstream does not call JoinNode at all for INSECURE storage (nothing to
//! unlock). We call it anyway, because it is how a node learns that it is still a member: a
//! deleted node must not come back up and serve as if nothing happened. The returned CUK
//! must then be empty.
//!
//! NotFound (no node has this join key: deleted) and FailedPrecondition (the node is not UP,
//! e.g. decommissioned) end the process with exit code 3, once confirmed independently of the
//! curator that answered (`crate::roleserve::confirm`; unconfirmed, the node logs a security
//! warning and keeps trying to join); PermissionDenied (e.g. a TPM mode the node cannot
//! satisfy) and anything unexpected with exit code 1. The data is kept either way.
//!
//! The curators the node joins through must pass its leader checks
//! (`crate::roleserve::trust`) with the cluster CRL it fetches from every curator of its
//! directory; the CRL persisted in the data directory is added once that is unlocked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use identity::SigningKey;
use proto::api::NodeParameters;
use proto::api::node_parameters::Cluster;
use proto::common::ClusterDirectory;
use proto::common::cluster_directory::{Node, node::Address};
use proto::curator_api::JoinNodeRequest;
use proto::curator_api::curator_client::CuratorClient;
use proto::private::SealedConfiguration;
use rpc::retry::{Backoff, RetryPolicy, is_transient};
use rpc::{ClientCredentials, ClusterCrl, LeaderChannel, LeaderOptions};
use tonic::Code;

use super::{announce_node_id, fatal, wait_reachable};
use crate::exit::Exit;
use crate::params;
use crate::roleserve::confirm::{Confirmer, Order};
use crate::roleserve::{Membership, Roleserve, gone_message};
use crate::storage::{DataDir, contents, keys};

/// JoinNode is retried forever: quick at first (a cluster restarting), then every 10 s, with
/// jitter (every node of a restarting cluster joins at once).
const JOIN_POLICY: RetryPolicy = RetryPolicy::forever(
    Backoff::new(Duration::from_millis(500), Duration::from_secs(10)).with_jitter(),
);

/// Pause before joining again after a refusal that could not be confirmed.
const UNCONFIRMED_PAUSE: Duration = Duration::from_secs(5);

/// Joins with the sealed configuration and publishes the membership.
pub async fn run(
    rs: &Roleserve,
    sealed: SealedConfiguration,
    params: &NodeParameters,
) -> Result<(), Exit> {
    let env = &rs.env;
    if sealed.join_key.is_empty() {
        // A crash may have cut the decommissioning wipe after the keys were cleared.
        crate::decommission::finish_wipe(env).map_err(|e| {
            Exit::fatal(format!(
                "this node was decommissioned, but deleting its data failed: {e}"
            ))
        })?;
        return Err(Exit::gone(gone_message(
            env,
            "it was decommissioned: its sealed configuration holds no join key",
        )));
    }
    let join_key = SigningKey::from_keypair_bytes(&sealed.join_key)
        .map_err(|e| Exit::fatal(format!("sealed configuration: bad join key: {e}")))?;
    identity::verify::check_ca(&sealed.cluster_ca)
        .map_err(|e| Exit::fatal(format!("sealed configuration: bad cluster CA: {e}")))?;
    let storage =
        keys::security_from_i32(sealed.storage_security).map_err(fatal("sealed configuration"))?;
    let stored = env
        .layout
        .esp
        .cluster_directory()
        .map_err(fatal("cannot read the cluster directory"))?;
    let directory = match stored {
        Some(d) => d,
        None => enrolment_directory(rs, params)?,
    };
    let seeds = params::curator_endpoints(&directory);
    if seeds.is_empty() {
        return Err(Exit::fatal(format!(
            "the cluster directory {} lists no curator address; the node cannot find its \
             cluster",
            env.layout
                .esp
                .path(crate::storage::esp::CLUSTER_DIRECTORY)
                .display()
        )));
    }
    tracing::info!(
        "Joining the cluster (join public key {}, storage {}); curators: {}",
        hex::encode(join_key.public_key().as_bytes()),
        storage.as_str_name(),
        seeds.join(", ")
    );

    let crl = ClusterCrl::new(sealed.cluster_ca.clone());
    let cuk = join_node(rs, &seeds, &crl, &join_key).await?;
    let key = keys::data_key(storage, &sealed.node_unlock_key, &cuk)
        .map_err(fatal("cannot unlock the data directory"))?;
    let data =
        DataDir::open(&env.layout.data, key).map_err(fatal("cannot unlock the data directory"))?;
    let creds = contents::load_credentials(&data).map_err(fatal("cannot load node credentials"))?;
    if creds.ca() != sealed.cluster_ca.as_slice() {
        return Err(Exit::fatal(
            "the node credentials belong to a different cluster CA than the sealed configuration",
        ));
    }
    announce_node_id(&creds.node_id());
    let membership = Membership::new(rs, creds, data, join_key, seeds, crl)
        .map_err(|e| Exit::fatal(format!("cannot set up the curator connection: {e}")))?;
    rs.set_membership(membership);
    tracing::info!("Joined the cluster.");
    Ok(())
}

/// The cluster directory enrolment would have written, for a node whose enrolment was cut
/// after sealing its configuration but before the directory was on disk: register, the
/// directory of the parameters (still on the ESP); bootstrap, the node itself. It is written
/// at once: it is also the list of the nodes that may lead ([`crate::roleserve::trust`]).
fn enrolment_directory(rs: &Roleserve, params: &NodeParameters) -> Result<ClusterDirectory, Exit> {
    let env = &rs.env;
    let missing = env.layout.esp.path(crate::storage::esp::CLUSTER_DIRECTORY);
    tracing::warn!(
        "the cluster directory {} is missing (enrolment was cut before writing it); restoring \
         it from the node parameters",
        missing.display()
    );
    match &params.cluster {
        Some(Cluster::ClusterRegister(r)) => {
            let directory = r.cluster_directory.clone().unwrap_or_default();
            env.layout
                .esp
                .write_cluster_directory(&directory)
                .map_err(fatal("cannot write the cluster directory"))?;
            Ok(directory)
        }
        Some(Cluster::ClusterBootstrap(_)) => {
            // The bootstrap node is the cluster's first consensus member; its etcd peer key
            // is its node key, and the directory must name it for its own curator to pass
            // the leader check.
            let key_path = crate::roleserve::controlplane::peer_key_path(env);
            let id = SigningKey::load(&key_path)
                .map(|k| k.public_key().node_id())
                .map_err(|e| {
                    Exit::fatal(format!(
                        "the cluster directory {} is missing and this bootstrap node's etcd \
                         peer key cannot be read to restore it: {e}",
                        missing.display()
                    ))
                })?;
            let directory = ClusterDirectory {
                nodes: vec![Node {
                    public_key: Vec::new(),
                    addresses: vec![Address {
                        host: env.address.to_string(),
                    }],
                    id,
                }],
            };
            env.layout
                .esp
                .write_cluster_directory(&directory)
                .map_err(fatal("cannot write the cluster directory"))?;
            Ok(directory)
        }
        None => Err(Exit::fatal(format!(
            "the cluster directory {} is missing and the node parameters name no cluster to \
             restore it from",
            missing.display()
        ))),
    }
}

/// This node's own curator, for a node that ran an etcd member before (its node ID is its
/// etcd peer key's): its curator may be the leader, and a leader that never reported an
/// address (a first boot cut before the node's status push, e.g. bootstrap cut after sealing)
/// is otherwise unreachable to the leader channel, which would wait for an address forever.
fn own_curator(rs: &Roleserve) -> HashMap<String, String> {
    let env = &rs.env;
    if !crate::roleserve::controlplane::local_state_present(env) {
        return HashMap::new();
    }
    match SigningKey::load(&crate::roleserve::controlplane::peer_key_path(env)) {
        Ok(key) => HashMap::from([(key.public_key().node_id(), env.curator_endpoint())]),
        Err(e) => {
            // Only the shortcut to its own curator is lost; other curators still answer.
            tracing::warn!("cannot read the etcd peer key to reach the local curator: {e}");
            HashMap::new()
        }
    }
}

/// JoinNode until the cluster answers; returns the CUK.
async fn join_node(
    rs: &Roleserve,
    seeds: &[String],
    crl: &ClusterCrl,
    join_key: &SigningKey,
) -> Result<Vec<u8>, Exit> {
    let ca = crl.ca().to_vec();
    let options = LeaderOptions {
        local_overrides: own_curator(rs),
        crl: Some(crl.clone()),
        leader_check: Some(rs.leader_check()),
        ..LeaderOptions::default()
    };
    let leader = LeaderChannel::new(
        seeds.to_vec(),
        ClientCredentials::Ephemeral(join_key.clone()),
        ca.clone(),
        options,
    )
    .map_err(|e| Exit::fatal(format!("cannot set up the curator connection: {e}")))?;
    wait_reachable(seeds, &ca).await?;
    let failures = AtomicU32::new(0);
    loop {
        let result = leader
            .call(&JOIN_POLICY, |ch| {
                let failures = &failures;
                async move {
                    let result = CuratorClient::new(ch)
                        .join_node(JoinNodeRequest {
                            using_sealed_configuration: false,
                        })
                        .await;
                    // Every fifth failure is worth a line in the log; the loop never gives up.
                    if let Err(s) = &result
                        && is_transient(s.code())
                        && failures.fetch_add(1, Ordering::Relaxed).is_multiple_of(5)
                    {
                        tracing::warn!("JoinNode: {}; retrying", s.message());
                    }
                    result
                }
            })
            .await;
        let s = match result {
            Ok(r) => return Ok(r.into_inner().cluster_unlock_key),
            Err(s) => s,
        };
        let (order, gone) = match s.code() {
            Code::NotFound => (
                Order::Deleted,
                format!("deleted: JoinNode says {}", s.message()),
            ),
            Code::FailedPrecondition => (
                Order::Decommissioned,
                format!(
                    "not UP any more (decommissioned?): JoinNode says {}",
                    s.message()
                ),
            ),
            c => {
                return Err(Exit::fatal(format!(
                    "the cluster refused this node's join: {c:?}: {}",
                    s.message()
                )));
            }
        };
        let by = leader
            .current_leader()
            .map(|l| l.node_id)
            .unwrap_or_else(|| "(unknown)".to_string());
        let confirmer = Confirmer::joining(rs, join_key.clone(), crl.clone(), leader.endpoints());
        if confirmer.confirm(&order, &by).await.is_ok() {
            return Err(Exit::gone(gone_message(&rs.env, &gone)));
        }
        tokio::time::sleep(UNCONFIRMED_PAUSE).await;
    }
}
