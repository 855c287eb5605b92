//! The one OS call std and tokio do not wrap for us: sending a signal to a process or to a
//! whole process group (through rustix's safe wrapper of kill(2)).

use rustix::process::{Pid, Signal as RawSignal, kill_process, kill_process_group};

/// Signals this module sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A clean shutdown request (the node stops its services and exits 0).
    Term,
    /// Power loss: nothing gets to clean up.
    Kill,
    /// A hang: the processes stop running but keep their sockets open.
    Stop,
    /// The end of a hang.
    Cont,
}

impl Signal {
    fn raw(self) -> RawSignal {
        match self {
            Signal::Term => RawSignal::TERM,
            Signal::Kill => RawSignal::KILL,
            Signal::Stop => RawSignal::STOP,
            Signal::Cont => RawSignal::CONT,
        }
    }
}

/// A positive pid, or `None` for what kill(2) would read as "our group" (0) or "every
/// process we may signal" (-1, or anything that overflows into the negative range).
fn pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// Sends `signal` to process `pid`. Callers only pass the pid of a child they have not reaped
/// yet, so it cannot name an unrelated process. Errors (the process is already gone) are
/// ignored: the caller waits for the exit either way.
pub(crate) fn signal_process(pid: u32, signal: Signal) {
    if let Some(pid) = self::pid(pid) {
        let _ = kill_process(pid, signal.raw());
    }
}

/// Sends `signal` to every process of the process group `pgid`: a node and every child it
/// started (its etcd), which is what a machine losing power looks like. Nodes are started as
/// leaders of their own group (pgid = their pid), so the group stays ours while the leader is
/// unreaped, and while any of its members lives after that (Linux never hands out a pid that
/// is still in use as a process group ID).
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    // 1 would address init's group, never one of ours.
    if pgid <= 1 {
        return;
    }
    if let Some(pgid) = pid(pgid) {
        let _ = kill_process_group(pgid, signal.raw());
    }
}
