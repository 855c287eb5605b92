//! Retrying transactions that lost a serialization conflict.
//!
//! PostgreSQL (SERIALIZABLE) reports 40001 serialization_failure and 40P01 deadlock_detected;
//! CockroachDB reports its restarts as 40001 too. Both mean "run the whole transaction again".
//! Attempts are bounded so a pathological conflict surfaces as an error instead of a hang.

use std::time::Duration;

use crate::Error;

/// Attempts per transaction, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// Whether the transaction that failed with `err` should be run again.
pub(crate) fn is_retryable(err: &Error) -> bool {
    matches!(err.sqlstate().as_deref(), Some("40001") | Some("40P01"))
}

/// Attempt bookkeeping for one transaction.
#[derive(Debug, Default)]
pub(crate) struct Retry {
    attempt: u32,
}

impl Retry {
    /// Whether to run again after `err`; sleeps a short, growing, jittered delay if so.
    pub(crate) async fn again(&mut self, err: &Error) -> bool {
        if !is_retryable(err) {
            return false;
        }
        self.attempt += 1;
        if self.attempt >= MAX_ATTEMPTS {
            tracing::warn!("transaction still conflicting after {MAX_ATTEMPTS} attempts: {err}");
            return false;
        }
        tracing::debug!(attempt = self.attempt, "retrying transaction: {err}");
        // 5 ms doubling up to ~1.3 s, plus up to the same again at random so that the
        // transactions that conflicted do not meet again at the same instant.
        let base = 5u64 << self.attempt.min(8);
        let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(base + 1)) as u64;
        tokio::time::sleep(Duration::from_millis(base + jitter)).await;
        true
    }
}
