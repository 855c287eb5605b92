//! The one OS call std and tokio do not wrap for us: sending a signal to a process or to a
//! whole process group. This is the only unsafe code of the crate.

#![allow(unsafe_code)]

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
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// Sends `signal` to process `pid`. Callers only pass the pid of a child they have not reaped
/// yet, so it cannot name an unrelated process. Errors (the process is already gone) are
/// ignored: the caller waits for the exit either way.
pub(crate) fn signal_process(pid: u32, signal: Signal) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal.raw());
    }
}

/// Sends `signal` to every process of the process group `pgid`: a node and every child it
/// started (its etcd), which is what a machine losing power looks like. Nodes are started as
/// leaders of their own group (pgid = their pid), so the group stays ours while the leader is
/// unreaped, and while any of its members lives after that (Linux never hands out a pid that
/// is still in use as a process group ID).
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // 0 and 1 would address our own group or every process we may signal.
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid
    // addresses the process group.
    unsafe {
        libc::kill(-pgid, signal.raw());
    }
}
