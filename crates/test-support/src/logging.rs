//! Logging for tests: `tracing` events go to the test's captured output (shown by the test
//! runner for failing tests, or with `--no-capture`).

use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` is not set: warnings and errors of every crate. Tests that
/// want a chattier default use [`init_with`].
pub const DEFAULT_FILTER: &str = "warn";

/// Installs the test subscriber with [`DEFAULT_FILTER`]; see [`init_with`].
pub fn init() {
    init_with(DEFAULT_FILTER);
}

/// Installs the test subscriber: the `fmt` layer with the test writer, filtered by `RUST_LOG`
/// if it is set and by `default_filter` (an `EnvFilter` directive such as `launch=info`)
/// otherwise. Idempotent: the first call in a process wins, later calls (from other tests in
/// the same process, or helpers that call it again) change nothing.
pub fn init_with(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // try_init fails only when a global subscriber is already set: by an earlier call, which
    // is what idempotent means here.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}
