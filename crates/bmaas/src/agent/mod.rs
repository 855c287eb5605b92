//! The BMaaS agent: runs on a managed machine and keeps calling back to the BMaaS
//! server.
//!
//! Input is the init file (`AgentInit`: machine ID, server endpoint, optional CA, the agent's
//! Ed25519 private key), written by the takeover. The agent then heartbeats forever:
//! * every 30 s when things are fine, each call bounded by 10 s;
//! * after failures with exponential backoff (0.5 s × 1.5 up to 60 s), each wait lengthened
//!   by a random part of itself (up to doubling it) so that the agents of many machines losing
//!   the server together do not come back together (upstream randomises by ±50%); it never
//!   gives up: there is nothing else to do;
//! * the hardware report of the machine ([`crate::hwreport`]) goes with the first heartbeat
//!   after one has succeeded (upstream sends it on the second, keeping the first one small as
//!   a connectivity check), and never again while the process lives. Unlike upstream we send
//!   that second heartbeat right away rather than after the idle interval;
//! * an installation request with a generation not yet attempted is carried out
//!   ([`install`]) and its report (success or error) goes with the next heartbeat, sent at
//!   once. Upstream then syncs and reboots into the installed OS; we cannot reboot the machine
//!   we run on, so the agent logs that a reboot would happen and keeps heartbeating;
//! * reports are made to fit the server's size limits before they are sent ([`ReportLimits`]:
//!   the hardware report loses warnings, then details; an installation error is cut), and a
//!   report the server still refuses as invalid or too large is dropped, logged, and the
//!   heartbeat sent again at once without it. Upstream sent the refused report again with
//!   every heartbeat, each one refused, so its machine stopped heartbeating for good (and was
//!   eventually "recovered" by the Shepherd) over a report.

pub mod install;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use identity::SigningKey;
use prost::Message;
use proto::cloud::agent::api::AgentInit;
use proto::cloud::bmaas::server::api::agent_callback_client::AgentCallbackClient;
use proto::cloud::bmaas::server::api::{
    AgentHardwareReport, AgentHeartbeatRequest, OsInstallationReport,
};
use tokio::time::Instant;

use crate::{Error, Result};

/// Timing of the heartbeat loop.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Wait between successful heartbeats (upstream: 30 s).
    pub interval: Duration,
    /// Bound of one heartbeat call (upstream: 10 s).
    pub timeout: Duration,
    /// First wait after a failure (upstream: 0.5 s).
    pub backoff_initial: Duration,
    /// Growth of the wait per consecutive failure (upstream: 1.5).
    pub backoff_multiplier: f64,
    /// Longest wait after failures (upstream: 60 s).
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_multiplier: 1.5,
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The sizes (serialized) the agent fits its reports to: the server's limits.
#[derive(Debug, Clone)]
pub struct ReportLimits {
    /// Largest hardware report.
    pub hardware_report: usize,
    /// Largest installation report.
    pub installation_report: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        use crate::server::agent_callback::{
            MAX_HARDWARE_REPORT_BYTES, MAX_INSTALLATION_REPORT_BYTES,
        };
        ReportLimits {
            hardware_report: MAX_HARDWARE_REPORT_BYTES,
            installation_report: MAX_INSTALLATION_REPORT_BYTES,
        }
    }
}

/// Everything the agent runs with.
pub struct Config {
    /// The machine's ID in the BMDB.
    pub machine_id: String,
    /// `host:port` of the server's public listener.
    pub endpoint: String,
    /// DER CA certificate to verify the server with; system roots if `None`.
    pub ca_certificate: Option<Vec<u8>>,
    /// The agent key.
    pub key: SigningKey,
    /// Where installations are written.
    pub install_target: PathBuf,
    /// Heartbeat timing.
    pub timing: Timing,
    /// Where the hardware report is read from.
    pub hwreport_sources: crate::hwreport::Sources,
    /// What the reports are fitted to.
    pub report_limits: ReportLimits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Config")
            .field("machine_id", &self.machine_id)
            .field("endpoint", &self.endpoint)
            .field("agent_public_key", &self.key.public_key())
            .field("install_target", &self.install_target)
            .field("timing", &self.timing)
            .field("report_limits", &self.report_limits)
            .finish_non_exhaustive()
    }
}

