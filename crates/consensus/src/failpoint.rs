//! Crash points for crash-consistency tests (the `fail` crate, compiled in only with the
//! `failpoints` feature; without it [`crash_point`] is empty).
//!
//! Armed with `return`, a crash point ends the process on the spot with [`CRASH_EXIT_CODE`]
//! (as a power cut at that line would, in a real node process); armed with `panic`, it panics
//! there, which in-process tests use to stop the member mid-step.

/// Exit code of a process ended by a crash point (the node's crash points use the same one).
pub const CRASH_EXIT_CODE: i32 = 77;

/// Ends the process (or panics) if the failpoint `name` is armed.
pub(crate) fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("consensus: crash point {name} reached: exiting");
        std::process::exit(CRASH_EXIT_CODE);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
