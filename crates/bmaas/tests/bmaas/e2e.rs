//! End to end with the real binaries: `bmaas-server --srv-dev-certs --bmdb-eat-my-data` and a
//! `bmaas-agent` heartbeating into it, driven through the Operator API like an operator would.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use identity::SigningKey;
use prost::Message;
use proto::api::NodeParameters;
use proto::cloud::agent::api::{AgentInit, TakeoverInit};
use proto::cloud::bmaas::server::api::operator_client::OperatorClient;
use proto::cloud::bmaas::server::api::os_installation_report::Result as ReportResult;
use proto::cloud::bmaas::server::api::{
    EnrollMachineRequest, ListMachinesRequest, Machine, RequestOsInstallationRequest,
};
use tonic::transport::Channel;

use test_support::eventually;

use crate::common;

/// A child process, killed on drop; its stderr log is printed if the test fails.
struct Proc {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { name, child, log }
    }

    /// SIGTERM, then the exit status (bounded wait; async so that this test's own gRPC
    /// connections keep being served, e.g. their GOAWAY handled, while we wait).
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let child = &mut self.child;
        eventually(Duration::from_secs(20), async || child.try_wait().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{} ignored SIGTERM: {e}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- {} stderr -----\n{log}", self.name);
        }
    }
}

async fn machines(op: &mut OperatorClient<Channel>) -> Vec<Machine> {
    op.list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner()
        .machines
}

