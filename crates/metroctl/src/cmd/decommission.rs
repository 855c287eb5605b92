//! `metroctl node decommission <id>`: DecommissionNode, then a visible wait (Curator.Watch of
//! the node) until it reports DECOMMISSIONED, or a timeout.

use std::time::Duration;

use proto::common::NodeState;
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::watch_request::{Kind as WatchKind, NodeInCluster};
use proto::curator_api::{WatchEvent, WatchRequest};
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use super::Env;
use crate::error::{Error, Result};
use crate::model::state_name;
use crate::progress::{Progress, format_elapsed};
use crate::roles::Role;
use crate::session::{Session, check_node_id, unknown_node};

/// Pause before re-opening a watch that broke (leader change).
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

pub async fn run(env: &Env, id: &str, timeout: Duration, no_wait: bool) -> Result<()> {
    check_node_id(id)?;
    let session = env.ctx.owner_session().await?;
    let node = session.node(id).await?;
    session
        .api_status(session.management().decommission(id))
        .await?
        .map_err(|status| decommission_error(&status, id, &node))?;
    if no_wait {
        println!(
            "decommissioning of node {id} requested; follow it with: metroctl node describe {id} --watch"
        );
        return Ok(());
    }
    let mut progress = Progress::new();
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, follow(&session, id, &mut progress, start)).await;
    progress.finish();
    match outcome {
        Ok(Ok(Outcome::Decommissioned)) => {
            println!(
                "node {id} is DECOMMISSIONED (after {}). Remove it from the cluster with: \
                 metroctl node delete {id}",
                format_elapsed(start.elapsed())
            );
            Ok(())
        }
        Ok(Ok(Outcome::Deleted)) => {
            println!("node {id} was deleted from the cluster while we waited");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::local(format!(
            "node {id} did not reach DECOMMISSIONED within {}; it goes on in the background. \
             Check it with metroctl node describe {id} --watch, or its logs with metroctl node \
             logs {id}",
            format_elapsed(timeout)
        ))),
    }
}

enum Outcome {
    Decommissioned,
    Deleted,
}

/// Follows the node's state, updating the progress line every second, until it is
/// DECOMMISSIONED or gone.
async fn follow(
    session: &Session,
    id: &str,
    progress: &mut Progress,
    start: Instant,
) -> Result<Outcome> {
    let mut state = "DECOMMISSION_REQUESTED".to_string();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut stream = open_watch(session, id).await?;
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(event)) => {
                        if let Some(outcome) = apply(&event, id, &mut state) {
                            return Ok(outcome);
                        }
                    }
                    Ok(None) => break,
                    Err(status) if rpc::is_transient(status.code()) => break,
                    Err(status) => {
                        return Err(Error::from_status(&format!("watching node {id}"), &status));
                    }
                },
                _ = tick.tick() => {}
            }
            progress.update_keyed(
                &state,
                &format!(
                    "decommissioning {id}: {state} ({})",
                    format_elapsed(start.elapsed())
                ),
            );
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

/// Applies a watch event to `state`; the outcome once the wait is over.
fn apply(event: &WatchEvent, id: &str, state: &mut String) -> Option<Outcome> {
    if event.node_tombstones.iter().any(|t| t.node_id == id) {
        return Some(Outcome::Deleted);
    }
    for node in event.nodes.iter().filter(|n| n.id == id) {
        *state = state_name(node.state);
        if node.state == NodeState::Decommissioned as i32 {
            return Some(Outcome::Decommissioned);
        }
    }
    None
}

async fn open_watch(session: &Session, id: &str) -> Result<Streaming<WatchEvent>> {
    let id = id.to_string();
    session
        .call(&format!("watching node {id}"), move |channel| {
            let node_id = id.clone();
            async move {
                Ok(CuratorClient::new(channel)
                    .watch(WatchRequest {
                        kind: Some(WatchKind::NodeInCluster(NodeInCluster { node_id })),
                    })
                    .await?
                    .into_inner())
            }
        })
        .await
}

