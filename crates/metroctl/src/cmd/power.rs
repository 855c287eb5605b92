//! `metroctl node reboot` and `metroctl node poweroff`: NodeManagement.Reboot on each node.

use proto::api::RebootRequest;
use proto::api::reboot_request::{NextBoot, Type as RebootType};

use super::Env;
use crate::error::{Error, Result};
use crate::prompt;
use crate::session::check_node_id;

/// The Reboot request for these flags.
pub fn request(kind: RebootType, rollback: bool) -> RebootRequest {
    RebootRequest {
        r#type: kind as i32,
        next_boot: if rollback {
            NextBoot::StartRollback
        } else {
            NextBoot::StartNormal
        } as i32,
    }
}

/// What the node does, in words.
fn describe(kind: RebootType, rollback: bool) -> String {
    let what = match kind {
        RebootType::Kexec => "restarting in place (kexec)",
        RebootType::PowerOff => "powering off",
        _ => "rebooting",
    };
    if rollback {
        format!("{what} into the other update slot (rollback)")
    } else {
        what.to_string()
    }
}

/// `node reboot [--kexec] [--rollback] IDS…`.
pub async fn reboot(env: &Env, ids: &[String], kexec: bool, rollback: bool) -> Result<()> {
    let kind = if kexec {
        RebootType::Kexec
    } else {
        RebootType::Firmware
    };
    send(env, ids, kind, rollback).await
}

/// `node poweroff [--yes] IDS…`.
pub async fn poweroff(env: &Env, ids: &[String], yes: bool) -> Result<()> {
    for id in ids {
        check_node_id(id)?;
    }
    if !yes {
        confirm_poweroff(ids)?;
    }
    send(env, ids, RebootType::PowerOff, false).await
}

fn confirm_poweroff(ids: &[String]) -> Result<()> {
    if !prompt::is_interactive() {
        return Err(Error::usage(format!(
            "powering off {} needs confirmation: run it on a terminal, or pass --yes",
            ids.join(", ")
        )));
    }
    let question = format!(
        "Power off {}? They stay down until started again by hand",
        ids.join(", ")
    );
    if prompt::ask_yes_no(&question)? {
        Ok(())
    } else {
        Err(Error::local("aborted: no node was powered off"))
    }
}

async fn send(env: &Env, ids: &[String], kind: RebootType, rollback: bool) -> Result<()> {
    for id in ids {
        check_node_id(id)?;
    }
    let session = env.ctx.owner_session().await?;
    let nodes = session.nodes("").await?;
    for id in ids {
        let node = crate::session::find_node(nodes.clone(), id)?;
        let address = node
            .status
            .as_ref()
            .map(|s| s.external_address.clone())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Error::refused(format!(
                    "node {id} has not reported its address, so it cannot be reached"
                ))
            })?;
        let mut client = session.node_management(id, &address).await?;
        client.reboot(request(kind, rollback)).await.map_err(|s| {
            Error::from_status(&format!("{} node {id}", describe(kind, rollback)), &s)
        })?;
        println!("node {id}: {}", describe(kind, rollback));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_words() {
        let r = request(RebootType::Kexec, true);
        assert_eq!(r.r#type, RebootType::Kexec as i32);
        assert_eq!(r.next_boot, NextBoot::StartRollback as i32);
        let r = request(RebootType::PowerOff, false);
        assert_eq!(r.next_boot, NextBoot::StartNormal as i32);
        assert_eq!(
            describe(RebootType::Firmware, true),
            "rebooting into the other update slot (rollback)"
        );
    }

    #[test]
    fn scripts_must_pass_yes() {
        if prompt::is_interactive() {
            return;
        }
        let e = confirm_poweroff(&["metropolis-aa".to_string()]).expect_err("no terminal");
        assert!(e.message.contains("--yes"), "{}", e.message);
    }
}
