//! Client resilience: which failures deserve another attempt ([`is_transient`]), how long to
//! pause between attempts ([`Backoff`]), and how long one attempt and a whole call may take
//! ([`RetryPolicy`]). Every retry loop of the project draws on this module, so that they agree
//! on what "transient" means and none nests inside another.
//!
//! Delays come from `backon`'s exponential backoff; all waiting (pauses, attempt timeouts,
//! deadlines) uses tokio's clock, so tests run the loops on paused time.
//!
//! [`retry`] drives a call against a fixed target. [`crate::LeaderChannel::call`] drives calls
//! to the curator leader with the same policy, but pauses on the leader channel: a newly
//! published leader ends the pause at once.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;
use tonic::{Code, Status};

/// Whether a call that failed with `code` may succeed if issued again, as is, a little later
/// (possibly to another server). Definite answers of a healthy server are not transient:
/// asking again would only get the same answer.
pub fn is_transient(code: Code) -> bool {
    match code {
        // A follower's "not the leader", a leader that just lost its leadership or its etcd, a
        // connection that could not be made or broke: the cluster, or the path to its leader,
        // is temporarily unusable.
        Code::Unavailable => true,
        // We never cancel our own calls while still waiting for them; a Cancelled that reaches
        // a caller comes from a curator that tore its server down when leadership moved,
        // resetting the streams open on it.
        Code::Cancelled => true,
        // Upstream followers do not register the leader-only services, so a call that reached
        // a just-demoted leader answers Unimplemented. A leader-following client retries it
        // only once it sees the leader change (see `LeaderChannel::call`).
        Code::Unimplemented => true,
        // An attempt that ran out of time (ours or the server's, e.g. a leader waiting on an
        // etcd that lost quorum): the next attempt may reach a healthier leader.
        Code::DeadlineExceeded => true,
        // etcd transaction conflicts surface as Aborted: the very thing to retry.
        Code::Aborted => true,
        // tonic reports a connection severed mid-call as Unknown ("transport error"); a server
        // answering Unknown itself is rare enough that one more attempt costs nothing.
        Code::Unknown => true,
        // Answers about the request or the caller: the same request gets the same answer.
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange => false,
        // Limits (a message too large) and server bugs or corruption: retrying does not help
        // and would hide the problem.
        Code::ResourceExhausted | Code::Internal | Code::DataLoss => false,
    }
}

/// An exponential backoff policy: `initial`, then `factor` times the previous pause, capped at
/// `max`. With jitter, each pause is lengthened by a random part of itself (up to doubling it),
/// so that many clients failing together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f32,
    jitter: bool,
}

impl Backoff {
    /// Doubling pauses from `initial` up to `max`, without jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            factor: 2.0,
            jitter: false,
        }
    }

    /// The same with another growth factor (at least 1).
    pub const fn with_factor(mut self, factor: f32) -> Self {
        self.factor = if factor < 1.0 { 1.0 } else { factor };
        self
    }

    /// The same with jitter.
    pub const fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The first pause.
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest pause before jitter.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// A fresh sequence of pauses.
    pub fn delays(&self) -> Delays {
        Delays {
            policy: *self,
            inner: self.builder().build(),
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }
}

/// The pauses of one retry loop; never runs out.
#[derive(Debug)]
pub struct Delays {
    policy: Backoff,
    inner: ExponentialBackoff,
}

impl Delays {
    /// The next pause (and advances).
    pub fn next_delay(&mut self) -> Duration {
        // Without a limit on times or total delay the sequence never ends; the cap is the
        // answer should that change.
        round_to_micros(self.inner.next().unwrap_or(self.policy.max))
    }

    /// Sleeps for the next pause.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over at the initial pause (after a success: the next failure is a new incident).
    pub fn reset(&mut self) {
        self.inner = self.policy.builder().build();
    }
}

/// `backon` computes in `f32` seconds: rounding off its noise keeps 2 × 100 ms at exactly
/// 200 ms (tokio's timer would round 200.000003 ms up to the next millisecond).
pub(crate) fn round_to_micros(d: Duration) -> Duration {
    let micros = (d.as_secs_f64() * 1e6).round();
    Duration::from_micros(micros as u64)
}

