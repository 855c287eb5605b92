//! Errors of the BMDB library.

/// Result with the BMDB [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the BMDB.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The session's deadline passed (or it was abandoned): nothing may run in it any more.
    /// Callers start a new session.
    #[error("session expired")]
    SessionExpired,
    /// [`crate::Session::work`]: the pick function returned no machine.
    #[error("nothing to do")]
    NothingToDo,
    /// [`crate::Session::work`]: some session already works on this machine for this process.
    #[error("work conflict: machine {machine} is already being worked on for {process:?}")]
    WorkConflict {
        machine: uuid::Uuid,
        process: crate::Process,
    },
    /// A query failed (after retries, for serialization failures).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migrating the schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A caller-level failure raised inside a transaction body; rolls the transaction back.
    #[error("{0}")]
    Aborted(String),
    /// The throwaway PostgreSQL could not be started or used.
    #[error("throwaway PostgreSQL: {0}")]
    Throwaway(String),
}

impl Error {
    /// The SQLSTATE of a database error, if this is one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}
