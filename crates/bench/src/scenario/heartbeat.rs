//! Scenario 3: K simulated nodes (default 5,000) heartbeat every 5 s over their own TLS
//! streams to one curator leader for a window (default 60 s). The clients run in a child
//! process ([`super::hb_client`]), so this process's CPU and RSS are the leader's (its etcd is
//! a separate process, measured on its own).
//!
//! Baseline: what the leader does per beat underneath — one guarded etcd read of the node's
//! record — issued directly with etcd-client from this process on the same schedule (K
//! readers, each every 5 s, phase-shifted) for a shorter window. Both sides report achieved
//! rate, p99 round trip and CPU per 1,000; for the leader the CPU is the serving process, for
//! the baseline the process issuing the reads.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::join_all;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::hb_client::{Job, Outcome};
use crate::procfs;
use crate::report::{Row, ScenarioResult, Unit};
use crate::setup::{self, Raw};
use crate::stats::Latencies;

const NAME: &str = "heartbeat";
/// Longest the baseline window runs: its figures are rates, which settle within seconds.
const MAX_BASELINE_WINDOW: Duration = Duration::from_secs(20);

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Simulated nodes.
    pub nodes: usize,
    /// Beat interval of each node.
    pub interval: Duration,
    /// Measured window.
    pub duration: Duration,
}

/// CPU of this process and of etcd at one instant.
struct Cpu {
    leader: f64,
    etcd: f64,
    at: Instant,
}

impl Cpu {
    fn now(etcd: Option<u32>) -> Result<Cpu> {
        Ok(Cpu {
            leader: procfs::cpu_seconds(None)?,
            etcd: etcd
                .map(|p| procfs::cpu_seconds(Some(p)))
                .transpose()?
                .unwrap_or(0.0),
            at: Instant::now(),
        })
    }
}

/// Runs the scenario.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let t = setup::leader().await?;
    let result = measure(&t, p).await;
    t.stop().await;
    Ok(ScenarioResult {
        rows: result?,
        baseline: format!(
            "the guarded etcd read each beat costs the leader, issued directly with etcd-client \
             by K readers on the same schedule for min(window, {} s)",
            MAX_BASELINE_WINDOW.as_secs()
        ),
        parameters: format!(
            "K={} nodes, one beat each every {} s, {} s window",
            p.nodes,
            p.interval.as_secs_f64(),
            p.duration.as_secs()
        ),
        error: None,
    })
}

