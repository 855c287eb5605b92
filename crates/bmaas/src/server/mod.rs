//! The BMaaS server: three listeners over one BMDB.
//!
//! * public gRPC (`--srv-public-grpc-listen-address`, default `:8080`): `AgentCallback` (and
//!   reflection), TLS with a requested client certificate ([`agent_callback`]);
//! * internal gRPC (`--srv-grpc-listen-address`, default `:4242`): mutual TLS against the
//!   component CA; reflection and our `Operator` service ([`operator`]);
//! * debug web page (`--webug-listen-address`, off unless given): a read-only list of machines
//!   and their tags ([`webug`]);
//! * Prometheus metrics (`--srv-prometheus-listen-address`, off unless given): `/metrics` over
//!   mutual TLS against the component CA, or plain HTTP with `--srv-prometheus-insecure`
//!   ([`metrics`]).
//!
//! All requests share one long-lived BMDB session ([`bmdb::SessionKeeper`], component name
//! `srv`, started with the server), replaced when it expires. [`Server::start`] binds every listener before serving, so
//! a listen failure is reported before anything runs (the binary then exits).

pub mod agent_callback;
pub mod convert;
pub mod db;
pub mod flags;
pub mod metrics;
pub mod operator;
pub mod tls;
pub mod webug;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bmdb::{Bmdb, SessionKeeper};
use proto::cloud::bmaas::server::api::agent_callback_server::{self, AgentCallbackServer};
use proto::cloud::bmaas::server::api::operator_server::{self, OperatorServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::devcerts::ComponentTls;
use crate::{Error, Result};

/// How long [`Server::shutdown`] waits for open requests and connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// BMDB session component name of the server (upstream: `srv`).
pub const COMPONENT_NAME: &str = "srv";

/// What the server needs to run.
#[derive(Debug)]
pub struct Config {
    /// Internal gRPC listen address (`:4242` = all interfaces).
    pub grpc_listen_address: String,
    /// Public (agent) gRPC listen address.
    pub public_listen_address: String,
    /// Debug web page listen address; `None` disables it.
    pub webug_listen_address: Option<String>,
    /// Prometheus metrics listen address; `None` disables them.
    pub prometheus_listen_address: Option<String>,
    /// Serve metrics over plain HTTP instead of mutual TLS.
    pub prometheus_insecure: bool,
    /// The server's certificate, key and CA.
    pub tls: ComponentTls,
    /// The (migrated) BMDB.
    pub bmdb: Bmdb,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Where the internal gRPC listener is bound.
    pub grpc_address: SocketAddr,
    /// Where the public (agent) gRPC listener is bound.
    pub public_address: SocketAddr,
    /// Where the debug web page is bound, if enabled.
    pub webug_address: Option<SocketAddr>,
    /// Where the metrics are served, if enabled.
    pub prometheus_address: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<(&'static str, Result<()>)>,
}

/// Binds `address`; `:port` means every interface (IPv6 and IPv4 where possible), as in Go.
pub async fn listen(address: &str) -> Result<TcpListener> {
    let err = |source| Error::Listen {
        address: address.to_string(),
        source,
    };
    if let Some(port) = address.strip_prefix(':') {
        match TcpListener::bind(format!("[::]:{port}")).await {
            Ok(l) => return Ok(l),
            Err(_) => {
                return TcpListener::bind(format!("0.0.0.0:{port}"))
                    .await
                    .map_err(err);
            }
        }
    }
    TcpListener::bind(address).await.map_err(err)
}

fn local_addr(l: &TcpListener, address: &str) -> Result<SocketAddr> {
    l.local_addr().map_err(|source| Error::Listen {
        address: address.to_string(),
        source,
    })
}

impl Server {
    /// Binds every listener, then serves in background tasks.
    pub async fn start(config: Config) -> Result<Server> {
        let grpc = listen(&config.grpc_listen_address).await?;
        let public = listen(&config.public_listen_address).await?;
        let webug = match &config.webug_listen_address {
            Some(a) => Some(listen(a).await?),
            None => None,
        };
        let prometheus = match &config.prometheus_listen_address {
            Some(a) => Some((listen(a).await?, a.clone())),
            None => None,
        };
        let prometheus_address = match &prometheus {
            Some((l, a)) => Some(local_addr(l, a)?),
            None => None,
        };
        let grpc_address = local_addr(&grpc, &config.grpc_listen_address)?;
        let public_address = local_addr(&public, &config.public_listen_address)?;
        let webug_address = match (&webug, &config.webug_listen_address) {
            (Some(l), Some(a)) => Some(local_addr(l, a)?),
            _ => None,
        };

        let internal_tls = tls::internal_server_config(&config.tls)?;
        let public_tls = tls::public_server_config(&config.tls)?;
        let keeper = Arc::new(SessionKeeper::new(config.bmdb.clone()));
        // Start the session now rather than on the first request, so that a database that
        // can't hold one is reported at startup (upstream starts its session worker here).
        keeper.get().await?;
        let (shutdown, _) = watch::channel(false);
        let stopped = |tx: &watch::Sender<bool>| {
            let mut rx = tx.subscribe();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = JoinSet::new();

        let server_metrics = metrics::ServerMetrics::new()?;
        let operator = operator::OperatorService::new(keeper.clone());
        // Both gRPC listeners run under rpc's connection and HTTP/2 limits (rpc::serve).
        let internal = rpc::serve::server()
            .layer(server_metrics.layer())
            .add_service(
                OperatorServer::new(operator)
                    .max_decoding_message_size(operator::MAX_REQUEST_BYTES),
            )
            .add_service(rpc::reflection::v1(&[operator_server::SERVICE_NAME]))
            .add_service(rpc::reflection::v1alpha(&[operator_server::SERVICE_NAME]))
            .serve_with_incoming_shutdown(
                rpc::serve::tls_incoming(grpc, internal_tls),
                stopped(&shutdown),
            );
        tasks.spawn(async move { ("internal gRPC", internal.await.map_err(Error::from)) });

        let agent_callback = agent_callback::AgentCallbackService::new(keeper.clone());
        let public = rpc::serve::server()
            .layer(server_metrics.layer())
            .add_service(
                AgentCallbackServer::new(agent_callback)
                    .max_decoding_message_size(agent_callback::MAX_REQUEST_BYTES),
            )
            .add_service(rpc::reflection::v1(&[agent_callback_server::SERVICE_NAME]))
            .add_service(rpc::reflection::v1alpha(&[
                agent_callback_server::SERVICE_NAME,
            ]))
            .serve_with_incoming_shutdown(
                rpc::serve::tls_incoming(public, public_tls),
                stopped(&shutdown),
            );
        tasks.spawn(async move { ("public gRPC", public.await.map_err(Error::from)) });

        if let Some((l, _)) = prometheus {
            let tls = if config.prometheus_insecure {
                None
            } else {
                Some(tls::metrics_server_config(&config.tls)?)
            };
            let (stop, bmdb) = (stopped(&shutdown), config.bmdb.clone());
            tasks.spawn(async move {
                (
                    "metrics",
                    metrics::serve(l, tls, server_metrics, bmdb, stop).await,
                )
            });
        }

        if let Some(l) = webug {
            let stop = stopped(&shutdown);
            tasks.spawn(async move { ("webug", webug::serve(l, keeper, stop).await) });
        }

        Ok(Server {
            grpc_address,
            public_address,
            webug_address,
            prometheus_address,
            shutdown,
            tasks,
        })
    }

    /// Resolves when a listener stops on its own (which is always a failure), with the error.
    pub async fn failed(&mut self) -> Error {
        match self.tasks.join_next().await {
            Some(Ok((what, Err(e)))) => Error::Config(format!("{what} failed: {e}")),
            Some(Ok((what, Ok(())))) => Error::Config(format!("{what} stopped unexpectedly")),
            Some(Err(e)) => Error::Config(format!("server task panicked: {e}")),
            None => Error::Config("no listeners running".into()),
        }
    }

    /// Stops accepting, lets running requests finish (for at most [`SHUTDOWN_GRACE`]; a client
    /// that ignores the GOAWAY must not hold the process), and waits for every listener to stop.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok((_, Ok(()))))) => {}
                Ok(Some(Ok((what, Err(e))))) => result = Err(Error::Config(format!("{what}: {e}"))),
                Ok(Some(Err(e))) => {
                    result = Err(Error::Config(format!("server task panicked: {e}")))
                }
                Err(_) => {
                    tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}, closing them");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        result
    }
}
