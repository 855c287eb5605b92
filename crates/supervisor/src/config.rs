//! Tunables of the supervisor (restart backoff, cancellation grace) and the backoff state.

use std::time::Duration;

/// Timing parameters of a supervision tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Delay before the first restart. Short, because most failures are transient (a peer
    /// not up yet) and a node should converge quickly after boot.
    pub backoff_initial: Duration,
    /// Factor applied to the delay after each consecutive failure.
    pub backoff_multiplier: u32,
    /// Upper bound of the delay, so a service recovers within seconds once its dependency
    /// does, while a crash loop still costs little CPU and log space.
    pub backoff_max: Duration,
    /// A run that was healthy at least this long before failing restarts with the initial
    /// delay again: the failure is a new incident, not part of a crash loop.
    pub backoff_reset_after: Duration,
    /// How long a cancelled runnable may take to exit before its task is aborted. Long
    /// enough for graceful shutdown of child processes and connections.
    pub cancel_grace: Duration,
    /// How long [`crate::Supervisor::shutdown`] waits for all tasks; larger than
    /// `cancel_grace` so that aborted runnables are normally gone by then.
    pub shutdown_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> SupervisorConfig {
        SupervisorConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_multiplier: 2,
            backoff_max: Duration::from_secs(10),
            backoff_reset_after: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Exponential backoff state of one runnable: `backon`'s exponential delays with the
/// supervisor's own constants, started over after a long healthy run.
#[derive(Debug)]
pub(crate) struct Backoff {
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    pub(crate) fn new(config: &SupervisorConfig) -> Backoff {
        Backoff {
            delays: Self::delays(config),
        }
    }

    fn delays(config: &SupervisorConfig) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::new()
            .with_min_delay(config.backoff_initial)
            .with_max_delay(config.backoff_max)
            .with_factor(config.backoff_multiplier.max(1) as f32)
            .without_max_times()
            .build()
    }

    /// The delay before the next restart, given how long the failed run had been healthy.
    pub(crate) fn next_delay(
        &mut self,
        config: &SupervisorConfig,
        healthy_for: Option<Duration>,
    ) -> Duration {
        if healthy_for.is_some_and(|h| h >= config.backoff_reset_after) {
            self.delays = Self::delays(config);
        }
        let delay = self.delays.next().unwrap_or(config.backoff_max);
        // backon computes in f32 seconds: round off its noise so that 2 × 100 ms is 200 ms.
        Duration::from_micros((delay.as_secs_f64() * 1e6).round() as u64).min(config.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let config = SupervisorConfig::default();
        let mut b = Backoff::new(&config);
        let delays: Vec<u64> = (0..10)
            .map(|_| b.next_delay(&config, None).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        assert_eq!(
            b.next_delay(&config, Some(Duration::from_secs(29))),
            Duration::from_secs(10),
            "short healthy run does not reset"
        );
        assert_eq!(
            b.next_delay(&config, Some(Duration::from_secs(30))),
            Duration::from_millis(100)
        );
        assert_eq!(b.next_delay(&config, None), Duration::from_millis(200));
    }
}
