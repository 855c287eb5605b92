//! The agent's heartbeat loop (in-process) against the in-process server: reports that do not
//! fit the server's limits must not stop the machine from heartbeating.

use std::path::Path;
use std::time::Duration;

use bmaas::agent::{Config, ReportLimits, Timing};
use bmdb::queries;
use chrono::{DateTime, Utc};
use identity::SigningKey;
use prost::Message;
use proto::cloud::bmaas::server::api::AgentHardwareReport;
use uuid::Uuid;

use crate::common::{self, TestServer};
use test_support::eventually;

/// A procfs whose cpuinfo makes the hardware report about 2 MiB: every processor has a
/// malformed core ID of a kilobyte, which becomes a warning quoting it.
fn chatty_proc(root: &Path) {
    let proc = root.join("proc");
    std::fs::create_dir_all(&proc).unwrap();
    let garbage = "x".repeat(1024);
    let cpuinfo: String = (0..2000)
        .map(|i| format!("processor\t: {i}\nphysical id\t: 0\ncore id\t: {garbage}\n\n"))
        .collect();
    std::fs::write(proc.join("cpuinfo"), cpuinfo).unwrap();
}

fn agent_config(
    t: &TestServer,
    machine: Uuid,
    key: &SigningKey,
    dir: &Path,
    report_limits: ReportLimits,
) -> Config {
    Config {
        machine_id: machine.to_string(),
        endpoint: t.server().public_address.to_string(),
        ca_certificate: Some(t.tls.ca.clone()),
        key: key.clone(),
        install_target: dir.join("install"),
        timing: Timing {
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_multiplier: 1.5,
            backoff_max: Duration::from_secs(1),
        },
        hwreport_sources: bmaas::hwreport::Sources {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
        },
        report_limits,
    }
}

/// The machine's heartbeat time and its stored hardware report, if any.
async fn tags(
    t: &TestServer,
    machine: Uuid,
) -> (Option<DateTime<Utc>>, Option<AgentHardwareReport>) {
    let tags = t
        .session
        .transact(move |tx| Box::pin(async move { queries::get_machine(tx, machine).await }))
        .await
        .unwrap()
        .unwrap();
    (
        tags.agent_heartbeat.map(|h| h.agent_heartbeat_at),
        tags.hardware_report
            .map(|r| AgentHardwareReport::decode(r.hardware_report_raw.as_slice()).unwrap()),
    )
}

/// Waits until the machine's heartbeat time moves past `after`, i.e. heartbeats keep being
/// recorded after the report was dealt with.
async fn heartbeats_continue(t: &TestServer, machine: Uuid, after: DateTime<Utc>) {
    eventually(Duration::from_secs(20), async || {
        tags(t, machine).await.0.filter(|at| *at > after)
    })
    .await
    .expect("the heartbeat time advancing");
}

/// A report over the server's limit is trimmed by the agent: it is stored (with a warning
/// saying it was trimmed) and the machine keeps heartbeating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hardware_report_is_trimmed_and_heartbeats_go_on() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let dir = tempfile::tempdir().unwrap();
    chatty_proc(dir.path());
    let config = agent_config(&t, machine, &key, dir.path(), ReportLimits::default());
    let agent = tokio::spawn(bmaas::agent::run(config));

    let report = eventually(Duration::from_secs(20), async || tags(&t, machine).await.1)
        .await
        .expect("a stored hardware report");
    assert!(
        report.encoded_len() <= bmaas::server::agent_callback::MAX_HARDWARE_REPORT_BYTES,
        "{} bytes",
        report.encoded_len()
    );
    assert!(
        report.warning.iter().any(|w| w.contains("report trimmed")),
        "{:?}",
        report.warning.last()
    );
    let stored_at = tags(&t, machine).await.0.expect("heartbeat recorded");
    heartbeats_continue(&t, machine, stored_at).await;
    agent.abort();
}

/// A report the server refuses anyway (here: an agent that believes the server takes more
/// than it does) is dropped after its first refusal, and the machine keeps heartbeating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_hardware_report_is_dropped_and_heartbeats_go_on() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let dir = tempfile::tempdir().unwrap();
    chatty_proc(dir.path());
    let limits = ReportLimits {
        hardware_report: bmaas::server::agent_callback::MAX_REQUEST_BYTES,
        ..Default::default()
    };
    let config = agent_config(&t, machine, &key, dir.path(), limits);
    let agent = tokio::spawn(bmaas::agent::run(config));

    // The first heartbeat carries no report.
    let first = eventually(Duration::from_secs(20), async || tags(&t, machine).await.0)
        .await
        .expect("a first heartbeat");
    heartbeats_continue(&t, machine, first).await;
    let (at, report) = tags(&t, machine).await;
    heartbeats_continue(&t, machine, at.unwrap()).await;
    assert_eq!(report, None, "the oversized report was never stored");
    agent.abort();
}
