//! The `clusterdirectory` worker: keeps `esp/metropolis/cluster_directory.pb` listing every
//! node with the ConsensusMember role and its address, from Curator.Watch of all nodes
//! (upstream does this in its hosts-file worker). The directory is what the node seeds its
//! curator connection with on the next boot, so it is written only after the first complete
//! view (the watch backlog) and it never forgets an address: one that is gone costs a failed
//! connection attempt, a missing one may cost the ability to rejoin.
//!
//! Node IDs are another matter (ours): the directory is also how the node tells which nodes
//! may lead ([`super::trust`]), so an entry keeps its node ID only while that node holds the
//! ConsensusMember role. A node that loses the role or is deleted keeps its address as an
//! anonymous seed; from the first complete view on, every ID the view does not show as a
//! consensus member is dropped (the directory a node registered with lists all UP nodes).
//! Any change to the identified members (one added, one dropped, one at another address) is
//! taken only if the other consensus members the directory lists back the leader that says so
//! ([`super::confirm::vouched`]): a curator the node trusts on stale grounds must not be able
//! to strike the genuine members off, point them at addresses where nobody answers (so that
//! they cannot contradict it) or list accomplices. A deletion also makes the node fetch
//! the cluster CRL at once: the deleted node's certificate has just been revoked.
//!
//! The same addresses are added to the running curator connection as candidate endpoints
//! (upstream's "curator updater").

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proto::common::ClusterDirectory;
use proto::common::cluster_directory::{Node, node::Address};
use proto::curator_api::WatchRequest;
use proto::curator_api::watch_event::Progress;
use proto::curator_api::watch_request::{Kind, NodesInCluster};
use supervisor::{Context, Runnable, RunnableResult};

use super::{Roleserve, call_failed, confirm, follow_leader, until_cancelled};

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move {
            let body = follow_leader(&rs, "watching all nodes", || run(rs.clone(), ctx.clone()));
            until_cancelled(&ctx, body).await
        }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let m = rs.membership().await;
    let esp = &rs.env.layout.esp;
    let mut directory = match esp.cluster_directory() {
        Ok(d) => d.unwrap_or_default(),
        Err(e) => {
            tracing::warn!("cannot read the cluster directory, rebuilding it: {e}");
            ClusterDirectory::default()
        }
    };
    ctx.signal_healthy();
    let request = WatchRequest {
        kind: Some(Kind::NodesInCluster(NodesInCluster {})),
    };
    let (leader, mut client) = m.client_of_leader().await?;
    let mut stream = match client.watch(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(call_failed(&rs, &m, "watching all nodes", s).await),
    };
    // Consensus members with an address, and all consensus members.
    let mut consensus_nodes: BTreeMap<String, String> = BTreeMap::new();
    let mut members: BTreeSet<String> = BTreeSet::new();
    let mut backlogged = false;
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("watch of all nodes ended".into()),
            Err(s) => return Err(call_failed(&rs, &m, "watching all nodes", s).await),
        };
        for node in &event.nodes {
            let is_member = node
                .roles
                .as_ref()
                .is_some_and(|r| r.consensus_member.is_some());
            let address = node
                .status
                .as_ref()
                .map(|s| s.external_address.clone())
                .filter(|a| a.parse::<IpAddr>().is_ok());
            if is_member {
                members.insert(node.id.clone());
            } else {
                members.remove(&node.id);
                consensus_nodes.remove(&node.id);
            }
            if let (true, Some(address)) = (is_member, address) {
                consensus_nodes.insert(node.id.clone(), address);
            }
        }
        for tombstone in &event.node_tombstones {
            members.remove(&tombstone.node_id);
            consensus_nodes.remove(&tombstone.node_id);
        }
        if !event.node_tombstones.is_empty() {
            // The deleted node's certificate was revoked just now.
            let curator = m.curator.clone();
            tokio::spawn(async move { curator.refresh_crl().await });
        }
        backlogged |= event.progress == Progress::LastBacklogged as i32;
        if !backlogged {
            continue;
        }
        let endpoints: Vec<String> = consensus_nodes
            .values()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, rpc::CURATOR_PORT).to_string())
            .collect();
        if let Err(e) = m.curator.add_endpoints(endpoints) {
            tracing::warn!("cannot add curator endpoints: {e}");
        }
        let mut proposed = directory.clone();
        merge(&mut proposed, &consensus_nodes);
        let forgotten = forget_ids(&mut proposed, &members);
        let mut changed = false;
        let altered = identity_changes(&directory, &proposed);
        if altered.is_empty() {
            changed = proposed != directory;
            directory = proposed;
        } else {
            // Who the consensus members are, and where, decides which curators the node
            // obeys and who vouches for them: changing that on the leader's word alone would
            // let a curator the node wrongly trusts lock the genuine ones out (strike them
            // off, point them at addresses where nobody answers) or list accomplices.
            match confirm::vouched(&directory, &leader, Some(&m.node_id()), &m.crl).await {
                Ok(()) => {
                    if !forgotten.is_empty() {
                        tracing::info!(
                            "cluster directory: {} no consensus member(s) (any more); their \
                             addresses stay as seeds only",
                            forgotten.join(", ")
                        );
                    }
                    directory = proposed;
                    changed = true;
                }
                Err(why) => tracing::warn!(
                    "cluster directory: not taking curator {leader}'s changes to the consensus \
                     members ({}) for now: {why}",
                    altered.join(", ")
                ),
            }
        }
        if changed {
            esp.write_cluster_directory(&directory)
                .map_err(|e| format!("writing the cluster directory: {e}"))?;
            tracing::info!(
                "cluster directory updated: {} node(s)",
                directory.nodes.len()
            );
        }
    }
}

