//! One emulated machine: a `metropolis-node` process bound to its own loopback address, with a
//! state directory that survives restarts: powering off is a SIGKILL, powering on a restart
//! with the same directories, a reboot a restart that is expected to Join.
//!
//! A [`Node`] starts the process as the leader of a new process group, so that powering it off
//! kills it *and* every child it started (its etcd member) at the same instant, like a machine
//! losing power; a clean stop sends SIGTERM to the node alone and lets it shut its children
//! down. Its stdout and stderr are captured line by line: into memory (for [`Node::logs`] and
//! the waiters), into `node.log` next to its state directory, and optionally echoed to our
//! stderr. Two stdout lines of the node's CLI contract drive the waiters: `NODE_ID=<id>` and
//! `NODE_READY`.
//!
//! Nothing outlives its owner: the process group is SIGKILLed when the last handle is dropped,
//! tokio kills the direct child when its supervisor task is dropped (runtime shutdown), and the
//! kernel SIGKILLs it if the spawning thread dies (PR_SET_PDEATHSIG), e.g. when a test process
//! is killed.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::sys::{self, Signal};

/// stdout line prefix by which a node announces its ID (node CLI contract).
pub const NODE_ID_MARKER: &str = "NODE_ID=";
/// stdout line by which a node announces it is enrolled/joined and has pushed its status.
pub const READY_MARKER: &str = "NODE_READY";
/// Prefix that marks a stderr line among a node's output lines (stdout lines are kept as
/// they are).
pub const STDERR_PREFIX: &str = "[stderr] ";
/// Exit code of a clean stop (SIGTERM/SIGINT).
pub const EXIT_CLEAN: i32 = 0;
/// Exit code of a fatal error.
pub const EXIT_FATAL: i32 = 1;
/// Exit code of a node that was deleted or decommissioned: it must not be started again.
pub const EXIT_GONE: i32 = 3;
/// Exit code of a node asking to be rebooted: the launcher starts it again.
pub const EXIT_REBOOT: i32 = 4;

/// How long a clean stop may take before the node is killed: etcd and the curator need a few
/// seconds to hand over, a hung node must not hang the caller.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a SIGKILLed node may take to be reaped and its output drained.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long the output readers may keep going after the process exited (a grandchild holding
/// the pipe open is killed with the group, so this only bounds pathological cases).
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// Pause before a node that asked for a reboot (or failed, with [`RestartPolicy::OnFailure`])
/// is started again: the time a real machine spends in firmware, and a bound on crash loops.
const REBOOT_DELAY: Duration = Duration::from_millis(500);
const FAILURE_REBOOT_DELAY: Duration = Duration::from_secs(5);
/// Log lines kept in memory per node (all of them are in `node.log`).
const MEMORY_LINES: usize = 100_000;
/// Log lines quoted in errors.
const TAIL_LINES: usize = 30;

/// When the launcher starts a node again by itself after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Only when the node asked for it (exit code [`EXIT_REBOOT`]), like firmware booting the
    /// machine again. Tests use this: a fatal error must show, not be papered over.
    #[default]
    OnRebootRequest,
    /// Also after fatal errors (any exit but [`EXIT_CLEAN`] and [`EXIT_GONE`], and deaths by
    /// signal we did not send), after a pause: upstream nodes reboot on every fatal error.
    OnFailure,
    /// Never.
    Never,
}

/// How a node process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// Waiting for it failed (it is gone, but how is unknown).
    Unknown(String),
}

impl Exit {
    /// The exit code, if it exited by itself.
    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(*code),
            _ => None,
        }
    }

    fn from_status(status: std::io::Result<ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Unknown(format!("{status}")),
            },
            Err(e) => Exit::Unknown(format!("waiting for the process failed: {e}")),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => {
                let meaning = match *code {
                    EXIT_CLEAN => " (clean stop)",
                    EXIT_FATAL => " (fatal error)",
                    EXIT_GONE => " (deleted/decommissioned)",
                    EXIT_REBOOT => " (reboot requested)",
                    _ => "",
                };
                write!(f, "exit code {code}{meaning}")
            }
            Exit::Signal(signal) => {
                use rustix::process::Signal;
                let name = [
                    (Signal::KILL, " (SIGKILL)"),
                    (Signal::TERM, " (SIGTERM)"),
                    (Signal::ABORT, " (SIGABRT)"),
                    (Signal::SEGV, " (SIGSEGV)"),
                ]
                .into_iter()
                .find(|(s, _)| s.as_raw() == *signal)
                .map_or("", |(_, name)| name);
                write!(f, "killed by signal {signal}{name}")
            }
            Exit::Unknown(why) => write!(f, "exited, status unknown: {why}"),
        }
    }
}

