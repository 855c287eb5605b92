//! Enrolment: the node's `root` runnable decides, once per process, how it
//! becomes a member, and then starts the roleserve workers (`root.role`).
//!
//! * A sealed configuration on the ESP: **join** ([`join`]), on every boot after the first.
//! * Otherwise NodeParameters decide: **bootstrap** a new cluster ([`bootstrap`]) or
//!   **register** into an existing one ([`register`]).
//!
//! Enrolment runs exactly once: any error ends the process (upstream: the node reboots), with
//! exit code 3 when the cluster says this node is gone and 1 otherwise. The workers start
//! before enrolment finishes, because bootstrap happens inside the control plane worker and
//! a re-joining consensus member may need its own curator to answer JoinNode; they wait for
//! the membership enrolment publishes.

pub mod bootstrap;
pub mod join;
pub mod register;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proto::api::NodeParameters;
use proto::api::node_parameters::Cluster;
use supervisor::{Context, Runnable};

use crate::exit::Exit;
use crate::roleserve::{self, Roleserve};
use crate::storage;

/// The `root` runnable: enrolment, then the roleserve workers.
pub fn root(rs: Arc<Roleserve>, params: NodeParameters) -> Runnable {
    let started = Arc::new(AtomicBool::new(false));
    supervisor::runnable(move |ctx: Context| {
        let (rs, params, started) = (rs.clone(), params.clone(), started.clone());
        async move {
            // Enrolment must not run twice in one process (a second bootstrap would generate
            // new keys); the supervisor would only restart this runnable after a panic.
            if started.swap(true, Ordering::SeqCst) {
                rs.exit(Exit::fatal(
                    "enrolment failed unexpectedly (the root runnable panicked); see the logs",
                ));
            } else {
                // Enrolment may wait for a long time (approval, an unreachable cluster); it
                // must not hold up a shutdown.
                tokio::select! {
                    r = enrol(&rs, &params, &ctx) => if let Err(exit) = r { rs.exit(exit) },
                    _ = ctx.cancelled() => return Ok(()),
                }
            }
            ctx.signal_healthy();
            ctx.cancelled().await;
            Ok(())
        }
    })
}

async fn enrol(rs: &Arc<Roleserve>, params: &NodeParameters, ctx: &Context) -> Result<(), Exit> {
    let layout = &rs.env.layout;
    let sealed = layout
        .esp
        .sealed_configuration()
        .map_err(|e| Exit::fatal(format!("cannot read the sealed configuration: {e}")))?;
    if let Some(sealed) = sealed {
        start_workers(rs, ctx)?;
        return join::run(rs, sealed, params).await;
    }
    // Without a sealed configuration the node has never finished enrolling. Leftover data
    // means an earlier attempt died half-way: its keys are lost, so starting over on top of
    // it would mix two identities (and a half-bootstrapped etcd).
    if storage::data::has_contents(&layout.data).map_err(|e| Exit::fatal(e.to_string()))? {
        return Err(Exit::fatal(format!(
            "{} holds data from an earlier, unfinished enrolment but there is no sealed \
             configuration; the node's keys from that attempt are lost. Wipe {} and start \
             again (and delete the half-enrolled node from the cluster if it shows up there)",
            layout.data.display(),
            layout.root.display()
        )));
    }
    match &params.cluster {
        Some(Cluster::ClusterBootstrap(b)) => {
            rs.set_bootstrap(bootstrap::plan(rs, b)?);
            start_workers(rs, ctx)?;
            bootstrap::run(rs).await
        }
        Some(Cluster::ClusterRegister(r)) => {
            start_workers(rs, ctx)?;
            register::run(rs, r).await
        }
        None => Err(Exit::fatal(
            "the node has no sealed configuration (it never enrolled) and its NodeParameters \
             contain neither cluster_bootstrap nor cluster_register",
        )),
    }
}

fn start_workers(rs: &Arc<Roleserve>, ctx: &Context) -> Result<(), Exit> {
    ctx.run("role", roleserve::runnable(rs.clone()))
        .map_err(|e| Exit::fatal(format!("cannot start the roleserve workers: {e}")))
}

/// Prints the node ID for the launcher, as soon as it is known.
pub fn announce_node_id(id: &str) {
    crate::logs::printer::print(&format!("NODE_ID={id}"));
}

/// An error with an operator-facing prefix, as a fatal exit.
pub(crate) fn fatal(what: &str) -> impl Fn(storage::Error) -> Exit + '_ {
    move |e| Exit::fatal(format!("{what}: {e}"))
}

/// Pauses between probes of an unreachable cluster, with jitter: every node of a cluster that
/// restarts at once probes it.
const REACHABLE_BACKOFF: rpc::Backoff = rpc::Backoff::new(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(10),
)
.with_jitter();

/// Waits until at least one of `endpoints` is a curator of the cluster whose CA is `ca`;
/// fails if every endpoint that answers belongs to another cluster.
pub(crate) async fn wait_reachable(endpoints: &[String], ca: &[u8]) -> Result<(), Exit> {
    let mut backoff = REACHABLE_BACKOFF.delays();
    let mut attempts = 0u32;
    loop {
        match crate::probe::probe_all(endpoints, ca).await {
            crate::probe::Verdict::Reachable => return Ok(()),
            crate::probe::Verdict::Foreign(why) => {
                return Err(Exit::fatal(format!(
                    "the cluster directory points at a foreign cluster: {}. The node's cluster \
                     CA certificate does not match the cluster found at these addresses",
                    why.join("; ")
                )));
            }
            crate::probe::Verdict::Unreachable(why) => {
                if attempts.is_multiple_of(5) {
                    tracing::warn!("cluster not reachable yet: {}", why.join("; "));
                }
            }
        }
        attempts += 1;
        backoff.wait().await;
    }
}
