//! `metroctl approve [ids]`: without IDs, the nodes waiting in NEW with their public keys
//! (to compare with what the new node logged); with IDs, ApproveNode for each.

use proto::common::NodeState;

use super::Env;
use crate::cli::Format;
use crate::error::{Error, Result};
use crate::model::{NodeView, state_name};
use crate::output::{render_doc, table};
use crate::session::{check_node_id, find_node};
use crate::yaml::Doc;

pub async fn run(env: &Env, ids: &[String]) -> Result<()> {
    for id in ids {
        check_node_id(id)?;
    }
    let session = env.ctx.owner_session().await?;
    let nodes = session.nodes("").await?;
    if ids.is_empty() {
        let mut pending: Vec<NodeView> = nodes
            .iter()
            .filter(|n| n.state == NodeState::New as i32)
            .map(NodeView::from_api)
            .collect();
        pending.sort_by(|a, b| a.id.cmp(&b.id));
        return env
            .output
            .write_document(&pending_text(env.format, &pending));
    }

    // Resolve every ID first, so a typo fails before anything changes.
    let mut targets = Vec::new();
    for id in ids {
        targets.push(find_node(nodes.clone(), id)?);
    }
    for node in targets {
        let id = crate::model::node_id_of(&node);
        let state = NodeState::try_from(node.state).unwrap_or(NodeState::Invalid);
        match state {
            NodeState::New => {}
            NodeState::Standby | NodeState::Up => {
                println!("node {id} is already approved ({})", state_name(node.state));
                continue;
            }
            _ => {
                return Err(Error::refused(format!(
                    "node {id} is {}: only NEW nodes can be approved",
                    state_name(node.state)
                )));
            }
        }
        session
            .api(
                &format!("approving node {id}"),
                session.management().approve(&node.pubkey),
            )
            .await?;
        println!("approved node {id}; it becomes UP once it has committed");
    }
    Ok(())
}

/// The pending nodes: a table with advice, or a document.
fn pending_text(format: Format, pending: &[NodeView]) -> String {
    let doc = Doc::Seq(
        pending
            .iter()
            .map(|n| Doc::map([("id", Doc::str(&n.id)), ("pubkey", Doc::str(&n.pubkey))]))
            .collect(),
    );
    render_doc(format, &doc, || {
        if pending.is_empty() {
            return "no nodes pending approval\n".to_string();
        }
        let rows: Vec<Vec<String>> = pending
            .iter()
            .map(|n| vec![n.id.clone(), n.pubkey.clone()])
            .collect();
        format!(
            "{}\nCheck each public key against the one the node logged, then approve it:\n  \
             metroctl approve {}\n",
            table(&["NODE ID", "PUBKEY"], &rows),
            pending[0].id
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pending(id: &str) -> NodeView {
        NodeView {
            id: id.to_string(),
            pubkey: "abcd".to_string(),
            state: "NEW".to_string(),
            address: None,
            health: "UNKNOWN".to_string(),
            roles: vec![],
            tpm_usage: "NOT_PRESENT".to_string(),
            time_since_heartbeat_seconds: None,
            running_curator: false,
            version: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn nothing_pending() {
        assert_eq!(
            pending_text(Format::Table, &[]),
            "no nodes pending approval\n"
        );
        assert_eq!(pending_text(Format::Json, &[]).trim(), "[]");
    }

    #[test]
    fn pending_nodes_with_keys_and_the_command() {
        let text = pending_text(Format::Table, &[pending("metropolis-aa")]);
        assert!(
            text.starts_with("NODE ID        PUBKEY\nmetropolis-aa  abcd\n"),
            "{text}"
        );
        assert!(text.contains("metroctl approve metropolis-aa"));
        let json: serde_json::Value =
            serde_json::from_str(&pending_text(Format::Json, &[pending("metropolis-aa")]))
                .expect("json");
        assert_eq!(json[0]["pubkey"], "abcd");
    }
}
