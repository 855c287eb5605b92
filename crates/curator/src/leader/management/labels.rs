//! UpdateNodeLabels (later upstream Monogon, not in the 8456ddf0 baseline): upserts and deletes a
//! node's labels, in any node state, under the rules of the `labels` crate (the same ones
//! RegisterNode and metroctl use).

use proto::api::{self, UpdateNodeLabelsRequest, UpdateNodeLabelsResponse};
use proto::common::NodeLabels;
use proto::common::node_labels::Pair;
use tonic::Status;

use super::node_id;
use crate::leader::{Leader, optimistic};
use crate::state::node;

/// Checks the request, then applies it to the stored labels. InvalidArgument for invalid or
/// conflicting keys and values, OutOfRange if the node would carry too many labels.
pub(super) async fn update_node_labels(
    leader: &Leader,
    req: UpdateNodeLabelsRequest,
) -> Result<UpdateNodeLabelsResponse, Status> {
    use api::update_node_labels_request::Node as Which;
    labels::check_update(
        req.upsert
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str())),
        req.delete.iter().map(String::as_str),
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let id = match &req.node {
        Some(Which::Pubkey(pk)) => node_id(Some(pk), None)?,
        Some(Which::Id(id)) => node_id(None, Some(id))?,
        None => node_id(None, None)?,
    };
    let (id, req) = (&id, &req);
    optimistic("UpdateNodeLabels", move || async move {
        let mut record = node::load(&leader.leadership, id).await?;
        let current = record
            .node
            .labels
            .take()
            .map(|l| l.pairs)
            .unwrap_or_default();
        let pairs = apply(current, &req.upsert, &req.delete);
        labels::check_count(pairs.len())
            .map_err(|e| Status::out_of_range(format!("node {id}: {e}")))?;
        record.node.labels = Some(NodeLabels { pairs });
        node::update(&leader.leadership, &mut record).await?;
        Ok(UpdateNodeLabelsResponse {})
    })
    .await
}

/// The labels after deleting and upserting, sorted by key.
fn apply(mut pairs: Vec<Pair>, upsert: &[Pair], delete: &[String]) -> Vec<Pair> {
    pairs.retain(|p| !delete.contains(&p.key) && !upsert.iter().any(|u| u.key == p.key));
    pairs.extend(upsert.iter().cloned());
    sorted(pairs)
}

/// Labels sorted by key, as upstream stores and lists them.
pub(super) fn sorted(mut pairs: Vec<Pair>) -> Vec<Pair> {
    pairs.sort_by(|a, b| a.key.cmp(&b.key));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_replace_and_deletes_remove() {
        let pair = |k: &str, v: &str| Pair {
            key: k.to_string(),
            value: v.to_string(),
        };
        let out = apply(
            vec![pair("z", "1"), pair("b", "2"), pair("c", "3")],
            &[pair("a", "0"), pair("b", "9")],
            &["c".to_string()],
        );
        assert_eq!(out, vec![pair("a", "0"), pair("b", "9"), pair("z", "1")]);
    }
}
