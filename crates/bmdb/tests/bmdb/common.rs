//! Shared test helpers.

use std::future::Future;
use std::time::Duration;

use bmdb::{Bmdb, Config, Provider, Session, queries};
use uuid::Uuid;

/// Logs to the test output (shown for failing tests), once per process.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bmdb=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A migrated BMDB in a database of its own.
pub async fn open() -> Bmdb {
    init_logging();
    let connect = bmdb::throwaway::fresh_database().await.unwrap();
    let mut config = Config::new(connect, "test");
    config.max_connections = 5;
    Bmdb::open(config, true).await.unwrap()
}

/// A machine with the provided tag (Equinix, given provider ID).
pub async fn provided_machine(session: &Session, provider_id: &str) -> Uuid {
    let provider_id = provider_id.to_string();
    session
        .transact(|tx| {
            let provider_id = provider_id.clone();
            Box::pin(async move {
                let m = queries::new_machine(tx).await?;
                queries::machine_add_provided(tx, m.machine_id, Provider::Equinix, &provider_id)
                    .await?;
                Ok(m.machine_id)
            })
        })
        .await
        .unwrap()
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