async fn measure(t: &curator::testing::TestLeader, p: &Params) -> Result<Vec<Row>> {
    let raw = Raw::of(t);
    let nodes = setup::realistic_nodes(p.nodes);
    let records: Vec<_> = nodes.iter().map(|(_, r)| r.clone()).collect();
    setup::write_records(&raw, &records).await?;
    let keys: Vec<_> = nodes.iter().map(|(k, _)| k.clone()).collect();
    let certs = setup::node_certificates(t, &keys).await?;
    let idle_rss = procfs::rss(None)?;

    let dir = tempfile::tempdir()?;
    let job_path = dir.path().join("job.json");
    let job = Job {
        addr: t.addr.clone(),
        ca: hex::encode(&t.ca),
        leader_id: t.node_id(),
        interval_ms: p.interval.as_millis() as u64,
        duration_ms: p.duration.as_millis() as u64,
        nodes: keys
            .iter()
            .zip(&certs)
            .map(|(k, c)| (hex::encode(k.seed()), hex::encode(c)))
            .collect(),
    };
    std::fs::write(&job_path, serde_json::to_vec(&job)?)?;

    let etcd = t.consensus.pid;
    let (ours, start, end, rss) = run_child(&job_path, etcd).await?;
    if ours.ok == 0 {
        bail!("no heartbeat was answered: {:?}", ours.first_error);
    }
    if ours.errors > 0 {
        tracing::warn!(
            "{} heartbeat streams failed: {:?}",
            ours.errors,
            ours.first_error
        );
    }
    let mut ours_rtt = Latencies::new();
    for us in &ours.rtt_us {
        ours_rtt.push(Duration::from_micros(u64::from(*us)));
    }
    let ours_s = end.at.duration_since(start.at).as_secs_f64();
    let ours_rate = ours.ok as f64 / ours_s;
    let ours_cpu = (end.leader - start.leader) / (ours.ok as f64 / 1000.0);
    let ours_etcd = (end.etcd - start.etcd) / (ours.ok as f64 / 1000.0);

    let ids: Vec<String> = records.iter().map(|r| r.key()).collect();
    let window = p.duration.min(MAX_BASELINE_WINDOW);
    let (base_rtt, base_start, base_end) = baseline(&raw, &ids, p.interval, window, etcd).await?;
    let base_ops = base_rtt.len() as f64;
    let base_s = base_end.at.duration_since(base_start.at).as_secs_f64();
    let base_cpu = (base_end.leader - base_start.leader) / (base_ops / 1000.0);
    let base_etcd = (base_end.etcd - base_start.etcd) / (base_ops / 1000.0);

    Ok(vec![
        Row::pair(
            NAME,
            "heartbeats/s achieved",
            Unit::PerSecond,
            ours_rate,
            base_ops / base_s,
        ),
        Row::pair(
            NAME,
            "round trip p50",
            Unit::Seconds,
            ours_rtt.p50(),
            base_rtt.p50(),
        ),
        Row::pair(
            NAME,
            "round trip p99",
            Unit::Seconds,
            ours_rtt.p99(),
            base_rtt.p99(),
        ),
        Row::pair(
            NAME,
            "leader CPU per 1,000 beats",
            Unit::CpuPer1000,
            ours_cpu,
            base_cpu,
        ),
        Row::pair(
            NAME,
            "etcd CPU per 1,000 beats",
            Unit::CpuPer1000,
            ours_etcd,
            base_etcd,
        ),
        Row::pair(
            NAME,
            "leader RSS (streams open vs idle)",
            Unit::Bytes,
            rss,
            idle_rss,
        ),
        Row::single(
            NAME,
            "stream setup (all K connections)",
            Unit::Seconds,
            ours.setup_s,
        ),
    ])
}

/// Runs the client child; returns its outcome, CPU at START and END, and the leader's RSS at
/// END (streams still open).
async fn run_child(job: &std::path::Path, etcd: Option<u32>) -> Result<(Outcome, Cpu, Cpu, f64)> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("hb-client")
        .arg(job)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the heartbeat client process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut start, mut end, mut rss, mut outcome) = (None, None, None, None);
    while let Some(line) = lines.next_line().await? {
        match line.as_str() {
            "READY" => tracing::info!("heartbeat streams open"),
            "START" => start = Some(Cpu::now(etcd)?),
            "END" => {
                end = Some(Cpu::now(etcd)?);
                rss = Some(procfs::rss(None)?);
            }
            l => {
                if let Some(json) = l.strip_prefix("RESULT ") {
                    outcome = Some(serde_json::from_str::<Outcome>(json)?);
                }
            }
        }
    }
    let status = child.wait().await?;
    match (outcome, start, end, rss) {
        (Some(o), Some(s), Some(e), Some(r)) if status.success() => Ok((o, s, e, r)),
        _ => bail!("the heartbeat client process failed ({status}); see its stderr above"),
    }
}

/// K raw readers on the heartbeat schedule; returns their round trips and CPU around it.
async fn baseline(
    raw: &Raw,
    keys: &[String],
    interval: Duration,
    window: Duration,
    etcd: Option<u32>,
) -> Result<(Latencies, Cpu, Cpu)> {
    let k = keys.len().max(1) as u32;
    let start = Cpu::now(etcd)?;
    let end_at = start.at + window;
    let readers = keys.iter().enumerate().map(|(i, key)| {
        let raw = raw.clone();
        let key = key.clone();
        let first = start.at + interval * i as u32 / k;
        tokio::spawn(async move {
            let mut rtts = Latencies::new();
            let mut next = first;
            while next < end_at {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                raw.guarded_get(&key).await?;
                rtts.push(sent.elapsed());
                next += interval;
            }
            anyhow::Ok(rtts)
        })
    });
    let mut all = Latencies::new();
    for r in join_all(readers).await {
        all.extend(r??);
    }
    let end = Cpu::now(etcd)?;
    Ok((all, start, end))
}