/// Reads the init file (a serialized `AgentInit`).
pub fn read_init(path: &std::path::Path) -> Result<AgentInit> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    AgentInit::decode(raw.as_slice())
        .map_err(|e| Error::Config(format!("{}: not an AgentInit: {e}", path.display())))
}

impl Config {
    /// A configuration from an init message; the private key may be Go's 64-byte form (seed
    /// and public key) or the 32-byte seed.
    pub fn from_init(init: AgentInit, install_target: PathBuf, timing: Timing) -> Result<Config> {
        let takeover = init
            .takeover_init
            .ok_or_else(|| Error::Config("init: takeover_init is missing".into()))?;
        if takeover.machine_id.is_empty() || takeover.bmaas_endpoint.is_empty() {
            return Err(Error::Config(
                "init: machine_id and bmaas_endpoint are required".into(),
            ));
        }
        let key = match init.private_key.len() {
            identity::keys::KEYPAIR_LEN => SigningKey::from_keypair_bytes(&init.private_key)?,
            identity::keys::SEED_LEN => SigningKey::from_seed_slice(&init.private_key)?,
            n => {
                return Err(Error::Config(format!(
                    "init: private_key must be an Ed25519 key of 64 (or 32) bytes, got {n}"
                )));
            }
        };
        Ok(Config {
            machine_id: takeover.machine_id,
            endpoint: takeover.bmaas_endpoint,
            ca_certificate: Some(takeover.ca_certificate).filter(|c| !c.is_empty()),
            key,
            install_target,
            timing,
            hwreport_sources: Default::default(),
            report_limits: Default::default(),
        })
    }
}

/// Whether a failed heartbeat was refused for what it carried (a report the server finds
/// invalid or too large; or one the client could not even encode within its limit) rather
/// than for a reason that sending it again may cure.
fn refuses_content(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
    )
}

impl Timing {
    /// The backoff after failed heartbeats, with jitter.
    fn backoff(&self) -> rpc::Backoff {
        rpc::Backoff::new(self.backoff_initial, self.backoff_max)
            .with_factor(self.backoff_multiplier as f32)
            .with_jitter()
    }
}

/// Where the hardware report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HardwareReportState {
    /// No heartbeat has succeeded yet.
    WaitingForFirstHeartbeat,
    /// To be attached to the next heartbeat.
    Due,
    /// Delivered.
    Sent,
    /// Refused by the server even after fitting; not sent again while the process lives.
    Refused,
}

