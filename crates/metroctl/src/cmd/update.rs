//! `metroctl node update`: a rolling update through NodeManagement.UpdateNode on each node.
//!
//! The plan: nodes without the ConsensusMember role first, in batches of `--max-unavailable`,
//! then consensus members one at a time with the curator leader last (so the roll costs one
//! leader election, not one per member). A consensus member is only taken down while the
//! other members are healthy enough that the cluster keeps its quorum without it.
//!
//! metroctl does not read the bundle: the version it holds is learned from the first node
//! that comes back (its status reports the version of the binary it runs), and every later
//! node must come back on that same version. A node has come back when it reports a new boot
//! ID (every start of a node picks a new one), is UP and HEALTHY and, if it is a consensus
//! member, runs its curator again (which it only does once its local etcd member serves).

use std::time::Duration;

use proto::api::node::Health;
use proto::api::{self, ActivationMode, UpdateNodeRequest};
use proto::common::NodeState;
use proto::version::spec::Version;
use tokio::time::Instant;

use super::Env;
use crate::cli::{Activation, UpdateArgs};
use crate::error::{Error, Kind, Result};
use crate::model::{health_name, node_id_of, state_name};
use crate::output::Stream;
use crate::progress::format_elapsed;
use crate::roles::Role;
use crate::session::{Session, check_node_id, find_node};

/// How often the cluster is asked while waiting for nodes.
const POLL: Duration = Duration::from_secs(1);
/// Bound on one UpdateNode call: the node's own download bound (5 minutes) and the install.
const UPDATE_CALL_TIMEOUT: Duration = Duration::from_secs(360);

/// A node to update, as it was before the roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub address: String,
    pub consensus: bool,
    pub version: Option<Version>,
    pub boot_id: Vec<u8>,
}

