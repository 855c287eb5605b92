//! Opening the BMDB from flags, including `--bmdb-eat-my-data`'s throwaway PostgreSQL.

use bmdb::throwaway::{self, Postgres};
use bmdb::{Bmdb, Config};

use super::COMPONENT_NAME;
use super::flags::BmdbFlags;
use crate::{Error, Result};

/// An open, migrated BMDB, with the throwaway server behind it if there is one (stopped and
/// deleted when dropped).
#[derive(Debug)]
pub struct OpenBmdb {
    pub bmdb: Bmdb,
    pub throwaway: Option<Postgres>,
    /// Where the database is, for the operator (no secrets).
    pub description: String,
}

/// Connects (or starts a throwaway server) and applies the migrations.
pub async fn open(flags: &BmdbFlags) -> Result<OpenBmdb> {
    let (connect, throwaway, description) = if flags.eat_my_data {
        let server =
            tokio::task::spawn_blocking(|| Postgres::start(&throwaway::Options::default()))
                .await
                .map_err(|e| Error::Config(format!("starting PostgreSQL panicked: {e}")))??;
        server.create_named_database(&flags.database_name).await?;
        let description = format!(
            "throwaway PostgreSQL (all data is lost on exit): {}",
            server.url(&flags.database_name)
        );
        (
            server.connect_options(&flags.database_name),
            Some(server),
            description,
        )
    } else {
        let options = flags.connect_options()?;
        let description = format!(
            "PostgreSQL at {}:{} database {:?} as {:?}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default(),
            options.get_username()
        );
        (options, None, description)
    };
    let bmdb = Bmdb::open(Config::new(connect, COMPONENT_NAME), true).await?;
    Ok(OpenBmdb {
        bmdb,
        throwaway,
        description,
    })
}
