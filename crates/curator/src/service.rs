//! The curator runnable: election, listener and revocation follower as supervised children;
//! the revocations are loaded before anything is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use identity::NodeCredentials;
use rpc::RevocationSet;
use supervisor::{Context, Runnable, RunnableResult};
use tokio::sync::watch;

use crate::election::{self, ElectionStatus};
use crate::health::{Clock, SystemClock};
use crate::listener::{self, ListenerConfig};
use crate::metrics::CuratorMetrics;

/// Configuration of one node's curator.
#[derive(Clone)]
pub struct Config {
    /// This node's credentials.
    pub credentials: NodeCredentials,
    /// The local etcd member (the curator only runs where one does).
    pub consensus: consensus::Status,
    /// Where to serve: the node's address, port 7835.
    pub listen: SocketAddr,
    /// Leader lease TTL ([`election::DEFAULT_LEADER_TTL`] by default).
    pub leader_ttl: Duration,
    /// Revoked certificates (shared with the node's other servers).
    pub revocations: RevocationSet,
    /// Clock for heartbeat health.
    pub clock: Arc<dyn Clock>,
    /// Connection limits of the curator port ([`listener::connection_limits`] by default).
    pub connection_limits: rpc::serve::Limits,
    /// Where the curator records its metrics; the node keeps one set across restarts.
    pub metrics: Option<Arc<CuratorMetrics>>,
}

impl Config {
    /// Defaults for a node: standard TTL, system clock, a fresh revocation set.
    pub fn new(
        credentials: NodeCredentials,
        consensus: consensus::Status,
        listen: SocketAddr,
    ) -> Self {
        Self {
            credentials,
            consensus,
            listen,
            leader_ttl: election::DEFAULT_LEADER_TTL,
            revocations: RevocationSet::new(),
            clock: Arc::new(SystemClock),
            connection_limits: listener::connection_limits(),
            metrics: None,
        }
    }
}

/// A node's curator.
pub struct Curator {
    config: Config,
    election: watch::Sender<ElectionStatus>,
}

impl Curator {
    /// A curator for `config`; run it with [`Curator::runnable`].
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            election: watch::Sender::new(ElectionStatus::Unknown),
        })
    }

    /// The election status as this curator sees it.
    pub fn election(&self) -> watch::Receiver<ElectionStatus> {
        self.election.subscribe()
    }

    /// The supervisor runnable (children: `election`, `listener`, `revocation`).
    pub fn runnable(self: &Arc<Self>) -> Runnable {
        let this = self.clone();
        supervisor::runnable(move |ctx| {
            let this = this.clone();
            async move { this.run(ctx).await }
        })
    }

    async fn run(self: Arc<Self>, ctx: Context) -> RunnableResult {
        let ns = self.config.consensus.namespaced(&[crate::KEYSPACE])?;
        // Bind before electing: a node that cannot serve must not become leader.
        let socket = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", self.config.listen))?;

        let (node_id, ttl, tx) = (
            self.config.credentials.node_id(),
            self.config.leader_ttl,
            self.election.clone(),
        );
        let (election_ns, consensus) = (ns.clone(), self.config.consensus.clone());
        ctx.run(
            "election",
            supervisor::runnable(move |ctx| {
                let (ns, node_id, tx) = (election_ns.clone(), node_id.clone(), tx.clone());
                let consensus = consensus.clone();
                async move {
                    // Its own thread, runtime and etcd connection (see `election`): the token
                    // stops it, and this runnable lives as long as it does.
                    let token = ctx.token();
                    let thread = election::spawn(consensus, ns, node_id, ttl, tx, token.clone())
                        .map_err(|e| format!("starting the election thread: {e}"))?;
                    ctx.signal_healthy();
                    match thread.finished().await {
                        true if token.is_cancelled() => Ok(()),
                        true => Err("the election thread ended".into()),
                        false => Err("the election thread panicked".into()),
                    }
                }
            }),
        )?;

        // Nothing is served before the revocations are known: a deleted node must not get
        // in through a curator that has just started.
        let revocations = self.config.revocations.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            match crate::revocation::load(&ns, &revocations).await {
                Ok(()) => break,
                Err(e) => tracing::warn!("loading revocations before serving: {e}"),
            }
            tokio::select! {
                _ = ctx.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        ctx.run(
            "revocation",
            supervisor::runnable(move |ctx| {
                let (ns, revocations) = (ns.clone(), revocations.clone());
                async move {
                    ctx.signal_healthy();
                    tokio::select! {
                        r = crate::revocation::follow(ns, revocations) => r.map_err(Into::into),
                        _ = ctx.cancelled() => Ok(()),
                    }
                }
            }),
        )?;

        ctx.signal_healthy();
        let listener_config = ListenerConfig {
            credentials: self.config.credentials.clone(),
            consensus: self.config.consensus.clone(),
            revocations: self.config.revocations.clone(),
            clock: self.config.clock.clone(),
            limits: self.config.connection_limits.clone(),
            metrics: self.config.metrics.clone(),
        };
        listener::serve(
            listener_config,
            socket,
            self.election.subscribe(),
            ctx.token(),
        )
        .await?;
        Ok(())
    }
}