impl Target {
    fn from_node(node: &api::Node) -> Result<Self> {
        let id = node_id_of(node);
        let status = node.status.clone().unwrap_or_default();
        if status.external_address.is_empty() {
            return Err(Error::refused(format!(
                "node {id} has not reported its address yet, so it cannot be updated; try \
                 again shortly (metroctl node describe {id} shows it)"
            )));
        }
        Ok(Target {
            id,
            address: status.external_address,
            consensus: is_consensus_member(node),
            version: status.version,
            boot_id: status.boot_id,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.id,
            if self.consensus {
                "ConsensusMember"
            } else {
                "no consensus role"
            },
            version_text(self.version.as_ref())
        )
    }
}

fn is_consensus_member(node: &api::Node) -> bool {
    Role::list(node.roles.as_ref()).contains(&Role::ConsensusMember)
}

fn version_text(v: Option<&Version>) -> String {
    v.map_or_else(|| "version unknown".to_string(), |v| v.to_string())
}

/// The nodes `ids` names (`all`: every UP node), each UP and with a known address.
pub fn select(nodes: &[api::Node], ids: &[String]) -> Result<Vec<Target>> {
    if ids.iter().any(|i| i == "all") {
        if ids.len() > 1 {
            return Err(Error::usage(
                "`all` selects every node: give either `all` or node IDs, not both",
            ));
        }
        let targets = nodes
            .iter()
            .filter(|n| n.state == NodeState::Up as i32)
            .map(Target::from_node)
            .collect::<Result<Vec<_>>>()?;
        if targets.is_empty() {
            return Err(Error::refused("the cluster has no UP nodes to update"));
        }
        return Ok(targets);
    }
    let mut targets: Vec<Target> = Vec::new();
    for id in ids {
        check_node_id(id)?;
        if targets.iter().any(|t| &t.id == id) {
            continue;
        }
        let node = find_node(nodes.to_vec(), id)?;
        if node.state != NodeState::Up as i32 {
            return Err(Error::refused(format!(
                "node {id} is {}: only UP nodes can be updated",
                state_name(node.state)
            )));
        }
        targets.push(Target::from_node(&node)?);
    }
    Ok(targets)
}

/// The batches, in order: nodes without the ConsensusMember role by ID, `max_unavailable` at a
/// time; then consensus members one at a time, by ID, with `leader` last.
pub fn plan(
    targets: Vec<Target>,
    max_unavailable: usize,
    leader: Option<&str>,
) -> Vec<Vec<Target>> {
    let (mut members, mut others): (Vec<Target>, Vec<Target>) =
        targets.into_iter().partition(|t| t.consensus);
    others.sort_by(|a, b| a.id.cmp(&b.id));
    members.sort_by_key(|t| (Some(t.id.as_str()) == leader, t.id.clone()));
    let mut batches: Vec<Vec<Target>> = others
        .chunks(max_unavailable.max(1))
        .map(<[Target]>::to_vec)
        .collect();
    batches.extend(members.into_iter().map(|m| vec![m]));
    batches
}

/// Whether a consensus member may go down while `unhealthy_others` of the other members are
/// not healthy, in a cluster of `members` members: the rest must still be a majority.
/// Clusters of one or two members have no such margin; they are allowed (with a warning by
/// the caller) as long as every other member is healthy.
pub fn may_take_down(members: usize, unhealthy_others: usize) -> bool {
    if members <= 2 {
        return unhealthy_others == 0;
    }
    let tolerated = (members - 1) / 2;
    unhealthy_others < tolerated
}

/// Why a consensus member does not count as healthy, or None if it does: UP, HEALTHY, and
/// running its curator (which needs its etcd member).
fn member_trouble(node: &api::Node) -> Option<String> {
    if node.state != NodeState::Up as i32 {
        return Some(state_name(node.state));
    }
    if node.health != Health::Healthy as i32 {
        return Some(health_name(node.health));
    }
    let curator = node
        .status
        .as_ref()
        .is_some_and(|s| s.running_curator.is_some());
    (!curator).then(|| "curator not running".to_string())
}

/// Consensus members other than `except` that are not healthy, with the reason.
fn unhealthy_members(nodes: &[api::Node], except: Option<&str>) -> Vec<(String, String)> {
    nodes
        .iter()
        .filter(|n| is_consensus_member(n) && Some(node_id_of(n).as_str()) != except)
        .filter_map(|n| member_trouble(n).map(|why| (node_id_of(n), why)))
        .collect()
}

/// Where a node that is being updated stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Back {
    /// Still the old start, or not healthy yet: what we see.
    Waiting(String),
    /// Started again, healthy, on this version.
    On(Option<Version>),
}

/// Whether `node` (the new record of `target`) has come back.
pub fn back(target: &Target, node: &api::Node) -> Back {
    let status = node.status.clone().unwrap_or_default();
    if status.boot_id == target.boot_id {
        return Back::Waiting("not restarted yet".to_string());
    }
    if node.state != NodeState::Up as i32 || node.health != Health::Healthy as i32 {
        return Back::Waiting(format!(
            "restarted; {} {}",
            state_name(node.state),
            health_name(node.health)
        ));
    }
    if target.consensus && status.running_curator.is_none() {
        return Back::Waiting("restarted, HEALTHY; curator not running yet".to_string());
    }
    Back::On(status.version)
}

/// Checks the version a node came back on against what the roll installs (learned from the
/// first node that came back: `expected`, set here).
pub fn check_version(
    target: &Target,
    got: Option<Version>,
    expected: &mut Option<Version>,
) -> std::result::Result<(), String> {
    match expected {
        Some(want) if got.as_ref() == Some(want) => Ok(()),
        Some(want) => Err(format!(
            "it came back on {}, not on {want}: {}",
            version_text(got.as_ref()),
            if got == target.version {
                "the new version did not start and the node rolled back to the version it ran \
                 before"
            } else {
                "it runs another version than the nodes updated before it"
            }
        )),
        None if got.is_some() && got == target.version => Err(format!(
            "it came back on the version it ran before ({}): either the new version did not \
             start and the node rolled back, or the bundle holds the version the node already \
             ran",
            version_text(got.as_ref())
        )),
        None => {
            *expected = got;
            Ok(())
        }
    }
}

