//! Connecting to the BMDB and bringing its schema up to date.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::session::{Session, SessionConfig};
use crate::{BoxFuture, Conn, Result, queries};

/// The embedded migrations (crates/bmdb/migrations, applied in timestamp order).
pub fn migrator() -> Migrator {
    sqlx::migrate!("./migrations")
}

/// Sessions expired for longer than this are deleted (with their work) when a session starts.
const EXPIRED_SESSION_GRACE_SECONDS: i64 = 60;

/// How to reach the database and who we are in it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connection options (host or socket, TLS, user, database).
    pub connect: PgConnectOptions,
    /// Component name recorded in our sessions (`srv` for the BMaaS server).
    pub component_name: String,
    /// Free-form runtime information recorded in our sessions (`host <hostname>`).
    pub runtime_info: String,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// Session timing.
    pub session: SessionConfig,
}

impl Config {
    /// A configuration with default pool size and session timing.
    pub fn new(connect: PgConnectOptions, component_name: &str) -> Self {
        Config {
            connect,
            component_name: component_name.to_string(),
            runtime_info: runtime_info(),
            max_connections: 10,
            session: SessionConfig::default(),
        }
    }
}

/// `host <hostname>`, upstream's session runtime info.
pub fn runtime_info() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "UNKNOWN".to_string());
    format!("host {host}")
}

/// An open BMDB: a connection pool plus who we are. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bmdb {
    pool: PgPool,
    component_name: Arc<str>,
    runtime_info: Arc<str>,
    session: SessionConfig,
}

impl Bmdb {
    /// Connects, and applies the embedded migrations if `migrate` is set.
    pub async fn open(config: Config, migrate: bool) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(config.connect)
            .await?;
        let bmdb = Bmdb {
            pool,
            component_name: config.component_name.into(),
            runtime_info: config.runtime_info.into(),
            session: config.session,
        };
        if migrate {
            bmdb.migrate().await?;
        }
        Ok(bmdb)
    }

    /// Applies every embedded migration not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        let mut migrator = migrator();
        // sqlx serialises concurrent migrators with pg_advisory_lock, which CockroachDB does not
        // have; there, concurrent starts rely on each migration's own transaction instead.
        if self.is_cockroachdb().await? {
            migrator.set_locking(false);
        }
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Whether the server is CockroachDB rather than PostgreSQL.
    pub async fn is_cockroachdb(&self) -> Result<bool> {
        let version: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&self.pool)
            .await?;
        Ok(version.contains("CockroachDB"))
    }

    /// The connection pool, for callers that need raw access (tests, debugging).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `f` on a pooled connection outside any transaction: each statement sees what was
    /// committed when it started (PostgreSQL's READ COMMITTED, CockroachDB's implicit
    /// transaction per statement), and no session is involved. For reads that decide whether
    /// a transaction is worth opening at all, such as refusing callers that are not known,
    /// which must not cost the serializable transactions (and their conflicts) that legitimate
    /// work runs in; the transaction checks again whatever it relies on.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T>>,
    {
        let mut conn = self.pool.acquire().await?;
        f(&mut conn).await
    }

    /// Starts a session with the configured timing.
    pub async fn start_session(&self) -> Result<Session> {
        self.start_session_with(self.session.clone()).await
    }

    /// Starts a session with the given timing (tests use short intervals).
    pub async fn start_session_with(&self, config: SessionConfig) -> Result<Session> {
        let mut conn = self.pool.acquire().await?;
        // Expired sessions can never be used again (every transaction checks its session), so
        // their work rows would block those machines forever. Upstream leaves them; we clear
        // them, which frees the machines for other sessions.
        match queries::delete_expired_sessions(&mut conn, EXPIRED_SESSION_GRACE_SECONDS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} expired sessions"),
            Err(e) => tracing::warn!("deleting expired sessions: {e}"),
        }
        let row = queries::new_session(
            &mut conn,
            &self.component_name,
            &self.runtime_info,
            config.interval_seconds(),
        )
        .await?;
        drop(conn);
        Ok(Session::start(self.pool.clone(), row, config))
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