/// Everything needed to run one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Position in the cluster (node 0 bootstraps it).
    pub index: usize,
    /// The node's own address; its services listen on the fixed Metropolis ports there.
    pub address: Ipv4Addr,
    /// Its `--state-dir` (`esp/`, `data/`, `ephemeral/` inside); `node.log` and
    /// `parameters.pb` are kept there too.
    pub dir: PathBuf,
    /// The `metropolis-node` binary.
    pub binary: PathBuf,
    /// NodeParameters file passed as `--parameters` on every boot.
    pub parameters: Option<PathBuf>,
    /// `--etcd`, if the node's default is not wanted.
    pub etcd: Option<PathBuf>,
    /// `--leader-ttl` in seconds, if the node's default (3 s) is not wanted.
    pub leader_ttl: Option<u32>,
    /// `--etcd-skip-peer-client-san-check`: for nodes sharing this host's loopback, which all
    /// connect to their peers from 127.0.0.1. A node with an address of its own (a test host)
    /// keeps etcd's check on.
    pub skip_peer_client_san_check: bool,
    /// More arguments, appended as given.
    pub extra_args: Vec<String>,
    /// Environment variables set for the node process (on top of ours), e.g. `FAILPOINTS`
    /// for a node built with failpoints.
    pub env: Vec<(String, String)>,
    /// A command the node is run through, e.g. `ip netns exec <ns>` to run it as a test host
    /// in a network namespace of its own; empty: the binary is started directly. The wrapper
    /// must exec the node in place (keep its process ID), so that signals reach the node.
    pub wrapper: Vec<String>,
    /// Echo every output line to our stderr as `[node<i>] <line>`.
    pub echo: bool,
    /// What to do when the process exits by itself.
    pub restart: RestartPolicy,
}

impl NodeConfig {
    /// Where the node's output is appended, across boots.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--state-dir".to_string(),
            self.dir.display().to_string(),
            "--address".to_string(),
            self.address.to_string(),
        ];
        if let Some(parameters) = &self.parameters {
            args.push("--parameters".to_string());
            args.push(parameters.display().to_string());
        }
        if let Some(etcd) = &self.etcd {
            args.push("--etcd".to_string());
            args.push(etcd.display().to_string());
        }
        if let Some(ttl) = self.leader_ttl {
            args.push("--leader-ttl".to_string());
            args.push(ttl.to_string());
        }
        if self.skip_peer_client_san_check {
            args.push("--etcd-skip-peer-client-san-check".to_string());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A handle to one node process; clones share it. The process group is killed when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Node {
    handle: Arc<Handle>,
}

/// Kills the node when the last [`Node`] handle goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopping = true;
        if let Some(pid) = state.pid {
            sys::signal_group(pid, Signal::Kill);
        }
    }
}

/// What the handles, the supervisor and the output readers share.
struct Shared {
    config: NodeConfig,
    state: Mutex<State>,
    /// Bumped on every change of `state` that a waiter may care about.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Number of times the node was started; 1 is the first boot.
    boot: u32,
    /// The running process (also its process group), until it is reaped.
    pid: Option<u32>,
    /// A process was started and its end not fully recorded yet (it runs, or its output is
    /// still being drained).
    active: bool,
    /// A stop or kill was asked for: do not restart it.
    stopping: bool,
    /// The supervisor decided to start it again after its last exit.
    restart_pending: bool,
    /// The node ID it announced (survives restarts).
    id: Option<String>,
    /// The boot in which it last announced readiness.
    ready_boot: Option<u32>,
    /// How the current (or last) boot ended.
    exit: Option<Exit>,
    /// Every boot's end, in order.
    exits: Vec<(u32, Exit)>,
    /// Recent output lines, across boots.
    lines: VecDeque<Line>,
    /// Sequence number of the next line.
    next_seq: u64,
    /// `node.log`, opened on first start.
    log: Option<File>,
}

