//! Shared pieces of metroctl's end-to-end tests: every test drives the real `metroctl`
//! binary against a cluster of real `metropolis-node` processes started by `launch::Cluster`,
//! each cluster in a loopback block of its own (`test_support::LoopbackBlock`).
//!
//! The node binary is not built by `cargo nextest run -p metroctl`: build it first with
//! `cargo build -p node` (launch finds `target/debug/metropolis-node`, or
//! $METROPOLIS_NODE_BIN). `cargo nextest run --workspace` builds it anyway.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use launch::{Cluster, ClusterOptions};
use test_support::{LoopbackBlock, eventually};
use tokio::process::Command;

/// Upstream's e2e timings doubled (loaded 2-core machines), as launch's own tests.
pub const ENROLMENT: Duration = Duration::from_secs(120);
pub const HEALTH: Duration = Duration::from_secs(40);
pub const GONE: Duration = Duration::from_secs(120);

/// Starts a cluster in `block` (which the test keeps until the cluster is gone) or fails the
/// test with the launcher's explanation.
pub async fn start(nodes: usize, block: &LoopbackBlock) -> Cluster {
    match Cluster::start(ClusterOptions::new(nodes, &block.prefix())).await {
        Ok(cluster) => cluster,
        Err(e) => panic!("launching the cluster on {block} failed: {e}"),
    }
}

/// One metroctl run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Fails the test unless the run succeeded.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "metroctl failed:\n{self}");
        self
    }

    /// Fails the test unless the run failed with `code`.
    #[track_caller]
    pub fn failed(self, code: i32) -> Run {
        assert_eq!(self.code, code, "unexpected exit code:\n{self}");
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// metroctl with one config directory and, optionally, endpoints.
#[derive(Debug, Clone)]
pub struct Metroctl {
    pub config: PathBuf,
    pub endpoints: Option<String>,
}

impl Metroctl {
    /// A config directory at `config` holding only a copy of `owner_key` (if given): what an
    /// operator has before the first contact.
    pub fn fresh(config: &Path, owner_key: Option<&Path>) -> Self {
        std::fs::create_dir_all(config).expect("create config dir");
        if let Some(key) = owner_key {
            let dest = config.join("owner-key.pem");
            std::fs::copy(key, &dest).expect("copy owner key");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
                .expect("chmod owner key");
        }
        Metroctl {
            config: config.to_path_buf(),
            endpoints: None,
        }
    }

    pub fn with_endpoints(mut self, endpoints: &str) -> Self {
        self.endpoints = Some(endpoints.to_string());
        self
    }

    /// The command for `args`, with our config and endpoints and nothing from the caller's
    /// environment that metroctl would read.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metroctl"));
        cmd.arg("--config").arg(&self.config);
        if let Some(endpoints) = &self.endpoints {
            cmd.arg("--endpoints").arg(endpoints);
        }
        cmd.args(args)
            .env_remove("METROCTL_ENDPOINTS")
            .env_remove("METROCTL_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs metroctl to completion (bounded: a hung metroctl fails the test).
    pub async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(120), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("metroctl {args:?} did not finish within 120 s"))
            .expect("run metroctl");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs metroctl on a pseudo-terminal (util-linux `script`), typing `input` after a
    /// moment: how the interactive prompts are tested. Standard output and error arrive
    /// together in `stdout`. None if `script` is not installed.
    pub async fn run_on_terminal(&self, args: &[&str], input: &str) -> Option<Run> {
        let script = ["/usr/bin/script", "/bin/script"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let mut words = vec![
            env!("CARGO_BIN_EXE_metroctl").to_string(),
            "--config".to_string(),
            self.config.display().to_string(),
        ];
        if let Some(endpoints) = &self.endpoints {
            words.push("--endpoints".to_string());
            words.push(endpoints.clone());
        }
        words.extend(args.iter().map(|a| a.to_string()));
        let line = words
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(script)
            .args(["-qec", &line, "/dev/null"])
            .env_remove("METROCTL_ENDPOINTS")
            .env_remove("METROCTL_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start script");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Type only once the question is (very likely) on the screen.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = stdin.write_all(input.as_bytes()).await;
            // Keep the pty's input open until the command is done.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("metroctl on a terminal did not finish within 120 s")
            .expect("run script");
        Some(Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs metroctl until `check` accepts its result, or fails the test after `timeout`.
    pub async fn run_until(
        &self,
        args: &[&str],
        timeout: Duration,
        check: impl Fn(&Run) -> bool,
    ) -> Run {
        eventually(timeout, async || {
            let run = self.run(args).await;
            if check(&run) { Ok(run) } else { Err(run) }
        })
        .await
        .unwrap_or_else(|e| panic!("metroctl {args:?} did not give the expected result: {e}"))
    }
}

/// The fingerprint metroctl shows for a CA.
pub fn fingerprint(der: &[u8]) -> String {
    metroctl::model::fingerprint(der)
}

/// `node describe -o json` of one node, or None.
pub fn find<'a>(nodes: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    nodes.as_array()?.iter().find(|n| n["id"] == id)
}

/// The role names of a node in `node describe -o json`.
pub fn roles(node: &serde_json::Value) -> Vec<String> {
    node["roles"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
