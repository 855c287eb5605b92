//! Child processes that must not outlive the process that started them (etcd members).

use tokio::process::Command;

/// Makes the kernel SIGKILL the child when the thread that spawned it exits, so a test process
/// that is killed (or aborts) cannot leave etcd members running.
///
/// `unsafe` is needed because `pre_exec` runs the closure in the forked child before `exec`,
/// where only async-signal-safe operations are allowed. The closure is sound: it only calls
/// `prctl` and `getppid` (both async-signal-safe system calls), captures a plain integer and
/// neither allocates nor takes locks (`io::Error::last_os_error` builds an inline OS error).
///
/// Caveat of PR_SET_PDEATHSIG: the "parent" is the spawning *thread*. Spawn from a thread that
/// lives as long as the child should: the test thread, or a tokio runtime worker thread (not a
/// `spawn_blocking` thread, which exits after being idle).
#[allow(unsafe_code)]
pub fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: see the function documentation; the closure is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then the signal never comes.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