#[derive(Clone)]
struct Line {
    seq: u64,
    boot: u32,
    text: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl State {
    fn tail(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        let lines: Vec<&str> = self
            .lines
            .iter()
            .skip(skip)
            .map(|l| l.text.as_str())
            .collect();
        if lines.is_empty() {
            "(no output)".to_string()
        } else {
            lines.join("\n")
        }
    }

    fn write_log(&mut self, text: &str) {
        if let Some(log) = &mut self.log {
            // A full disk must not take the cluster down; the lines are still in memory.
            let _ = writeln!(log, "{text}");
        }
    }
}

impl Node {
    /// A node that is not running yet; [`Node::start`] powers it on.
    pub fn new(config: NodeConfig) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            handle: Arc::new(Handle {
                shared: Arc::new(Shared {
                    config,
                    state: Mutex::new(State::default()),
                    changed,
                }),
            }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Its configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.shared().config
    }

    /// Position in the cluster.
    pub fn index(&self) -> usize {
        self.config().index
    }

    /// The node's address (its services listen there on the fixed ports).
    pub fn address(&self) -> Ipv4Addr {
        self.config().address
    }

    /// `address:7835`, where its curator listens (if it runs one).
    pub fn curator_endpoint(&self) -> String {
        format!("{}:{}", self.address(), rpc::CURATOR_PORT)
    }

    /// `address:7839`, where its NodeManagement service listens.
    pub fn node_management_endpoint(&self) -> String {
        format!("{}:{}", self.address(), rpc::NODE_MANAGEMENT_PORT)
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.config().dir
    }

    /// Its `data/` directory (encrypted at rest unless the storage is INSECURE).
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// Its `esp/metropolis/` directory (parameters, sealed configuration, cluster directory).
    pub fn esp_dir(&self) -> PathBuf {
        self.dir().join("esp").join("metropolis")
    }

    /// Where its output is appended, across boots.
    pub fn log_path(&self) -> PathBuf {
        self.config().log_path()
    }

    /// The node ID it announced (`NODE_ID=` line), once it did.
    pub fn id(&self) -> Option<String> {
        self.shared().lock().id.clone()
    }

    /// Number of times it was started.
    pub fn boot(&self) -> u32 {
        self.shared().lock().boot
    }

    /// The PID of its process while it runs (an update by kexec keeps it).
    pub fn pid(&self) -> Option<u32> {
        self.shared().lock().pid
    }

    /// Whether its process is alive.
    pub fn is_running(&self) -> bool {
        self.shared().lock().pid.is_some()
    }

    /// How its current (or last) boot ended; None while it runs.
    pub fn exit(&self) -> Option<Exit> {
        let state = self.shared().lock();
        if state.active {
            None
        } else {
            state.exit.clone()
        }
    }

    /// The exit code of its last boot, if it ended by exiting.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit().and_then(|e| e.code())
    }

    /// Every boot's end so far, `(boot, how)`.
    pub fn exits(&self) -> Vec<(u32, Exit)> {
        self.shared().lock().exits.clone()
    }

    /// Whether it runs and announced readiness in its current boot.
    pub fn is_ready(&self) -> bool {
        let state = self.shared().lock();
        state.pid.is_some() && state.ready_boot == Some(state.boot) && state.boot > 0
    }

    /// Its output lines kept in memory (the last 100 000, across boots; `node.log` has all).
    pub fn logs(&self) -> Vec<String> {
        self.shared()
            .lock()
            .lines
            .iter()
            .map(|l| l.text.clone())
            .collect()
    }

    /// Its output lines of the current boot (as far as kept in memory).
    pub fn boot_logs(&self) -> Vec<String> {
        let state = self.shared().lock();
        state
            .lines
            .iter()
            .filter(|l| l.boot == state.boot)
            .map(|l| l.text.clone())
            .collect()
    }

    /// Whether any kept output line (any boot) contains `needle`.
    pub fn logs_contain(&self, needle: &str) -> bool {
        self.shared()
            .lock()
            .lines
            .iter()
            .any(|l| l.text.contains(needle))
    }

    /// The last `n` output lines, joined.
    pub fn tail(&self, n: usize) -> String {
        self.shared().lock().tail(n)
    }

    /// Powers the node on: starts its process on the same state directory. Fails if it runs.
    pub fn start(&self) -> Result<()> {
        Shared::start(self.shared())
    }

    /// Powers the node off without waiting (for destructors): SIGKILL to its process group.
    pub fn kill_now(&self) {
        let mut state = self.shared().lock();
        state.stopping = true;
        if let Some(pid) = state.pid {
            sys::signal_group(pid, Signal::Kill);
        }
    }

