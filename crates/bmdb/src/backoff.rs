//! Backoff after failed work: how long a machine is hidden from a process after that
//! process failed on it.
//!
//! Intervals are whole seconds (they are persisted as `work_backoff.last_interval_seconds`).
//! The arithmetic follows upstream exactly, down to computing in nanoseconds and truncating the
//! product before rounding up to seconds, so that every `TestBackoffMath` vector matches.

use std::time::Duration;

const SECOND_NS: i64 = 1_000_000_000;

/// A backoff descriptor, given by the caller of [`crate::Work::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Backoff {
    /// The first interval (and the only one for simple backoffs). Below one second means one
    /// second.
    pub initial: Duration,
    /// The cap of exponential backoffs. Below `initial` means `initial`.
    pub maximum: Duration,
    /// Growth factor per consecutive failure. 0 or 1 make a simple (constant) backoff; values
    /// below 1 are treated as 1.
    pub exponent: f64,
}

impl Backoff {
    /// A constant backoff of `interval`.
    pub fn simple(interval: Duration) -> Self {
        Backoff {
            initial: interval,
            ..Default::default()
        }
    }

    /// An exponential backoff from `initial` growing by `exponent` up to `maximum`.
    pub fn exponential(initial: Duration, exponent: f64, maximum: Duration) -> Self {
        Backoff {
            initial,
            maximum,
            exponent,
        }
    }

    fn normalized(&self) -> Backoff {
        let mut c = *self;
        if c.exponent.is_nan() || c.exponent < 1.0 {
            c.exponent = 1.0;
        }
        if c.initial < Duration::from_secs(1) {
            c.initial = Duration::from_secs(1);
        }
        if c.maximum < c.initial {
            c.maximum = c.initial;
        }
        c
    }

    /// Upstream decides simplicity on the descriptor as given: a zero exponent (unset) or
    /// exactly 1. An exponent of, say, 0.2 normalises to 1 but is *not* simple, which only
    /// matters in that its first interval is `initial` and every later one `previous × 1`.
    fn is_simple(&self) -> bool {
        self.exponent == 0.0 || self.exponent == 1.0
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The next backoff interval in seconds, for descriptor `backoff` (None: the caller gave
/// none) after a previous interval `previous` (None: no backoff recorded since the last
/// success).
pub fn next_interval_seconds(backoff: Option<&Backoff>, previous: Option<Duration>) -> i64 {
    // At least one second; a previous interval counts if it is longer.
    let mut last = SECOND_NS;
    if let Some(previous) = previous {
        last = last.max(nanos(previous));
    }
    let Some(b) = backoff else {
        // No descriptor: keep whatever interval was in force (or one second).
        return last / SECOND_NS;
    };
    let c = b.normalized();
    if b.is_simple() || previous.is_none() {
        return nanos(c.initial) / SECOND_NS;
    }
    // `as` saturates on overflow; an overflowed product also can't be below `last`, but keep
    // upstream's wrap-around guard for clarity.
    let mut next = (last as f64 * c.exponent) as i64;
    if next < last {
        next = nanos(c.maximum);
    }
    next = next.min(nanos(c.maximum));
    // Round up to whole seconds.
    next / SECOND_NS + i64::from(next % SECOND_NS != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: Option<Backoff>, previous: Option<Duration>, want: &[i64]) {
        let mut prev = previous;
        for (i, w) in want.iter().enumerate() {
            let got = next_interval_seconds(b.as_ref(), prev);
            assert_eq!(
                got, *w,
                "step {i} of {b:?} from {previous:?}: got {got}, want {w}"
            );
            prev = Some(Duration::from_secs(got as u64));
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    /// All vectors of upstream's `TestBackoffMath`.
    #[test]
    fn backoff_math() {
        run(None, None, &[1, 1, 1]);
        run(Some(Backoff::default()), None, &[1, 1, 1]);
        run(Some(Backoff::simple(MIN)), None, &[60, 60, 60]);
        run(
            Some(Backoff::exponential(MIN, 1.1, 2 * MIN)),
            None,
            &[60, 66, 73, 81, 90, 99, 109, 120, 120],
        );
        run(
            Some(Backoff::exponential(MIN, 2.0, 2 * MIN)),
            Some(Duration::from_secs(2)),
            &[4, 8, 16, 32, 64, 120, 120],
        );
        run(None, Some(MIN), &[60, 60, 60]);
        run(None, Some(Duration::ZERO), &[1, 1, 1]);
        run(None, Some(Duration::from_millis(1)), &[1, 1, 1]);
        run(
            Some(Backoff {
                exponent: 0.2,
                ..Default::default()
            }),
            None,
            &[1, 1, 1],
        );
        run(
            Some(Backoff {
                initial: Duration::from_millis(1),
                maximum: Duration::from_millis(1),
                exponent: 0.0,
            }),
            None,
            &[1, 1, 1],
        );
    }

    /// The `TestWorkBackoff` descriptor: 1, 2, 4, 5, 5 seconds.
    #[test]
    fn work_backoff_sequence() {
        run(
            Some(Backoff::exponential(
                Duration::from_secs(1),
                2.0,
                Duration::from_secs(5),
            )),
            None,
            &[1, 2, 4, 5, 5],
        );
    }

    #[test]
    fn huge_values_saturate_at_maximum() {
        let b = Backoff::exponential(Duration::from_secs(1), 1e300, Duration::from_secs(3600));
        assert_eq!(
            next_interval_seconds(Some(&b), Some(Duration::from_secs(u64::MAX / 4))),
            3600
        );
    }
}
