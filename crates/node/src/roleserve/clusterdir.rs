//! The `clusterdirectory` worker: keeps `esp/metropolis/cluster_directory.pb` listing every
//! node with the ConsensusMember role and its address, from Curator.Watch of all nodes
//! (upstream does this in its hosts-file worker). The directory is what the node seeds its
//! curator connection with on the next boot, so it is written only after the first complete
//! view (the watch backlog) and it never forgets a node: an address that is gone costs a
//! failed connection attempt, a missing one may cost the ability to rejoin.
//!
//! The same addresses are added to the running curator connection as candidate endpoints
//! (upstream's "curator updater").

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proto::common::ClusterDirectory;
use proto::common::cluster_directory::{Node, node::Address};
use proto::curator_api::WatchRequest;
use proto::curator_api::watch_event::Progress;
use proto::curator_api::watch_request::{Kind, NodesInCluster};
use supervisor::{Context, Runnable, RunnableResult};

use super::{Roleserve, call_failed, until_cancelled};

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move {
            let body = run(rs, ctx.clone());
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
    let mut client = m.client().await?;
    let mut stream = match client.watch(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(call_failed(&rs, &m, "watching all nodes", s).await),
    };
    let mut consensus_nodes: BTreeMap<String, String> = BTreeMap::new();
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
            if let (true, Some(address)) = (is_member, address) {
                consensus_nodes.insert(node.id.clone(), address);
            }
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
        if merge(&mut directory, &consensus_nodes) {
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
}
