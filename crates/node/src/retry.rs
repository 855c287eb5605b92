//! Exponential backoff for the node's retry loops (JoinNode, RegisterNode, probes), on tokio's
//! clock so tests can run it on paused time.

use std::time::Duration;

use tonic::Code;

/// Doubling delays from `initial` up to `max`, without jitter: one node retries one call, so
/// there is no herd to spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay (and advances).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over at the initial delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Whether a failed curator call is worth retrying as is: the cluster (or the path to its
/// leader) is temporarily unusable. Unimplemented is what a just-demoted leader answers for
/// leader-only services; DeadlineExceeded/Aborted/Unknown are transport-level hiccups.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unimplemented
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown
            // A curator tearing its server down on a leadership change cancels open calls.
            | Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![500, 1000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
