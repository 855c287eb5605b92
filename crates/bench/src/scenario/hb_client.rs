//! The client half of the heartbeat scenario, run as a child process (`bench hb-client
//! <job.json>`) so that the benchmark process holding the leader measures the leader alone.
//!
//! It opens one TLS connection and one Heartbeat stream per simulated node (each with its
//! own node certificate; the connections leave from several loopback addresses, since the
//! leader caps connections per source address as it would per host), sends one heartbeat on each so every stream is known to work, then
//! runs the measured window: node i beats every `interval`, phase-shifted by i/K of it so the
//! load is even, and records the round trip of each beat.
//!
//! Protocol on stdout, one line each: `READY` (streams open), `START` (window begins), `END`
//! (every node done), `RESULT <json>`. Everything else goes to stderr.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use identity::SigningKey;
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::{HeartbeatUpdateRequest, HeartbeatUpdateResponse};
use rpc::{ClientCredentials, ServerVerification};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Concurrent connection set-ups: enough to finish quickly, few enough not to starve the
/// leader's accept loop into handshake timeouts.
const CONNECT_CONCURRENCY: usize = 32;
/// How long opening one node's stream and its first beat may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Simulated nodes per source address: half the leader's per-address cap.
const NODES_PER_SOURCE: usize = rpc::serve::MAX_CONNECTIONS_PER_IP / 2;

/// The loopback address node `index` connects from when the leader is on loopback:
/// `127.250.0.1`, `127.250.0.2`, … (away from the test clusters' `127.100-163` blocks).
fn source_address(index: usize) -> Option<IpAddr> {
    let n = u8::try_from(index / NODES_PER_SOURCE + 1).ok()?;
    Some(IpAddr::V4(Ipv4Addr::new(127, 250, 0, n)))
}

/// What the parent hands over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    /// `host:port` of the leader.
    pub addr: String,
    /// Cluster CA, hex DER.
    pub ca: String,
    /// The leader's node ID (its certificate is checked for it).
    pub leader_id: String,
    /// Beat interval per node.
    pub interval_ms: u64,
    /// Length of the measured window.
    pub duration_ms: u64,
    /// Per node: key seed and node certificate, hex.
    pub nodes: Vec<(String, String)>,
}

/// What the child reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Beats answered within the window.
    pub ok: u64,
    /// Beats that failed.
    pub errors: u64,
    /// First error seen, if any.
    pub first_error: Option<String>,
    /// Round trips of the answered beats, µs.
    pub rtt_us: Vec<u32>,
    /// Seconds spent opening the streams.
    pub setup_s: f64,
}

type Stream = (
    mpsc::Sender<HeartbeatUpdateRequest>,
    tonic::Streaming<HeartbeatUpdateResponse>,
);

/// Entry point of the child.
pub async fn main(job_path: &str) -> Result<()> {
    let job: Job = serde_json::from_slice(&std::fs::read(job_path).context("reading the job")?)?;
    let ca = hex::decode(&job.ca)?;
    let started = Instant::now();
    let on_loopback = job
        .addr
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    let streams: Vec<Stream> = futures::stream::iter(job.nodes.iter().enumerate())
        .map(|(i, (seed, cert))| {
            let source = if on_loopback { source_address(i) } else { None };
            open(&job, &ca, seed, cert, source)
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let setup_s = started.elapsed().as_secs_f64();
    say("READY");

    let k = streams.len().max(1) as u32;
    let interval = Duration::from_millis(job.interval_ms);
    let start = Instant::now();
    let end = start + Duration::from_millis(job.duration_ms);
    say("START");
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let offset = interval * i as u32 / k;
            tokio::spawn(beat_loop(s, start + offset, interval, end))
        })
        .collect();
    let mut outcome = Outcome {
        setup_s,
        ..Default::default()
    };
    for task in tasks {
        let (rtts, errors, first) = task.await?;
        outcome.ok += rtts.len() as u64;
        outcome.rtt_us.extend(rtts);
        outcome.errors += errors;
        if outcome.first_error.is_none() {
            outcome.first_error = first;
        }
    }
    say("END");
    say(&format!("RESULT {}", serde_json::to_string(&outcome)?));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Connects as one node (from `source`, if given), opens its stream and checks it with one
/// beat.
async fn open(
    job: &Job,
    ca: &[u8],
    seed: &str,
    cert: &str,
    source: Option<IpAddr>,
) -> Result<Stream> {
    let key = SigningKey::from_seed_slice(&hex::decode(seed)?)?;
    let creds = ClientCredentials::Authenticated {
        certificate: hex::decode(cert)?,
        key,
    };
    let verification = ServerVerification::Cluster {
        ca: ca.to_vec(),
        node_id: Some(job.leader_id.clone()),
        crl: None,
    };
    let config = rpc::client_tls::client_config(&creds, verification)?;
    tokio::time::timeout(SETUP_TIMEOUT, async {
        let channel = match source {
            Some(source) => rpc::client_tls::connect_from(&job.addr, config, source).await?,
            None => rpc::client_tls::connect(&job.addr, config).await?,
        };
        let (mut tx, rx) = mpsc::channel(1);
        tx.send(HeartbeatUpdateRequest {}).await?;
        let mut replies = CuratorClient::new(channel)
            .heartbeat(rx)
            .await
            .context("opening the Heartbeat stream")?
            .into_inner();
        replies
            .message()
            .await?
            .ok_or_else(|| anyhow!("stream ended before the first reply"))?;
        Ok((tx, replies))
    })
    .await
    .context("setting up a heartbeat stream timed out")?
}

/// Beats at `first`, `first + interval`, … until `end`.
async fn beat_loop(
    (mut tx, mut replies): Stream,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> (Vec<u32>, u64, Option<String>) {
    let mut rtts = Vec::new();
    let mut next = first;
    while next < end {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let result = async {
            tx.send(HeartbeatUpdateRequest {}).await?;
            match replies.message().await? {
                Some(_) => Ok(()),
                None => Err(anyhow!("stream ended")),
            }
        }
        .await;
        match result {
            Ok(()) => rtts.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX)),
            // A broken stream stays broken: report it once and stop this node.
            Err(e) => return (rtts, 1, Some(format!("{e:#}"))),
        }
        next += interval;
    }
    (rtts, 0, None)
}
