//! BMDB rows → Operator API messages.

use bmdb::model::{MachineTags, OsInstallationResult};
use chrono::{DateTime, Utc};
use prost::Message;
use proto::cloud::bmaas::server::api::os_installation_report::{self, Result as ReportResult};
use proto::cloud::bmaas::server::api::{
    AgentHardwareReport, Machine, OsInstallationReport, OsInstallationRequest, machine,
};

/// A protobuf timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Decodes a stored protobuf, logging (not failing) when it does not decode: one bad row must
/// not hide all the others from an operator.
fn decode<M: Message + Default>(what: &str, machine: &uuid::Uuid, raw: &[u8]) -> Option<M> {
    match M::decode(raw) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(%machine, "stored {what} does not decode: {e}");
            None
        }
    }
}

/// A machine with its tags as an Operator API message.
pub fn machine(tags: &MachineTags) -> Machine {
    let id = tags.machine.machine_id;
    Machine {
        machine_id: id.to_string(),
        created_at: Some(timestamp(tags.machine.machine_created_at)),
        provided: tags.provided.as_ref().map(|p| machine::Provided {
            provider: p.provider.to_string(),
            provider_id: p.provider_id.clone(),
        }),
        agent_started: tags.agent_started.as_ref().map(|a| machine::AgentStarted {
            started_at: Some(timestamp(a.agent_started_at)),
            agent_public_key: a.agent_public_key.clone(),
        }),
        agent_heartbeat: tags
            .agent_heartbeat
            .as_ref()
            .map(|h| machine::AgentHeartbeat {
                heartbeat_at: Some(timestamp(h.agent_heartbeat_at)),
            }),
        hardware_report: tags.hardware_report.as_ref().and_then(|h| {
            decode::<AgentHardwareReport>("hardware report", &id, &h.hardware_report_raw)
        }),
        os_installation_request: tags.os_installation_request.as_ref().and_then(|r| {
            let mut req = decode::<OsInstallationRequest>(
                "installation request",
                &id,
                &r.os_installation_request_raw,
            )?;
            req.generation = r.generation;
            Some(req)
        }),
        os_installation_report: tags.os_installation_report.as_ref().map(|r| {
            // Reports stored before 1687875953 have no raw form: rebuild from the columns.
            let mut report = decode::<OsInstallationReport>(
                "installation report",
                &id,
                &r.os_installation_report_raw,
            )
            .unwrap_or_default();
            report.generation = r.generation;
            if report.result.is_none() {
                report.result = Some(match r.os_installation_result {
                    OsInstallationResult::Success => {
                        ReportResult::Success(os_installation_report::Success {})
                    }
                    OsInstallationResult::Error => {
                        ReportResult::Error(os_installation_report::Error {
                            error: String::new(),
                        })
                    }
                });
            }
            report
        }),
    }
}
