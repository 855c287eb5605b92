//! How a node process ends, and the exit codes the launcher relies on.

/// Exit codes of `metropolis-node` (a contract with the launcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Stopped by SIGTERM/SIGINT after a clean shutdown.
    Stopped = 0,
    /// A fatal error; the message is on stderr. Restarting may help once the cause is fixed.
    Fatal = 1,
    /// This node was deleted from or decommissioned by its cluster: do not restart it.
    Gone = 3,
    /// A reboot was requested (UpdateNode with ACTIVATION_REBOOT, or a kexec that could not
    /// exec): restart the node, which boots the slot its boot state names.
    Reboot = 4,
}

impl ExitCode {
    /// The numeric process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A request to end the process with `code`, saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// How the process exits.
    pub code: ExitCode,
    /// What an operator needs to know (printed on stderr and logged).
    pub message: String,
}

impl Exit {
    /// A fatal error (exit code 1).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            code: ExitCode::Fatal,
            message: message.into(),
        }
    }

    /// The node is no longer a member (exit code 3).
    pub fn gone(message: impl Into<String>) -> Self {
        Self {
            code: ExitCode::Gone,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a component of the running node asks the process to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down and exit.
    Exit(Exit),
    /// The cluster asked this node to decommission itself: report, wipe, exit as gone.
    Decommission,
}