/// The roll's printed log: one line per step, with the time since the roll started.
struct Log {
    out: Stream,
    start: Instant,
}

impl Log {
    fn line(&mut self, text: &str) -> Result<()> {
        let secs = self.start.elapsed().as_secs_f64();
        self.out.write(&format!("[{secs:7.1}s] {text}\n"))
    }
}

pub async fn run(env: &Env, args: &UpdateArgs) -> Result<()> {
    if !args.bundle_url.starts_with("https://") {
        return Err(Error::usage(format!(
            "--bundle-url must be an https:// URL (nodes download bundles over HTTPS only), not \
             {:?}",
            args.bundle_url
        )));
    }
    let session = env.ctx.owner_session().await?;
    let nodes = session.nodes("").await?;
    let targets = select(&nodes, &args.ids)?;
    let leader = session.leader().map(|l| l.node_id);
    let batches = plan(
        targets,
        usize::try_from(args.max_unavailable).unwrap_or(1),
        leader.as_deref(),
    );
    let members = nodes.iter().filter(|n| is_consensus_member(n)).count();
    let mut log = Log {
        out: env.output.stream()?,
        start: Instant::now(),
    };
    print_plan(&mut log, &batches, args, leader.as_deref(), members)?;
    if args.dry_run {
        return log.line("dry run: nothing was changed");
    }
    let timeout = Duration::from_secs(args.node_timeout.max(1));
    let mut roll = Roll {
        session: &session,
        url: &args.bundle_url,
        activation: args.activation,
        timeout,
        members,
        expected: None,
        done: Vec::new(),
    };
    let all: Vec<String> = batches.iter().flatten().map(|t| t.id.clone()).collect();
    let result = if args.activation == Activation::None {
        roll.install_only(&mut log, &batches).await
    } else {
        roll.rolling(&mut log, &batches).await
    };
    match result {
        Ok(()) => {
            let total = format_elapsed(log.start.elapsed());
            match (args.activation, &roll.expected) {
                (Activation::None, _) => log.line(&format!(
                    "done in {total}: installed on {} node(s); it activates at each node's next \
                     start",
                    all.len()
                )),
                (_, v) => log.line(&format!(
                    "done in {total}: {} node(s) run {}",
                    all.len(),
                    version_text(v.as_ref())
                )),
            }
        }
        Err((id, error)) => {
            let not_updated: Vec<&str> = all
                .iter()
                .filter(|i| !roll.done.contains(i))
                .map(String::as_str)
                .collect();
            log.line(&format!("stopped at node {id}"))?;
            let mut message = format!("updating node {id}: {}", error.message);
            if !roll.done.is_empty() {
                message.push_str(&format!("\nupdated: {}", roll.done.join(", ")));
            }
            message.push_str(&format!("\nnot updated: {}", not_updated.join(", ")));
            Err(Error::new(error.kind, message))
        }
    }
}

fn print_plan(
    log: &mut Log,
    batches: &[Vec<Target>],
    args: &UpdateArgs,
    leader: Option<&str>,
    members: usize,
) -> Result<()> {
    let count: usize = batches.iter().map(Vec::len).sum();
    log.line(&format!(
        "plan: {count} node(s) in {} step(s), bundle {}, activation {}",
        batches.len(),
        args.bundle_url,
        match args.activation {
            Activation::Kexec => "kexec",
            Activation::Reboot => "reboot",
            Activation::None => "none (at the next start; nothing restarts)",
        }
    ))?;
    for (i, batch) in batches.iter().enumerate() {
        let nodes: Vec<String> = batch
            .iter()
            .map(|t| {
                let mut d = t.describe();
                if Some(t.id.as_str()) == leader {
                    d.push_str(" [curator leader]");
                }
                d
            })
            .collect();
        log.line(&format!("  step {}: {}", i + 1, nodes.join(", ")))?;
    }
    if args.activation != Activation::None
        && members <= 2
        && batches.iter().flatten().any(|t| t.consensus)
    {
        log.line(&format!(
            "note: the cluster has {members} consensus member(s), so it cannot answer while a \
             member restarts"
        ))?;
    }
    Ok(())
}

