//! Register: a new node joining an existing cluster with `cluster_register`
//! parameters.
//!
//! The node checks the parameters, generates its node and join keys, makes sure the
//! directory's addresses are nodes of the expected cluster, and calls RegisterNode with an
//! ephemeral certificate of its node key (the node is then NEW). It then calls CommitNode
//! every second; the cluster answers PermissionDenied until a manager approves the node
//! (`metroctl approve`), comparing the node public key the node logs. On success it saves its
//! credentials into the freshly set up data directory, seals its configuration and writes the
//! cluster directory.
//!
//! Nothing is written to disk before CommitNode succeeds: a node killed while it waits for
//! approval simply registers again (with new keys) when restarted.

use std::sync::Arc;
use std::time::Duration;

use identity::{NodeCredentials, SigningKey};
use proto::api::node_parameters::ClusterRegister;
use proto::common::{NodeLabels, NodeStorageSecurity};
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::{CommitNodeRequest, CommitNodeResponse, RegisterNodeRequest};
use proto::private::SealedConfiguration;
use rpc::retry::{Backoff, RetryPolicy, is_transient};
use rpc::{ClientCredentials, ClusterCrl, LeaderChannel, LeaderOptions};
use tokio::time::Instant;
use tonic::Code;

use super::{announce_node_id, fatal, wait_reachable};
use crate::exit::Exit;
use crate::params;
use crate::roleserve::trust::ConsensusMembers;
use crate::roleserve::{Membership, Roleserve};
use crate::storage::{DataDir, UnlockKeys, contents};

/// RegisterNode is retried forever while the cluster is unreachable, with jitter (a batch of
/// new nodes registers at once).
const REGISTER_POLICY: RetryPolicy = RetryPolicy::forever(
    Backoff::new(Duration::from_secs(1), Duration::from_secs(10)).with_jitter(),
);

/// Pause between CommitNode attempts while waiting for approval (upstream: 1 s).
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the "waiting for approval" hint is repeated.
const APPROVAL_HINT_INTERVAL: Duration = Duration::from_secs(10);

/// Registers the node and publishes its membership.
pub async fn run(rs: &Roleserve, r: &ClusterRegister) -> Result<(), Exit> {
    let p = params::register(r).map_err(|e| Exit::fatal(format!("invalid NodeParameters: {e}")))?;
    let seeds = params::curator_endpoints(&p.directory);
    let generate =
        || SigningKey::generate().map_err(|e| Exit::fatal(format!("key generation: {e}")));
    let node_key = generate()?;
    let join_key = generate()?;
    let id = node_key.public_key().node_id();
    announce_node_id(&id);
    let ca_key = identity::verify::cert_public_key(&p.ca)
        .map(|k| hex::encode(k.as_bytes()))
        .unwrap_or_default();
    tracing::info!(
        "Registering into the cluster as {id}. Node public key: {} (compare it before \
         approving); cluster CA public key: {ca_key}; curators: {}",
        hex::encode(node_key.public_key().as_bytes()),
        seeds.join(", ")
    );
    wait_reachable(&seeds, &p.ca).await?;
    // The leader must pass the node's checks (crate::roleserve::trust) from the start: not
    // revoked, and listed in the directory the operator handed over.
    let crl = ClusterCrl::new(p.ca.clone());
    let options = LeaderOptions {
        crl: Some(crl.clone()),
        leader_check: Some(Arc::new(ConsensusMembers::fixed(p.directory.clone()))),
        ..LeaderOptions::default()
    };
    let leader = LeaderChannel::new(
        seeds.clone(),
        ClientCredentials::Ephemeral(node_key.clone()),
        p.ca.clone(),
        options,
    )
    .map_err(|e| Exit::fatal(format!("cannot set up the curator connection: {e}")))?;

    let storage = register_node(&leader, &p.ticket, &join_key, r.labels.clone()).await?;
    let unlock_keys = UnlockKeys::generate(storage).map_err(fatal("cannot set up storage"))?;
    let commit = commit_node(&leader, &unlock_keys.cuk, storage, &node_key).await?;
    if commit.ca_certificate != p.ca {
        return Err(Exit::fatal(
            "the cluster answered CommitNode with a different CA certificate than the one in \
             the NodeParameters (foreign cluster)",
        ));
    }
    let creds = NodeCredentials::new(node_key, commit.node_certificate, commit.ca_certificate)
        .map_err(|e| Exit::fatal(format!("the cluster issued an unusable certificate: {e}")))?;

    let env = &rs.env;
    let key = unlock_keys
        .data_key(storage)
        .map_err(fatal("cannot set up storage"))?;
    let data = DataDir::create(&env.layout.data, key).map_err(fatal("cannot set up storage"))?;
    contents::save_credentials(&data, &creds).map_err(fatal("cannot save node credentials"))?;
    let sealed = SealedConfiguration {
        node_unlock_key: unlock_keys.nuk.to_vec(),
        join_key: join_key.to_keypair_bytes().to_vec(),
        cluster_ca: p.ca.clone(),
        storage_security: storage as i32,
    };
    env.layout
        .esp
        .write_sealed_configuration(&sealed)
        .map_err(fatal("cannot write the sealed configuration"))?;
    crate::failpoint::crash_point("node::enrol::after_seal");
    env.layout
        .esp
        .write_cluster_directory(&p.directory)
        .map_err(fatal("cannot write the cluster directory"))?;
    let membership = Membership::new(rs, creds, data, join_key, seeds, crl)
        .map_err(|e| Exit::fatal(format!("cannot set up the curator connection: {e}")))?;
    rs.set_membership(membership);
    tracing::info!("Cluster enrolment done.");
    Ok(())
}

