//! `cloud.bmaas.server.api.Operator` (ours; see operator.proto): enroll machines as a
//! Shepherd would after a takeover, list machines with their tags, request OS installations.
//! Served on the internal mutual-TLS listener only.

use std::sync::Arc;

use bmdb::{Provider, SessionKeeper, queries};
use prost::Message;
use proto::cloud::bmaas::server::api::operator_server::Operator;
use proto::cloud::bmaas::server::api::{
    EnrollMachineRequest, EnrollMachineResponse, ListMachinesRequest, ListMachinesResponse,
    MetropolisInstallationRequest, OsInstallationRequest, RequestOsInstallationRequest,
    RequestOsInstallationResponse, os_installation_request,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert;

/// Longest provider ID (`VARCHAR(128)` in the schema).
pub const MAX_PROVIDER_ID_CHARS: usize = 128;

/// Largest Operator request. The largest real one is a RequestOSInstallation whose node
/// parameters carry a cluster CA certificate and labels: a few KiB.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Machines fetched per query when listing.
const LIST_PAGE: i64 = 500;

/// The Operator implementation.
#[derive(Debug)]
pub struct OperatorService {
    keeper: Arc<SessionKeeper>,
}

impl OperatorService {
    /// A service taking its BMDB sessions from `keeper`.
    pub fn new(keeper: Arc<SessionKeeper>) -> Self {
        OperatorService { keeper }
    }

    async fn session(&self) -> Result<bmdb::Session, Status> {
        self.keeper.get().await.map_err(|e| {
            tracing::error!("could not get a BMDB session: {e}");
            Status::unavailable("could not start session")
        })
    }
}

fn unavailable(what: &str, e: bmdb::Error) -> Status {
    tracing::error!("{what}: {e}");
    Status::unavailable(format!("{what}: database failure"))
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn enroll_machine(
        &self,
        request: Request<EnrollMachineRequest>,
    ) -> Result<Response<EnrollMachineResponse>, Status> {
        let req = request.into_inner();
        let provider: Provider = req
            .provider
            .parse()
            .map_err(|e: String| Status::invalid_argument(e))?;
        let provider_id = req.provider_id;
        let chars = provider_id.chars().count();
        if chars == 0 || chars > MAX_PROVIDER_ID_CHARS {
            return Err(Status::invalid_argument(format!(
                "provider_id must be 1 to {MAX_PROVIDER_ID_CHARS} characters, got {chars}"
            )));
        }
        let key = identity::PublicKey::from_slice(&req.agent_public_key).map_err(|_| {
            Status::invalid_argument(format!(
                "agent_public_key must be a raw 32-byte Ed25519 key, got {} bytes",
                req.agent_public_key.len()
            ))
        })?;
        let session = self.session().await?;
        let result = session
            .transact(|tx| {
                let provider_id = provider_id.clone();
                Box::pin(async move {
                    let m = queries::new_machine(tx).await?;
                    queries::machine_add_provided(tx, m.machine_id, provider, &provider_id).await?;
                    queries::machine_set_agent_started(tx, m.machine_id, key.as_bytes()).await?;
                    Ok(m.machine_id)
                })
            })
            .await;
        match result {
            Ok(id) => {
                tracing::info!(machine = %id, %provider, %provider_id, "machine enrolled");
                Ok(Response::new(EnrollMachineResponse {
                    machine_id: id.to_string(),
                }))
            }
            Err(e) if e.sqlstate().as_deref() == Some("23505") => Err(Status::already_exists(
                format!("{provider} machine {provider_id:?} is already enrolled"),
            )),
            Err(e) => Err(unavailable("enrolling machine", e)),
        }
    }

    async fn list_machines(
        &self,
        _request: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        let session = self.session().await?;
        let mut machines = Vec::new();
        let mut after = None;
        loop {
            let page = session
                .transact(|tx| {
                    Box::pin(async move { queries::list_machines(tx, after, LIST_PAGE).await })
                })
                .await
                .map_err(|e| unavailable("listing machines", e))?;
            let full = page.len() as i64 == LIST_PAGE;
            after = page.last().map(|m| m.machine.machine_id);
            machines.extend(page.iter().map(convert::machine));
            if !full {
                break;
            }
        }
        Ok(Response::new(ListMachinesResponse { machines }))
    }

    async fn request_os_installation(
        &self,
        request: Request<RequestOsInstallationRequest>,
    ) -> Result<Response<RequestOsInstallationResponse>, Status> {
        let req = request.into_inner();
        let machine_id = Uuid::parse_str(&req.machine_id)
            .map_err(|_| Status::invalid_argument("machine_id is not a UUID"))?;
        let node_parameters = req
            .node_parameters
            .ok_or_else(|| Status::invalid_argument("node_parameters is required"))?;
        let root_device = req.root_device;
        let session = self.session().await?;
        let generation = session
            .transact(|tx| {
                let node_parameters = node_parameters.clone();
                let root_device = root_device.clone();
                Box::pin(async move {
                    let Some(machine) = queries::get_machine(tx, machine_id).await? else {
                        return Ok(None);
                    };
                    // Above both the current request and the last report, so the agent can
                    // never mistake the new request for one it already handled.
                    let previous = [
                        machine.os_installation_request.map(|r| r.generation),
                        machine.os_installation_report.map(|r| r.generation),
                    ]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(0);
                    let generation = previous + 1;
                    let request = OsInstallationRequest {
                        generation,
                        r#type: Some(os_installation_request::Type::Metropolis(
                            MetropolisInstallationRequest {
                                bundle_url: String::new(),
                                node_parameters: Some(node_parameters),
                                root_device,
                                os_image: None,
                            },
                        )),
                    };
                    queries::machine_set_os_installation_request(
                        tx,
                        machine_id,
                        generation,
                        &request.encode_to_vec(),
                    )
                    .await?;
                    Ok(Some(generation))
                })
            })
            .await
            .map_err(|e| unavailable("requesting installation", e))?;
        let generation = generation
            .ok_or_else(|| Status::not_found(format!("machine {machine_id} does not exist")))?;
        tracing::info!(machine = %machine_id, generation, "OS installation requested");
        Ok(Response::new(RequestOsInstallationResponse { generation }))
    }
}
