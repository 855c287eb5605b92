//! Crash points for crash-consistency tests (the `fail` crate, compiled in only with the
//! `failpoints` feature; without it [`crash_point`] is empty and [`setup`] does nothing).
//!
//! A node built with the feature arms its failpoints from the `FAILPOINTS` environment variable
//! (`name=action;name=action`, the `fail` crate's syntax). A crash point armed with `return`
//! ends the process on the spot with [`CRASH_EXIT_CODE`], skipping every destructor and
//! shutdown step, as a power cut or SIGKILL at that line would; `panic` panics there instead.

/// Exit code of a process ended by a crash point (distinct from every [`crate::ExitCode`]).
pub const CRASH_EXIT_CODE: i32 = 77;

/// Ends the process if the failpoint `name` is armed (see the module documentation).
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("metropolis-node: crash point {name} reached: exiting");
        std::process::exit(CRASH_EXIT_CODE);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Keeps the failpoints armed while it lives.
pub struct Armed {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Arms the failpoints named in `FAILPOINTS` (nothing without the `failpoints` feature).
pub fn setup() -> Armed {
    Armed {
        #[cfg(feature = "failpoints")]
        _scenario: fail::FailScenario::setup(),
    }
}
