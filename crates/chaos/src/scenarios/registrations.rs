//! Scenario 4: 100 machines register at once (RegisterNode with an ephemeral certificate of
//! their own key, ApproveNode by the owner, CommitNode), each through its own leader-following
//! client as a registering node has, while the curator leader is SIGKILLed partway through.
//! Every one of them must end UP exactly once: no record missing, none left NEW or STANDBY, no
//! duplicate. The machines are keys, not node processes (100 nodes would not fit 2 cores).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use identity::SigningKey;
use launch::proto::common::{NodeState, NodeStorageSecurity};
use launch::proto::curator_api::curator_client::CuratorClient;
use launch::proto::curator_api::{CommitNodeRequest, RegisterNodeRequest};
use rpc::{ClientCredentials, LeaderChannel, LeaderOptions, Management};
use tokio::time::Instant;

use super::HEALTH;
use crate::{Error, Result, RunResult, Testbed};

/// Machines registering at once.
pub const MACHINES: usize = 100;
/// The leader is killed once this many have registered.
const KILL_AFTER: usize = 20;
/// Deadline of each of a machine's calls, retries through the failover included.
const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// One machine's way through register → approve → commit; the step that failed, if any.
async fn enrol(
    bed: &Testbed,
    ticket: &[u8],
    key: &SigningKey,
    registered: &AtomicUsize,
) -> std::result::Result<(), String> {
    let leader = LeaderChannel::new(
        bed.cluster.curator_endpoints(),
        ClientCredentials::Ephemeral(key.clone()),
        bed.cluster.ca_certificate().to_vec(),
        LeaderOptions {
            crl: Some(bed.cluster.crl().clone()),
            ..LeaderOptions::default()
        },
    )
    .map_err(|e| format!("leader channel: {e}"))?;
    let client = Management::new(leader).with_deadline(CALL_DEADLINE);
    let join_key = SigningKey::generate().map_err(|e| format!("join key: {e}"))?;
    let register = RegisterNodeRequest {
        register_ticket: ticket.to_vec(),
        join_key: join_key.public_key().as_bytes().to_vec(),
        have_local_tpm: false,
        labels: None,
    };
    client
        .call("RegisterNode", |channel| {
            let register = register.clone();
            async move {
                CuratorClient::new(channel).register_node(register).await?;
                Ok(())
            }
        })
        .await
        .map_err(|e| format!("RegisterNode: {e}"))?;
    registered.fetch_add(1, Ordering::SeqCst);
    bed.cluster
        .management()
        .with_deadline(CALL_DEADLINE)
        .approve(key.public_key().as_bytes())
        .await
        .map_err(|e| format!("ApproveNode: {e}"))?;
    let commit = CommitNodeRequest {
        cluster_unlock_key: vec![7; 32],
        storage_security: NodeStorageSecurity::AuthenticatedEncrypted as i32,
    };
    client
        .call("CommitNode", |channel| {
            let commit = commit.clone();
            async move {
                CuratorClient::new(channel).commit_node(commit).await?;
                Ok(())
            }
        })
        .await
        .map_err(|e| format!("CommitNode: {e}"))?;
    Ok(())
}

/// One run.
pub async fn once() -> Result<RunResult> {
    let bed = Testbed::start(3, 3).await?;
    let all = [0, 1, 2];
    let leader = bed.wait_leader(&all, HEALTH).await?;
    let others: Vec<usize> = all.into_iter().filter(|i| *i != leader).collect();
    let ticket = bed
        .cluster
        .management()
        .register_ticket()
        .await
        .map_err(|e| Error::Check(format!("register ticket: {e}")))?;
    let keys = (0..MACHINES)
        .map(|_| SigningKey::generate())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Check(format!("generating keys: {e}")))?;
    let registered = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let enrolments =
        futures::future::join_all(keys.iter().map(|k| enrol(&bed, &ticket, k, &registered)));
    let killer = async {
        // Poll for the moment to strike: a count, not a time.
        while registered.load(Ordering::SeqCst) < KILL_AFTER && started.elapsed() < CALL_DEADLINE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at = registered.load(Ordering::SeqCst);
        let killed = Instant::now();
        bed.cluster.node(leader).kill().await?;
        let new_leader = bed.wait_leader(&others, HEALTH).await?;
        let recovery = killed.elapsed();
        bed.cluster.node(leader).start()?;
        Ok::<_, Error>((at, new_leader, recovery))
    };
    let (results, killed) = tokio::join!(enrolments, killer);
    let (at, new_leader, recovery) = killed?;
    let took = started.elapsed();
    let failures: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("machine {i}: {e}")))
        .collect();

    bed.cluster.node(leader).wait_ready(HEALTH * 2).await?;
    bed.wait_healthy(HEALTH).await?;
    let nodes = bed
        .cluster
        .management()
        .with_deadline(Duration::from_secs(60))
        .get_nodes("")
        .await
        .map_err(|e| Error::Check(format!("GetNodes: {e}")))?;
    let (mut up_once, mut missing, mut duplicates, mut stuck) = (0, 0, 0, 0);
    for key in &keys {
        let pubkey = key.public_key().as_bytes().to_vec();
        let records: Vec<_> = nodes.iter().filter(|n| n.pubkey == pubkey).collect();
        match records.as_slice() {
            [] => missing += 1,
            [one] if one.state() == NodeState::Up => up_once += 1,
            [_] => stuck += 1,
            _ => duplicates += 1,
        }
    }
    let mut notes = vec![format!(
        "leader node {leader} SIGKILLed after {at} registrations; node {new_leader} led after \
         {:.1} s; {MACHINES} enrolments took {:.1} s: {up_once} UP exactly once, {missing} \
         missing, {stuck} not UP, {duplicates} duplicated; {} client-side failures",
        recovery.as_secs_f64(),
        took.as_secs_f64(),
        failures.len()
    )];
    notes.extend(failures.iter().take(5).cloned());
    let lost = (MACHINES - up_once) as u64 + bed.lost_records().await?;
    if !failures.is_empty() && lost == 0 {
        // The cluster's state is right, but a real machine stops at a failed call.
        return Err(Error::Check(format!(
            "{} machines saw a failed call (a real node would stop there): {}",
            failures.len(),
            failures.first().cloned().unwrap_or_default()
        )));
    }
    notes.extend(bed.reboots());
    Ok(RunResult {
        recovery: Some(recovery),
        lost,
        notes,
    })
}
