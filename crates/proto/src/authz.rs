//! The method → policy table of every Metropolis RPC, generated at build time from the
//! `(metropolis.proto.ext.authorization)` method option. The rpc crate's authorization layer
//! enforces it; a method missing from the table is refused there.

use crate::ext::Permission;

/// The declared policy of one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodPolicy {
    /// gRPC path, `/package.Service/Method`.
    pub path: &'static str,
    /// `allow_unauthenticated` of the option: with an empty `need`, anyone may call.
    pub allow_unauthenticated: bool,
    /// Permissions the caller must hold; empty means any authenticated caller.
    pub need: &'static [Permission],
}

impl MethodPolicy {
    /// Whether calls bypass authentication entirely: `allow_unauthenticated` with an empty
    /// `need` (with a non-empty `need`, `allow_unauthenticated` has no effect).
    pub fn is_unauthenticated(&self) -> bool {
        self.allow_unauthenticated && self.need.is_empty()
    }
}

include!(concat!(env!("OUT_DIR"), "/authorization_table.rs"));

/// Looks up the policy of a gRPC path such as `/metropolis.proto.api.Management/GetNodes`.
pub fn policy_for(path: &str) -> Option<&'static MethodPolicy> {
    METHOD_POLICIES
        .binary_search_by(|p| p.path.cmp(path))
        .ok()
        .map(|i| &METHOD_POLICIES[i])
}
