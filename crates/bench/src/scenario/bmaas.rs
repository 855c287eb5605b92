//! Scenario 6: M BMaaS agents (default 1,000), each on its own TLS connection with its
//! self-signed agent certificate, call AgentCallback.Heartbeat back to back for a window;
//! heartbeats per second and latency. The server runs in-process on a throwaway PostgreSQL
//! (durability off, as for tests: both sides of the comparison run on the same server).
//!
//! Baseline: what a heartbeat fundamentally needs from the database — the agent
//! authentication query and the heartbeat upsert, the very SQL of `bmdb::queries` — issued
//! directly through sqlx by M tasks on a pool as large as the server's.

use std::time::Duration;

use anyhow::{Context, Result};
use bmaas::server::{Config, Server};
use bmdb::{Bmdb, Provider, queries};
use futures::{StreamExt, TryStreamExt};
use identity::SigningKey;
use proto::cloud::bmaas::server::api::AgentHeartbeatRequest;
use proto::cloud::bmaas::server::api::agent_callback_client::AgentCallbackClient;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::time::Instant;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::report::{Row, ScenarioResult, Unit};
use crate::setup;
use crate::stats::Latencies;

const NAME: &str = "bmaas";
/// Key kind (see `setup::key`) of agent keys.
const AGENT_KEY: u8 = 20;
/// Concurrent set-up operations (machines created, agents connecting).
const SETUP_CONCURRENCY: usize = 16;

/// Sizes.
#[derive(Debug, Clone)]
pub struct Params {
    /// Agents.
    pub agents: usize,
    /// Measured window of each side.
    pub duration: Duration,
}

/// Runs the scenario.
pub async fn run(p: &Params) -> Result<ScenarioResult> {
    let connect = bmdb::throwaway::fresh_database()
        .await
        .context("starting the throwaway PostgreSQL")?;
    let config = bmdb::Config::new(connect.clone(), bmaas::server::COMPONENT_NAME);
    let pool_size = config.max_connections;
    let bmdb = Bmdb::open(config, true).await?;
    let certs = tempfile::tempdir()?;
    let tls = bmaas::devcerts::dev_certs(certs.path(), "srv")?;
    let server = Server::start(Config {
        grpc_listen_address: "127.0.0.1:0".into(),
        public_listen_address: "127.0.0.1:0".into(),
        webug_listen_address: None,
        prometheus_listen_address: None,
        prometheus_insecure: false,
        tls: tls.clone(),
        bmdb: bmdb.clone(),
    })
    .await?;
    let result = measure(p, &bmdb, &server, &tls.ca, connect, pool_size).await;
    let _ = server.shutdown().await;
    bmdb.close().await;
    Ok(ScenarioResult {
        rows: result?,
        baseline: "authenticate_agent_connection + the heartbeat upsert (bmdb::queries' SQL) \
            issued directly through sqlx by M tasks on a pool of the server's size, same \
            PostgreSQL"
            .into(),
        parameters: format!(
            "M={} agents back to back, {} s per side, pool of {pool_size}",
            p.agents,
            p.duration.as_secs()
        ),
        error: None,
    })
}

async fn measure(
    p: &Params,
    bmdb: &Bmdb,
    server: &Server,
    ca: &[u8],
    connect: PgConnectOptions,
    pool_size: u32,
) -> Result<Vec<Row>> {
    let agents = create_agents(bmdb, p.agents).await?;
    let addr = server.public_address.to_string();
    let clients: Vec<AgentCallbackClient<Channel>> = futures::stream::iter(&agents)
        .map(|(key, _)| {
            let addr = addr.clone();
            async move {
                let config = bmaas::agent::tls::client_config(key, Some(ca))?;
                anyhow::Ok(AgentCallbackClient::new(
                    rpc::client_tls::connect(&addr, config).await?,
                ))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
        .context("connecting the agents")?;

    let end = Instant::now() + p.duration;
    let start = Instant::now();
    let tasks = clients
        .into_iter()
        .zip(&agents)
        .map(|(mut client, (_, id))| {
            let request = AgentHeartbeatRequest {
                machine_id: id.to_string(),
                ..Default::default()
            };
            tokio::spawn(async move {
                let mut l = Latencies::new();
                while Instant::now() < end {
                    let s = Instant::now();
                    client.heartbeat(request.clone()).await?;
                    l.push(s.elapsed());
                }
                anyhow::Ok(l)
            })
        });
    let ours = collect(tasks).await.context("agent heartbeats")?;
    let ours_s = start.elapsed().as_secs_f64();

    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect_with(connect)
        .await?;
    let end = Instant::now() + p.duration;
    let start = Instant::now();
    let tasks = agents.iter().map(|(key, id)| {
        let (pool, id) = (pool.clone(), *id);
        let public = key.public_key().as_bytes().to_vec();
        tokio::spawn(async move {
            let mut l = Latencies::new();
            while Instant::now() < end {
                let s = Instant::now();
                let mut conn = pool.acquire().await?;
                let found = queries::authenticate_agent_connection(&mut conn, id, &public).await?;
                anyhow::ensure!(!found.is_empty(), "agent {id} not found");
                queries::machine_set_agent_heartbeat(&mut conn, id).await?;
                l.push(s.elapsed());
            }
            anyhow::Ok(l)
        })
    });
    let base = collect(tasks).await.context("raw SQL heartbeats")?;
    let base_s = start.elapsed().as_secs_f64();
    pool.close().await;

    Ok(vec![
        Row::pair(
            NAME,
            "heartbeats/s",
            Unit::PerSecond,
            ours.len() as f64 / ours_s,
            base.len() as f64 / base_s,
        ),
        Row::pair(NAME, "heartbeat p50", Unit::Seconds, ours.p50(), base.p50()),
        Row::pair(NAME, "heartbeat p99", Unit::Seconds, ours.p99(), base.p99()),
    ])
}

async fn collect(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<Latencies>>>,
) -> Result<Latencies> {
    let mut all = Latencies::new();
    for r in futures::future::join_all(tasks).await {
        all.extend(r??);
    }
    Ok(all)
}

/// Machines as the Shepherd leaves them after a takeover (provided, agent started with the
/// agent's key), as upstream's tests set them up.
async fn create_agents(bmdb: &Bmdb, n: usize) -> Result<Vec<(SigningKey, Uuid)>> {
    let session = bmdb.start_session().await?;
    futures::stream::iter(0..n)
        .map(|i| {
            let session = session.clone();
            async move {
                let key = setup::key(AGENT_KEY, i);
                let public = key.public_key().as_bytes().to_vec();
                let id = session
                    .transact(|tx| {
                        let public = public.clone();
                        Box::pin(async move {
                            let m = queries::new_machine(tx).await?;
                            let provider_id = format!("bench-{}", m.machine_id);
                            queries::machine_add_provided(
                                tx,
                                m.machine_id,
                                Provider::Equinix,
                                &provider_id,
                            )
                            .await?;
                            queries::machine_set_agent_started(tx, m.machine_id, &public).await?;
                            Ok(m.machine_id)
                        })
                    })
                    .await?;
                anyhow::Ok((key, id))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}
