//! What the consensus integration tests share.

use logtree::{Backlog, Dn, LogTree, ReadOptions};

/// Every line the consensus service (and etcd through it) logged under `root.consensus`,
/// rendered.
pub fn consensus_logs(tree: &LogTree) -> Vec<String> {
    let dn = Dn::new("root.consensus").expect("dn");
    let opts = ReadOptions {
        with_children: true,
        backlog: Backlog::All,
        ..Default::default()
    };
    tree.read(&dn, opts)
        .expect("read")
        .backlog
        .iter()
        .map(|e| e.to_string())
        .collect()
}
