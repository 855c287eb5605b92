//! Carrying out an OS installation request.
//!
//! Upstream's agent writes a Metropolis image and the node parameters onto the root device
//! and reboots into it. We do not overwrite disks: the installation is emulated by writing its
//! inputs into the install target directory, after the checks a real installation would make
//! (a Metropolis request with node parameters, a root device that exists on this machine):
//! * `parameters.pb`: the serialized `NodeParameters` (what Metropolis reads from its ESP as
//!   `metropolis/parameters.pb`), mode 0600 since it can hold a register ticket;
//! * `installation.json`: the rest of the request (generation, root device, OS image or the
//!   older bundle URL).
//!
//! Any failure becomes an error report rather than an error of the agent.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use proto::cloud::bmaas::server::api::os_installation_report::{self, Result as ReportResult};
use proto::cloud::bmaas::server::api::os_installation_request::Type;
use proto::cloud::bmaas::server::api::{OsInstallationReport, OsInstallationRequest};

use super::Config;

/// Upper bound of an installation (upstream: 15 minutes).
pub const TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// File name of the node parameters in the install target.
pub const PARAMETERS_FILE: &str = "parameters.pb";
/// File name of the installation metadata in the install target.
pub const METADATA_FILE: &str = "installation.json";

/// `report` with its error text cut so that it fits in `limit` bytes (serialized): an error
/// can quote anything (a failing tool's output), and a report the server refuses would leave
/// the installation unreported.
pub fn fit_report(mut report: OsInstallationReport, limit: usize) -> OsInstallationReport {
    use prost::Message as _;
    let excess = report.encoded_len().saturating_sub(limit);
    if excess == 0 {
        return report;
    }
    if let Some(ReportResult::Error(e)) = &mut report.result {
        // Room for the marker and the length prefix shrinking by a few bytes.
        let mut keep = e.error.len().saturating_sub(excess + 64);
        while !e.error.is_char_boundary(keep) {
            keep -= 1;
        }
        e.error.truncate(keep);
        e.error.push_str("… (cut to fit the report size limit)");
    }
    report
}

/// Installs, and returns the report to send.
pub async fn install(config: &Config, request: &OsInstallationRequest) -> OsInstallationReport {
    let target = config.install_target.clone();
    let sys = config.hwreport_sources.sys.clone();
    let machine_id = config.machine_id.clone();
    let req = request.clone();
    let work =
        tokio::task::spawn_blocking(move || install_blocking(&target, &sys, &machine_id, &req));
    let result = match tokio::time::timeout(TIMEOUT, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("installation panicked: {e}")),
        Err(_) => Err(format!("installation did not finish within {TIMEOUT:?}")),
    };
    let result = match result {
        Ok(()) => {
            tracing::info!(generation = request.generation, "installation succeeded");
            ReportResult::Success(os_installation_report::Success {})
        }
        Err(error) => {
            tracing::error!(
                generation = request.generation,
                "installation failed: {error}"
            );
            ReportResult::Error(os_installation_report::Error { error })
        }
    };
    OsInstallationReport {
        generation: request.generation,
        result: Some(result),
    }
}

fn install_blocking(
    target: &Path,
    sys: &Path,
    machine_id: &str,
    request: &OsInstallationRequest,
) -> Result<(), String> {
    let Some(Type::Metropolis(metropolis)) = &request.r#type else {
        return Err("unsupported installation request: only Metropolis can be installed".into());
    };
    let parameters = metropolis
        .node_parameters
        .as_ref()
        .ok_or("the installation request has no node parameters")?;
    let device = &metropolis.root_device;
    if !device.is_empty() {
        if device.contains('/') || device == "." || device == ".." {
            return Err(format!("invalid root device name {device:?}"));
        }
        if !sys.join("class/block").join(device).exists() {
            return Err(format!(
                "root device {device:?} does not exist on this machine"
            ));
        }
    }
    std::fs::create_dir_all(target)
        .map_err(|e| format!("creating install target {}: {e}", target.display()))?;
    identity::files::write_atomic(
        &target.join(PARAMETERS_FILE),
        &parameters.encode_to_vec(),
        identity::files::PRIVATE_MODE,
    )
    .map_err(|e| format!("writing node parameters: {e}"))?;
    let os_image = metropolis.os_image.as_ref().map(|i| {
        serde_json::json!({
            "scheme": i.scheme, "host": i.host, "repository": i.repository,
            "tag": i.tag, "digest": i.digest,
        })
    });
    let metadata = serde_json::json!({
        "machine_id": machine_id,
        "generation": request.generation,
        "root_device": device,
        "os_image": os_image,
        "bundle_url": (!metropolis.bundle_url.is_empty()).then_some(&metropolis.bundle_url),
        "installed_at": chrono::Utc::now().to_rfc3339(),
    });
    let metadata = serde_json::to_vec_pretty(&metadata).map_err(|e| e.to_string())?;
    identity::files::write_atomic(
        &target.join(METADATA_FILE),
        &metadata,
        identity::files::PUBLIC_MODE,
    )
    .map_err(|e| format!("writing installation metadata: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn error_reports_are_cut_to_fit() {
        let report = |error: String| OsInstallationReport {
            generation: 3,
            result: Some(ReportResult::Error(os_installation_report::Error { error })),
        };
        let short = report("disk on fire".into());
        assert_eq!(fit_report(short.clone(), 1024), short);
        let long = fit_report(report("é".repeat(100_000)), 1024);
        assert!(long.encoded_len() <= 1024, "{}", long.encoded_len());
        assert_eq!(long.generation, 3);
        match long.result {
            Some(ReportResult::Error(e)) => assert!(e.error.ends_with("size limit)")),
            other => panic!("{other:?}"),
        }
        let success = OsInstallationReport {
            generation: 1,
            result: Some(ReportResult::Success(os_installation_report::Success {})),
        };
        assert_eq!(fit_report(success.clone(), 16), success);
    }
}
