//! Helpers for tests that run the real `metropolis-node` binary: parameters files, a node
//! process whose stdout lines are collected, and owner access to the cluster.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use identity::SigningKey;
use prost::Message;
use proto::api::EscrowFromClient;
use proto::api::NodeParameters;
use proto::api::aaa_client::AaaClient;
use proto::api::escrow_from_client::Parameters;
use proto::api::node_parameters::{Cluster, ClusterBootstrap};
use proto::common::ClusterConfiguration;
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use rpc::{ClientCredentials, ServerVerification};
use tonic::transport::Channel;

/// Long enough for etcd + curator start on a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Bootstrap parameters for `owner` with a configuration this node can satisfy (no TPM).
pub fn bootstrap_params(owner: &SigningKey, storage: StorageSecurityPolicy) -> NodeParameters {
    NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: owner.public_key().as_bytes().to_vec(),
            initial_cluster_configuration: Some(ClusterConfiguration {
                tpm_mode: TpmMode::Disabled as i32,
                storage_security_policy: storage as i32,
                ..Default::default()
            }),
            labels: None,
        })),
        network_config: None,
    }
}

/// Writes `params` to `dir/params.pb` and returns the path.
pub fn write_params(dir: &Path, params: &NodeParameters) -> PathBuf {
    let path = dir.join("params.pb");
    std::fs::write(&path, params.encode_to_vec()).expect("write params");
    path
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    stderr: Vec<String>,
    closed: bool,
}

/// A running node process.
pub struct NodeProcess {
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    pub state_dir: PathBuf,
    pub address: String,
}

impl NodeProcess {
    /// Starts `metropolis-node` with these arguments.
    pub fn start(state_dir: &Path, address: &str, params: Option<&Path>) -> NodeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metropolis-node"));
        cmd.arg("--state-dir")
            .arg(state_dir)
            .arg("--address")
            .arg(address)
            .arg("--leader-ttl")
            .arg("2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = params {
            cmd.arg("--parameters").arg(p);
        }
        let mut child = cmd.spawn().expect("spawn metropolis-node");
        let output: Arc<(Mutex<Output>, Condvar)> = Arc::default();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*out;
                m.lock().expect("lock").lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*out;
            m.lock().expect("lock").closed = true;
            cv.notify_all();
        });
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*out;
                m.lock().expect("lock").stderr.push(line);
                cv.notify_all();
            }
        });
        NodeProcess {
            child,
            output,
            state_dir: state_dir.to_path_buf(),
            address: address.to_string(),
        }
    }

    /// Waits for a stdout line containing `needle`; panics with the output on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.output;
        let mut out = m.lock().expect("lock");
        loop {
            if let Some(l) = out.lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline || out.closed {
                panic!(
                    "no line containing {needle:?} (closed: {}); stdout:\n{}\nstderr:\n{}",
                    out.closed,
                    out.lines.join("\n"),
                    out.stderr.join("\n")
                );
            }
            out = cv.wait_timeout(out, deadline - now).expect("wait").0;
        }
    }

    /// The node ID it printed.
    pub fn node_id(&self) -> String {
        self.wait_for("NODE_ID=", START_TIMEOUT)
            .trim()
            .trim_start_matches("NODE_ID=")
            .to_string()
    }

    /// All stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.0.lock().expect("lock").lines.clone()
    }

    /// All stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.output.0.lock().expect("lock").stderr.clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "node did not exit in time; stdout:\n{}\nstderr:\n{}",
                    self.lines().join("\n"),
                    self.stderr().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to `endpoint` verifying it is node `node_id` of the cluster with `ca`.
pub fn channel(endpoint: &str, creds: ClientCredentials, ca: &[u8], node_id: &str) -> Channel {
    let verification = ServerVerification::Cluster {
        ca: ca.to_vec(),
        node_id: Some(node_id.to_string()),
        crl: None,
    };
    let config = rpc::client_tls::client_config(&creds, verification).expect("client config");
    rpc::client_tls::connect_lazy(endpoint, config).expect("endpoint")
}

/// The cluster CA from a node's sealed configuration (plain on the ESP, as upstream without
/// TPM).
pub fn cluster_ca(state_dir: &Path) -> Vec<u8> {
    let bytes = std::fs::read(state_dir.join("esp/metropolis/sealed_configuration.pb"))
        .expect("sealed configuration");
    proto::private::SealedConfiguration::decode(bytes.as_slice())
        .expect("decode")
        .cluster_ca
}

/// Every regular file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Takes ownership (AAA.Escrow with a self-signed owner certificate), retrying while the
/// curator is still starting; returns the owner certificate.
pub async fn escrow(address: &str, owner: &SigningKey, ca: &[u8], node_id: &str) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ch = channel(
            &format!("{address}:7835"),
            ClientCredentials::Ephemeral(owner.clone()),
            ca,
            node_id,
        );
        let request = EscrowFromClient {
            parameters: Some(Parameters {
                requested_identity_name: "owner".to_string(),
                public_key: owner.public_key().as_bytes().to_vec(),
            }),
            proofs: None,
        };
        let result = async {
            let mut stream = AaaClient::new(ch)
                .escrow(tokio_stream::iter([request]))
                .await?
                .into_inner();
            while let Some(msg) = stream.message().await? {
                if !msg.emitted_certificate.is_empty() {
                    return Ok(msg.emitted_certificate);
                }
            }
            Err(tonic::Status::unknown("escrow ended without a certificate"))
        }
        .await;
        match result {
            Ok(cert) => return cert,
            Err(s) if tokio::time::Instant::now() < deadline => {
                eprintln!("escrow not ready: {s:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => panic!("escrow failed: {s:?}"),
        }
    }
}

/// A channel authenticated with the owner certificate.
pub fn owner_channel(
    address: &str,
    port: u16,
    owner: &SigningKey,
    cert: &[u8],
    ca: &[u8],
    id: &str,
) -> Channel {
    channel(
        &format!("{address}:{port}"),
        ClientCredentials::Authenticated {
            certificate: cert.to_vec(),
            key: owner.clone(),
        },
        ca,
        id,
    )
}

/// PIDs of processes whose command line mentions `needle` (e.g. a node's etcd data dir).
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}
