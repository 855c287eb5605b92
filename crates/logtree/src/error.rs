//! Errors returned by the log tree: invalid DNs and contradictory read filters.

/// Everything the log tree can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The DN has an empty component (`a..b`, `.a`, `a.`).
    #[error("invalid DN {dn:?}: {reason}")]
    InvalidDn {
        /// The rejected DN as given.
        dn: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// `only_raw` and `only_leveled` were both requested, which can never match anything.
    #[error("only_raw and only_leveled are mutually exclusive")]
    RawAndLeveled,
}
