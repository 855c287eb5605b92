//! The set of revoked node identities the authorization layer checks on every call.
//!
//! Upstream verifies client certificates offline only, so a deleted node keeps authenticating
//! until the cluster CA changes. Here every server consults this set: curators feed it from
//! the cluster's revocation state in etcd, other nodes from the curator leader, so a deleted
//! node is refused on its very next call — and, through [`RevocationSet::until_revoked`], its
//! open streams end as well.
//!
//! Revocation is permanent: certificates only ever enter the CRL and deleted node IDs only
//! ever become more. So the set only grows, and its two sources (node IDs, serials), fed by
//! whatever follows them, never overwrite each other: a CRL refresh cannot drop a node ID
//! revoked by DeleteNode, and two followers of the same state (a node's local curator and its
//! leader client) cannot undo each other's updates. Reads happen on every RPC and writes only
//! when something is revoked: an `RwLock` over small `HashSet`s keeps reads cheap and
//! uncontended; a watch channel tells streams that the set grew.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

/// Revoked node IDs and certificate serial numbers; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct RevocationSet {
    inner: Arc<RwLock<Revoked>>,
    /// Bumped whenever the set grows.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for RevocationSet {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            generation: Arc::new(watch::Sender::new(0)),
        }
    }
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
        self.revoke_nodes([node_id.to_string()]);
    }

    /// Refuses every certificate of these nodes from now on.
    pub fn revoke_nodes(&self, node_ids: impl IntoIterator<Item = String>) {
        let mut added = false;
        {
            let mut w = self.write();
            for id in node_ids {
                added |= w.node_ids.insert(id);
            }
        }
        self.grew(added);
    }

    /// Refuses the certificate with this serial number (big-endian bytes, as in the CRL).
    pub fn revoke_serial(&self, serial: &[u8]) {
        self.revoke_serials([serial.to_vec()]);
    }

    /// Refuses the certificates with these serial numbers (e.g. every serial of a CRL).
    pub fn revoke_serials(&self, serials: impl IntoIterator<Item = Vec<u8>>) {
        let mut added = false;
        {
            let mut w = self.write();
            for s in serials {
                added |= w.serials.insert(strip_leading_zeros(&s).to_vec());
            }
        }
        self.grew(added);
    }

    /// Whether a node ID has been revoked.
    pub fn is_node_revoked(&self, node_id: &str) -> bool {
        self.read().node_ids.contains(node_id)
    }

    /// Whether a certificate serial has been revoked.
    pub fn is_serial_revoked(&self, serial: &[u8]) -> bool {
        self.read().serials.contains(strip_leading_zeros(serial))
    }

    /// Whether a caller with this node ID (if it is a node) and certificate serial is refused.
    pub fn is_revoked(&self, node_id: Option<&str>, serial: Option<&[u8]>) -> bool {
        let r = self.read();
        node_id.is_some_and(|id| r.node_ids.contains(id))
            || serial.is_some_and(|s| r.serials.contains(strip_leading_zeros(s)))
    }

    /// Completes once a caller with this node ID and serial is refused (at once if it
    /// already is). What the authorization layer ends open streams with.
    pub async fn until_revoked(&self, node_id: Option<String>, serial: Option<Vec<u8>>) {
        let mut changes = self.generation.subscribe();
        loop {
            // Marked seen before the check, so a change during the check wakes us.
            changes.borrow_and_update();
            if self.is_revoked(node_id.as_deref(), serial.as_deref()) {
                return;
            }
            if changes.changed().await.is_err() {
                // The sender lives as long as the set, which `self` holds.
                std::future::pending::<()>().await;
            }
        }
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

    fn grew(&self, added: bool) {
        if added {
            self.generation.send_modify(|g| *g += 1);
        }
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
        clone.revoke_nodes(vec!["metropolis-x".to_string()]);
        assert!(set.is_node_revoked("metropolis-x"));
        assert_eq!(set.len(), 3);
        assert!(set.is_revoked(Some("metropolis-x"), None));
        assert!(set.is_revoked(None, Some(&[1, 2])));
        assert!(!set.is_revoked(Some("metropolis-y"), Some(&[9])));
    }

    #[test]
    fn a_crl_refresh_keeps_revoked_node_ids() {
        // What DeleteNode revokes by node ID must survive the CRL follower applying a CRL
        // that does not (yet) list the node's certificate.
        let set = RevocationSet::new();
        set.revoke_node("metropolis-deleted");
        set.revoke_serials(vec![vec![7], vec![8]]);
        set.revoke_serials(Vec::new());
        assert!(set.is_node_revoked("metropolis-deleted"));
        assert!(set.is_serial_revoked(&[7]));
    }

    #[tokio::test]
    async fn until_revoked_completes_when_the_caller_is_revoked() {
        let set = RevocationSet::new();
        let wait = tokio::spawn({
            let set = set.clone();
            async move {
                set.until_revoked(Some("metropolis-a".into()), Some(vec![5]))
                    .await
            }
        });
        // Other revocations do not end it.
        set.revoke_node("metropolis-b");
        set.revoke_serial(&[6]);
        tokio::task::yield_now().await;
        assert!(!wait.is_finished());
        set.revoke_serial(&[0, 5]);
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("completes")
            .expect("task");
        // Already revoked: at once.
        set.until_revoked(Some("metropolis-b".into()), None).await;
    }
}
