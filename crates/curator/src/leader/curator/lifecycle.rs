//! What an UP node reports about itself: its status (UpdateNodeStatus), that it is alive
//! (Heartbeat) and how far its decommissioning got (ReportDecommission, ours).

use std::net::IpAddr;
use std::sync::Arc;

use futures::stream;
use proto::common::NodeState;
use proto::curator_api::report_decommission_request::Stage;
use proto::curator_api::{
    HeartbeatUpdateRequest, HeartbeatUpdateResponse, ReportDecommissionRequest,
    ReportDecommissionResponse, UpdateNodeStatusRequest, UpdateNodeStatusResponse,
};
use rpc::PeerInfo;
use tonic::codegen::BoxStream;
use tonic::{Status, Streaming};

use super::state_name;
use crate::leader::live::Known;
use crate::leader::{Leader, limits, optimistic};
use crate::state::node;

/// UpdateNodeStatus: a node replaces its own status; the timestamp is the curator's.
pub(super) async fn update_node_status(
    leader: &Leader,
    peer: &PeerInfo,
    req: UpdateNodeStatusRequest,
) -> Result<UpdateNodeStatusResponse, Status> {
    let caller = peer.require_node()?;
    if req.node_id != caller.id {
        return Err(Status::permission_denied(
            "nodes may only update their own status",
        ));
    }
    let mut status = req
        .status
        .ok_or_else(|| Status::invalid_argument("status must be set"))?;
    limits::check_status(&status)?;
    if status.external_address.is_empty() {
        return Err(Status::invalid_argument(
            "status.external_address must be set",
        ));
    }
    if status.external_address.parse::<IpAddr>().is_err() {
        return Err(Status::invalid_argument(
            "status.external_address must be an IP address",
        ));
    }
    // Whatever the node claims, the time of the update is ours.
    status.timestamp = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));

    let status = &status;
    optimistic("UpdateNodeStatus", move || async move {
        let mut record = node::load(&leader.leadership, &caller.id).await?;
        record.node.status = Some(status.clone());
        node::update(&leader.leadership, &mut record).await?;
        Ok(UpdateNodeStatusResponse {})
    })
    .await
}

