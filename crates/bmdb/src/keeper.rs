//! A long-lived session for servers: handed out to every request, replaced when it expires.
//!
//! Upstream's server first started a session per RPC, later kept one in a worker that restarts
//! it with backoff. Here the replacement happens on demand: the first caller after an expiry
//! starts the new session; while starting keeps failing, callers get the last error without
//! hammering the database (the wait between attempts doubles up to [`MAX_RETRY_DELAY`]).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{Bmdb, Error, Result, Session};

/// Upper bound of the wait between failed attempts to start a session.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
const INITIAL_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Hands out a live session, starting a new one when needed.
#[derive(Debug)]
pub struct SessionKeeper {
    bmdb: Bmdb,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Session>,
    /// After a failed start: the error, and when the next attempt may be made.
    failure: Option<(String, Instant)>,
    delay: Option<Duration>,
}

impl SessionKeeper {
    /// A keeper for sessions on `bmdb`; no session is started until one is asked for.
    pub fn new(bmdb: Bmdb) -> Self {
        SessionKeeper {
            bmdb,
            state: Mutex::new(State::default()),
        }
    }

    /// The database the sessions are on, for reads outside sessions ([`Bmdb::read`]).
    pub fn bmdb(&self) -> &Bmdb {
        &self.bmdb
    }

    /// The current session, or a new one if there is none or it expired.
    pub async fn get(&self) -> Result<Session> {
        let mut state = self.state.lock().await;
        if let Some(s) = &state.current
            && !s.is_expired()
        {
            return Ok(s.clone());
        }
        state.current = None;
        if let Some((err, next)) = &state.failure
            && Instant::now() < *next
        {
            return Err(Error::Aborted(format!("could not start a session: {err}")));
        }
        match self.bmdb.start_session().await {
            Ok(s) => {
                tracing::info!(session = %s.id(), "started BMDB session");
                state.current = Some(s.clone());
                state.failure = None;
                state.delay = None;
                Ok(s)
            }
            Err(e) => {
                let delay = state
                    .delay
                    .map_or(INITIAL_RETRY_DELAY, |d| (d * 2).min(MAX_RETRY_DELAY));
                tracing::warn!("could not start BMDB session (next attempt in {delay:?}): {e}");
                state.delay = Some(delay);
                state.failure = Some((e.to_string(), Instant::now() + delay));
                Err(e)
            }
        }
    }
}
