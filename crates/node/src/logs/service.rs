//! [`NodeManagementService`]: Logs over the node's logtree, and UpdateNode through the
//! node's [`Updater`] (without one, UpdateNode answers Unimplemented).
//!
//! Logs sends the backlog (newest N or all matching entries, oldest first) in messages of at
//! most [`BACKLOG_CHUNK`] entries, then, when streaming, one message per new entry. A
//! streaming subscriber that falls more than 128 entries behind loses entries (logtree
//! semantics). If the logtree ends the subscription, the call ends with Unavailable.

use futures::StreamExt;
use logtree::LogTree;
use proto::api::node_management_server::NodeManagement;
use proto::api::{
    GetLogsRequest, GetLogsResponse, RebootRequest, RebootResponse, UpdateNodeRequest,
    UpdateNodeResponse,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::query::{entry_to_proto, parse};
use crate::update::Updater;

/// Most entries in one backlog message (upstream's chunk size).
pub const BACKLOG_CHUNK: usize = 2000;

/// The NodeManagement service of a node.
#[derive(Debug, Clone)]
pub struct NodeManagementService {
    tree: LogTree,
    updater: Option<std::sync::Arc<Updater>>,
}

impl NodeManagementService {
    /// A service reading `tree`, without updates.
    pub fn new(tree: LogTree) -> Self {
        Self {
            tree,
            updater: None,
        }
    }

    /// The same service, installing updates with `updater`.
    pub fn with_updater(self, updater: std::sync::Arc<Updater>) -> Self {
        Self {
            updater: Some(updater),
            ..self
        }
    }
}

#[tonic::async_trait]
impl NodeManagement for NodeManagementService {
    async fn logs(
        &self,
        request: Request<GetLogsRequest>,
    ) -> Result<Response<BoxStream<GetLogsResponse>>, Status> {
        let query = parse(request.get_ref())?;
        let reader = self
            .tree
            .read(&query.dn, query.options)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let backlog: Vec<Result<GetLogsResponse, Status>> = reader
            .backlog
            .chunks(BACKLOG_CHUNK)
            .map(|chunk| {
                Ok(GetLogsResponse {
                    backlog_entries: chunk.iter().map(entry_to_proto).collect(),
                    stream_entries: Vec::new(),
                })
            })
            .collect();
        let backlog = futures::stream::iter(backlog);
        let Some(subscription) = reader.stream else {
            return Ok(Response::new(Box::pin(backlog)));
        };
        let live = futures::stream::unfold(Some(subscription), |state| async move {
            let mut sub = state?;
            match sub.next().await {
                Some(entry) => Some((
                    Ok(GetLogsResponse {
                        backlog_entries: Vec::new(),
                        stream_entries: vec![entry_to_proto(&entry)],
                    }),
                    Some(sub),
                )),
                None => Some((
                    Err(Status::unavailable("log tree subscription ended")),
                    None,
                )),
            }
        });
        Ok(Response::new(Box::pin(backlog.chain(live))))
    }

    async fn update_node(
        &self,
        request: Request<UpdateNodeRequest>,
    ) -> Result<Response<UpdateNodeResponse>, Status> {
        let Some(updater) = &self.updater else {
            return Err(Status::unimplemented(
                "UpdateNode: this server installs no updates",
            ));
        };
        let req = request.into_inner();
        updater
            .update(&req.bundle_url, req.activation_mode)
            .await
            .map(|()| Response::new(UpdateNodeResponse {}))
    }

    async fn reboot(
        &self,
        request: Request<RebootRequest>,
    ) -> Result<Response<RebootResponse>, Status> {
        let Some(updater) = &self.updater else {
            return Err(Status::unimplemented("Reboot: this server cannot reboot"));
        };
        let req = request.into_inner();
        updater
            .reboot(req.r#type, req.next_boot)
            .await
            .map(|()| Response::new(RebootResponse {}))
    }
}