/// A roll in progress.
struct Roll<'a> {
    session: &'a Session,
    url: &'a str,
    activation: Activation,
    timeout: Duration,
    /// Consensus members of the cluster when the roll started.
    members: usize,
    /// The version the bundle holds, once a node came back on it.
    expected: Option<Version>,
    /// Nodes updated (and back, unless activation is none).
    done: Vec<String>,
}

/// A failed step: the node and why.
type StepError = (String, Error);

impl Roll<'_> {
    /// ACTIVATION_NONE: install everywhere, restart nothing.
    async fn install_only(
        &mut self,
        log: &mut Log,
        batches: &[Vec<Target>],
    ) -> std::result::Result<(), StepError> {
        log.line(
            "activation none: no node restarts, so there is no rolling wait; each node runs the \
             new version from its next start",
        )
        .map_err(|e| (String::new(), e))?;
        for t in batches.iter().flatten() {
            self.update_node(log, t).await?;
            log.line(&format!("{}: installed; activates at its next start", t.id))
                .map_err(|e| (t.id.clone(), e))?;
            self.done.push(t.id.clone());
        }
        Ok(())
    }

    async fn rolling(
        &mut self,
        log: &mut Log,
        batches: &[Vec<Target>],
    ) -> std::result::Result<(), StepError> {
        for batch in batches {
            if let [t] = batch.as_slice()
                && t.consensus
            {
                self.wait_quorum_margin(log, t).await?;
            }
            let started = Instant::now();
            for t in batch {
                self.update_node(log, t).await?;
            }
            self.wait_back(log, batch, started).await?;
            if batch.iter().any(|t| t.consensus) {
                let last = batch.last().map(|t| t.id.clone()).unwrap_or_default();
                self.wait_consensus_healthy(log, &last).await?;
            }
            self.done.extend(batch.iter().map(|t| t.id.clone()));
        }
        Ok(())
    }

    /// UpdateNode on `t`: download, verify, install, and activate as asked.
    async fn update_node(&self, log: &mut Log, t: &Target) -> std::result::Result<(), StepError> {
        let fail = |e: Error| (t.id.clone(), e);
        let mode = match self.activation {
            Activation::Kexec => ActivationMode::ActivationKexec,
            Activation::Reboot => ActivationMode::ActivationReboot,
            Activation::None => ActivationMode::ActivationNone,
        };
        log.line(&format!(
            "{}: UpdateNode (download and install, {})",
            t.id,
            mode.as_str_name()
        ))
        .map_err(fail)?;
        let started = Instant::now();
        let mut client = self
            .session
            .node_management(&t.id, &t.address)
            .await
            .map_err(fail)?;
        let request = UpdateNodeRequest {
            bundle_url: self.url.to_string(),
            activation_mode: mode as i32,
        };
        match tokio::time::timeout(UPDATE_CALL_TIMEOUT, client.update_node(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => return Err(fail(update_error(&status))),
            Err(_) => {
                return Err(fail(Error::local(format!(
                    "UpdateNode did not answer within {}; the node may still install and \
                     activate the bundle (metroctl node describe {} shows its version)",
                    format_elapsed(UPDATE_CALL_TIMEOUT),
                    t.id
                ))));
            }
        }
        log.line(&format!(
            "{}: installed ({}){}",
            t.id,
            format_elapsed(started.elapsed()),
            if mode == ActivationMode::ActivationNone {
                ""
            } else {
                "; restarting"
            }
        ))
        .map_err(fail)
    }

    /// The nodes, or a description of why the cluster did not answer (it may be electing a
    /// leader while we wait, which is not a failure).
    async fn poll(
        &self,
    ) -> std::result::Result<std::result::Result<Vec<api::Node>, String>, Error> {
        Ok(self
            .session
            .nodes_status("")
            .await?
            .map_err(|s| format!("the cluster did not answer: {}", s.message())))
    }

    /// Waits until every node of `batch` came back on the roll's version.
    async fn wait_back(
        &mut self,
        log: &mut Log,
        batch: &[Target],
        started: Instant,
    ) -> std::result::Result<(), StepError> {
        let deadline = started + self.timeout;
        let mut pending: Vec<&Target> = batch.iter().collect();
        let mut seen: Vec<(String, String)> = Vec::new();
        while !pending.is_empty() {
            let polled = self.poll().await.map_err(|e| (pending[0].id.clone(), e))?;
            match polled {
                Err(why) => note(log, &mut seen, "cluster", &why),
                Ok(nodes) => {
                    let mut still = Vec::new();
                    for t in pending {
                        let Some(node) = nodes.iter().find(|n| node_id_of(n) == t.id) else {
                            return Err((
                                t.id.clone(),
                                Error::refused("the node was deleted from the cluster"),
                            ));
                        };
                        match back(t, node) {
                            Back::Waiting(why) => {
                                note(log, &mut seen, &t.id, &why);
                                still.push(t);
                            }
                            Back::On(version) => {
                                check_version(t, version.clone(), &mut self.expected)
                                    .map_err(|why| (t.id.clone(), Error::refused(why)))?;
                                log.line(&format!(
                                    "{}: back, HEALTHY{} on {} ({} after UpdateNode)",
                                    t.id,
                                    if t.consensus {
                                        ", curator running,"
                                    } else {
                                        ","
                                    },
                                    version_text(version.as_ref()),
                                    format_elapsed(started.elapsed())
                                ))
                                .map_err(|e| (t.id.clone(), e))?;
                            }
                        }
                    }
                    pending = still;
                }
            }
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let t = pending[0];
                let last = seen
                    .iter()
                    .rev()
                    .find(|(who, _)| *who == t.id)
                    .map_or("no answer from the cluster", |(_, why)| why.as_str());
                return Err((
                    t.id.clone(),
                    Error::local(format!(
                        "not back HEALTHY on the new version within {} (last seen: {last}); \
                         check metroctl node describe {} and metroctl node logs {}",
                        format_elapsed(self.timeout),
                        t.id,
                        t.id
                    )),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Before taking consensus member `t` down: waits until enough of the other members are
    /// healthy for the cluster to keep its quorum without `t`.
    async fn wait_quorum_margin(
        &self,
        log: &mut Log,
        t: &Target,
    ) -> std::result::Result<(), StepError> {
        let deadline = Instant::now() + self.timeout;
        let mut seen = Vec::new();
        loop {
            let polled = self.poll().await.map_err(|e| (t.id.clone(), e))?;
            let why = match polled {
                Err(why) => why,
                Ok(nodes) => {
                    let members = nodes.iter().filter(|n| is_consensus_member(n)).count();
                    let unhealthy = unhealthy_members(&nodes, Some(t.id.as_str()));
                    if may_take_down(members, unhealthy.len()) {
                        return Ok(());
                    }
                    let list: Vec<String> = unhealthy
                        .iter()
                        .map(|(id, why)| format!("{id} ({why})"))
                        .collect();
                    format!(
                        "waiting: taking it down now would cost the cluster its quorum, other \
                         consensus members are not healthy: {}",
                        list.join(", ")
                    )
                }
            };
            if Instant::now() >= deadline {
                return Err((
                    t.id.clone(),
                    Error::refused(format!(
                        "not taken down: {why} (waited {})",
                        format_elapsed(self.timeout)
                    )),
                ));
            }
            note(log, &mut seen, &t.id, &why);
            tokio::time::sleep(POLL).await;
        }
    }

    /// After a consensus member came back: waits until every member is healthy (UP, HEALTHY,
    /// curator running), i.e. the etcd cluster has all its members serving again.
    async fn wait_consensus_healthy(
        &self,
        log: &mut Log,
        id: &str,
    ) -> std::result::Result<(), StepError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut seen = Vec::new();
        loop {
            let polled = self.poll().await.map_err(|e| (id.to_string(), e))?;
            let why = match polled {
                Err(why) => why,
                Ok(nodes) => {
                    let members = nodes.iter().filter(|n| is_consensus_member(n)).count();
                    let unhealthy = unhealthy_members(&nodes, None);
                    if unhealthy.is_empty() && members >= self.members {
                        return log
                            .line(&format!(
                                "consensus healthy: {members}/{members} members HEALTHY with \
                                 their curator running ({})",
                                format_elapsed(started.elapsed())
                            ))
                            .map_err(|e| (id.to_string(), e));
                    }
                    let list: Vec<String> = unhealthy
                        .iter()
                        .map(|(id, why)| format!("{id} ({why})"))
                        .collect();
                    format!(
                        "waiting for the consensus members to be healthy: {}",
                        list.join(", ")
                    )
                }
            };
            if Instant::now() >= deadline {
                return Err((
                    id.to_string(),
                    Error::new(
                        Kind::Local,
                        format!(
                            "the consensus did not become healthy again within {}: {why}",
                            format_elapsed(self.timeout)
                        ),
                    ),
                ));
            }
            note(log, &mut seen, "cluster", &why);
            tokio::time::sleep(POLL).await;
        }
    }
}

/// An UpdateNode failure. The node's own refusals (a bundle it cannot download or refuses,
/// another update running) are the bundle's or the node's problem, not the cluster's
/// reachability, whatever their code; only transport failures mean the node is unreachable.
fn update_error(status: &tonic::Status) -> Error {
    let msg = status.message();
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Error::from_status("UpdateNode", status)
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            if !msg.starts_with("downloading") && !msg.starts_with("connecting to") =>
        {
            Error::unreachable(format!("UpdateNode: the node did not answer: {msg}"))
        }
        code => Error::refused(format!("UpdateNode failed ({code:?}): {msg}")),
    }
}

/// Logs what `who` waits for, once per change (not once per poll).
fn note(log: &mut Log, seen: &mut Vec<(String, String)>, who: &str, why: &str) {
    let last = seen
        .iter()
        .rev()
        .find(|(w, _)| w == who)
        .map(|(_, y)| y.as_str());
    if last != Some(why) {
        // A failed write of a progress line is not worth stopping the roll for.
        let _ = log.line(&format!("{who}: {why}"));
        seen.push((who.to_string(), why.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::node_roles::ConsensusMember;
    use proto::common::node_status::RunningCurator;
    use proto::common::{NodeRoles, NodeStatus};
    use proto::version::spec::version::Release;

    fn v(minor: i64) -> Version {
        Version {
            release: Some(Release {
                major: 0,
                minor,
                patch: 0,
                prerelease: Vec::new(),
            }),
            git_information: None,
        }
    }

    fn target(id: &str, consensus: bool) -> Target {
        Target {
            id: id.to_string(),
            address: "127.0.0.1".to_string(),
            consensus,
            version: Some(v(1)),
            boot_id: vec![1],
        }
    }

    fn node(id: &str, consensus: bool, healthy: bool, curator: bool, boot: u8) -> api::Node {
        api::Node {
            id: id.to_string(),
            state: NodeState::Up as i32,
            health: if healthy {
                Health::Healthy
            } else {
                Health::HeartbeatTimeout
            } as i32,
            roles: Some(NodeRoles {
                consensus_member: consensus.then(ConsensusMember::default),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                external_address: "127.0.0.1".to_string(),
                running_curator: curator.then_some(RunningCurator { port: 7835 }),
                version: Some(v(2)),
                boot_id: vec![boot],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ids(batches: &[Vec<Target>]) -> Vec<Vec<&str>> {
        batches
            .iter()
            .map(|b| b.iter().map(|t| t.id.as_str()).collect())
            .collect()
    }

    #[test]
    fn plan_puts_others_in_batches_and_members_one_by_one_leader_last() {
        let targets = vec![
            target("m-b", true),
            target("w-3", false),
            target("m-a", true),
            target("w-1", false),
            target("m-c", true),
            target("w-2", false),
        ];
        let batches = plan(targets.clone(), 2, Some("m-a"));
        assert_eq!(
            ids(&batches),
            vec![
                vec!["w-1", "w-2"],
                vec!["w-3"],
                vec!["m-b"],
                vec!["m-c"],
                vec!["m-a"]
            ]
        );
        let batches = plan(targets, 1, None);
        assert_eq!(batches.len(), 6);
        assert_eq!(ids(&batches)[3..], [vec!["m-a"], vec!["m-b"], vec!["m-c"]]);
    }

    #[test]
    fn quorum_margin() {
        // 3 members: one may be down, so only when both others are healthy.
        assert!(may_take_down(3, 0));
        assert!(!may_take_down(3, 1));
        // 5 members tolerate two down: one other may be unhealthy.
        assert!(may_take_down(5, 1));
        assert!(!may_take_down(5, 2));
        // 1 or 2 members: no margin at all; allowed when the others are fine.
        assert!(may_take_down(1, 0));
        assert!(may_take_down(2, 0));
        assert!(!may_take_down(2, 1));
    }

    #[test]
    fn unhealthy_members_name_the_reason() {
        let nodes = vec![
            node("m-a", true, true, true, 1),
            node("m-b", true, false, true, 1),
            node("m-c", true, true, false, 1),
            node("w-1", false, false, false, 1),
        ];
        let bad = unhealthy_members(&nodes, Some("m-a"));
        assert_eq!(
            bad,
            vec![
                ("m-b".to_string(), "HEARTBEAT_TIMEOUT".to_string()),
                ("m-c".to_string(), "curator not running".to_string())
            ]
        );
        assert_eq!(unhealthy_members(&nodes, Some("m-b")).len(), 1);
    }

    #[test]
    fn a_node_is_back_after_a_new_start_healthy_and_with_its_curator() {
        let t = target("m-a", true);
        assert_eq!(
            back(&t, &node("m-a", true, true, true, 1)),
            Back::Waiting("not restarted yet".to_string())
        );
        assert!(matches!(
            back(&t, &node("m-a", true, false, true, 2)),
            Back::Waiting(_)
        ));
        assert!(matches!(
            back(&t, &node("m-a", true, true, false, 2)),
            Back::Waiting(_)
        ));
        assert_eq!(
            back(&t, &node("m-a", true, true, true, 2)),
            Back::On(Some(v(2)))
        );
        // Without the consensus role the curator does not matter.
        let w = target("w-1", false);
        assert_eq!(
            back(&w, &node("w-1", false, true, false, 2)),
            Back::On(Some(v(2)))
        );
    }

    #[test]
    fn versions_are_learned_from_the_first_node_and_rollbacks_refused() {
        let t = target("m-a", true);
        let mut expected = None;
        // Back on the version it ran before: a rollback (or a bundle of that version).
        let e = check_version(&t, Some(v(1)), &mut expected).expect_err("same version");
        assert!(e.contains("rolled back"), "{e}");
        assert_eq!(expected, None);
        check_version(&t, Some(v(2)), &mut expected).expect("new version");
        assert_eq!(expected, Some(v(2)));
        check_version(&t, Some(v(2)), &mut expected).expect("same as the first");
        let e = check_version(&t, Some(v(1)), &mut expected).expect_err("rolled back");
        assert!(e.contains("not on 0.2.0"), "{e}");
        assert!(e.contains("rolled back"), "{e}");
        let e = check_version(&t, Some(v(3)), &mut expected).expect_err("other version");
        assert!(e.contains("another version"), "{e}");
    }

    #[test]
    fn selection() {
        let mut down = node("w-2", false, true, false, 1);
        down.state = NodeState::Standby as i32;
        let nodes = vec![node("m-a", true, true, true, 1), down];
        let all = select(&nodes, &["all".to_string()]).expect("all");
        assert_eq!(all.len(), 1, "only UP nodes");
        assert!(all[0].consensus);
        let e = select(&nodes, &["all".to_string(), "m-a".to_string()]).expect_err("mixed");
        assert_eq!(e.kind, Kind::Usage);
    }
}
