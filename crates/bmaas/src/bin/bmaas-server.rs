//! `bmaas-server`: the BMaaS server (see `bmaas::server`).
//!
//! Development run with no setup: `bmaas-server --srv-dev-certs --bmdb-eat-my-data`.
//! Once listening, the actual addresses are printed on stdout, one per line:
//! `internal gRPC listening on <addr>`, `public gRPC listening on <addr>` and, if enabled,
//! `webug listening on http://<addr>/` (tests start it with `127.0.0.1:0` and read these).

#![forbid(unsafe_code)]

use std::io::Write;

use anyhow::Context;
use bmaas::server::flags::ServerFlags;
use bmaas::server::{COMPONENT_NAME, Config, Server, db};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let flags = ServerFlags::parse();
    // The internal and public gRPC listeners.
    rpc::serve::raise_open_file_limit(2 * rpc::serve::MAX_CONNECTIONS);
    let tls = flags
        .component
        .tls(COMPONENT_NAME)
        .context("component certificates")?;
    let db = db::open(&flags.bmdb).await.context("opening the BMDB")?;
    tracing::info!("BMDB: {}", db.description);

    let mut server = Server::start(Config {
        grpc_listen_address: flags.component.grpc_listen_address.clone(),
        public_listen_address: flags.public_grpc_listen_address.clone(),
        webug_listen_address: flags.webug_listen_address.clone(),
        prometheus_listen_address: flags.component.prometheus_listen_address.clone(),
        prometheus_insecure: flags.component.prometheus_insecure,
        tls,
        bmdb: db.bmdb.clone(),
    })
    .await
    .context("starting the server")?;
    // A closed stdout (whoever started us stopped reading) must not take the server down.
    let announce = || -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "internal gRPC listening on {}", server.grpc_address)?;
        writeln!(out, "public gRPC listening on {}", server.public_address)?;
        if let Some(a) = server.webug_address {
            writeln!(out, "webug listening on http://{a}/")?;
        }
        if let Some(a) = server.prometheus_address {
            writeln!(out, "metrics listening on {a}")?;
        }
        out.flush()
    };
    if let Err(e) = announce() {
        tracing::warn!("could not print the listen addresses: {e}");
    }
    tracing::info!(
        internal = %server.grpc_address,
        public = %server.public_address,
        webug = ?server.webug_address,
        "listening"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let failure = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
        e = server.failed() => Some(e),
    };
    match &failure {
        None => tracing::info!("shutting down"),
        Some(e) => tracing::error!("{e}"),
    }
    if let Err(e) = server.shutdown().await {
        tracing::warn!("during shutdown: {e}");
    }
    tracing::debug!("listeners stopped");
    db.bmdb.close().await;
    tracing::debug!("BMDB connections closed");
    // Dropping `db` stops a --bmdb-eat-my-data PostgreSQL and deletes its files.
    drop(db);
    tracing::info!("stopped");
    match failure {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}
