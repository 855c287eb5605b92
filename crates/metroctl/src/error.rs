//! metroctl's one error type: a message written as advice, and a [`Kind`] that decides the
//! exit code, so scripts can tell "you typed it wrong" from "the cluster said no" from "there
//! is no cluster to talk to".

use std::fmt;
use std::process::ExitCode;

use tonic::{Code, Status};

/// Why a command failed; each kind has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something on this machine: config files, I/O, a wait that timed out, an aborted prompt.
    Local,
    /// The command line is wrong (clap uses the same code for its own errors).
    Usage,
    /// The cluster answered and refused the request.
    Refused,
    /// No cluster answered: connection failures, no leader, timeouts of calls.
    Unreachable,
    /// The cluster's identity is not trusted: a CA different from the pinned one, or a first
    /// contact whose CA the user did not accept.
    Untrusted,
}

impl Kind {
    /// The process exit code of this kind (0 is success).
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Local => 1,
            Kind::Usage => 2,
            Kind::Refused => 3,
            Kind::Unreachable => 4,
            Kind::Untrusted => 5,
        }
    }
}

/// A failed command: what went wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Decides the exit code.
    pub kind: Kind,
    /// One or more lines, the first saying what failed.
    pub message: String,
}

/// Result alias used by every command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// A local failure (files, I/O, timeouts of our own waits).
    pub fn local(message: impl Into<String>) -> Self {
        Self::new(Kind::Local, message)
    }

    /// A usage error (bad arguments that clap cannot check).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    /// A request the cluster (or our reading of its state) refused.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(Kind::Refused, message)
    }

    /// The cluster could not be reached.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unreachable, message)
    }

    /// The cluster's identity is not trusted.
    pub fn untrusted(message: impl Into<String>) -> Self {
        Self::new(Kind::Untrusted, message)
    }

    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.exit_code())
    }

    /// Maps a failed call: `what` says what we tried ("listing nodes"), the status what the
    /// cluster said. Curator messages already carry advice (node IDs, states, the metroctl
    /// command that fixes it), so they are kept verbatim; we add advice where the code alone
    /// tells us more than an upstream server's message would.
    pub fn from_status(what: &str, status: &Status) -> Self {
        let msg = status.message();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                if msg.contains("not a node of the expected cluster") {
                    return Error::untrusted(format!(
                        "{what}: the cluster presented a certificate that does not chain to the \
                         pinned cluster CA: {msg}"
                    ));
                }
                Error::unreachable(format!(
                    "{what}: the cluster is unreachable: {msg}\n\
                     Check that --endpoints names a running node of the cluster."
                ))
            }
            Code::Unauthenticated => Error::refused(format!(
                "{what}: the cluster does not accept our credentials: {msg}\n\
                 If the cluster was re-created, take ownership of the new one with a fresh \
                 --config directory (metroctl takeownership)."
            )),
            Code::PermissionDenied => Error::refused(format!("{what}: permission denied: {msg}")),
            Code::Unimplemented => {
                Error::refused(format!("{what}: this cluster does not implement it: {msg}"))
            }
            Code::Unknown if is_transport_failure(msg) => {
                Error::unreachable(format!("{what}: the cluster is unreachable: {msg}"))
            }
            _ => Error::refused(format!("{what}: {msg}")),
        }
    }
}

/// tonic reports some connection failures as Unknown with a transport message.
fn is_transport_failure(msg: &str) -> bool {
    [
        "transport error",
        "error trying to connect",
        "connection reset",
        "broken pipe",
    ]
    .iter()
    .any(|m| msg.to_ascii_lowercase().contains(m))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<identity::Error> for Error {
    fn from(e: identity::Error) -> Self {
        Error::local(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let kinds = [
            Kind::Local,
            Kind::Usage,
            Kind::Refused,
            Kind::Unreachable,
            Kind::Untrusted,
        ];
        let codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn refusals_keep_the_server_advice() {
        let status = Status::failed_precondition(
            "node metropolis-ab is UP and must be decommissioned first (metroctl node decommission metropolis-ab)",
        );
        let e = Error::from_status("deleting node metropolis-ab", &status);
        assert_eq!(e.kind, Kind::Refused);
        assert!(
            e.message
                .starts_with("deleting node metropolis-ab: node metropolis-ab is UP")
        );
        assert!(e.message.contains("metroctl node decommission"));
    }

    #[test]
    fn codes_map_to_kinds() {
        let cases = [
            (Code::InvalidArgument, Kind::Refused),
            (Code::NotFound, Kind::Refused),
            (Code::FailedPrecondition, Kind::Refused),
            (Code::PermissionDenied, Kind::Refused),
            (Code::Unauthenticated, Kind::Refused),
            (Code::Unimplemented, Kind::Refused),
            (Code::Internal, Kind::Refused),
            (Code::Unavailable, Kind::Unreachable),
            (Code::DeadlineExceeded, Kind::Unreachable),
        ];
        for (code, kind) in cases {
            let e = Error::from_status("x", &Status::new(code, "m"));
            assert_eq!(e.kind, kind, "{code:?}");
        }
    }

    #[test]
    fn transport_failures_are_unreachable() {
        let e = Error::from_status("x", &Status::unknown("transport error: connection refused"));
        assert_eq!(e.kind, Kind::Unreachable);
    }

    #[test]
    fn foreign_certificates_are_untrusted() {
        let e = Error::from_status(
            "x",
            &Status::unavailable(
                "no curator leader found; last error: server is not a node of the expected cluster",
            ),
        );
        assert_eq!(e.kind, Kind::Untrusted);
    }

    #[test]
    fn unreachable_says_what_to_check() {
        let e = Error::from_status("listing nodes", &Status::unavailable("no curator leader"));
        assert!(e.message.contains("--endpoints"), "{}", e.message);
    }
}
