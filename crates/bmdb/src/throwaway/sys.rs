//! The two OS calls the throwaway PostgreSQL needs that std does not wrap. This is the only
//! unsafe code of the crate.

#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The effective user ID of this process.
pub(super) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes the child started by `cmd` receive `signal` when the *thread* that spawns it exits.
///
/// This is how a PostgreSQL started by a test (or by `--bmdb-eat-my-data`) goes away when its
/// owner dies without running destructors (SIGKILL, a panic in a static, a test harness that
/// exits): the owner spawns it from a dedicated thread that lives as long as the process.
/// std applies uid/gid changes before `pre_exec` closures run, which matters because a
/// credential change clears the parent-death signal.
pub(super) fn set_parent_death_signal(cmd: &mut Command, signal: libc::c_int) {
    let parent = std::process::id();
    let hook = move || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe syscalls that touch
        // no memory of ours; this runs in the forked child before exec.
        let (rc, ppid) = unsafe {
            (
                libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0),
                libc::getppid(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died between fork and prctl: then no signal will ever come.
        // (ESRCH: no allocation after fork in a multi-threaded process.)
        if ppid as u32 != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls and does not allocate.
    unsafe {
        cmd.pre_exec(hook);
    }
}