/// Merges consensus nodes (`id → address`) into the directory without dropping anything;
/// returns whether it changed. Entries without an ID (from register parameters) that have the
/// node's address are adopted by it rather than duplicated.
pub fn merge(directory: &mut ClusterDirectory, nodes: &BTreeMap<String, String>) -> bool {
    let mut changed = false;
    for (id, address) in nodes {
        let addresses = vec![Address {
            host: address.clone(),
        }];
        if let Some(entry) = directory.nodes.iter_mut().find(|n| &n.id == id) {
            if entry.addresses != addresses {
                entry.addresses = addresses;
                changed = true;
            }
        } else if let Some(entry) = directory
            .nodes
            .iter_mut()
            .find(|n| n.id.is_empty() && first_host(n) == Some(address.as_str()))
        {
            entry.id = id.clone();
            changed = true;
        } else {
            directory.nodes.push(Node {
                public_key: Vec::new(),
                addresses,
                id: id.clone(),
            });
            changed = true;
        }
    }
    changed
}

/// Drops the node ID of every entry whose node is not a consensus member (its address
/// stays, as a seed); returns the IDs dropped.
pub fn forget_ids(directory: &mut ClusterDirectory, members: &BTreeSet<String>) -> Vec<String> {
    let mut forgotten = Vec::new();
    for entry in &mut directory.nodes {
        if !entry.id.is_empty() && !members.contains(&entry.id) {
            forgotten.push(std::mem::take(&mut entry.id));
            entry.public_key.clear();
        }
    }
    forgotten
}

/// The consensus members (node IDs) whose entry differs between `before` and `after`: added,
/// dropped, or with other addresses. Entries without an ID are seeds only and never count.
pub fn identity_changes(before: &ClusterDirectory, after: &ClusterDirectory) -> Vec<String> {
    let identified = |d: &ClusterDirectory| -> BTreeMap<String, Vec<Address>> {
        d.nodes
            .iter()
            .filter(|n| !n.id.is_empty())
            .map(|n| (n.id.clone(), n.addresses.clone()))
            .collect()
    };
    let (before, after) = (identified(before), identified(after));
    let ids: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    ids.into_iter()
        .filter(|id| before.get(*id) != after.get(*id))
        .cloned()
        .collect()
}

fn first_host(n: &Node) -> Option<&str> {
    n.addresses.first().map(|a| a.host.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, host: &str) -> Node {
        Node {
            public_key: Vec::new(),
            addresses: vec![Address {
                host: host.to_string(),
            }],
            id: id.to_string(),
        }
    }

    #[test]
    fn merge_adopts_updates_and_never_forgets() {
        let mut d = ClusterDirectory {
            nodes: vec![entry("", "10.0.0.1"), entry("b", "10.0.0.2")],
        };
        let nodes = BTreeMap::from([
            ("a".to_string(), "10.0.0.1".to_string()),
            ("c".to_string(), "10.0.0.3".to_string()),
        ]);
        assert!(merge(&mut d, &nodes));
        assert_eq!(
            d.nodes,
            vec![
                entry("a", "10.0.0.1"),
                entry("b", "10.0.0.2"),
                entry("c", "10.0.0.3")
            ]
        );
        assert!(!merge(&mut d, &nodes), "idempotent");
        let moved = BTreeMap::from([("b".to_string(), "10.0.0.9".to_string())]);
        assert!(merge(&mut d, &moved));
        assert_eq!(d.nodes[1], entry("b", "10.0.0.9"));
        assert_eq!(d.nodes.len(), 3);
    }

    #[test]
    fn changes_to_identified_members_are_named() {
        let before = ClusterDirectory {
            nodes: vec![
                entry("a", "10.0.0.1"),
                entry("b", "10.0.0.2"),
                entry("", "10.0.0.3"),
            ],
        };
        assert!(identity_changes(&before, &before).is_empty());
        // A genuine member pointed elsewhere, a member added, a member struck off.
        let mut moved = before.clone();
        moved.nodes[1] = entry("b", "192.0.2.1");
        assert_eq!(identity_changes(&before, &moved), vec!["b".to_string()]);
        let mut added = before.clone();
        added.nodes.push(entry("c", "10.0.0.4"));
        assert_eq!(identity_changes(&before, &added), vec!["c".to_string()]);
        let mut adopted = before.clone();
        adopted.nodes[2].id = "c".to_string();
        assert_eq!(identity_changes(&before, &adopted), vec!["c".to_string()]);
        let mut dropped = before.clone();
        forget_ids(&mut dropped, &BTreeSet::from(["a".to_string()]));
        assert_eq!(identity_changes(&before, &dropped), vec!["b".to_string()]);
    }

    #[test]
    fn only_consensus_members_keep_their_ids() {
        let mut d = ClusterDirectory {
            nodes: vec![
                entry("a", "10.0.0.1"),
                entry("b", "10.0.0.2"),
                entry("", "10.0.0.3"),
            ],
        };
        let members = BTreeSet::from(["a".to_string()]);
        assert_eq!(forget_ids(&mut d, &members), vec!["b".to_string()]);
        assert_eq!(
            d.nodes,
            vec![
                entry("a", "10.0.0.1"),
                entry("", "10.0.0.2"),
                entry("", "10.0.0.3")
            ],
            "addresses stay as seeds"
        );
        assert!(forget_ids(&mut d, &members).is_empty(), "idempotent");
        // A node that becomes a member again gets its ID back through its address.
        let nodes = BTreeMap::from([("b".to_string(), "10.0.0.2".to_string())]);
        assert!(merge(&mut d, &nodes));
        assert_eq!(d.nodes[1], entry("b", "10.0.0.2"));
    }
}
