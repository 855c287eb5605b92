//! `metroctl node delete <id>`, with the safety bypasses confirmed by the user.

use proto::common::NodeState;
use tonic::{Code, Status};

use super::Env;
use crate::error::{Error, Result};
use crate::model::state_name;
use crate::prompt;
use crate::roles::Role;
use crate::session::{check_node_id, unknown_node};

/// Which safety checks of DeleteNode to skip.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bypass {
    pub has_roles: bool,
    pub not_decommissioned: bool,
}

impl Bypass {
    fn any(self) -> bool {
        self.has_roles || self.not_decommissioned
    }

    fn describe(self) -> String {
        let mut checks = Vec::new();
        if self.has_roles {
            checks.push("the node still has roles");
        }
        if self.not_decommissioned {
            checks.push("the node is not decommissioned");
        }
        checks.join(" and ")
    }
}

pub async fn run(env: &Env, id: &str, bypass: Bypass, yes: bool) -> Result<()> {
    check_node_id(id)?;
    let session = env.ctx.owner_session().await?;
    let node = session.node(id).await?;
    if bypass.any() && !yes {
        confirm(id, &node, bypass)?;
    }
    let bypass_flags = rpc::DeleteBypass {
        has_roles: bypass.has_roles,
        not_decommissioned: bypass.not_decommissioned,
    };
    session
        .api_status(session.management().delete(id, bypass_flags))
        .await?
        .map_err(|status| delete_error(&status, id, &node))?;
    println!("deleted node {id}");
    Ok(())
}

/// Asks before skipping safety checks; refuses without a terminal.
fn confirm(id: &str, node: &proto::api::Node, bypass: Bypass) -> Result<()> {
    if !prompt::is_interactive() {
        return Err(Error::usage(format!(
            "deleting node {id} although {} needs confirmation: run it on a terminal, or pass \
             --yes",
            bypass.describe()
        )));
    }
    let roles: Vec<&str> = Role::list(node.roles.as_ref())
        .iter()
        .map(|r| r.name())
        .collect();
    let question = format!(
        "Node {id} is {} with roles [{}]. Delete it although {}? It is cut off from the \
         cluster for good",
        state_name(node.state),
        roles.join(", "),
        bypass.describe()
    );
    if prompt::ask_yes_no(&question)? {
        Ok(())
    } else {
        Err(Error::local(format!("aborted: node {id} was not deleted")))
    }
}

/// DeleteNode refusals as advice. Our curator's messages already name the fix; for an
/// upstream curator's we add it from what we know about the node.
fn delete_error(status: &Status, id: &str, node: &proto::api::Node) -> Error {
    let what = format!("deleting node {id}");
    match status.code() {
        Code::NotFound => unknown_node(id),
        Code::FailedPrecondition if !status.message().contains("metroctl") => {
            let roles = Role::list(node.roles.as_ref());
            let advice = if !roles.is_empty() {
                let cmds: Vec<String> = roles
                    .iter()
                    .map(|r| format!("metroctl node remove-role {} {id}", r.short()))
                    .collect();
                format!(
                    "remove its roles first ({}), or pass --bypass-has-roles for a node that is \
                     gone for good",
                    cmds.join("; ")
                )
            } else if node.state == NodeState::Up as i32 {
                format!(
                    "decommission it first (metroctl node decommission {id}), or pass \
                     --bypass-not-decommissioned for a node that is gone for good"
                )
            } else {
                String::new()
            };
            Error::refused(
                format!("{what}: {}\n{advice}", status.message())
                    .trim_end()
                    .to_string(),
            )
        }
        _ => Error::from_status(&what, status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::NodeRoles;
    use proto::common::node_roles::ConsensusMember;

    #[test]
    fn bypass_description() {
        let b = Bypass {
            has_roles: true,
            not_decommissioned: true,
        };
        assert_eq!(
            b.describe(),
            "the node still has roles and the node is not decommissioned"
        );
        assert!(!Bypass::default().any());
    }

    #[test]
    fn refusals_name_the_fix() {
        let mut node = proto::api::Node {
            state: NodeState::Up as i32,
            roles: Some(NodeRoles {
                consensus_member: Some(ConsensusMember::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = delete_error(
            &Status::failed_precondition("has roles"),
            "metropolis-aa",
            &node,
        );
        assert!(
            e.message.contains("remove-role cm metropolis-aa"),
            "{}",
            e.message
        );
        assert!(e.message.contains("--bypass-has-roles"));
        node.roles = None;
        let e = delete_error(&Status::failed_precondition("UP"), "metropolis-aa", &node);
        assert!(
            e.message
                .contains("metroctl node decommission metropolis-aa"),
            "{}",
            e.message
        );
        // Our curator's own advice is kept as is.
        let e = delete_error(
            &Status::failed_precondition("x (metroctl node decommission metropolis-aa)"),
            "metropolis-aa",
            &node,
        );
        assert_eq!(
            e.message,
            "deleting node metropolis-aa: x (metroctl node decommission metropolis-aa)"
        );
    }

    #[test]
    fn scripts_must_pass_yes() {
        if prompt::is_interactive() {
            return;
        }
        let e = confirm(
            "metropolis-aa",
            &proto::api::Node::default(),
            Bypass {
                has_roles: true,
                not_decommissioned: false,
            },
        )
        .expect_err("no terminal");
        assert!(e.message.contains("--yes"), "{}", e.message);
    }
}
