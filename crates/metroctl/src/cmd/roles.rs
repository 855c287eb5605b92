//! `metroctl node add-role` / `remove-role` (and upstream's `node add role`): one
//! UpdateNodeRoles per node, setting or clearing just the one role.

use proto::api::UpdateNodeRolesRequest;
use proto::api::update_node_roles_request::Node as Which;
use tonic::{Code, Status};

use super::Env;
use crate::cli::RoleArgs;
use crate::error::{Error, Result};
use crate::roles::Role;
use crate::session::{check_node_id, unknown_node};

pub async fn run(env: &Env, args: &RoleArgs, add: bool) -> Result<()> {
    for id in &args.ids {
        check_node_id(id)?;
    }
    let session = env.ctx.owner_session().await?;
    for id in &args.ids {
        let request = request(id, args.role, add);
        let result = session
            .api_status(session.management().update_roles(request))
            .await?;
        result.map_err(|status| role_error(&status, id, args.role, add))?;
        let verb = if add { "added" } else { "removed" };
        println!("node {id}: {verb} {}", args.role);
    }
    Ok(())
}

/// UpdateNodeRoles changing only `role` of node `id`.
pub fn request(id: &str, role: Role, add: bool) -> UpdateNodeRolesRequest {
    let mut r = UpdateNodeRolesRequest {
        node: Some(Which::Id(id.to_string())),
        ..Default::default()
    };
    match role {
        Role::ConsensusMember => r.consensus_member = Some(add),
        Role::KubernetesController => r.kubernetes_controller = Some(add),
        Role::KubernetesWorker => r.kubernetes_worker = Some(add),
    }
    r
}

/// UpdateNodeRoles refusals as advice. Our curator's messages already name the fix; an
/// upstream curator's do not, so the role dependencies are explained here too.
fn role_error(status: &Status, id: &str, role: Role, add: bool) -> Error {
    let verb = if add { "adding" } else { "removing" };
    let what = format!("{verb} {role} on node {id}");
    match status.code() {
        Code::NotFound => unknown_node(id),
        Code::FailedPrecondition if status.message().contains("metroctl") => {
            Error::refused(format!("{what}: {}", status.message()))
        }
        Code::FailedPrecondition if add && role == Role::KubernetesController => {
            Error::refused(format!(
                "{what}: {}\nKubernetesController needs ConsensusMember: metroctl node add-role \
                 cm {id}",
                status.message()
            ))
        }
        Code::FailedPrecondition if !add && role == Role::ConsensusMember => {
            Error::refused(format!(
                "{what}: {}\nRemove KubernetesController first: metroctl node remove-role kc {id}",
                status.message()
            ))
        }
        _ => Error::from_status(&what, status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn only_the_named_role_changes() {
        let r = request("metropolis-aa", Role::KubernetesWorker, true);
        assert_eq!(r.kubernetes_worker, Some(true));
        assert_eq!(r.consensus_member, None);
        assert_eq!(r.kubernetes_controller, None);
        assert_eq!(r.node, Some(Which::Id("metropolis-aa".into())));
        let r = request("metropolis-aa", Role::ConsensusMember, false);
        assert_eq!(r.consensus_member, Some(false));
    }

    #[test]
    fn dependency_refusals_name_the_fix() {
        let e = role_error(
            &Status::failed_precondition("not a consensus member"),
            "metropolis-aa",
            Role::KubernetesController,
            true,
        );
        assert_eq!(e.kind, Kind::Refused);
        assert!(
            e.message
                .contains("metroctl node add-role cm metropolis-aa"),
            "{}",
            e.message
        );
        let e = role_error(
            &Status::failed_precondition("is a controller"),
            "metropolis-aa",
            Role::ConsensusMember,
            false,
        );
        assert!(e.message.contains("remove-role kc"), "{}", e.message);
    }

    #[test]
    fn unknown_node_is_explained() {
        let e = role_error(
            &Status::not_found("nope"),
            "metropolis-aa",
            Role::KubernetesWorker,
            true,
        );
        assert!(e.message.contains("not found"), "{}", e.message);
        assert_eq!(e.kind, Kind::Refused);
    }
}
