//! Sessions: a component's liveness in the BMDB.
//!
//! A session is a row with a deadline of `now() + interval` (database clock, so that every
//! component agrees). A background task pokes it every `interval / 2`, in a transaction that
//! first checks that the session is still alive. Once the session is found expired, or a poke
//! could not be made before the locally tracked deadline passed, the session is abandoned for
//! good: every later transaction fails with [`Error::SessionExpired`] and the caller starts a
//! new session. Work ([`crate::Work`]) belongs to a session, so a dead component's work dies
//! with it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::Postgres;
use sqlx::{PgPool, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::model::SessionRow;
use crate::retry::Retry;
use crate::{BoxFuture, Conn, Error, Result, queries};

/// Session timing.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Time after the last poke at which the session expires. Stored in whole seconds
    /// (`session_interval_seconds`), at least one.
    pub interval: Duration,
    /// How often the deadline is pushed back; `None` disables the keepalive (tests of
    /// expiry). Upstream: `interval / 2`.
    pub poke_every: Option<Duration>,
    /// Wait before retrying a failed poke while the deadline has not passed. Upstream: 1 s.
    pub retry_delay: Duration,
}

impl SessionConfig {
    /// Upstream's timing for an interval: poke every half interval, retry after a second.
    pub fn with_interval(interval: Duration) -> Self {
        SessionConfig {
            interval,
            poke_every: Some(interval / 2),
            retry_delay: Duration::from_secs(1).min(interval / 4),
        }
    }

    pub(crate) fn interval_seconds(&self) -> i64 {
        i64::try_from(self.interval.as_secs())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

impl Default for SessionConfig {
    /// Upstream: 5 s interval, poked every 2.5 s, retried after 1 s.
    fn default() -> Self {
        SessionConfig {
            interval: Duration::from_secs(5),
            poke_every: Some(Duration::from_millis(2500)),
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// A live session. Cheap to clone; the keepalive stops when the last clone is dropped (the
/// row then expires on its own).
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: Uuid,
    pool: PgPool,
    /// `true` once the session is abandoned. Shared with the keepalive task.
    expired: Arc<watch::Sender<bool>>,
    keepalive: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(k) = &self.keepalive {
            k.abort();
        }
    }
}

impl Session {
    pub(crate) fn start(pool: PgPool, row: SessionRow, config: SessionConfig) -> Session {
        let expired = Arc::new(watch::Sender::new(false));
        let id = row.session_id;
        let keepalive = config.poke_every.map(|poke_every| {
            tokio::spawn(keepalive(
                pool.clone(),
                id,
                config.interval,
                poke_every,
                config.retry_delay,
                expired.clone(),
            ))
        });
        tracing::debug!(session = %id, "session started");
        Session {
            inner: Arc::new(Inner {
                id,
                pool,
                expired,
                keepalive,
            }),
        }
    }

    /// The session's ID (`sessions.session_id`).
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// Whether the session was abandoned (locally known; the database may know earlier).
    pub fn is_expired(&self) -> bool {
        *self.inner.expired.borrow()
    }

    /// Resolves once the session is abandoned.
    pub async fn expired(&self) {
        let mut rx = self.inner.expired.subscribe();
        // The sender lives in `self`, so waiting can't fail while we hold it.
        let _ = rx.wait_for(|e| *e).await;
    }

    fn abandon(&self) {
        abandon(&self.inner.expired, self.inner.id);
    }

    /// Begins a serializable transaction and checks the session is alive in it.
    pub(crate) async fn begin_checked(&self) -> Result<Transaction<'static, Postgres>> {
        if self.is_expired() {
            return Err(Error::SessionExpired);
        }
        let mut tx = begin_serializable(&self.inner.pool).await?;
        if !queries::session_check(&mut tx, self.inner.id).await? {
            // The deadline passed in the database: it can never come back (pokes check first).
            self.abandon();
            return Err(Error::SessionExpired);
        }
        Ok(tx)
    }

    /// Runs `f` in a serializable transaction after checking that the session is alive,
    /// retrying the whole transaction on serialization failures (40001/40P01). An error from
    /// `f` rolls the transaction back and is returned as is.
    pub async fn transact<T, F>(&self, mut f: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut Conn) -> BoxFuture<'c, Result<T>>,
    {
        let mut retry = Retry::default();
        loop {
            let result = async {
                let mut tx = self.begin_checked().await?;
                let value = f(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Err(e) if retry.again(&e).await => continue,
                other => return other,
            }
        }
    }
}

/// `BEGIN` with SERIALIZABLE isolation: CockroachDB's only isolation, and what makes Work's
/// pick-then-claim safe on PostgreSQL (whose default, READ COMMITTED, is weaker).
pub(crate) async fn begin_serializable(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    // One round trip instead of BEGIN + SET TRANSACTION (both PostgreSQL and CockroachDB
    // accept the isolation level in BEGIN).
    Ok(pool
        .begin_with("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await?)
}

fn abandon(expired: &watch::Sender<bool>, id: Uuid) {
    if !expired.send_replace(true) {
        tracing::warn!(session = %id, "session expired, abandoning it");
    }
}

/// Keeps the session alive until it is found expired or cannot be poked in time.
async fn keepalive(
    pool: PgPool,
    id: Uuid,
    interval: Duration,
    poke_every: Duration,
    retry_delay: Duration,
    expired: Arc<watch::Sender<bool>>,
) {
    // Conservative: the row's deadline was set a little before this point.
    let mut deadline = Instant::now() + interval;
    let mut wait = poke_every;
    loop {
        tokio::time::sleep(wait).await;
        let attempt_start = Instant::now();
        match poke(&pool, id).await {
            Ok(()) => {
                deadline = attempt_start + interval;
                wait = poke_every;
            }
            Err(Error::SessionExpired) => {
                abandon(&expired, id);
                return;
            }
            Err(e) => {
                // Upstream abandons when the local deadline has *not* passed yet and retries
                // otherwise, which reads inverted: a transient error early in the interval
                // would kill a healthy session, while one after the deadline (when another
                // component may already consider us dead) would be retried. We do the
                // reverse: retry while there is time, give up once the deadline passed.
                if Instant::now() >= deadline {
                    tracing::error!(session = %id, "could not poke session before its deadline: {e}");
                    abandon(&expired, id);
                    return;
                }
                tracing::warn!(session = %id, "poking session failed, retrying: {e}");
                wait = retry_delay;
            }
        }
    }
}

/// One poke: in a transaction, check alive, then push the deadline back.
async fn poke(pool: &PgPool, id: Uuid) -> Result<()> {
    let mut retry = Retry::default();
    loop {
        let result = async {
            let mut tx = begin_serializable(pool).await?;
            if !queries::session_check(&mut tx, id).await? {
                return Err(Error::SessionExpired);
            }
            queries::session_poke(&mut tx, id).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        match result {
            Err(e) if retry.again(&e).await => continue,
            other => return other,
        }
    }
}
