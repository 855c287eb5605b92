//! The set of revoked node identities the authorization layer checks on every call.
//!
//! Upstream verifies client certificates offline only, so a deleted node keeps authenticating
//! until the cluster CA changes. Here the curator feeds this set from a watch on the cluster's
//! revocation state and every server consults it, so a deleted node is refused on its very next
//! call. Reads happen on every RPC and writes only when a node is deleted: an `RwLock` over a
//! small `HashSet` keeps reads cheap and uncontended.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Revoked node IDs and certificate serial numbers; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    inner: Arc<RwLock<Revoked>>,
}

#[derive(Debug, Default)]
struct Revoked {
    node_ids: HashSet<String>,
    serials: HashSet<Vec<u8>>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses every certificate of this node from now on.
    pub fn revoke_node(&self, node_id: &str) {
        self.write().node_ids.insert(node_id.to_string());
    }

    /// Refuses the certificate with this serial number (big-endian bytes, as in the CRL).
    pub fn revoke_serial(&self, serial: &[u8]) {
        self.write()
            .serials
            .insert(strip_leading_zeros(serial).to_vec());
    }

    /// Replaces the whole set (used when resynchronising from the cluster's state).
    pub fn replace(
        &self,
        node_ids: impl IntoIterator<Item = String>,
        serials: impl IntoIterator<Item = Vec<u8>>,
    ) {
        let mut w = self.write();
        w.node_ids = node_ids.into_iter().collect();
        w.serials = serials
            .into_iter()
            .map(|s| strip_leading_zeros(&s).to_vec())
            .collect();
    }

    /// Whether a node ID has been revoked.
    pub fn is_node_revoked(&self, node_id: &str) -> bool {
        self.read().node_ids.contains(node_id)
    }

    /// Whether a certificate serial has been revoked.
    pub fn is_serial_revoked(&self, serial: &[u8]) -> bool {
        self.read().serials.contains(strip_leading_zeros(serial))
    }

    /// Number of revoked node IDs and serials (for diagnostics).
    pub fn len(&self) -> usize {
        let r = self.read();
        r.node_ids.len() + r.serials.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A poisoned lock only means a writer panicked mid-insert of a plain HashSet; the data is
    // still a valid set, so keep serving rather than failing every RPC.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revoked> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Revoked> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// DER integers may carry a leading zero byte to stay positive; compare magnitudes only.
fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revokes_nodes_and_serials() {
        let set = RevocationSet::new();
        assert!(set.is_empty());
        set.revoke_node("metropolis-abc");
        set.revoke_serial(&[0, 1, 2]);
        assert!(set.is_node_revoked("metropolis-abc"));
        assert!(!set.is_node_revoked("metropolis-abd"));
        assert!(set.is_serial_revoked(&[1, 2]));
        assert!(set.is_serial_revoked(&[0, 0, 1, 2]));
        assert!(!set.is_serial_revoked(&[1, 3]));
        let clone = set.clone();
        clone.replace(vec!["metropolis-x".to_string()], vec![]);
        assert!(set.is_node_revoked("metropolis-x"));
        assert!(!set.is_node_revoked("metropolis-abc"));
        assert_eq!(set.len(), 1);
    }
}
