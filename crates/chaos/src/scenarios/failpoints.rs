//! Scenario 8: every failpoint a node process can reach, in kill/restart cycles.
//!
//! The node binary must be built with `--features node/failpoints` (`make chaos` does): a
//! process is started with `FAILPOINTS` armed, made to pass the failpoint by a real operation,
//! dies there (exit code 77: node crash points armed `return`, curator failpoints armed
//! `return(exit)`, as a power cut at that line), and is started again without failpoints.
//! Each cycle takes one fresh machine (a node process on a spare test host) through the whole
//! life of a node while the single consensus member (node 0, hence always the leader)
//! crashes inside its curator:
//!
//! 1. the machine registers; its CommitNode crashes the leader after the record was saved
//!    (`curator::commit_node::after_save`); the leader comes back, the machine's CommitNode
//!    retry gets the same answer, and the machine crashes after sealing its configuration
//!    (`node::enrol::after_seal`); started again, it joins: UP exactly once, HEALTHY;
//! 2. UpdateNodeRoles (ConsensusMember) crashes the leader after the learner was added
//!    (`curator::update_node_roles::after_learner_add`): the orphan learner must be gone
//!    within one reconciler period; the retry succeeds and the machine crashes writing its
//!    etcd peer PKI (`consensus::peer_pki::after_key`, odd cycles, or `before_swap`, even
//!    ones); started again it is a full member and HEALTHY; the role is then taken away;
//! 3. DecommissionNode: the machine crashes in its wipe (`node::decommission::wipe_midway`,
//!    odd cycles) or after it (`node::decommission::after_wipe`, even ones); started again it
//!    finishes the wipe and exits as gone, its record DECOMMISSIONED;
//! 4. DeleteNode crashes the leader after the tombstone (`curator::delete_node::
//!    after_tombstone`, odd cycles) or at the etcd member removal
//!    (`curator::delete_node::remove_member`, even ones); the leader comes back, a retry
//!    (or the reconciler) finishes the deletion.
//!
//! After every step: no duplicate or ghost record, no machine stuck NEW/STANDBY, no etcd
//! member or learner but the consensus members' (within one reconciler period), every node
//! HEALTHY. `identity::files::sync_dir` is not driven here: armed in a whole process it fails
//! the first atomic write of whichever subsystem comes first, which says nothing about one
//! operation; its crate tests (`identity::files`) break one directory's fsync instead.

use std::path::PathBuf;
use std::time::Duration;

use launch::proto::api::NodeParameters;
use launch::proto::api::node::Health;
use launch::proto::api::node_parameters::{Cluster as ClusterParams, ClusterRegister};
use launch::proto::common::NodeState;
use launch::proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use launch::{
    Cluster, ClusterOptions, DeleteBypass, Exit, Node, NodeConfig, NodeHost, RestartPolicy,
};
use prost::Message;
use tokio::time::Instant;

use super::HEALTH;
use crate::bed::{LEADER_TTL, POLL};
use crate::net::TestNet;
use crate::{Error, Result, Testbed};

/// Exit code of a process ended at a failpoint (node and curator alike).
const CRASH_EXIT_CODE: i32 = 77;
/// How long an armed process gets to reach its failpoint once the operation started.
const CRASH: Duration = Duration::from_secs(60);
/// The leader's reconciler period is 5 s; leftovers must be gone within one period (plus a
/// failover and a poll).
const RECONCILE: Duration = Duration::from_secs(20);
/// Deadline of an operator's call through the leader-following client.
const CALL: Duration = Duration::from_secs(60);

/// What the cycles showed.
#[derive(Debug, Default)]
pub struct Cycles {
    pub runs: u32,
    pub passed: u32,
    /// The slowest restart of a crashed process until it served again.
    pub worst: Option<Duration>,
    pub notes: Vec<String>,
}

fn check(what: impl std::fmt::Display) -> impl FnOnce(String) -> Error {
    move |e| Error::Check(format!("{what}: {e}"))
}

fn call_failed(what: &str) -> impl FnOnce(rpc::CallError) -> Error + '_ {
    move |e| Error::Check(format!("{what}: {e}"))
}