    /// Powers the node off: SIGKILL to it and all its children at once; returns once it is
    /// gone. Its state directory stays as a power cut leaves it.
    pub async fn kill(&self) -> Result<Exit> {
        let pid = {
            let mut state = self.shared().lock();
            state.stopping = true;
            state.pid
        };
        if let Some(pid) = pid {
            sys::signal_group(pid, Signal::Kill);
        }
        self.wait_exit(KILL_WAIT).await
    }

    /// Stops the node cleanly (SIGTERM, SIGKILL after [`STOP_GRACE`]); returns how it ended.
    /// A node that is not running returns its last exit.
    pub async fn stop(&self) -> Result<Exit> {
        self.stop_within(STOP_GRACE).await
    }

    /// [`Node::stop`] with another grace period.
    pub async fn stop_within(&self, grace: Duration) -> Result<Exit> {
        let pid = {
            let mut state = self.shared().lock();
            state.stopping = true;
            state.pid
        };
        let Some(pid) = pid else {
            return self.wait_exit(KILL_WAIT).await;
        };
        sys::signal_process(pid, Signal::Term);
        match self.wait_exit(grace).await {
            Ok(exit) => Ok(exit),
            Err(Error::Timeout { .. }) => {
                tracing::warn!(
                    node = self.index(),
                    "node ignored SIGTERM for {grace:?}, killing it"
                );
                self.kill().await
            }
            Err(e) => Err(e),
        }
    }

    /// Reboots the node: a clean stop, then a start on the same state directory (it is
    /// expected to Join). Use [`Node::wait_ready`] to wait for it to be back.
    pub async fn reboot(&self) -> Result<()> {
        self.stop().await?;
        self.start()
    }

    /// A hard reset: power off, power on.
    pub async fn power_cycle(&self) -> Result<()> {
        self.kill().await?;
        self.start()
    }

    /// Freezes the node and its children (SIGSTOP): to its peers it hangs, like a partition.
    pub fn freeze(&self) {
        if let Some(pid) = self.shared().lock().pid {
            sys::signal_group(pid, Signal::Stop);
        }
    }

    /// Lets a frozen node go on (SIGCONT).
    pub fn thaw(&self) {
        if let Some(pid) = self.shared().lock().pid {
            sys::signal_group(pid, Signal::Cont);
        }
    }