/// Heartbeats until the process ends.
pub async fn run(config: Config) -> Result<()> {
    tracing::info!(?config, "agent starting");
    let tls = tls::client_config(&config.key, config.ca_certificate.as_deref())?;
    let channel = rpc::client_tls::connect_lazy(&config.endpoint, tls)?;
    let mut client = AgentCallbackClient::new(channel)
        .max_encoding_message_size(crate::server::agent_callback::MAX_REQUEST_BYTES);

    // Reading sysfs can take a moment on big machines: do it while the first heartbeat runs.
    let sources = config.hwreport_sources.clone();
    let mut report_task = Some(tokio::task::spawn_blocking(move || {
        crate::hwreport::gather_from(&sources)
    }));
    let mut report: Option<AgentHardwareReport> = None;
    let mut report_state = HardwareReportState::WaitingForFirstHeartbeat;

    let mut backoff = config.timing.backoff().delays();
    // The generation of the last installation request attempted, and its report: unsent
    // (`pending`) or acknowledged by the server (`acknowledged`).
    let mut attempted_generation: Option<i64> = None;
    let mut pending_report: Option<OsInstallationReport> = None;
    let mut acknowledged_report: Option<OsInstallationReport> = None;

    loop {
        if report_state == HardwareReportState::Due
            && report.is_none()
            && let Some(task) = report_task.take()
        {
            let gathered = task.await.unwrap_or_else(|e| AgentHardwareReport {
                report: None,
                warning: vec![format!("generating the hardware report failed: {e}")],
            });
            report = Some(crate::hwreport::fit(
                gathered,
                config.report_limits.hardware_report,
            ));
        }
        let attach_report = report_state == HardwareReportState::Due && report.is_some();
        let request = AgentHeartbeatRequest {
            machine_id: config.machine_id.clone(),
            hardware_report: if attach_report { report.clone() } else { None },
            installation_report: pending_report.clone(),
        };

        let started = Instant::now();
        let result = tokio::time::timeout(config.timing.timeout, client.heartbeat(request)).await;
        let response = match result {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if refuses_content(status.code()) && attach_report => {
                tracing::error!(
                    "the server refused the hardware report ({:?}: {}); it is not sent again",
                    status.code(),
                    status.message()
                );
                report_state = HardwareReportState::Refused;
                report = None;
                continue;
            }
            Ok(Err(status)) if refuses_content(status.code()) && pending_report.is_some() => {
                let generation = pending_report.take().map(|r| r.generation);
                tracing::error!(
                    ?generation,
                    "the server refused the installation report ({:?}: {}); it is not sent again",
                    status.code(),
                    status.message()
                );
                continue;
            }
            Ok(Err(status)) => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    "heartbeat failed ({:?}: {}), retrying in {wait:?}",
                    status.code(),
                    status.message()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(_) => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    "heartbeat timed out after {:?}, retrying in {wait:?}",
                    config.timing.timeout
                );
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        tracing::debug!(latency = ?started.elapsed(), "heartbeat ok");

        match report_state {
            HardwareReportState::WaitingForFirstHeartbeat => {
                tracing::info!("first heartbeat succeeded");
                report_state = HardwareReportState::Due;
            }
            HardwareReportState::Due if attach_report => {
                let warnings = report.as_ref().map_or(0, |r| r.warning.len());
                tracing::info!(warnings, "hardware report delivered");
                report_state = HardwareReportState::Sent;
                report = None;
            }
            _ => {}
        }
        if let Some(r) = pending_report.take() {
            tracing::info!(
                generation = r.generation,
                "installation report acknowledged; a real agent would sync and reboot into the \
                 installed OS now, but we cannot reboot this machine, so we keep heartbeating"
            );
            acknowledged_report = Some(r);
        }

        if let Some(request) = response.installation_request {
            if Some(request.generation) == attempted_generation {
                // Already attempted. The server only keeps asking if it has no report for this
                // generation, so send ours again.
                if pending_report.is_none()
                    && let Some(r) = acknowledged_report.clone()
                {
                    tracing::warn!(
                        generation = request.generation,
                        "server still requests an installation we reported, reporting again"
                    );
                    pending_report = Some(r);
                }
            } else {
                tracing::info!(generation = request.generation, "installation requested");
                let outcome = install::install(&config, &request).await;
                attempted_generation = Some(request.generation);
                pending_report = Some(install::fit_report(
                    outcome,
                    config.report_limits.installation_report,
                ));
                // Report right away.
                continue;
            }
        }
        if report_state == HardwareReportState::Due {
            continue;
        }
        tokio::time::sleep(config.timing.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Timing::default().backoff().delays();
        let mut last = Duration::ZERO;
        for _ in 0..30 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(120), "{last:?}");
        }
        assert!(
            last >= Duration::from_secs(60),
            "capped wait is 60 s plus up to as much again: {last:?}"
        );
        b.reset();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(1000));
    }
}
