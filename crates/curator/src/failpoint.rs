//! What an armed failpoint of the curator does (the `fail` crate; compiled in only with the
//! `failpoints` feature). Armed as `return`, a failpoint cuts its handler there with an error,
//! as a cancelled call or a lost leadership would. Armed as `return(exit)`, it ends the whole
//! process on the spot instead ([`CRASH_EXIT_CODE`], no destructor runs), as a power cut at
//! that line would: a panic would not do, it only ends the handler's task.

/// Exit code of a process ended by a failpoint (the node's crash points use the same).
pub const CRASH_EXIT_CODE: i32 = 77;

/// Ends the process if failpoint `name` was armed with the argument `exit`.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn exit_if_asked(name: &str, arg: Option<&str>) {
    if arg == Some("exit") {
        eprintln!("curator: failpoint {name} reached: exiting");
        std::process::exit(CRASH_EXIT_CODE);
    }
}
