//! The open-file limit (RLIMIT_NOFILE).
//!
//! Every connection a server holds is a descriptor. The soft limit a process starts with is
//! often 1024 (systemd and most shells), while the hard limit, which an unprivileged process
//! may raise its soft limit to, is far higher (524288 under systemd). A server with the soft
//! limit would fail accepting (EMFILE) long before its connection caps apply, so servers raise
//! the soft limit to the hard one when they start.

/// The soft open-file limit before and after [`raise_open_file_limit`]; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit the process started with.
    pub before: Option<u64>,
    /// The soft limit now (the hard limit, unless raising failed).
    pub after: Option<u64>,
}

/// Raises the soft open-file limit of this process to its hard limit. Lowering never happens;
/// a limit that is already at the hard one is left alone.
pub fn raise_open_file_limit() -> std::io::Result<OpenFileLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let before = current.current;
    if before == current.maximum {
        return Ok(OpenFileLimit {
            before,
            after: before,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        },
    )?;
    Ok(OpenFileLimit {
        before,
        after: getrlimit(Resource::Nofile).current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        // Start from a low soft limit, as a process started by a shell or systemd does.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(256),
                maximum: hard,
            },
        )
        .expect("lowering the soft limit");
        let limit = raise_open_file_limit().expect("raising the open-file limit");
        assert_eq!(limit.before, Some(256));
        assert_eq!(limit.after, hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
        // Nothing left to raise the second time.
        let again = raise_open_file_limit().expect("again");
        assert_eq!((again.before, again.after), (hard, hard));
    }
}
