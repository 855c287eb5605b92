//! The etcd child process: its command line, its logs (etcd's zap JSON on stderr, parsed into
//! leveled logtree entries) and its lifetime (it dies with the node: SIGTERM when the runnable
//! stops, PR_SET_PDEATHSIG if the node process is killed).

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::{Config, METRICS_SOCKET_NAME, SOCKET_NAME};
use crate::error::Error;
use crate::membership::ExistingNode;

/// How long etcd gets to shut down cleanly after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How the member is started.
#[derive(Debug, Clone)]
pub enum Mode {
    /// PKI bootstrap: a brand-new single-member cluster with plain-HTTP peers on the node's own
    /// address (not 127.0.0.1 as upstream: several nodes share this host's loopback), reachable
    /// only by us through the socket.
    Bootstrap,
    /// The real member with TLS peers. `initial_cluster` lists the other voting members when
    /// joining; etcd ignores it when the data directory already exists (restart from disk).
    Full {
        initial_cluster: Vec<ExistingNode>,
        existing: bool,
    },
}

/// A running etcd member.
pub struct EtcdProcess {
    child: Child,
    name: String,
}

impl EtcdProcess {
    /// Starts etcd for `config` in `mode`, its stderr flowing into `logs` (a logtree sink).
    pub fn spawn(
        config: &Config,
        mode: &Mode,
        logs: impl FnMut(&str) + Send + 'static,
    ) -> Result<Self, Error> {
        let io = |what, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { what, path, source }
        };
        std::fs::create_dir_all(&config.ephemeral_dir)
            .map_err(io("creating", &config.ephemeral_dir))?;
        std::fs::create_dir_all(&config.data_dir).map_err(io("creating", &config.data_dir))?;
        // A stale socket from a killed predecessor would make etcd fail to listen.
        for name in [SOCKET_NAME, METRICS_SOCKET_NAME] {
            let socket = config.ephemeral_dir.join(name);
            if socket.exists() {
                std::fs::remove_file(&socket).map_err(io("removing stale socket", &socket))?;
            }
        }

        let name = config.name();
        let mut cmd = Command::new(&config.etcd_binary);
        cmd.current_dir(&config.ephemeral_dir)
            .args(args(config, mode))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        kv::process::set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Process(format!("starting {}: {e}", config.etcd_binary.display()))
        })?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let _ = logtree::pipe_lines(stderr, logs).await;
            });
        }
        Ok(Self { child, name })
    }

    /// The process ID (None once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until etcd exits by itself.
    pub async fn wait(&mut self) -> Result<ExitStatus, Error> {
        self.child
            .wait()
            .await
            .map_err(|e| Error::Process(format!("waiting for etcd {}: {e}", self.name)))
    }

    /// Stops etcd: SIGTERM, then SIGKILL after [`STOP_GRACE`]. Returns once it has exited.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            terminate(pid);
            if tokio::time::timeout(STOP_GRACE, self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
            tracing::warn!(
                "etcd {} ignored SIGTERM for {STOP_GRACE:?}, killing it",
                self.name
            );
        }
        let _ = self.child.kill().await;
    }
}

/// Sends SIGTERM to a child we spawned and have not reaped yet (so the pid cannot have been
/// reused). An error means it is already gone, which the caller's wait observes either way.
fn terminate(pid: u32) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
}

fn args(config: &Config, mode: &Mode) -> Vec<String> {
    let name = config.name();
    let socket = format!("unix://{SOCKET_NAME}");
    let mut a: Vec<String> = vec![
        "--name".into(),
        name.clone(),
        "--data-dir".into(),
        config.etcd_data_dir().display().to_string(),
        "--listen-client-urls".into(),
        socket.clone(),
        "--advertise-client-urls".into(),
        socket,
        "--initial-cluster-token".into(),
        crate::CLUSTER_TOKEN.into(),
        "--logger".into(),
        "zap".into(),
        "--log-outputs".into(),
        "stderr".into(),
        "--log-level".into(),
        "info".into(),
        // The v2 API is off: nothing uses it and it has no auth.
        "--enable-v2=false".into(),
        // Prometheus metrics on a unix socket of their own, which the node's metrics service
        // proxies to the owner (see `Config::metrics_socket_path`).
        "--listen-metrics-urls".into(),
        format!("unix://{METRICS_SOCKET_NAME}"),
        // History is compacted by etcd itself; without it every overwrite stays forever.
        "--auto-compaction-mode".into(),
        "revision".into(),
        "--auto-compaction-retention".into(),
        config.history_revisions.to_string(),
        // Raft pre-vote (etcd 3.5's default, off in 3.4): a member cut off from the others
        // does not keep raising its term, so when it comes back it does not depose the
        // majority's raft leader. Without it every heal of a partition left the cluster
        // without a raft leader for seconds, long enough for every curator's lease keep-alive
        // to go unanswered and leadership to be decided afresh (the returning node could win).
        "--pre-vote=true".into(),
        // Raft timing: a crashed raft leader is replaced after 0.5–1 s instead of etcd's
        // 1–2 s (the raft election is part of every failover of a curator leader whose
        // member led raft, and etcd's new raft leader then extends every lease by one
        // election timeout more). Members share a host or a LAN: 100 ms heartbeats are
        // many round trips, and 5 missed in a row are needed before an election starts.
        "--heartbeat-interval".into(),
        "100".into(),
        "--election-timeout".into(),
        "500".into(),
    ];
    if let Some(quota) = config.quota_backend_bytes {
        a.extend(["--quota-backend-bytes".into(), quota.to_string()]);
    }
    match mode {
        Mode::Bootstrap => {
            let host = match config.address {
                std::net::IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            };
            let url = format!("http://{host}:{}", config.peer_port);
            a.extend([
                "--listen-peer-urls".into(),
                url.clone(),
                "--initial-advertise-peer-urls".into(),
                url.clone(),
                "--initial-cluster".into(),
                format!("{name}={url}"),
                "--initial-cluster-state".into(),
                "new".into(),
            ]);
        }
        Mode::Full {
            initial_cluster,
            existing,
        } => {
            let pki = config.peer_pki();
            let url = config.peer_url();
            let mut cluster = vec![format!("{name}={url}")];
            cluster.extend(
                initial_cluster
                    .iter()
                    .filter(|n| n.name != name)
                    .map(|n| format!("{}={}", n.name, n.url)),
            );
            a.extend([
                "--listen-peer-urls".into(),
                url.clone(),
                "--initial-advertise-peer-urls".into(),
                url,
                "--initial-cluster".into(),
                cluster.join(","),
                "--initial-cluster-state".into(),
                if *existing { "existing" } else { "new" }.into(),
                "--peer-cert-file".into(),
                pki.cert().display().to_string(),
                "--peer-key-file".into(),
                pki.key().display().to_string(),
                "--peer-trusted-ca-file".into(),
                pki.ca().display().to_string(),
                "--peer-client-cert-auth".into(),
                "--peer-crl-file".into(),
                pki.crl().display().to_string(),
            ]);
            if !config.peer_client_san_check {
                // See [`Config::peer_client_san_check`]: members sharing a loopback only.
                a.push("--experimental-peer-skip-client-san-verification".into());
            }
        }
    }
    a
}
