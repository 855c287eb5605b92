//! Decommissioning (ours; upstream only describes it in the DecommissionNode comment): when
//! the cluster sets this node to DECOMMISSION_REQUESTED, the node
//!
//! 1. reports STAGE_STARTED (the cluster moves it to DECOMMISSIONING),
//! 2. stops all its services (etcd, curator, servers),
//! 3. wipes its key material: first, in the sealed configuration, the NUK and the join key, so
//!    neither the node nor anyone holding its disk can unlock its data or rejoin as it; then
//!    the whole data directory (node key, credentials, roles, etcd). A node restarted between
//!    the two finds no join key and deletes the data before it exits (see [`wipe`]),
//! 4. reports STAGE_DONE (the cluster moves it to DECOMMISSIONED) with the credentials still
//!    in memory, and exits with code 3.
//!
//! If STARTED is refused, nothing is wiped: the node must not destroy itself on a request the
//! cluster does not confirm. Files are deleted, not overwritten: on a journaling or
//! copy-on-write file system, overwriting would not reliably erase them either.

use std::time::Duration;

use proto::curator_api::ReportDecommissionRequest;
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::report_decommission_request::Stage;
use rpc::retry::{Backoff, RetryPolicy};
use supervisor::Supervisor;
use tonic::Status;

use crate::exit::Exit;
use crate::roleserve::{Membership, NodeEnv, Roleserve};

/// How each report is retried while the cluster is unreachable: for a minute, pausing up to
/// 5 s.
const REPORT_POLICY: RetryPolicy = RetryPolicy::forever(Backoff::new(
    Duration::from_millis(500),
    Duration::from_secs(5),
))
.with_deadline(Some(Duration::from_secs(60)));

/// Runs the procedure; returns how the process exits.
pub async fn run(rs: &Roleserve, supervisor: &Supervisor) -> Exit {
    let Some(m) = rs.membership_now() else {
        return Exit::fatal("asked to decommission before enrolment finished");
    };
    tracing::warn!("Decommissioning this node: reporting start");
    if let Err(s) = report(&m, Stage::Started).await {
        return Exit::fatal(format!(
            "the cluster asked this node to decommission, but refused its report: {:?}: {}; \
             nothing was wiped",
            s.code(),
            s.message()
        ));
    }
    if let Err(e) = supervisor.shutdown().await {
        tracing::warn!("stopping services: {e}");
    }
    if let Err(e) = wipe(&rs.env) {
        return Exit::fatal(format!("decommissioning: wiping key material failed: {e}"));
    }
    crate::failpoint::crash_point("node::decommission::after_wipe");
    tracing::warn!("Decommissioning: key material and data wiped; reporting completion");
    if let Err(s) = report(&m, Stage::Done).await {
        tracing::warn!(
            "could not report the end of decommissioning ({:?}: {}); the cluster keeps this \
             node in DECOMMISSIONING",
            s.code(),
            s.message()
        );
    }
    Exit::gone(format!(
        "this node was decommissioned: its key material and data were wiped. Wipe {} before \
         reusing the machine",
        rs.env.layout.root.display()
    ))
}

async fn report(m: &Membership, stage: Stage) -> Result<(), Status> {
    m.curator
        .call(&REPORT_POLICY, |ch| async move {
            CuratorClient::new(ch)
                .report_decommission(ReportDecommissionRequest {
                    stage: stage as i32,
                })
                .await
        })
        .await
        .map(|_| ())
}

/// Removes NUK and join key from the sealed configuration, then deletes the data directory.
///
/// Keys first: once they are gone the data can never be unlocked again and the node can never
/// rejoin, so a crash half-way leaves a node that knows it was decommissioned (an empty join
/// key) and finishes the deletion on its next boot ([`finish_wipe`]); the other order would
/// leave a node holding working keys to data that is half gone.
pub fn wipe(env: &NodeEnv) -> Result<(), String> {
    let esp = &env.layout.esp;
    if let Some(mut sealed) = esp.sealed_configuration().map_err(|e| e.to_string())? {
        sealed.node_unlock_key.clear();
        sealed.join_key.clear();
        esp.write_sealed_configuration(&sealed)
            .map_err(|e| e.to_string())?;
    }
    crate::failpoint::crash_point("node::decommission::wipe_midway");
    finish_wipe(env)
}

/// Deletes the data directory of a node whose keys are already cleared (the second half of
/// [`wipe`], also run on every boot of a decommissioned node in case a crash cut the wipe).
pub fn finish_wipe(env: &NodeEnv) -> Result<(), String> {
    match std::fs::remove_dir_all(&env.layout.data) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", env.layout.data.display())),
    }
}
