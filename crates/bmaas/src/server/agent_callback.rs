//! `cloud.bmaas.server.api.AgentCallback`: agents heartbeat, upload their hardware
//! report and installation reports, and learn about pending OS installations.
//!
//! Heartbeat, in order (each step's failure code in brackets):
//! 1. exactly one Ed25519 client certificate [Unauthenticated];
//! 2. machine_id is a UUID [InvalidArgument]; reports within size limits and well-formed
//!    [InvalidArgument] (ours: checked before the database is touched);
//! 3. machine ID and certificate key match an agent-started tag, looked up with a plain read
//!    outside any transaction [Unauthenticated, with the same message for an unknown machine
//!    and a wrong key; Unavailable on database failure] (ours: whoever can reach the port can
//!    send heartbeats, and refusing them must not cost a session check and a serializable
//!    transaction, whose conflicts legitimate agents would then retry);
//! 4. a BMDB session from the server's long-lived one [Unavailable];
//! 5. in one transaction: step 3 again (the tag may have changed since), hardware report (if
//!    any), installation report (if any, and only if it is about the machine's current
//!    installation request), heartbeat = now [Unavailable];
//! 6. the pending installation request, if any, goes into the response.
//!
//! Steps 5–6 are one serializable transaction (one BEGIN, one session check, one COMMIT): the
//! database round trips are what a heartbeat costs (crates/bench, scenario bmaas), and three
//! transactions took 15 of them where one takes 6. A refused agent's transaction writes
//! nothing; a failed lookup in step 6 now fails the heartbeat (Unavailable) instead of being
//! logged after a recorded heartbeat, so the agent simply retries.
//!
//! The generation of an installation report is the server's: upstream stored whatever
//! generation the agent named, so an agent reporting an old or made-up generation replaced the
//! report of the current installation (making a finished installation look pending, or a
//! failed one look done). A report whose generation is not the current request's is ignored
//! (logged); the heartbeat still counts and its answer carries the current request, which is
//! what such an agent needs to learn.

use std::sync::Arc;