    /// Waits until the node announced readiness (`NODE_READY`) in its current boot. Fails at
    /// once if it exits meanwhile (and is not being restarted).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.wait_until(
            &format!("node {} to be ready ({READY_MARKER})", self.index()),
            timeout,
            true,
            |state| (state.boot > 0 && state.ready_boot == Some(state.boot)).then_some(()),
        )
        .await
    }

    /// Waits until the node announced its ID (`NODE_ID=` line) and returns it.
    pub async fn wait_id(&self, timeout: Duration) -> Result<String> {
        self.wait_until(
            &format!(
                "node {} to announce its ID ({NODE_ID_MARKER})",
                self.index()
            ),
            timeout,
            true,
            |state| state.id.clone(),
        )
        .await
    }

    /// Waits until an output line of the current boot contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let mut scanned = 0u64;
        self.wait_until(
            &format!("node {} to log {needle:?}", self.index()),
            timeout,
            true,
            |state| {
                let found = state
                    .lines
                    .iter()
                    .filter(|l| l.seq >= scanned && l.boot == state.boot)
                    .find(|l| l.text.contains(needle))
                    .map(|l| l.text.clone());
                scanned = state.next_seq;
                found
            },
        )
        .await
    }

    /// Waits until the process has exited (and is not being restarted); returns how.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<Exit> {
        if self.boot() == 0 {
            return Err(Error::Invalid(format!(
                "node {} was never started",
                self.index()
            )));
        }
        self.wait_until(
            &format!("node {} to exit", self.index()),
            timeout,
            false,
            |state| {
                if state.active || state.restart_pending {
                    None
                } else {
                    state.exit.clone()
                }
            },
        )
        .await
    }

    async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        fail_on_exit: bool,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Result<T> {
        let shared = self.shared();
        let mut changed = shared.changed.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            {
                let state = shared.lock();
                if let Some(value) = check(&state) {
                    return Ok(value);
                }
                if fail_on_exit && !state.active && !state.restart_pending {
                    let status = match &state.exit {
                        Some(exit) => exit.to_string(),
                        None => "never started".to_string(),
                    };
                    return Err(Error::NodeExited {
                        index: shared.config.index,
                        status,
                        what: what.to_string(),
                        tail: state.tail(TAIL_LINES),
                    });
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(_) => {}
                Err(_) => {
                    let state = shared.lock();
                    return Err(Error::Timeout {
                        what: what.to_string(),
                        after: timeout,
                        last: format!("\n{}", state.tail(TAIL_LINES)),
                    });
                }
            }
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared().lock();
        f.debug_struct("Node")
            .field("index", &self.index())
            .field("address", &self.address())
            .field("id", &state.id)
            .field("boot", &state.boot)
            .field("pid", &state.pid)
            .field("exit", &state.exit)
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent; a panicking reader thread is no
        // reason to lose track of a running process.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn start(self: &Arc<Self>) -> Result<()> {
        let config = &self.config;
        let mut state = self.lock();
        if state.active {
            return Err(Error::Invalid(format!(
                "node {} is already running (or still shutting down)",
                config.index
            )));
        }
        if state.log.is_none() {
            std::fs::create_dir_all(&config.dir)
                .map_err(Error::io("creating node directory", &config.dir))?;
            let path = config.log_path();
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(Error::io("opening node log", &path))?;
            state.log = Some(log);
        }

        let mut cmd = match config.wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&config.binary);
                cmd
            }
            None => Command::new(&config.binary),
        };
        cmd.args(config.args())
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: power-off signals reach its etcd too, and a Ctrl-C in
            // the launcher's terminal reaches only the launcher, which then stops the nodes
            // in order.
            .process_group(0)
            .kill_on_drop(true);
        kv::process::set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            index: config.index,
            binary: config.binary.clone(),
            source,
        })?;

        state.boot += 1;
        let boot = state.boot;
        state.pid = child.id();
        state.active = true;
        state.stopping = false;
        state.restart_pending = false;
        state.exit = None;
        let banner = format!(
            "=== launch: boot {boot} of node {} (pid {}): {}{} {}",
            config.index,
            state.pid.map(|p| p.to_string()).unwrap_or_default(),
            config
                .wrapper
                .iter()
                .map(|w| format!("{w} "))
                .collect::<String>(),
            config.binary.display(),
            config.args().join(" ")
        );
        state.write_log(&banner);
        drop(state);
        self.notify();

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let shared = self.clone();
        tokio::spawn(async move { shared.supervise(child, boot, stdout, stderr).await });
        Ok(())
    }

    async fn supervise(
        self: Arc<Self>,
        mut child: Child,
        boot: u32,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    ) {
        let readers = {
            let out =
                stdout.map(|s| tokio::spawn(self.clone().read_lines(s, boot, Stream::Stdout)));
            let err =
                stderr.map(|s| tokio::spawn(self.clone().read_lines(s, boot, Stream::Stderr)));
            [out, err]
        };
        let exit = Exit::from_status(child.wait().await);
        let pid = self.lock().pid.take();
        // Children the node left behind (it crashed without stopping its etcd, or was killed)
        // go with it, as on a machine that powers off. See sys::signal_group for why the group
        // ID is still ours.
        if let Some(pid) = pid {
            sys::signal_group(pid, Signal::Kill);
        }
        self.notify();
        let drain = async {
            for reader in readers.into_iter().flatten() {
                let _ = reader.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_WAIT, drain).await;

        let restart_delay = {
            let mut state = self.lock();
            state.write_log(&format!("=== launch: boot {boot} ended: {exit}"));
            let delay = if state.stopping {
                None
            } else {
                restart_delay(self.config.restart, &exit)
            };
            state.exits.push((boot, exit.clone()));
            state.exit = Some(exit.clone());
            state.active = false;
            state.restart_pending = delay.is_some();
            delay
        };
        tracing::info!(node = self.config.index, boot, "node exited: {exit}");
        self.notify();

        let Some(delay) = restart_delay else { return };
        tokio::time::sleep(delay).await;
        {
            let mut state = self.lock();
            let wanted = state.restart_pending && !state.stopping && !state.active;
            state.restart_pending = false;
            if !wanted {
                drop(state);
                self.notify();
                return;
            }
        }
        tracing::info!(node = self.config.index, "restarting node after {exit}");
        if let Err(e) = Shared::start(&self) {
            tracing::error!(node = self.config.index, "restarting node failed: {e}");
            self.lock()
                .write_log(&format!("=== launch: restart failed: {e}"));
            self.notify();
        }
    }

    async fn read_lines(self: Arc<Self>, stream: impl AsyncRead + Unpin, boot: u32, which: Stream) {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let text = String::from_utf8_lossy(&buf);
            self.line(boot, which, &text);
        }
    }

    fn line(&self, boot: u32, which: Stream, text: &str) {
        let config = &self.config;
        let text = match which {
            Stream::Stdout => text.to_string(),
            Stream::Stderr => format!("{STDERR_PREFIX}{text}"),
        };
        if config.echo {
            eprintln!("[node{}] {text}", config.index);
        }
        let mut state = self.lock();
        if which == Stream::Stdout {
            if let Some(id) = marker_value(&text, NODE_ID_MARKER)
                && state.id.as_deref() != Some(id)
            {
                if let Some(old) = &state.id {
                    tracing::warn!(node = config.index, "node ID changed from {old} to {id}");
                }
                state.id = Some(id.to_string());
            }
            if is_marker_line(&text, READY_MARKER) {
                state.ready_boot = Some(boot);
            }
        }
        state.write_log(&text);
        let seq = state.next_seq;
        state.next_seq += 1;
        if state.lines.len() >= MEMORY_LINES {
            state.lines.pop_front();
        }
        state.lines.push_back(Line { seq, boot, text });
        drop(state);
        self.notify();
    }
}