/// Logs the labels the cluster will drop when this node registers (it keeps the valid ones
/// and registers the node anyway), so the operator finds out on the node too and can set them
/// afterwards with UpdateNodeLabels.
fn warn_dropped_labels(given: Option<&NodeLabels>) {
    let pairs = given.map(|l| l.pairs.as_slice()).unwrap_or_default();
    let filtered =
        labels::filter_registration(pairs.iter().map(|p| (p.key.as_str(), p.value.as_str())));
    for (key, value, why) in filtered.skipped {
        tracing::warn!(
            "NodeParameters label {key:?}={value:?} will be dropped by the cluster: {why}"
        );
    }
}

/// RegisterNode, retried while the cluster is unreachable; returns the storage security to
/// set up.
async fn register_node(
    leader: &LeaderChannel,
    ticket: &[u8],
    join_key: &SigningKey,
    labels: Option<NodeLabels>,
) -> Result<NodeStorageSecurity, Exit> {
    warn_dropped_labels(labels.as_ref());
    let request = RegisterNodeRequest {
        register_ticket: ticket.to_vec(),
        join_key: join_key.public_key().as_bytes().to_vec(),
        have_local_tpm: false,
        // The labels the node registers with (a field of later upstream Monogon, not in the
        // 8456ddf0 baseline); the cluster validates them.
        labels,
    };
    let result = leader
        .call(&REGISTER_POLICY, |ch| {
            let request = request.clone();
            async move {
                let result = CuratorClient::new(ch).register_node(request).await;
                if let Err(s) = &result
                    && is_transient(s.code())
                {
                    tracing::warn!("RegisterNode: {}; retrying", s.message());
                }
                result
            }
        })
        .await;
    let response = match result {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let hint = match s.code() {
                Code::PermissionDenied => {
                    " (a wrong register ticket, or the cluster requires a TPM, which this \
                         node does not have)"
                }
                Code::FailedPrecondition => " (this node key is already registered)",
                _ => "",
            };
            return Err(Exit::fatal(format!(
                "the cluster refused to register this node: {:?}: {}{hint}",
                s.code(),
                s.message()
            )));
        }
    };
    tracing::info!(
        "registered (state NEW); TPM usage {}, recommended storage {}",
        response.tpm_usage().as_str_name(),
        response.recommended_node_storage_security().as_str_name()
    );
    // A retried RegisterNode for a node that already exists in NEW gets an empty answer
    // (upstream quirk), i.e. no recommendation: fall back to the strongest setting, which every
    // policy but NEEDS_INSECURE accepts.
    Ok(match response.recommended_node_storage_security() {
        NodeStorageSecurity::Invalid => NodeStorageSecurity::AuthenticatedEncrypted,
        s => s,
    })
}

/// CommitNode every second until a manager approved the node.
async fn commit_node(
    leader: &LeaderChannel,
    cuk: &[u8],
    storage: NodeStorageSecurity,
    node_key: &SigningKey,
) -> Result<CommitNodeResponse, Exit> {
    let request = CommitNodeRequest {
        cluster_unlock_key: cuk.to_vec(),
        storage_security: storage as i32,
    };
    let id = node_key.public_key().node_id();
    let mut last_hint: Option<Instant> = None;
    loop {
        // One attempt per round: this loop polls anyway, transient failures included.
        let result = leader
            .call(&RetryPolicy::once(), |ch| {
                let request = request.clone();
                async move { CuratorClient::new(ch).commit_node(request).await }
            })
            .await;
        match result {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == Code::PermissionDenied => {
                if last_hint.is_none_or(|t| t.elapsed() >= APPROVAL_HINT_INTERVAL) {
                    tracing::info!(
                        "waiting for approval: metroctl approve {id} (node public key {})",
                        hex::encode(node_key.public_key().as_bytes())
                    );
                    last_hint = Some(Instant::now());
                }
            }
            Err(s) if is_transient(s.code()) => {
                tracing::warn!("CommitNode: {}; retrying", s.message());
            }
            Err(s) => {
                return Err(Exit::fatal(format!(
                    "the cluster refused to commit this node: {:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
        }
        tokio::time::sleep(COMMIT_INTERVAL).await;
    }
}
