//! The cluster as a table for people and failure messages, like `metroctl node describe` plus
//! the launcher's node index.

use super::*;

impl Cluster {
    /// A metroctl-style table of the nodes (`node describe`), with our node index.
    pub async fn describe(&self) -> Result<String> {
        let nodes = self.management().get_nodes("").await?;
        let index: HashMap<String, usize> = self
            .nodes
            .iter()
            .filter_map(|n| n.id().map(|id| (id, n.index())))
            .collect();
        Ok(describe_nodes(&nodes, &index))
    }
}

/// `NODE_STATE_UP` → `UP`.
pub(super) fn state_name(state: NodeState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("NODE_STATE_").unwrap_or(name)
}

/// A table like `metroctl node describe` (plus our index when known).
pub fn describe_nodes(nodes: &[proto::api::Node], index: &HashMap<String, usize>) -> String {
    let mut rows = Vec::new();
    // In our node order where known (the cluster lists nodes by ID).
    let mut nodes: Vec<&proto::api::Node> = nodes.iter().collect();
    nodes.sort_by_key(|n| {
        (
            index.get(&n.id).copied().unwrap_or(usize::MAX),
            n.id.clone(),
        )
    });
    for node in nodes {
        let roles = node
            .roles
            .as_ref()
            .map(|r| {
                let mut names = Vec::new();
                if r.consensus_member.is_some() {
                    names.push("ConsensusMember");
                }
                if r.kubernetes_controller.is_some() {
                    names.push("KubernetesController");
                }
                if r.kubernetes_worker.is_some() {
                    names.push("KubernetesWorker");
                }
                names.join(",")
            })
            .unwrap_or_default();
        let address = node
            .status
            .as_ref()
            .map(|s| s.external_address.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        let heartbeat = match (&node.time_since_heartbeat, node.health()) {
            (Some(d), Health::Healthy | Health::HeartbeatTimeout) => format!("{}s", d.seconds),
            _ => "-".to_string(),
        };
        rows.push(vec![
            index
                .get(&node.id)
                .map(|i| i.to_string())
                .unwrap_or_default(),
            node.id.clone(),
            state_name(node.state()).to_string(),
            address,
            node.health().as_str_name().to_string(),
            roles,
            heartbeat,
        ]);
    }
    tabular::render(
        &[
            "#",
            "NODE ID",
            "STATE",
            "ADDRESS",
            "HEALTH",
            "ROLES",
            "HEARTBEAT",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_table() {
        let node = proto::api::Node {
            id: "metropolis-abc".to_string(),
            state: NodeState::Up as i32,
            health: Health::Healthy as i32,
            ..Default::default()
        };
        let table = describe_nodes(&[node], &HashMap::from([("metropolis-abc".to_string(), 0)]));
        let mut lines = table.lines();
        assert!(lines.next().is_some_and(|l| l.starts_with("#  NODE ID")));
        let row = lines.next().expect("row");
        assert!(
            row.contains("metropolis-abc") && row.contains("UP") && row.contains("HEALTHY"),
            "{row}"
        );
    }
}
