//! The `controlplane` worker: runs the node's etcd member (`consensus`) and its curator
//! (`curator`) while the node should have a control plane, i.e.
//!
//! 1. while it bootstraps the cluster (first boot of the first node; this always wins), or
//! 2. while its roles (persisted or watched) contain ConsensusMember, or
//! 3. before its roles are known (data still locked), if it has local etcd state on disk.
//!
//! Case 3 is ours. Upstream cannot restart an encrypted consensus member when no other
//! curator is up (a single-node cluster, or a cold start of all nodes): the data partition
//! needs the CUK from JoinNode, JoinNode needs a curator, and the curator needs the node's
//! data. Here the etcd member's files live outside the encrypted data (see the README), so a
//! node that was a member starts its etcd from disk first, and its curator with credentials
//! read from its own etcd (node key from the peer PKI, certificates from the cluster PKI);
//! JoinNode then succeeds against it like against any other curator.
//!
//! When the node stops, both are cancelled together, but etcd stops only after the curator's
//! election has ended (bounded by [`consensus::HOLD_GRACE`], see [`consensus::Status::hold`]):
//! a leader's lease is then revoked, and its successor leads at once instead of waiting for the
//! lease to expire.
//!
//! The worker restarts (tearing both down) only when "has a control plane" flips; changes of
//! the peer list in the role do not matter once the member runs. When the role goes away, the
//! local etcd state is deleted: the member was removed from the cluster, and a later re-add
//! needs an empty data directory to join as a new learner.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use consensus::{ExistingNode, JoinCluster};
use curator::bootstrap::BootstrapData;
use identity::{NodeCredentials, SigningKey};
use proto::common::node_roles::ConsensusMember;
use supervisor::{Context, Runnable, RunnableError, RunnableResult};

use super::{BootstrapPlan, NodeEnv, Roleserve};

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move { run(rs, ctx).await }
    })
}

/// Resets the "control plane runs" flag when a run ends, however it ends.
struct RunningFlag(Arc<Roleserve>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.set_control_plane(false);
        self.0.set_consensus(None);
    }
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let _flag = RunningFlag(rs.clone());
    rs.set_control_plane(false);
    if wanted(&rs) {
        serve(&rs, &ctx).await
    } else {
        idle(&rs, &ctx).await
    }
}

/// Whether the node should run a control plane now (see the module documentation).
fn wanted(rs: &Roleserve) -> bool {
    if rs.bootstrap().is_some() {
        return true;
    }
    match rs.roles_now() {
        Some(roles) => roles.consensus_member.is_some(),
        None => local_state_present(&rs.env),
    }
}

/// Where consensus keeps the member's key: the node key, as upstream (`peer_pki/cert-key.pem`
/// below the member's directory). Asked from consensus's own layout rather than repeated here.
pub(crate) fn peer_key_path(env: &NodeEnv) -> PathBuf {
    consensus::Config::new(
        env.layout.etcd.clone(),
        env.layout.consensus_ephemeral(),
        SigningKey::from_seed(&[0; 32]),
        IpAddr::V4(env.address),
    )
    .peer_pki()
    .key()
}

/// Whether this node ran an etcd member before (its peer key is on disk).
pub fn local_state_present(env: &NodeEnv) -> bool {
    peer_key_path(env).exists()
}

/// Waits until [`wanted`] differs from `current`; returns why.
async fn wait_flip(rs: &Roleserve, current: bool) -> String {
    let mut roles = rs.watch_roles();
    let mut membership = rs.watch_membership();
    loop {
        if wanted(rs) != current {
            return if current {
                "the node lost the ConsensusMember role; stopping the control plane".to_string()
            } else {
                "the node has the ConsensusMember role; starting the control plane".to_string()
            };
        }
        tokio::select! {
            r = roles.changed() => if r.is_err() { std::future::pending::<()>().await },
            m = membership.changed() => if m.is_err() { std::future::pending::<()>().await },
        }
    }
}

async fn idle(rs: &Roleserve, ctx: &Context) -> RunnableResult {
    let env = &rs.env;
    if rs.roles_now().is_some() && local_state_present(env) {
        std::fs::remove_dir_all(&env.layout.etcd)
            .map_err(|e| format!("deleting {}: {e}", env.layout.etcd.display()))?;
        tracing::info!(
            "not a consensus member (any more): deleted the local etcd state in {}",
            env.layout.etcd.display()
        );
    }
    ctx.signal_healthy();
    tokio::select! {
        why = wait_flip(rs, false) => Err(why.into()),
        _ = ctx.cancelled() => Ok(()),
    }
}

/// Runs the control plane until the role flips (which may happen at any point, e.g. while
/// a removed member's etcd refuses to start) or the runnable is cancelled.
async fn serve(rs: &Arc<Roleserve>, ctx: &Context) -> RunnableResult {
    tokio::select! {
        r = run_control_plane(rs, ctx) => r,
        why = wait_flip(rs, true) => Err(why.into()),
        _ = ctx.cancelled() => Ok(()),
    }
}