/// DecommissionNode refusals as advice (our curator's messages already carry it; an
/// upstream curator answers Unimplemented).
fn decommission_error(status: &Status, id: &str, node: &proto::api::Node) -> Error {
    let what = format!("decommissioning node {id}");
    match status.code() {
        Code::NotFound => unknown_node(id),
        Code::Unimplemented => Error::refused(format!(
            "{what}: this cluster does not implement decommissioning (upstream Metropolis \
             does not). To remove the node anyway, remove its roles and delete it: metroctl \
             node delete {id} --bypass-not-decommissioned"
        )),
        Code::FailedPrecondition if !status.message().contains("metroctl") => {
            let roles = Role::list(node.roles.as_ref());
            let advice = if !roles.is_empty() {
                let cmds: Vec<String> = roles
                    .iter()
                    .map(|r| format!("metroctl node remove-role {} {id}", r.short()))
                    .collect();
                format!("remove its roles first: {}", cmds.join("; "))
            } else if node.state == NodeState::New as i32 || node.state == NodeState::Standby as i32
            {
                format!("it never joined, so delete it instead: metroctl node delete {id}")
            } else {
                format!(
                    "only UP nodes can be decommissioned (node {id} is {})",
                    state_name(node.state)
                )
            };
            Error::refused(format!("{what}: {}\n{advice}", status.message()))
        }
        _ => Error::from_status(&what, status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::NodeRoles;
    use proto::common::node_roles::KubernetesWorker;
    use proto::curator_api::watch_event::NodeTombstone;

    fn curator_node(id: &str, state: NodeState) -> proto::curator_api::Node {
        proto::curator_api::Node {
            id: id.to_string(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn waits_until_decommissioned() {
        let mut state = String::new();
        let ev = WatchEvent {
            nodes: vec![curator_node("metropolis-aa", NodeState::Decommissioning)],
            ..Default::default()
        };
        assert!(apply(&ev, "metropolis-aa", &mut state).is_none());
        assert_eq!(state, "DECOMMISSIONING");
        let other = WatchEvent {
            nodes: vec![curator_node("metropolis-bb", NodeState::Decommissioned)],
            ..Default::default()
        };
        assert!(apply(&other, "metropolis-aa", &mut state).is_none());
        let done = WatchEvent {
            nodes: vec![curator_node("metropolis-aa", NodeState::Decommissioned)],
            ..Default::default()
        };
        assert!(matches!(
            apply(&done, "metropolis-aa", &mut state),
            Some(Outcome::Decommissioned)
        ));
        let gone = WatchEvent {
            node_tombstones: vec![NodeTombstone {
                node_id: "metropolis-aa".into(),
            }],
            ..Default::default()
        };
        assert!(matches!(
            apply(&gone, "metropolis-aa", &mut state),
            Some(Outcome::Deleted)
        ));
    }

    #[test]
    fn upstream_refusals_get_advice() {
        let mut node = proto::api::Node {
            state: NodeState::Up as i32,
            roles: Some(NodeRoles {
                kubernetes_worker: Some(KubernetesWorker {}),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = decommission_error(
            &Status::failed_precondition("has roles"),
            "metropolis-aa",
            &node,
        );
        assert!(
            e.message
                .contains("metroctl node remove-role kw metropolis-aa"),
            "{}",
            e.message
        );
        node.roles = None;
        node.state = NodeState::New as i32;
        let e = decommission_error(
            &Status::failed_precondition("not UP"),
            "metropolis-aa",
            &node,
        );
        assert!(
            e.message.contains("metroctl node delete metropolis-aa"),
            "{}",
            e.message
        );
        let e = decommission_error(&Status::unimplemented(""), "metropolis-aa", &node);
        assert!(
            e.message.contains("does not implement decommissioning"),
            "{}",
            e.message
        );
    }
}