/// Whether and after how long a node that ended like this is started again.
fn restart_delay(policy: RestartPolicy, exit: &Exit) -> Option<Duration> {
    match (policy, exit) {
        (RestartPolicy::Never, _) => None,
        (_, Exit::Code(EXIT_REBOOT)) => Some(REBOOT_DELAY),
        (RestartPolicy::OnRebootRequest, _) => None,
        (RestartPolicy::OnFailure, Exit::Code(EXIT_CLEAN | EXIT_GONE)) => None,
        (RestartPolicy::OnFailure, _) => Some(FAILURE_REBOOT_DELAY),
    }
}

/// The value of a `MARKER<value>` token ending an output line (the node may prefix its lines
/// with a timestamp or DN, so only the last token counts).
fn marker_value<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let token = line.split_whitespace().last()?;
    let value = token.strip_prefix(marker)?;
    identity::is_valid_node_id(value).then_some(value)
}

/// Whether the line ends with `marker` as a whole token.
fn is_marker_line(line: &str, marker: &str) -> bool {
    line.split_whitespace().last() == Some(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_last_tokens() {
        let id = "metropolis-c556e31c3fa2bf0a36e9ccb9fd5d6056";
        assert_eq!(
            marker_value(&format!("NODE_ID={id}"), NODE_ID_MARKER),
            Some(id)
        );
        assert_eq!(
            marker_value(
                &format!("root I0101 main.rs:1] NODE_ID={id}"),
                NODE_ID_MARKER
            ),
            Some(id)
        );
        assert_eq!(marker_value("NODE_ID=garbage", NODE_ID_MARKER), None);
        assert!(is_marker_line("NODE_READY", READY_MARKER));
        assert!(is_marker_line(
            "root I0101 x.rs:1] NODE_READY  ",
            READY_MARKER
        ));
        assert!(!is_marker_line(
            "waiting before NODE_READY is printed",
            READY_MARKER
        ));
    }

    #[test]
    fn restart_policy() {
        use RestartPolicy::*;
        assert_eq!(
            restart_delay(OnRebootRequest, &Exit::Code(EXIT_REBOOT)),
            Some(REBOOT_DELAY)
        );
        assert_eq!(
            restart_delay(OnRebootRequest, &Exit::Code(EXIT_FATAL)),
            None
        );
        assert_eq!(
            restart_delay(OnFailure, &Exit::Code(EXIT_FATAL)),
            Some(FAILURE_REBOOT_DELAY)
        );
        assert_eq!(restart_delay(OnFailure, &Exit::Code(EXIT_GONE)), None);
        assert_eq!(
            restart_delay(
                OnFailure,
                &Exit::Signal(rustix::process::Signal::SEGV.as_raw())
            ),
            Some(FAILURE_REBOOT_DELAY)
        );
        assert_eq!(restart_delay(Never, &Exit::Code(EXIT_REBOOT)), None);
    }
}