/// How a call is retried: pauses, the bound of one attempt, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Pauses between attempts.
    pub backoff: Backoff,
    /// How long one attempt may take before it is abandoned as DeadlineExceeded (and retried
    /// if time is left): a hung attempt must not eat the whole deadline.
    pub attempt_timeout: Option<Duration>,
    /// How long the whole call, attempts and pauses together, may take; `None` retries
    /// transient failures forever.
    pub deadline: Option<Duration>,
    /// How many attempts at most; `None` for no limit other than the deadline.
    pub attempts: Option<usize>,
}

/// Default pauses between attempts of a call: long enough to let an election finish, short
/// compared to a user's patience.
pub const DEFAULT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// Default bound of one attempt: longer than any healthy curator call, short enough that the
/// next leader gets the retry when the current one hangs (e.g. its etcd lost quorum).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default bound of a whole call: longer than a leader failover (leader TTL plus an election)
/// on a loaded machine.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

impl Default for RetryPolicy {
    /// [`DEFAULT_BACKOFF`], [`DEFAULT_ATTEMPT_TIMEOUT`], [`DEFAULT_DEADLINE`], no attempt limit.
    fn default() -> Self {
        Self {
            backoff: DEFAULT_BACKOFF,
            attempt_timeout: Some(DEFAULT_ATTEMPT_TIMEOUT),
            deadline: Some(DEFAULT_DEADLINE),
            attempts: None,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no timeout: the caller handles failures itself.
    pub const fn once() -> Self {
        Self {
            backoff: DEFAULT_BACKOFF,
            attempt_timeout: None,
            deadline: None,
            attempts: Some(1),
        }
    }

    /// Retries transient failures forever with `backoff`, each attempt bounded by
    /// [`DEFAULT_ATTEMPT_TIMEOUT`] (a node that cannot do anything before the call succeeds).
    pub const fn forever(backoff: Backoff) -> Self {
        Self {
            backoff,
            attempt_timeout: Some(DEFAULT_ATTEMPT_TIMEOUT),
            deadline: None,
            attempts: None,
        }
    }

    /// The same with another backoff.
    pub const fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The same with another overall deadline.
    pub const fn with_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The same with another attempt timeout.
    pub const fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The same with another attempt limit.
    pub const fn with_attempts(mut self, attempts: Option<usize>) -> Self {
        self.attempts = attempts;
        self
    }
}

/// Runs `f` until it succeeds, fails with a status that is not [transient](is_transient), or
/// the policy gives up; returns the last status then, its message saying how long it kept
/// failing.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut run = Run::new(policy);
    loop {
        let status = match run.attempt(f()).await {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        let transient = is_transient(status.code());
        let pause = run.pause_after(status, transient)?;
        tokio::time::sleep(pause).await;
    }
}

/// The state of one retried call: its clock, attempt count and pauses. Shared by [`retry`]
/// and the leader channel, which pause differently.
#[derive(Debug)]
pub(crate) struct Run {
    policy: RetryPolicy,
    started: Instant,
    deadline: Option<Instant>,
    attempts: usize,
    delays: Delays,
}

impl Run {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        let started = Instant::now();
        Self {
            policy: *policy,
            started,
            deadline: policy.deadline.map(|d| started + d),
            attempts: 0,
            delays: policy.backoff.delays(),
        }
    }

    /// Time left before the deadline; `None` without one.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// `limit` shortened to the time left.
    pub(crate) fn bounded(&self, limit: Option<Duration>) -> Option<Duration> {
        match (limit, self.remaining()) {
            (Some(limit), Some(left)) => Some(limit.min(left)),
            (limit, left) => limit.or(left),
        }
    }

    /// Counts an attempt that ended before it could be made (e.g. no server to send it to).
    pub(crate) fn count_attempt(&mut self) {
        self.attempts += 1;
    }

    /// Runs one attempt, bounded by the attempt timeout and the deadline.
    pub(crate) async fn attempt<T>(
        &mut self,
        attempt: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.attempts += 1;
        match self.bounded(self.policy.attempt_timeout) {
            None => attempt.await,
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {limit:?}"
                ))),
            },
        }
    }

    /// After a failed attempt: the pause before the next one, or the status to give up with
    /// (not `transient`, attempts used up, or the pause would end past the deadline).
    pub(crate) fn pause_after(
        &mut self,
        status: Status,
        transient: bool,
    ) -> Result<Duration, Status> {
        if !transient {
            return Err(status);
        }
        if self.policy.attempts.is_some_and(|max| self.attempts >= max) {
            return Err(self.gave_up(status));
        }
        let pause = self.delays.next_delay();
        if self.remaining().is_some_and(|left| left <= pause) {
            return Err(self.gave_up(status));
        }
        tracing::debug!(
            attempt = self.attempts,
            ?pause,
            "call failed with {:?} ({}), retrying",
            status.code(),
            status.message()
        );
        Ok(pause)
    }

    /// The last status, saying that it is the last of several.
    pub(crate) fn gave_up(&self, status: Status) -> Status {
        if self.attempts <= 1 {
            return status;
        }
        Status::new(
            status.code(),
            format!(
                "{} (still failing after {} attempts in {:.1?})",
                status.message(),
                self.attempts,
                self.started.elapsed()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn transient_codes() {
        let table = [
            (Code::Ok, false),
            (Code::Cancelled, true),
            (Code::Unknown, true),
            (Code::InvalidArgument, false),
            (Code::DeadlineExceeded, true),
            (Code::NotFound, false),
            (Code::AlreadyExists, false),
            (Code::PermissionDenied, false),
            (Code::ResourceExhausted, false),
            (Code::FailedPrecondition, false),
            (Code::Aborted, true),
            (Code::OutOfRange, false),
            (Code::Unimplemented, true),
            (Code::Internal, false),
            (Code::Unavailable, true),
            (Code::DataLoss, false),
            (Code::Unauthenticated, false),
        ];
        for (code, transient) in table {
            assert_eq!(is_transient(code), transient, "{code:?}");
        }
    }

    fn millis(delays: &mut Delays, n: usize) -> Vec<u128> {
        (0..n).map(|_| delays.next_delay().as_millis()).collect()
    }

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let mut delays = backoff.delays();
        assert_eq!(millis(&mut delays, 6), vec![100, 200, 400, 500, 500, 500]);
        delays.reset();
        assert_eq!(delays.next_delay(), Duration::from_millis(100));

        let mut delays = Backoff::new(Duration::from_millis(500), Duration::from_secs(60))
            .with_factor(1.5)
            .delays();
        assert_eq!(millis(&mut delays, 4), vec![500, 750, 1125, 1687]);
    }

    #[test]
    fn jitter_lengthens_each_pause_by_at_most_itself() {
        let backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).with_jitter();
        let mut delays = backoff.delays();
        let mut spread = false;
        for step in [100u128, 200, 400, 400, 400, 400, 400, 400] {
            let got = delays.next_delay().as_millis();
            assert!((step..=2 * step).contains(&got), "{got} for {step}");
            spread |= got != step;
        }
        assert!(spread, "jitter never changed a pause");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_backoff() {
        let policy = RetryPolicy::forever(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ));
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let got = retry(&policy, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Status::unavailable("not the leader")),
                1 => Err(Status::cancelled("server going away")),
                2 => Err(Status::unknown("transport error")),
                n => Ok(n),
            }
        })
        .await
        .expect("succeeds");
        assert_eq!(got, 3);
        // Pauses of 100, 200 and 400 ms, and not a tick more.
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn definite_answers_end_the_call_at_once() {
        let calls = AtomicUsize::new(0);
        let status = retry(&RetryPolicy::default(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::not_found("no such node"))
        })
        .await
        .expect_err("fails");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such node");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_is_abandoned_and_retried() {
        let policy = RetryPolicy::default()
            .with_attempt_timeout(Some(Duration::from_secs(5)))
            .with_deadline(Some(Duration::from_secs(60)));
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let got = retry(&policy, || {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok("answered")
            }
        })
        .await
        .expect("second attempt answers");
        assert_eq!(got, "answered");
        assert_eq!(started.elapsed(), Duration::from_millis(5100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_attempts_and_pauses() {
        let policy = RetryPolicy::default()
            .with_backoff(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)))
            .with_attempt_timeout(Some(Duration::from_secs(4)))
            .with_deadline(Some(Duration::from_secs(12)));
        let started = Instant::now();
        let status = retry(&policy, std::future::pending::<Result<(), Status>>)
            .await
            .expect_err("gives up");
        // Attempts of 4 s at 0 and 5 s; the third, at 10 s, is cut at the deadline.
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("still failing after 3 attempts"),
            "{}",
            status.message()
        );

        let calls = AtomicUsize::new(0);
        let status = retry(&policy.with_attempts(Some(2)), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::unavailable("down"))
        })
        .await
        .expect_err("gives up");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
