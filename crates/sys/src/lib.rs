//! sys: the few operating-system facilities std lacks, in one small crate.
//!
//! * [`set_parent_death_signal`]: child processes that die with the thread that started them.
//!   etcd members, throwaway PostgreSQL servers and the nodes of a launched cluster must not
//!   outlive their owner when it is killed without running destructors (SIGKILL, an abort, a
//!   test harness that exits). Linux offers exactly that with `prctl(PR_SET_PDEATHSIG)`, which
//!   the child has to call on itself between fork and exec. std's only hook for code at that
//!   point is `CommandExt::pre_exec`, which is `unsafe`: the closure runs in a forked copy of a
//!   multi-threaded process, where only async-signal-safe operations are sound.
//! * [`raise_open_file_limit`]: servers hold a descriptor per connection, and the usual soft
//!   limit (1024) is far below what their listeners admit.
//!
//! The `pre_exec` registration is the only `unsafe` code of the workspace; every other crate
//! forbids it. The system calls themselves go through rustix's safe wrappers, so the one
//! `unsafe` block's soundness argument is about the closure alone.

#![deny(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

pub use rustix::process::Signal;

mod limits;
pub use limits::{OpenFileLimit, raise_open_file_limit};

/// Makes the kernel send `signal` to the child that `cmd` starts when the *thread* that
/// spawns it exits (Linux ties the parent-death signal to the spawning thread, not to the
/// process). Spawn from a thread that lives as long as the child should: the test thread, a
/// tokio runtime worker, or a dedicated thread, never a `spawn_blocking` thread (those exit
/// after being idle).
///
/// If the parent is already gone by the time the child asks for the signal, the signal would
/// never come; the spawn then fails with ESRCH instead of leaving an orphan behind.
///
/// std applies uid/gid changes (`CommandExt::uid`/`gid`) before this hook runs, which matters
/// because a credential change clears the parent-death signal.
pub fn set_parent_death_signal(cmd: &mut Command, signal: Signal) {
    let parent = rustix::process::getpid();
    let hook = move || -> std::io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(signal))?;
        if rustix::process::getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // operations are allowed. It makes two system calls through rustix (prctl and getppid,
    // both raw syscalls that take no locks), captures two plain values (a pid and a signal
    // number), never allocates (an `Errno` converts into an `io::Error` holding the raw OS
    // error code inline) and touches no state shared with other threads.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    /// Waits up to 10 s for `child` to exit, returning how.
    fn wait_with_deadline(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn child_gets_the_signal_when_the_spawning_thread_exits() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            set_parent_death_signal(&mut cmd, Signal::KILL);
            cmd.spawn().expect("spawn sleep")
        })
        .join()
        .expect("spawning thread");
        match wait_with_deadline(&mut child) {
            Some(status) => assert_eq!(status.signal(), Some(Signal::KILL.as_raw())),
            None => {
                let _ = child.kill();
                panic!("child survived the thread that spawned it");
            }
        }
    }

    #[test]
    fn child_runs_normally_while_the_spawning_thread_lives() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        set_parent_death_signal(&mut cmd, Signal::TERM);
        let mut child = cmd.spawn().expect("spawn sh");
        let status = wait_with_deadline(&mut child).expect("sh exits");
        assert_eq!(status.code(), Some(7));
    }
}
