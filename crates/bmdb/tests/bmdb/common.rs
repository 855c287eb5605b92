//! Shared test helpers.

use bmdb::{Bmdb, Config, Provider, Session, queries};
use uuid::Uuid;

/// Logs to the test output (shown for failing tests), once per process.
pub fn init_logging() {
    test_support::logging::init_with("bmdb=debug");
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