/// Heartbeat: every message from the node is recorded and answered; the client closing its
/// side ends the stream with OK.
pub(super) fn heartbeat(
    leader: &Arc<Leader>,
    peer: &PeerInfo,
    incoming: Streaming<HeartbeatUpdateRequest>,
) -> Result<BoxStream<HeartbeatUpdateResponse>, Status> {
    let id = peer.require_node()?.id.clone();
    leader.live.start(leader);
    let leader = leader.clone();
    let replies = stream::unfold(Some(incoming), move |state| {
        let leader = leader.clone();
        let id = id.clone();
        async move {
            let mut incoming = state?;
            match incoming.message().await {
                Ok(Some(_)) => match beat(&leader, &id).await {
                    Ok(()) => Some((Ok(HeartbeatUpdateResponse {}), Some(incoming))),
                    Err(e) => Some((Err(e), None)),
                },
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Ok(Box::pin(replies))
}

/// Records one heartbeat. Going beyond upstream (which records heartbeats of anyone holding
/// a node certificate): a node whose record is gone (deleted) gets NotFound instead, so a
/// deleted node whose certificate still authenticates does not leave a live-looking entry in
/// the leader's memory, and learns at once that it no longer belongs to the cluster. Whether
/// the record exists comes from the leader's memory ([`crate::leader::live`]); only what that
/// does not know is read from etcd.
async fn beat(leader: &Leader, id: &str) -> Result<(), Status> {
    let exists = match leader.live.check(id) {
        Known::Present => true,
        Known::Deleted => false,
        Known::Unknown => node::load_opt(&leader.leadership, id).await?.is_some(),
    };
    if !exists {
        return Err(Status::not_found(format!(
            "node {id} does not exist (anymore)"
        )));
    }
    leader.heartbeats.beat(id);
    Ok(())
}

/// ReportDecommission (ours, see api.proto): the node moves itself from
/// DECOMMISSION_REQUESTED through DECOMMISSIONING to DECOMMISSIONED. Repeating a report for
/// a state already reached is a no-op, so nodes can retry after a lost answer.
pub(super) async fn report_decommission(
    leader: &Leader,
    peer: &PeerInfo,
    req: ReportDecommissionRequest,
) -> Result<ReportDecommissionResponse, Status> {
    let caller = peer.require_node()?;
    let stage = match Stage::try_from(req.stage) {
        Ok(Stage::Started) => Stage::Started,
        Ok(Stage::Done) => Stage::Done,
        _ => {
            return Err(Status::invalid_argument(
                "stage must be STAGE_STARTED or STAGE_DONE",
            ));
        }
    };

    optimistic("ReportDecommission", move || async move {
        let mut record = node::load(&leader.leadership, &caller.id).await?;
        let Some(next) = decommission_transition(stage, record.state()).map_err(|()| {
            Status::failed_precondition(format!(
                "node is {}, cannot report {}",
                state_name(&record),
                stage.as_str_name()
            ))
        })?
        else {
            return Ok(ReportDecommissionResponse {});
        };
        node::set_state(&leader.leadership, &mut record, next).await?;
        tracing::info!(
            "node {} reported {}: now {}",
            caller.id,
            stage.as_str_name(),
            next.as_str_name()
        );
        Ok(ReportDecommissionResponse {})
    })
    .await
}

/// The state a decommission report moves a node to: `Ok(Some(next))` to change,
/// `Ok(None)` if the state is already reached (idempotent repeat), `Err` if the report does
/// not follow from the current state (e.g. an UP node nobody asked to decommission).
fn decommission_transition(stage: Stage, state: NodeState) -> Result<Option<NodeState>, ()> {
    use NodeState as S;
    match (stage, state) {
        (Stage::Started, S::DecommissionRequested) => Ok(Some(S::Decommissioning)),
        (Stage::Started, S::Decommissioning | S::Decommissioned) => Ok(None),
        // A node may finish before its STARTED report got through (e.g. it was lost): accept
        // DONE straight from DECOMMISSION_REQUESTED rather than wedge the node.
        (Stage::Done, S::Decommissioning | S::DecommissionRequested) => Ok(Some(S::Decommissioned)),
        (Stage::Done, S::Decommissioned) => Ok(None),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decommission_transitions() {
        use NodeState as S;
        assert_eq!(
            decommission_transition(Stage::Started, S::DecommissionRequested),
            Ok(Some(S::Decommissioning))
        );
        assert_eq!(
            decommission_transition(Stage::Started, S::Decommissioning),
            Ok(None)
        );
        assert_eq!(
            decommission_transition(Stage::Started, S::Decommissioned),
            Ok(None)
        );
        assert_eq!(
            decommission_transition(Stage::Done, S::Decommissioning),
            Ok(Some(S::Decommissioned))
        );
        assert_eq!(
            decommission_transition(Stage::Done, S::DecommissionRequested),
            Ok(Some(S::Decommissioned))
        );
        assert_eq!(
            decommission_transition(Stage::Done, S::Decommissioned),
            Ok(None)
        );
        for s in [S::Up, S::New, S::Standby, S::Invalid] {
            assert!(decommission_transition(Stage::Started, s).is_err());
            assert!(decommission_transition(Stage::Done, s).is_err());
        }
    }

    /// Every move a report makes is one the lifecycle table allows, so none is refused by
    /// the state layer after the handler accepted it.
    #[test]
    fn reports_follow_the_lifecycle_table() {
        use NodeState as S;
        let states = [
            S::Invalid,
            S::New,
            S::Standby,
            S::Up,
            S::DecommissionRequested,
            S::Decommissioning,
            S::Decommissioned,
        ];
        for stage in [Stage::Started, Stage::Done] {
            for from in states {
                if let Ok(Some(to)) = decommission_transition(stage, from) {
                    assert!(
                        crate::state::lifecycle::allowed(Some(from), to),
                        "{stage:?}: {from:?} → {to:?}"
                    );
                }
            }
        }
    }
}
