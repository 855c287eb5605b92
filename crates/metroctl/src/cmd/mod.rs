//! The commands, one module each; [`run`] dispatches a parsed command line.

use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, ClusterCommand, Command, NodeCommand, RoleSubcommand};
use crate::config::ConfigDir;
use crate::error::Result;
use crate::output::Output;
use crate::session::Context;
use crate::trust::TrustOptions;

mod approve;
mod cluster;
mod decommission;
mod delete;
mod logs;
mod metrics;
mod nodes;
mod power;
mod roles;
mod takeownership;
mod update;

/// What commands get besides their own arguments.
#[derive(Debug)]
pub struct Env {
    /// Connection settings.
    pub ctx: Context,
    /// Output format.
    pub format: crate::cli::Format,
    /// Where output goes.
    pub output: Output,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let global = cli.global;
    let cfg = ConfigDir::locate(global.config)?;
    let trust = TrustOptions {
        accept_fingerprint: global.accept_ca_fingerprint,
        accept_any: global.insecure_accept_any_ca,
    };
    let ctx = Context::new(
        cfg,
        &global.endpoints,
        trust,
        Duration::from_secs(global.connect_timeout.max(1)),
    )?;
    let env = Env {
        ctx,
        format: global.format,
        output: Output::new(global.output),
    };
    match cli.command {
        Command::Takeownership => takeownership::run(&env).await,
        Command::Cluster(c) => match c {
            ClusterCommand::Info => cluster::info(&env).await,
            ClusterCommand::Ticket { rotate } => cluster::ticket(&env, rotate).await,
            ClusterCommand::NodeParams { file, labels } => {
                cluster::node_params(&env, &file, &labels).await
            }
            ClusterCommand::BootstrapParams {
                file,
                tpm_mode,
                storage_security,
            } => cluster::bootstrap_params(&env, &file, tpm_mode, storage_security),
        },
        Command::Node(n) => match n {
            NodeCommand::List(args) => nodes::run(&env, &args, true).await,
            NodeCommand::Describe(args) => nodes::run(&env, &args, false).await,
            NodeCommand::AddRole(args) | NodeCommand::Add(RoleSubcommand::Role(args)) => {
                roles::run(&env, &args, true).await
            }
            NodeCommand::RemoveRole(args) | NodeCommand::Remove(RoleSubcommand::Role(args)) => {
                roles::run(&env, &args, false).await
            }
            NodeCommand::Decommission {
                id,
                timeout,
                no_wait,
            } => decommission::run(&env, &id, Duration::from_secs(timeout), no_wait).await,
            NodeCommand::Delete {
                id,
                bypass_has_roles,
                bypass_not_decommissioned,
                yes,
            } => {
                delete::run(
                    &env,
                    &id,
                    delete::Bypass {
                        has_roles: bypass_has_roles,
                        not_decommissioned: bypass_not_decommissioned,
                    },
                    yes,
                )
                .await
            }
            NodeCommand::Metrics { id, exporter } => metrics::run(&env, &id, &exporter).await,
            NodeCommand::Logs {
                id,
                dn,
                exact,
                follow,
                backlog,
                concise,
            } => {
                logs::run(
                    &env,
                    &id,
                    logs::Options {
                        dn,
                        exact,
                        follow,
                        backlog,
                        concise,
                    },
                )
                .await
            }
            NodeCommand::Update(args) => update::run(&env, &args).await,
            NodeCommand::Reboot {
                kexec,
                rollback,
                ids,
            } => power::reboot(&env, &ids, kexec, rollback).await,
            NodeCommand::Poweroff { yes, ids } => power::poweroff(&env, &ids, yes).await,
        },
        Command::Approve { ids } => approve::run(&env, &ids).await,
        Command::Dashboard {
            listen,
            allow_remote,
        } => {
            let session = env.ctx.owner_session().await?;
            crate::dashboard::run(session, &listen, allow_remote).await
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "metroctl", &mut out);
            env.output.write_document(&String::from_utf8_lossy(&out))
        }
    }
}