async fn run_control_plane(rs: &Arc<Roleserve>, ctx: &Context) -> RunnableResult {
    let env = &rs.env;
    let node_key = node_key(rs)?;
    let mut config = consensus::Config::new(
        env.layout.etcd.clone(),
        env.layout.consensus_ephemeral(),
        node_key.clone(),
        IpAddr::V4(env.address),
    );
    config.etcd_binary = env.etcd_binary.clone();
    config.quota_backend_bytes = env.etcd_quota_backend_bytes;
    config.peer_client_san_check = env.etcd_peer_client_san_check;
    if rs.bootstrap().is_none() {
        config.join_cluster = rs
            .roles_now()
            .and_then(|r| r.consensus_member)
            .map(|cm| join_cluster(&cm));
    }
    tracing::info!(
        "starting control plane (etcd member{})",
        if config.join_cluster.is_some() {
            " from the ConsensusMember role"
        } else {
            ""
        }
    );
    let consensus = consensus::Service::new(config);
    ctx.run("consensus", consensus.runnable())?;
    let status = consensus.wait_running().await;
    rs.set_consensus(Some(status.clone()));
    let creds = credentials(rs, &status, &node_key).await?;
    let mut curator_config = curator::Config::new(
        creds,
        status,
        SocketAddr::new(IpAddr::V4(env.address), rpc::CURATOR_PORT),
    );
    curator_config.leader_ttl = env.leader_ttl;
    curator_config.revocations = env.revocations.clone();
    curator_config.metrics = Some(rs.metrics().curator.clone());
    ctx.run("curator", curator::Curator::new(curator_config).runnable())?;
    rs.set_control_plane(true);
    tracing::info!("control plane running (etcd member and curator)");
    ctx.signal_healthy();
    // The curator holds a client of this member run: when etcd stops (and consensus restarts
    // it), restart both so the curator gets the new one.
    let mut member = consensus.watch();
    let _ = member.wait_for(Option::is_none).await;
    Err("the etcd member stopped; restarting the control plane".into())
}

/// The node key: from the membership, the bootstrap plan, or (early start) the etcd peer key.
fn node_key(rs: &Roleserve) -> Result<SigningKey, RunnableError> {
    if let Some(m) = rs.membership_now() {
        return Ok(m.credentials.key().clone());
    }
    if let Some(plan) = rs.bootstrap() {
        return Ok(plan.node_key.clone());
    }
    let path = peer_key_path(&rs.env);
    SigningKey::load(&path).map_err(|e| format!("loading the etcd peer key: {e}").into())
}

/// The credentials the curator serves with.
async fn credentials(
    rs: &Roleserve,
    status: &consensus::Status,
    node_key: &SigningKey,
) -> Result<NodeCredentials, RunnableError> {
    if let Some(m) = rs.membership_now() {
        return Ok(m.credentials);
    }
    if let Some(plan) = rs.bootstrap() {
        return bootstrap(rs, plan, status).await;
    }
    // Early start: read our certificates from our own etcd; if they are not there (e.g. the
    // node was deleted and its certificate dropped), wait for enrolment instead.
    tokio::select! {
        m = rs.membership() => Ok(m.credentials),
        c = credentials_from_etcd(status, node_key) => match c {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::warn!("cannot serve the curator before joining: {e}; waiting for enrolment");
                Ok(rs.membership().await.credentials)
            }
        },
    }
}

/// The node's certificates from the cluster PKI in the local etcd.
async fn credentials_from_etcd(
    status: &consensus::Status,
    node_key: &SigningKey,
) -> Result<NodeCredentials, RunnableError> {
    let ns = status.namespaced(&[curator::KEYSPACE])?;
    let ca = Arc::new(pki::Certificate::cluster_ca());
    let ca_der = ca.get(&ns).await?.ok_or("no cluster CA in etcd")?;
    let cert = pki::Certificate::node(&ca, node_key.public_key())
        .get(&ns)
        .await?
        .ok_or("no certificate for this node in etcd")?;
    Ok(NodeCredentials::new(node_key.clone(), cert, ca_der)?)
}

/// The last step of bootstrap: add ourselves as the first member, write the initial cluster
/// state, hand the credentials to enrolment. Idempotent, so a restart of this worker
/// half-way simply does it again.
async fn bootstrap(
    rs: &Roleserve,
    plan: &BootstrapPlan,
    status: &consensus::Status,
) -> Result<NodeCredentials, RunnableError> {
    if let Some(creds) = rs.bootstrapped_now() {
        return Ok(creds);
    }
    let node_key = plan.node_key.public_key();
    let join_cluster = status
        .add_node(&node_key, IpAddr::V4(rs.env.address))
        .await?;
    let ns = status.namespaced(&[curator::KEYSPACE])?;
    let data = BootstrapData {
        node_key,
        join_key: plan.join_key.public_key(),
        cluster_unlock_key: plan.unlock_keys.cuk.to_vec(),
        owner_key: plan.owner_key.as_bytes().to_vec(),
        configuration: plan.configuration.clone(),
        tpm_usage: plan.tpm_usage,
        join_cluster,
    };
    let (ca, cert) = curator::bootstrap::finish(&ns, &data)
        .await
        .map_err(|e| format!("writing the initial cluster state: {e}"))?;
    let creds = NodeCredentials::new(plan.node_key.clone(), cert, ca)?;
    tracing::info!("cluster bootstrapped in etcd");
    rs.set_bootstrapped(creds.clone());
    Ok(creds)
}

/// The consensus join data stored in a ConsensusMember role.
fn join_cluster(cm: &ConsensusMember) -> JoinCluster {
    JoinCluster {
        ca_certificate: cm.ca_certificate.clone(),
        node_certificate: cm.peer_certificate.clone(),
        existing_nodes: cm
            .peers
            .iter()
            .map(|p| ExistingNode {
                name: p.name.clone(),
                url: p.url.clone(),
            })
            .collect(),
        initial_crl: cm.initial_crl.clone(),
    }
}