use bmdb::model::OsInstallationResult;
use bmdb::{SessionKeeper, queries};
use prost::Message;
use proto::cloud::bmaas::server::api::agent_callback_server::AgentCallback;
use proto::cloud::bmaas::server::api::os_installation_report::Result as ReportResult;
use proto::cloud::bmaas::server::api::{
    AgentHeartbeatRequest, AgentHeartbeatResponse, OsInstallationRequest,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::tls::peer_public_key;

/// Largest accepted hardware report (serialized AgentHardwareReport). A real report of a big
/// machine is a few tens of KiB; this bounds what an agent can make us store.
pub const MAX_HARDWARE_REPORT_BYTES: usize = 1 << 20;
/// Largest accepted installation report (serialized; mostly the error text).
pub const MAX_INSTALLATION_REPORT_BYTES: usize = 64 << 10;
/// tonic's decoding limit for the whole request. Larger than the report limits so that
/// oversized reports reach the explicit checks (a clear InvalidArgument) rather than tonic's
/// generic error, while still bounding memory per request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The AgentCallback implementation.
#[derive(Debug)]
pub struct AgentCallbackService {
    keeper: Arc<SessionKeeper>,
}

impl AgentCallbackService {
    /// A service taking its BMDB sessions from `keeper`.
    pub fn new(keeper: Arc<SessionKeeper>) -> Self {
        AgentCallbackService { keeper }
    }
}

/// At most `n` characters of untrusted input, for error messages.
fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The answer to an agent whose machine or key is unknown.
fn unknown_agent() -> Status {
    Status::unauthenticated("machine id or public key unknown")
}

/// An installation report ready for the BMDB.
struct InstallationReport {
    generation: i64,
    result: OsInstallationResult,
    raw: Vec<u8>,
}

/// A heartbeat that passed the checks that need no database.
struct Validated {
    machine_id: Uuid,
    /// Serialized AgentHardwareReport.
    hardware_report: Option<Vec<u8>>,
    installation_report: Option<InstallationReport>,
}

/// Step 2: everything that can be checked without the database.
fn validate(req: &AgentHeartbeatRequest) -> Result<Validated, Status> {
    let machine_id = Uuid::parse_str(&req.machine_id).map_err(|_| {
        Status::invalid_argument(format!(
            "machine_id {:?} is not a UUID",
            clip(&req.machine_id, 64)
        ))
    })?;
    let hardware_report = match &req.hardware_report {
        None => None,
        Some(report) => {
            let len = report.encoded_len();
            if len > MAX_HARDWARE_REPORT_BYTES {
                return Err(Status::invalid_argument(format!(
                    "hardware_report is {len} bytes, more than the limit of {MAX_HARDWARE_REPORT_BYTES}"
                )));
            }
            Some(report.encode_to_vec())
        }
    };
    let installation_report = match &req.installation_report {
        None => None,
        Some(report) => {
            let result = match &report.result {
                Some(ReportResult::Success(_)) => OsInstallationResult::Success,
                Some(ReportResult::Error(_)) => OsInstallationResult::Error,
                // Upstream failed the transaction (Unavailable); it is the request's fault.
                None => {
                    return Err(Status::invalid_argument(
                        "installation_report has neither success nor error set",
                    ));
                }
            };
            let len = report.encoded_len();
            if len > MAX_INSTALLATION_REPORT_BYTES {
                return Err(Status::invalid_argument(format!(
                    "installation_report is {len} bytes, more than the limit of {MAX_INSTALLATION_REPORT_BYTES}"
                )));
            }
            Some(InstallationReport {
                generation: report.generation,
                result,
                raw: report.encode_to_vec(),
            })
        }
    };
    Ok(Validated {
        machine_id,
        hardware_report,
        installation_report,
    })
}

#[tonic::async_trait]
impl AgentCallback for AgentCallbackService {
    async fn heartbeat(
        &self,
        request: Request<AgentHeartbeatRequest>,
    ) -> Result<Response<AgentHeartbeatResponse>, Status> {
        // 1.
        let key = peer_public_key(&request)?;
        // 2.
        let Validated {
            machine_id,
            hardware_report,
            installation_report,
        } = validate(request.get_ref())?;
        let hardware_report = Arc::new(hardware_report);
        let installation_report = Arc::new(installation_report);
        let key = key.as_bytes().to_vec();

        // 3. Unknown machine and wrong key give the same answer, so an agent learns nothing
        // about machines that are not its own.
        let known = {
            let key = key.clone();
            self.keeper
                .bmdb()
                .read(|conn| {
                    Box::pin(async move {
                        Ok(
                            !queries::authenticate_agent_connection(conn, machine_id, &key)
                                .await?
                                .is_empty(),
                        )
                    })
                })
                .await
                .map_err(|e| {
                    tracing::error!(%machine_id, "could not look up the agent: {e}");
                    Status::unavailable("could not look up the agent")
                })?
        };
        if !known {
            tracing::debug!(%machine_id, "heartbeat refused: machine id or public key unknown");
            return Err(unknown_agent());
        }

        // 4.
        let session = self.keeper.get().await.map_err(|e| {
            tracing::error!("could not get a BMDB session: {e}");
            Status::unavailable("could not start session")
        })?;

        // 5.–6.
        let outcome = session
            .transact(|tx| {
                let key = key.clone();
                let hardware_report = hardware_report.clone();
                let installation_report = installation_report.clone();
                Box::pin(async move {
                    let agents =
                        queries::authenticate_agent_connection(tx, machine_id, &key).await?;
                    if agents.is_empty() {
                        return Ok(None);
                    }
                    if let Some(raw) = hardware_report.as_ref() {
                        queries::machine_set_hardware_report(tx, machine_id, raw).await?;
                    }
                    let report_stored = match installation_report.as_ref() {
                        Some(r) => {
                            queries::machine_report_os_installation(
                                tx,
                                machine_id,
                                r.generation,
                                r.result,
                                &r.raw,
                            )
                            .await?
                        }
                        None => false,
                    };
                    queries::machine_set_agent_heartbeat(tx, machine_id).await?;
                    let pending =
                        queries::get_exact_machine_for_os_installation(tx, machine_id).await?;
                    Ok(Some((pending, report_stored)))
                })
            })
            .await
            .map_err(|e| {
                tracing::error!(%machine_id, "could not submit heartbeat: {e}");
                Status::unavailable("could not submit heartbeat")
            })?;
        let Some((pending, report_stored)) = outcome else {
            tracing::debug!(%machine_id, "heartbeat refused: machine id or public key unknown");
            return Err(unknown_agent());
        };
        if hardware_report.is_some() {
            tracing::info!(%machine_id, "hardware report received");
        }
        if let Some(r) = installation_report.as_ref() {
            if report_stored {
                tracing::info!(%machine_id, generation = r.generation, result = %r.result, "installation report received");
            } else {
                tracing::warn!(
                    %machine_id,
                    generation = r.generation,
                    pending_request = ?pending.first().map(|p| p.generation),
                    "installation report ignored: its generation is not the machine's current installation request"
                );
            }
        }
        let mut response = AgentHeartbeatResponse::default();
        if let Some(row) = pending.first() {
            match OsInstallationRequest::decode(row.os_installation_request_raw.as_slice()) {
                Ok(mut request) => {
                    request.generation = row.generation;
                    response.installation_request = Some(request);
                }
                Err(e) => tracing::error!(
                    %machine_id, "stored installation request does not decode: {e}"
                ),
            }
        }
        Ok(Response::new(response))
    }
}