#[tokio::test]
async fn agent_binary_reports_into_server_binary() {
    common::init_logging();
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");

    // The server, on a throwaway PostgreSQL of its own.
    let mut server = Proc::spawn(
        "bmaas-server",
        Command::new(env!("CARGO_BIN_EXE_bmaas-server"))
            .args(["--srv-dev-certs", "--bmdb-eat-my-data"])
            .arg("--srv-dev-certs-path")
            .arg(&certs)
            .args(["--srv-grpc-listen-address", "127.0.0.1:0"])
            .args(["--srv-public-grpc-listen-address", "127.0.0.1:0"])
            .args(["--webug-listen-address", "127.0.0.1:0"])
            .stdout(Stdio::piped()),
        dir.path(),
    );
    let stdout = server.child.stdout.take().unwrap();
    // Read the announced addresses, then keep draining stdout so the server never writes
    // into a closed pipe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let (mut internal, mut public, mut tx) = (None, None, Some(tx));
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("internal gRPC listening on ") {
                internal = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("public gRPC listening on ") {
                public = Some(a.to_string());
            }
            if internal.is_some()
                && public.is_some()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((internal.clone(), public.clone()));
            }
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send((internal, public));
        }
    });
    let (internal, public) = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("server did not announce its addresses within 60 s")
        .unwrap();
    let (internal, public) = (
        internal.expect("server exited before listening"),
        public.expect("server exited before listening"),
    );

    eprintln!("server listening after {:?}", t0.elapsed());

    // An operator with a certificate of the same dev CA enrolls the machine.
    let op_tls = bmaas::devcerts::dev_certs(&certs, "operator").unwrap();
    let config = bmaas::server::tls::internal_client_config(&op_tls).unwrap();
    let mut op = OperatorClient::new(rpc::client_tls::connect(&internal, config).await.unwrap());
    let key = SigningKey::generate().unwrap();
    let machine_id = op
        .enroll_machine(EnrollMachineRequest {
            provider: "None".into(),
            provider_id: "e2e".into(),
            agent_public_key: key.public_key().as_bytes().to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .machine_id;

    // The takeover's output: the agent's init file.
    let init = AgentInit {
        takeover_init: Some(TakeoverInit {
            machine_id: machine_id.clone(),
            bmaas_endpoint: public.clone(),
            ca_certificate: op_tls.ca.clone(),
        }),
        private_key: key.to_keypair_bytes().to_vec(),
        network_config: None,
    };
    let init_path = dir.path().join("init.pb");
    std::fs::write(&init_path, init.encode_to_vec()).unwrap();
    let target = dir.path().join("install");
    let started = std::time::Instant::now();
    let mut agent = Proc::spawn(
        "bmaas-agent",
        Command::new(env!("CARGO_BIN_EXE_bmaas-agent"))
            .arg("--init")
            .arg(&init_path)
            .arg("--install-target")
            .arg(&target)
            .args(["--heartbeat-interval", "200ms", "--heartbeat-timeout", "5s"])
            .args(["--backoff-initial", "100ms", "--backoff-max", "1s"])
            .stdout(Stdio::null()),
        dir.path(),
    );

    // The hardware report lands in the BMDB.
    let m = eventually(Duration::from_secs(60), || {
        let mut op = op.clone();
        async move {
            machines(&mut op)
                .await
                .into_iter()
                .find(|m| m.hardware_report.is_some())
        }
    })
    .await
    .expect("hardware report in the BMDB");
    eprintln!(
        "hardware report landed {:?} after starting the agent",
        started.elapsed()
    );
    let report = m.hardware_report.unwrap();
    let node = report.report.unwrap();
    let local = bmaas::hwreport::gather().report.unwrap();
    assert_eq!(node.cpu, local.cpu, "the agent reports this machine's CPUs");
    assert_eq!(node.memory_installed_bytes, local.memory_installed_bytes);
    assert!(node.memory_installed_bytes > 0);
    assert_eq!(node.block_device.len(), local.block_device.len());
    assert!(m.agent_heartbeat.is_some());

    // An installation onto a disk the machine does not have fails, and says why.
    let request = |root: &str| RequestOsInstallationRequest {
        machine_id: machine_id.clone(),
        node_parameters: Some(NodeParameters {
            network_config: Some(Default::default()),
            ..Default::default()
        }),
        root_device: root.into(),
    };
    let g1 = op
        .request_os_installation(request("no-such-disk"))
        .await
        .unwrap()
        .into_inner()
        .generation;
    let r1 = eventually(Duration::from_secs(30), || {
        let mut op = op.clone();
        async move {
            machines(&mut op)
                .await
                .into_iter()
                .find_map(|m| m.os_installation_report.filter(|r| r.generation == g1))
        }
    })
    .await
    .expect("installation report 1");
    match r1.result {
        Some(ReportResult::Error(e)) => assert!(e.error.contains("no-such-disk"), "{}", e.error),
        other => panic!("expected an error report, got {other:?}"),
    }

    // Onto a real disk of the machine (if it has any) it succeeds.
    let root = node
        .block_device
        .first()
        .and_then(|_| {
            std::fs::read_dir("/sys/class/block")
                .ok()?
                .flatten()
                .find_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let real = std::fs::canonicalize(e.path()).ok()?;
                    (!real.to_string_lossy().contains("/virtual/")
                        && !e.path().join("partition").exists())
                    .then_some(name)
                })
        })
        .unwrap_or_default();
    let g2 = op
        .request_os_installation(request(&root))
        .await
        .unwrap()
        .into_inner()
        .generation;
    assert_eq!(g2, g1 + 1);
    let r2 = eventually(Duration::from_secs(30), || {
        let mut op = op.clone();
        async move {
            machines(&mut op)
                .await
                .into_iter()
                .find_map(|m| m.os_installation_report.filter(|r| r.generation == g2))
        }
    })
    .await
    .expect("installation report 2");
    assert!(
        matches!(r2.result, Some(ReportResult::Success(_))),
        "{:?}",
        r2.result
    );
    let written = std::fs::read(target.join("parameters.pb")).unwrap();
    assert_eq!(
        NodeParameters::decode(written.as_slice()).unwrap(),
        request("").node_parameters.unwrap()
    );
    assert_eq!(
        std::fs::metadata(target.join("parameters.pb"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(target.join("installation.json")).unwrap()).unwrap();
    assert_eq!(meta["generation"], g2);
    assert_eq!(meta["machine_id"], machine_id.as_str());

    // The agent keeps heartbeating after its report was acknowledged.
    let at = |m: &Machine| {
        let t = m.agent_heartbeat.as_ref()?.heartbeat_at.as_ref()?;
        Some((t.seconds, t.nanos))
    };
    let before = at(&machines(&mut op).await[0]).unwrap();
    eventually(Duration::from_secs(10), || {
        let mut op = op.clone();
        async move { (at(&machines(&mut op).await[0])? > before).then_some(()) }
    })
    .await
    .expect("a later heartbeat");

    eprintln!("installations reported after {:?}", t0.elapsed());

    // Both stop cleanly on SIGTERM; the server takes its PostgreSQL with it.
    assert!(agent.terminate().await.success());
    eprintln!("agent stopped after {:?}", t0.elapsed());
    assert!(server.terminate().await.success());
    eprintln!("both stopped after {:?}", t0.elapsed());
    let log = std::fs::read_to_string(&server.log).unwrap();
    let pg_dir = log
        .split("?host=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|d| d.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| panic!("no throwaway PostgreSQL in the log: {log}"));
    assert!(
        pg_dir.starts_with(&*std::env::temp_dir().to_string_lossy()),
        "{pg_dir}"
    );
    assert!(
        !Path::new(pg_dir).exists(),
        "{pg_dir} left behind; server log:\n{log}"
    );
}
