//! Child processes that must not outlive the process that started them (etcd members).

use tokio::process::Command;

/// Makes the kernel SIGKILL the child when the thread that spawned it exits, so a test process
/// that is killed (or aborts) cannot leave etcd members running.
///
/// Caveat of PR_SET_PDEATHSIG: the "parent" is the spawning *thread*. Spawn from a thread that
/// lives as long as the child should: the test thread, or a tokio runtime worker thread (not a
/// `spawn_blocking` thread, which exits after being idle). See [`sys::set_parent_death_signal`].
pub fn set_parent_death_signal(cmd: &mut Command) {
    sys::set_parent_death_signal(cmd.as_std_mut(), sys::Signal::KILL);
}
