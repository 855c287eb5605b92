//! [`eventually`]: polling a condition until it holds or a deadline passes, on tokio's clock.
//!
//! Tests must not sleep a fixed time and hope a condition holds by then: they poll it with a
//! deadline, and on timeout they fail with the last reason it did not hold, which is usually
//! the one thing needed to understand the failure.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// The first pause between two attempts; short, because most conditions hold within
/// milliseconds and a test should not wait longer than it must.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two attempts: attempts that start processes or open
/// connections must not hammer a loaded machine, and a condition that takes seconds is
/// noticed within half a second.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// What one attempt of [`eventually`] may return: the value it waits for, or why not yet.
///
/// Implemented for `Result<T, E>` (`Err` is the reason), `Option<T>` (`None` is "not yet")
/// and `bool`.
pub trait Attempt {
    /// What [`eventually`] returns once an attempt succeeds.
    type Value;
    /// Why an attempt did not succeed.
    type Error: fmt::Display;
    /// The outcome as a `Result`.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
}

impl<T, E: fmt::Display> Attempt for Result<T, E> {
    type Value = T;
    type Error = E;
    fn into_result(self) -> Result<T, E> {
        self
    }
}

impl<T> Attempt for Option<T> {
    type Value = T;
    type Error = NotYet;
    fn into_result(self) -> Result<T, NotYet> {
        self.ok_or(NotYet)
    }
}

impl Attempt for bool {
    type Value = ();
    type Error = NotYet;
    fn into_result(self) -> Result<(), NotYet> {
        if self { Ok(()) } else { Err(NotYet) }
    }
}

/// The reason of a `false` or `None` attempt, which carry none of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotYet;

impl fmt::Display for NotYet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the condition did not hold")
    }
}

/// [`eventually`] gave up: the deadline passed and the last attempt still failed.
pub struct Timeout<E> {
    /// How long it tried.
    pub after: Duration,
    /// How many attempts it made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last: E,
}

impl<E: fmt::Display> fmt::Display for Timeout<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "still failing after {:?} ({} attempts); last error: {}",
            self.after, self.attempts, self.last
        )
    }
}

// Debug is what `expect` prints: the same readable sentence, not a struct dump.
impl<E: fmt::Display> fmt::Debug for Timeout<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<E: fmt::Display> std::error::Error for Timeout<E> {}

/// Runs `attempt` until it succeeds and returns its value, or until `timeout` has passed
/// since the call and returns the last failure.
///
/// Attempts are spaced by a pause that starts at 10 ms and doubles up to 500 ms, measured on
/// tokio's clock (so tests on paused time advance through it). An attempt in flight when the
/// deadline passes is finished, not cut off: bound slow attempts yourself. There is always at
/// least one attempt, and always one after the deadline's last pause.
///
/// ```ignore
/// let members = eventually(Duration::from_secs(30), || async {
///     let members = client.member_list().await?;
///     if members.len() == 3 { Ok(members) } else { Err(format!("{} members", members.len())) }
/// })
/// .await
/// .expect("three etcd members");
/// ```
pub async fn eventually<A: Attempt>(
    timeout: Duration,
    mut attempt: impl AsyncFnMut() -> A,
) -> Result<A::Value, Timeout<A::Error>> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match attempt().await.into_result() {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                after: now - start,
                attempts,
                last,
            });
        }
        // The last pause ends at the deadline, so the last attempt runs right at it.
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