/// The bed: node 0 alone (the only consensus member, so always the leader) and a spare test
/// host for each cycle's machine.
struct Bed {
    bed: Testbed,
    spare: NodeHost,
}

/// Runs `cycles` cycles on one cluster; stops at the first failed one.
pub async fn cycles(cycles: u32) -> Result<Cycles> {
    let net = TestNet::create(2)?;
    let hosts: Vec<NodeHost> = net
        .hosts()
        .iter()
        .map(|h| NodeHost {
            address: h.address,
            wrapper: h.wrapper(),
        })
        .collect();
    let options = ClusterOptions {
        nodes: 1,
        consensus_members: 0,
        leader_ttl: Some(LEADER_TTL),
        // A crash that is not the armed one must show, not be restarted away.
        restart: RestartPolicy::OnRebootRequest,
        hosts: hosts[..1].to_vec(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    let bed = Bed {
        bed: Testbed { cluster, net },
        spare: hosts[1].clone(),
    };
    let mut out = Cycles::default();
    for cycle in 1..=cycles {
        out.runs += 1;
        let started = Instant::now();
        match one_cycle(&bed, cycle).await {
            Ok((notes, recovery)) => {
                out.passed += 1;
                let took = started.elapsed();
                out.worst = Some(out.worst.unwrap_or_default().max(recovery));
                out.notes.push(format!(
                    "cycle {cycle} ({:.0} s): {}",
                    took.as_secs_f64(),
                    notes.join("; ")
                ));
            }
            Err(e) => {
                out.notes.push(format!("cycle {cycle} FAILED: {e}"));
                break;
            }
        }
    }
    out.notes.push(
        "not driven here: identity::files::sync_dir (armed process-wide it fails whichever \
         atomic write comes first; covered by identity's crate tests)"
            .to_string(),
    );
    Ok(out)
}

/// Starts `node`'s process again with `failpoints` armed: powers the node off and boots a
/// handle of its own on the same state directory, never restarted by the launcher.
async fn boot_armed(node: &Node, failpoints: &str) -> Result<Node> {
    node.kill().await?;
    let mut config = node.config().clone();
    config
        .env
        .push(("FAILPOINTS".to_string(), failpoints.to_string()));
    config.restart = RestartPolicy::Never;
    let armed = Node::new(config);
    armed.start()?;
    Ok(armed)
}

/// Waits for `node` to die at failpoint `point`.
async fn expect_crash(node: &Node, point: &str) -> Result<()> {
    match node.wait_exit(CRASH).await {
        Ok(Exit::Code(CRASH_EXIT_CODE)) if node.logs_contain(point) => Ok(()),
        Ok(exit) => Err(Error::Check(format!(
            "{point}: the process ended with {exit}, not at the failpoint: {}",
            node.tail(10)
        ))),
        Err(e) => Err(Error::Check(format!(
            "{point}: the process did not crash there within {CRASH:?} ({e}); is \
             metropolis-node built with --features node/failpoints?"
        ))),
    }
}

/// Node 0 crashed at `point`: started again without failpoints, until it serves.
async fn restart_leader(bed: &Bed, armed: Node) -> Result<Duration> {
    drop(armed);
    let started = Instant::now();
    let node0 = bed.bed.cluster.node(0);
    node0.start()?;
    node0.wait_ready(HEALTH).await?;
    bed.bed.wait_leader(&[0], HEALTH).await?;
    Ok(started.elapsed())
}

/// The machine of one cycle: a node process on the spare host.
struct Machine {
    config: NodeConfig,
    node: Node,
}

impl Machine {
    /// Boots it again (killing whatever runs), with `failpoints` armed if not empty.
    async fn boot(&mut self, failpoints: &str) -> Result<()> {
        self.node.kill().await?;
        let mut config = self.config.clone();
        if !failpoints.is_empty() {
            config
                .env
                .push(("FAILPOINTS".to_string(), failpoints.to_string()));
        }
        self.node = Node::new(config);
        self.node.start()?;
        Ok(())
    }
}

/// Writes register parameters for a new machine; returns its NodeConfig.
async fn machine_config(bed: &Bed, cycle: u32) -> Result<NodeConfig> {
    let cluster = &bed.bed.cluster;
    let management = cluster.management().with_deadline(CALL);
    let ticket = management
        .register_ticket()
        .await
        .map_err(call_failed("register ticket"))?;
    let info = management
        .cluster_info()
        .await
        .map_err(call_failed("cluster info"))?;
    let params = NodeParameters {
        cluster: Some(ClusterParams::ClusterRegister(ClusterRegister {
            cluster_directory: info.cluster_directory,
            register_ticket: ticket,
            ca_certificate: info.ca_certificate,
            labels: None,
        })),
        network_config: None,
    };
    let dir = cluster.state_dir().join(format!("machine{cycle}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Check(format!("{}: {e}", dir.display())))?;
    let path: PathBuf = dir.join("register.pb");
    std::fs::write(&path, params.encode_to_vec())
        .map_err(|e| Error::Check(format!("{}: {e}", path.display())))?;
    let template = cluster.node(0).config();
    Ok(NodeConfig {
        index: 100 + cycle as usize,
        address: bed.spare.address,
        dir,
        binary: template.binary.clone(),
        parameters: Some(path),
        etcd: template.etcd.clone(),
        leader_ttl: template.leader_ttl,
        // A test host of its own: etcd checks its peers' addresses like the cluster's do.
        skip_peer_client_san_check: template.skip_peer_client_san_check,
        extra_args: Vec::new(),
        env: Vec::new(),
        wrapper: bed.spare.wrapper.clone(),
        echo: template.echo,
        restart: RestartPolicy::Never,
    })
}

/// Every node's records by public key; fails on a duplicate or on a node not UP except
/// `allowed` (id → state).
async fn check_records(bed: &Bed, allowed: &[(&str, NodeState)]) -> Result<usize> {
    let nodes = bed
        .bed
        .cluster
        .management()
        .with_deadline(CALL)
        .get_nodes("")
        .await
        .map_err(call_failed("GetNodes"))?;
    for (i, n) in nodes.iter().enumerate() {
        if nodes[..i].iter().any(|m| m.pubkey == n.pubkey) {
            return Err(Error::Check(format!("duplicate record for node {}", n.id)));
        }
        let expected = allowed
            .iter()
            .find(|(id, _)| *id == n.id)
            .map_or(NodeState::Up, |(_, s)| *s);
        if n.state() != expected {
            return Err(Error::Check(format!(
                "node {} is {}, expected {}",
                n.id,
                n.state().as_str_name(),
                expected.as_str_name()
            )));
        }
    }
    Ok(nodes.len())
}

/// Waits until the etcd members are exactly `members` (node IDs), all full voters; returns
/// how long that took and whether the first look showed anything else (e.g. an orphan
/// learner).
async fn wait_members(bed: &Bed, members: &[&str], timeout: Duration) -> Result<(Duration, bool)> {
    let started = Instant::now();
    let management = bed.bed.cluster.management().with_deadline(CALL);
    let mut want = members.to_vec();
    want.sort_unstable();
    let mut first = None;
    loop {
        let status = management.consensus_status().await;
        if let Ok(list) = &status {
            let mut ids: Vec<&str> = list
                .iter()
                .filter(|m| m.status() == MemberStatus::Full)
                .map(|m| m.id.as_str())
                .collect();
            ids.sort_unstable();
            let done = ids == want && list.len() == members.len();
            let differed = *first.get_or_insert(!done);
            if done {
                return Ok((started.elapsed(), differed));
            }
        }
        if started.elapsed() >= timeout {
            return Err(Error::Check(format!(
                "etcd members not {members:?} within {timeout:?}: {status:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `id` is UP and HEALTHY.
async fn wait_healthy(bed: &Bed, id: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let management = bed.bed.cluster.management().with_deadline(CALL);
    loop {
        let node = management.get_node(id).await;
        if let Ok(Some(n)) = &node
            && n.state() == NodeState::Up
            && n.health() == Health::Healthy
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Check(format!(
                "node {id} not UP and HEALTHY within {timeout:?}: {node:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `id` is in `state`; `None`: until it is gone.
async fn wait_state(
    bed: &Bed,
    id: &str,
    state: Option<NodeState>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let management = bed.bed.cluster.management().with_deadline(CALL);
    loop {
        let node = management.get_node(id).await;
        let now = node.as_ref().ok().map(|n| n.as_ref().map(|n| n.state()));
        if now == Some(state) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Check(format!(
                "node {id} not {state:?} within {timeout:?}: {node:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `id` is DECOMMISSIONING or DECOMMISSIONED; returns which.
async fn wait_decommissioned(bed: &Bed, id: &str, timeout: Duration) -> Result<NodeState> {
    let deadline = Instant::now() + timeout;
    let management = bed.bed.cluster.management().with_deadline(CALL);
    loop {
        let node = management.get_node(id).await;
        if let Ok(Some(n)) = &node
            && matches!(
                n.state(),
                NodeState::Decommissioning | NodeState::Decommissioned
            )
        {
            return Ok(n.state());
        }
        if Instant::now() >= deadline {
            return Err(Error::Check(format!(
                "node {id} not decommissioned within {timeout:?}: {node:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One cycle (see the module documentation); returns its notes and the slowest recovery
/// (a crashed process restarted until it served again).
async fn one_cycle(bed: &Bed, cycle: u32) -> Result<(Vec<String>, Duration)> {
    let mut worst = Duration::ZERO;
    let odd = cycle % 2 == 1;
    let cluster = &bed.bed.cluster;
    let leader_id = cluster.id_of(0)?;
    let management = cluster.management().with_deadline(CALL);
    let mut notes = Vec::new();

    // 1. Registration: the leader crashes after saving CommitNode, the machine after sealing.
    let point = "curator::commit_node::after_save";
    let armed = boot_armed(cluster.node(0), &format!("{point}=return(exit)")).await?;
    armed.wait_ready(HEALTH).await?;
    bed.bed.wait_leader(&[0], HEALTH).await?;
    let config = machine_config(bed, cycle).await?;
    let seal = "node::enrol::after_seal";
    let mut armed_config = config.clone();
    armed_config
        .env
        .push(("FAILPOINTS".to_string(), format!("{seal}=return")));
    let node = Node::new(armed_config);
    node.start()?;
    let id = node.wait_id(HEALTH).await?;
    let line = node.wait_log("waiting for approval", HEALTH).await?;
    let pubkey = line
        .rsplit("node public key ")
        .next()
        .map(|s| s.trim_end_matches(')').trim())
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| Error::Check(format!("no public key in {line:?}")))?;
    management
        .approve(&pubkey)
        .await
        .map_err(call_failed("ApproveNode"))?;
    expect_crash(&armed, point).await?;
    let back = restart_leader(bed, armed).await?;
    worst = worst.max(back);
    notes.push(format!(
        "{point}: leader back in {:.1} s",
        back.as_secs_f64()
    ));
    expect_crash(&node, seal).await?;
    let mut machine = Machine { config, node };
    machine.boot("").await?;
    machine.node.wait_ready(HEALTH).await?;
    wait_healthy(bed, &id, HEALTH).await?;
    check_records(bed, &[]).await?;
    notes.push(format!("{seal}: machine UP once, HEALTHY"));

    // 2. The ConsensusMember role: the leader crashes after adding the learner.
    let point = "curator::update_node_roles::after_learner_add";
    let armed = boot_armed(cluster.node(0), &format!("{point}=return(exit)")).await?;
    armed.wait_ready(HEALTH).await?;
    bed.bed.wait_leader(&[0], HEALTH).await?;
    let direct = bed
        .bed
        .direct(0)
        .await
        .map_err(check("connecting to node 0"))?;
    if direct.set_roles(&id, Some(true), None, None).await.is_ok() {
        return Err(Error::Check(format!(
            "{point}: UpdateNodeRoles succeeded through the armed leader"
        )));
    }
    expect_crash(&armed, point).await?;
    worst = worst.max(restart_leader(bed, armed).await?);
    let (orphan, seen) = wait_members(bed, &[&leader_id], RECONCILE).await?;
    notes.push(format!(
        "{point}: {} {:.1} s after the leader served again",
        if seen {
            "orphan learner seen after the restart, gone"
        } else {
            "no learner left at the first look after the restart (already reconciled),"
        },
        orphan.as_secs_f64()
    ));
    let pki = if odd {
        "consensus::peer_pki::after_key"
    } else {
        "consensus::peer_pki::before_swap"
    };
    machine.boot(&format!("{pki}=return")).await?;
    machine.node.wait_ready(HEALTH).await?;
    management
        .set_roles(&id, Some(true), None, None)
        .await
        .map_err(call_failed("UpdateNodeRoles (retry)"))?;
    expect_crash(&machine.node, pki).await?;
    machine.boot("").await?;
    let (joined, _) = wait_members(bed, &[&leader_id, &id], HEALTH).await?;
    wait_healthy(bed, &id, HEALTH).await?;
    worst = worst.max(joined);
    notes.push(format!(
        "{pki}: a full member {:.1} s after its restart",
        joined.as_secs_f64()
    ));
    // etcd refuses to remove a voter until it has been connected for a while ("unhealthy
    // cluster", FailedPrecondition): the operator retries.
    let deadline = Instant::now() + HEALTH;
    while let Err(e) = management.set_roles(&id, Some(false), None, None).await {
        if Instant::now() >= deadline {
            return Err(Error::Check(format!("UpdateNodeRoles (removal): {e}")));
        }
        tokio::time::sleep(POLL * 4).await;
    }
    wait_members(bed, &[&leader_id], HEALTH).await?;
    wait_healthy(bed, &id, HEALTH).await?;

    // 3. Decommission: the machine crashes in or after its wipe.
    let wipe = if odd {
        "node::decommission::wipe_midway"
    } else {
        "node::decommission::after_wipe"
    };
    machine.boot(&format!("{wipe}=return")).await?;
    machine.node.wait_ready(HEALTH).await?;
    management
        .decommission(&id)
        .await
        .map_err(call_failed("DecommissionNode"))?;
    expect_crash(&machine.node, wipe).await?;
    machine.boot("").await?;
    match machine.node.wait_exit(HEALTH).await? {
        Exit::Code(3) => {}
        other => {
            return Err(Error::Check(format!(
                "{wipe}: restarted, the machine ended with {other}, not as gone: {}",
                machine.node.tail(10)
            )));
        }
    }
    // Crashed after the wipe, the node can no longer report completion (its credentials
    // were in memory only): DECOMMISSIONING is where it stays, for the operator to delete.
    let state = wait_decommissioned(bed, &id, HEALTH).await?;
    check_records(bed, &[(&id, state)]).await?;
    notes.push(format!(
        "{wipe}: wipe finished on restart, record {}",
        state.as_str_name()
    ));

    // 4. Deletion: the leader crashes after the tombstone or at the member removal.
    let point = if odd {
        "curator::delete_node::after_tombstone"
    } else {
        "curator::delete_node::remove_member"
    };
    let armed = boot_armed(cluster.node(0), &format!("{point}=return(exit)")).await?;
    armed.wait_ready(HEALTH).await?;
    bed.bed.wait_leader(&[0], HEALTH).await?;
    let direct = bed
        .bed
        .direct(0)
        .await
        .map_err(check("connecting to node 0"))?;
    let bypass = DeleteBypass {
        has_roles: false,
        not_decommissioned: state != NodeState::Decommissioned,
    };
    if direct.delete(&id, bypass).await.is_ok() {
        return Err(Error::Check(format!(
            "{point}: DeleteNode succeeded through the armed leader"
        )));
    }
    expect_crash(&armed, point).await?;
    worst = worst.max(restart_leader(bed, armed).await?);
    let started = Instant::now();
    match management.delete(&id, bypass).await {
        Ok(()) => {}
        // The reconciler may have finished it first.
        Err(e) if e.code() == tonic::Code::NotFound => {}
        Err(e) => return Err(Error::Check(format!("{point}: retried DeleteNode: {e}"))),
    }
    wait_state(bed, &id, None, RECONCILE).await?;
    wait_members(bed, &[&leader_id], RECONCILE).await?;
    let count = check_records(bed, &[]).await?;
    if count != 1 {
        return Err(Error::Check(format!(
            "{count} node records after the deletion, expected node 0's only"
        )));
    }
    notes.push(format!(
        "{point}: deleted {:.1} s after the leader came back",
        started.elapsed().as_secs_f64()
    ));
    bed.bed.wait_healthy(HEALTH).await?;
    Ok((notes, worst))
}
