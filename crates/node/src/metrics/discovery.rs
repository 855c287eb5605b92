//! `/discovery`: every node's metrics targets in Prometheus' HTTP service discovery format
//! (a JSON list of target groups), read from the curator (Curator.Watch of all nodes, its
//! backlog only) whenever Prometheus asks, as upstream's discovery endpoint builds it.
//!
//! One group per node and exporter: `node` for every node that reported an address, `etcd`
//! and `curator` for consensus members. Each group sets `__scheme__` and `__metrics_path__`,
//! so one scrape job with this endpoint and the owner's certificate covers them all; its
//! labels name the exporter, the node ID, the node's roles and its labels (`label_<key>`, the
//! key's characters outside `[a-zA-Z0-9_]` replaced by `_`).

use std::collections::BTreeMap;
use std::time::Duration;

use proto::curator_api::watch_event::Progress;
use proto::curator_api::watch_request::{Kind, NodesInCluster};
use proto::curator_api::{Node, WatchRequest};
use serde::Serialize;

use crate::roleserve::Membership;

/// Longest wait for the curator's view of all nodes.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(10);

/// One http_sd target group.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TargetGroup {
    /// `host:port` of the metrics listener.
    pub targets: Vec<String>,
    /// Labels of these targets.
    pub labels: BTreeMap<String, String>,
}

/// Reads every node from the curator and lists their targets.
pub async fn targets(m: &Membership) -> Result<Vec<TargetGroup>, String> {
    let mut client = m.client().await.map_err(|s| s.message().to_string())?;
    let read = async {
        let mut stream = client
            .watch(WatchRequest {
                kind: Some(Kind::NodesInCluster(NodesInCluster {})),
            })
            .await
            .map_err(|s| format!("watching all nodes: {}", s.message()))?
            .into_inner();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        loop {
            let event = stream
                .message()
                .await
                .map_err(|s| format!("watching all nodes: {}", s.message()))?
                .ok_or("the watch of all nodes ended early")?;
            for node in event.nodes {
                nodes.insert(node.id.clone(), node);
            }
            for gone in event.node_tombstones {
                nodes.remove(&gone.node_id);
            }
            if event.progress == Progress::LastBacklogged as i32 {
                return Ok::<_, String>(nodes);
            }
        }
    };
    let nodes = tokio::time::timeout(BACKLOG_TIMEOUT, read)
        .await
        .map_err(|_| format!("no complete view of the nodes within {BACKLOG_TIMEOUT:?}"))??;
    Ok(nodes.values().flat_map(groups_of).collect())
}

/// The target groups of one node (none before it reported an address).
pub fn groups_of(node: &Node) -> Vec<TargetGroup> {
    let Some(address) = node
        .status
        .as_ref()
        .map(|s| s.external_address.as_str())
        .filter(|a| !a.is_empty())
    else {
        return Vec::new();
    };
    let roles = node.roles.clone().unwrap_or_default();
    let consensus = roles.consensus_member.is_some();
    let mut base = BTreeMap::new();
    base.insert("__scheme__".to_string(), "https".to_string());
    base.insert("node_id".to_string(), node.id.clone());
    base.insert("role_consensus_member".into(), consensus.to_string());
    base.insert(
        "role_kubernetes_controller".into(),
        roles.kubernetes_controller.is_some().to_string(),
    );
    base.insert(
        "role_kubernetes_worker".into(),
        roles.kubernetes_worker.is_some().to_string(),
    );
    for pair in node.labels.iter().flat_map(|l| &l.pairs) {
        base.insert(
            format!("label_{}", label_name(&pair.key)),
            pair.value.clone(),
        );
    }
    let target = format!("{address}:{}", super::METRICS_PORT);
    let exporters: &[&str] = if consensus {
        &["node", "etcd", "curator"]
    } else {
        &["node"]
    };
    exporters
        .iter()
        .map(|exporter| {
            let mut labels = base.clone();
            labels.insert("exporter".into(), exporter.to_string());
            labels.insert("__metrics_path__".into(), format!("/metrics/{exporter}"));
            TargetGroup {
                targets: vec![target.clone()],
                labels,
            }
        })
        .collect()
}

/// A node label key as a Prometheus label name fragment.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::node_labels::Pair;
    use proto::common::{NodeLabels, NodeRoles, NodeStatus, node_roles};

    #[test]
    fn groups_per_exporter() {
        let mut node = Node {
            id: "metropolis-ab".into(),
            ..Default::default()
        };
        assert!(groups_of(&node).is_empty(), "no address yet, no target");
        node.status = Some(NodeStatus {
            external_address: "10.0.0.2".into(),
            ..Default::default()
        });
        node.labels = Some(NodeLabels {
            pairs: vec![Pair {
                key: "example.com/rack".into(),
                value: "r1".into(),
            }],
        });
        let worker = groups_of(&node);
        assert_eq!(worker.len(), 1);
        assert_eq!(worker[0].targets, vec!["10.0.0.2:7840".to_string()]);
        assert_eq!(worker[0].labels["__metrics_path__"], "/metrics/node");
        assert_eq!(worker[0].labels["label_example_com_rack"], "r1");
        assert_eq!(worker[0].labels["role_consensus_member"], "false");
        node.roles = Some(NodeRoles {
            consensus_member: Some(node_roles::ConsensusMember::default()),
            ..Default::default()
        });
        let member: Vec<String> = groups_of(&node)
            .into_iter()
            .map(|g| g.labels["exporter"].clone())
            .collect();
        assert_eq!(member, ["node", "etcd", "curator"]);
    }
}
