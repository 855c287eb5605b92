//! A throwaway single-member etcd for tests: the real Debian `etcd` binary (3.4) in a fresh
//! temporary directory, clients on a unix socket like a Metropolis node's member.
//!
//! Every test gets its own member, so tests never see each other's keys and can run in
//! parallel. The member dies with its [`TestEtcd`] and, through PR_SET_PDEATHSIG, with the
//! test process even if that is killed.

mod tail;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use kv::process::set_parent_death_signal;
use kv::{Namespaced, connect_unix};
use tail::Tail;

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a test etcd could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The member did not start.
    #[error("test etcd failed to start: {reason}\n--- last lines of etcd's stderr ---\n{stderr}")]
    Start {
        /// What went wrong.
        reason: String,
        /// The tail of etcd's stderr at the time.
        stderr: String,
    },
}

/// File name of the client socket. etcd 3.4 insists on `host:port` even in unix URLs, so
/// `unix://client.sock:0`, resolved against the working directory, creates this file.
pub const SOCKET_NAME: &str = "client.sock:0";

/// How long a member may take to serve its first request. A cold start takes well under a
/// second; the slack is for loaded CI machines (two cores, parallel builds).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on one readiness probe, so a wedged connection attempt cannot eat the deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The peer port is picked by binding port 0 and releasing it; another process can grab it in
/// between, so a start failing with "address already in use" is retried with a new port.
const START_ATTEMPTS: usize = 3;
/// Longest unix socket path Linux accepts (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Makes member names unique within this process; the pid makes them unique across processes.
static NEXT_MEMBER: AtomicUsize = AtomicUsize::new(0);

/// A running single-member etcd and a client connected to it.
pub struct TestEtcd {
    child: Child,
    client: Client,
    name: String,
    socket: PathBuf,
    data_dir: PathBuf,
    stderr: Tail,
    // Declared last so it is removed after `drop` has killed etcd and `child` is gone.
    dir: TempDir,
}

impl TestEtcd {
    /// Starts a member and waits until it serves requests.
    pub async fn start() -> Result<Self> {
        Self::start_with_args(&[]).await
    }

    async fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(extra_args).await {
                Err(Error::Start { stderr, .. })
                    if attempt < START_ATTEMPTS && stderr.contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(extra_args: &[&str]) -> Result<Self> {
        let fail = |reason: String| Error::Start {
            reason,
            stderr: String::new(),
        };
        let dir = tempfile::Builder::new()
            .prefix("kv-etcd-")
            .tempdir()
            .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
        let socket = dir.path().join(SOCKET_NAME);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(fail(format!(
                "socket path {} is too long for a unix socket; point TMPDIR somewhere shorter",
                socket.display()
            )));
        }
        let data_dir = dir.path().join("data");
        let peer_url = format!("http://127.0.0.1:{}", free_port().map_err(fail)?);
        let name = format!(
            "test-{}-{}",
            std::process::id(),
            NEXT_MEMBER.fetch_add(1, Ordering::Relaxed)
        );

        let mut cmd = Command::new("etcd");
        cmd.current_dir(dir.path())
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(format!("unix://{SOCKET_NAME}"))
            .arg("--advertise-client-urls")
            .arg(format!("unix://{SOCKET_NAME}"))
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("{name}={peer_url}"))
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &name])
            // 3.4 defaults to the deprecated capnslog logger, which ignores --log-outputs.
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "no `etcd` on PATH; install Debian's etcd-server (`make deps`)".to_string()
            } else {
                format!("cannot run etcd: {e}")
            })
        })?;

        let stderr = Tail::default();
        let reader = child
            .stderr
            .take()
            .map(|pipe| stderr.collect(pipe, name.clone()));
        match wait_ready(&mut child, &socket).await {
            Ok(client) => Ok(TestEtcd {
                child,
                client,
                name,
                socket,
                data_dir,
                stderr,
                dir,
            }),
            Err(reason) => {
                let _ = child.kill().await;
                // etcd is gone, so its stderr is at EOF: let the reader drain it for the message.
                if let Some(reader) = reader {
                    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
                }
                Err(Error::Start {
                    reason,
                    stderr: stderr.text(),
                })
            }
        }
    }

    /// A client of the member (a cheap clone of the one used for the readiness check).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The raw keyspace of the member.
    pub fn root(&self) -> Namespaced {
        Namespaced::root(self.client())
    }

    /// The namespace `namespaced:<part>/` of the member.
    pub fn namespaced(&self, part: &str) -> kv::Result<Namespaced> {
        self.root().sub(part)
    }

    /// The client unix socket, for [`kv::connect_unix`] or `etcdctl --endpoints unix://…`.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding socket and data, removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The etcd process ID (`None` once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines etcd wrote to stderr (warnings and errors only).
    pub fn log_tail(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        // Best effort: SIGKILL, then reap it so the temporary directory is removed only after
        // etcd stopped writing to it. SIGKILL takes effect in milliseconds; the bound only
        // guards against a process stuck in the kernel. Blocking here is brief and tests only.
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Ok(None) = self.child.try_wait() {
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Waits until etcd answers a Status request on `socket`, or fails with the reason.
async fn wait_ready(child: &mut Child, socket: &Path) -> std::result::Result<Client, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error = "the client socket never appeared".to_string();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("etcd exited ({status}) before it was ready")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot check on the etcd process: {e}")),
        }
        if socket.exists() {
            let budget = PROBE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(budget, probe(socket)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("a status request took longer than {budget:?}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready after {START_TIMEOUT:?}; last problem: {last_error}"
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn probe(socket: &Path) -> kv::Result<Client> {
    let mut client = connect_unix(socket).await?;
    client.status().await?;
    Ok(client)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::result::Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot pick a free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failed_start_reports_etcd_stderr() {
        let err = match TestEtcd::start_with_args(&["--no-such-flag-for-etcd"]).await {
            Ok(_) => panic!("etcd accepted a bogus flag"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains("exited"), "{msg}");
        assert!(msg.contains("no-such-flag-for-etcd"), "{msg}");
    }
}
