//! Scenarios on a fresh 3-node cluster with 3 consensus members each run: partitions (1, 2),
//! a frozen leader (5) and a lossy network (7).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::HEALTH;
use crate::bed::{LEADER_TTL, POLL};
use crate::history::{Change, ElectionKey, History};
use crate::{Error, Ledger, Result, RunResult, Testbed};

/// How long a follower stays partitioned: several heartbeat periods, so the leader notices.
const FOLLOWER_HOLD: Duration = Duration::from_secs(15);
/// How long the network stays lossy.
const LOSSY_HOLD: Duration = Duration::from_secs(30);
/// Deadline of one acknowledged write through the leader-following client (failovers and
/// retries included).
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Ledger writes before and after each fault.
const WRITES: usize = 3;

fn ttl() -> Duration {
    Duration::from_secs(u64::from(LEADER_TTL))
}

fn check(what: &str) -> impl FnOnce(String) -> Error + '_ {
    move |e| Error::Check(format!("{what}: {e}"))
}

async fn write_n(ledger: &mut Ledger, n: usize, what: &str) -> Result<Duration> {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        slowest = slowest.max(ledger.write().await.map_err(check(what))?);
    }
    Ok(slowest)
}

/// What probing one node directly showed.
#[derive(Debug, Default)]
struct Probe {
    /// Start (since the fault) of the last Management read the node answered.
    last_served: Option<Duration>,
    /// Starts (since the fault) of the writes the node acknowledged.
    writes_acked: Vec<Duration>,
    attempts: u32,
}

/// The label probe writes set on the probed node's own record.
const PROBE_LABEL: &str = "chaos-direct";

/// The value of the control write that proves a history scan sees marked writes.
fn control_value(marker: &str) -> String {
    format!("{marker}-control")
}

/// A marker unique to one run: every probe write carries it (as `<marker>-<attempt>`), so
/// etcd's history shows whether any of them landed.
fn probe_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("probe{}x{nanos:x}", std::process::id())
}

/// Calls node `index` directly for `window` from `since`: a read (GetNodes) and a write (a
/// label on its own record, valued `<marker>-<attempt>`) per round, noting what it answered.
async fn probe_directly(
    bed: &Testbed,
    index: usize,
    since: Instant,
    window: Duration,
    marker: &str,
) -> Probe {
    let mut probe = Probe::default();
    let Ok(id) = bed.cluster.id_of(index) else {
        return probe;
    };
    while since.elapsed() < window {
        probe.attempts += 1;
        let Ok(client) = bed.direct(index).await else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let started = since.elapsed();
        if client.get_nodes("").await.is_ok() {
            probe.last_served = Some(started);
        }
        let started = since.elapsed();
        let value = format!("{marker}-{}", probe.attempts);
        if client
            .update_labels(&id, &[(PROBE_LABEL, &value)], &[])
            .await
            .is_ok()
        {
            probe.writes_acked.push(started);
        }
        tokio::time::sleep(POLL).await;
    }
    probe
}

/// Waits until node `index` names `leader` as leader and does not serve Management itself.
async fn wait_follower(bed: &Testbed, index: usize, leader: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = bed.leader_seen_by(index).await;
        if seen.as_deref() == Ok(leader) && !bed.serves_management(index).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let named = seen
                .as_ref()
                .ok()
                .and_then(|id| bed.cluster.index_of(id))
                .map_or("an unknown node".to_string(), |i| format!("node {i}"));
            return Err(Error::Check(format!(
                "node {index} did not follow {leader} within {timeout:?} (it names {seen:?}, \
                 {named})"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Records and acknowledged writes missing at the end.
async fn losses(bed: &Testbed, ledger: &Ledger, notes: &mut Vec<String>) -> Result<u64> {
    let ledger_lost = ledger.lost().await?;
    let records_lost = bed.lost_records().await?;
    notes.push(format!(
        "{} acknowledged writes, {ledger_lost} lost; {records_lost} node records missing or not UP",
        ledger.acked()
    ));
    Ok(ledger_lost + records_lost)
}

/// Scenario 1: the leader is cut off from both other members. It must stop serving
/// Management within its lease TTL and acknowledge no write once its lease has expired; the
/// majority elects a new leader; healed, the old leader follows it; nothing is lost.
pub async fn leader_partition() -> Result<RunResult> {
    let bed = Testbed::start(3, 3).await?;
    let all = [0, 1, 2];
    let leader = bed.wait_leader(&all, HEALTH).await?;
    let others: Vec<usize> = all.into_iter().filter(|i| *i != leader).collect();
    let mut ledger = Ledger::new(&bed, others[0], WRITE_DEADLINE)?;
    write_n(&mut ledger, WRITES, "writes before the partition").await?;

    // etcd's history from here on is checked after the heal, on a majority member.
    let history = History::connect(&bed, others[0]).await?;
    let leader_id = bed.cluster.id_of(leader)?;
    let old_key = history.election_key(&leader_id).await?.ok_or_else(|| {
        Error::Check(format!(
            "the leader (node {leader}) has no election key in etcd"
        ))
    })?;
    let start_revision = history.revision().await?;
    let marker = probe_marker();

    let cut = Instant::now();
    bed.net.partition(leader, &others)?;
    let window = ttl() * 4;
    let (probe, elected) =
        tokio::join!(probe_directly(&bed, leader, cut, window, &marker), async {
            let index = bed.wait_leader(&others, HEALTH).await;
            (index, cut.elapsed())
        });
    let (new_leader, recovery) = (elected.0?, elected.1);
    let mut notes = vec![format!(
        "node {leader} (leader) partitioned; node {new_leader} leads the majority after {:.1} s",
        recovery.as_secs_f64()
    )];
    notes.push(format!(
        "old leader probed directly {} times over {:.0} s: last read served at {}, writes \
         acknowledged at {:?}",
        probe.attempts,
        window.as_secs_f64(),
        probe
            .last_served
            .map_or("never (none after the cut)".to_string(), |d| format!(
                "+{:.1} s",
                d.as_secs_f64()
            )),
        probe
            .writes_acked
            .iter()
            .map(|d| format!("+{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    ));
    if let Some(served) = probe.last_served
        && served > ttl()
    {
        return Err(Error::Check(format!(
            "the partitioned leader still served Management {:.1} s after the cut (lease TTL {:?})",
            served.as_secs_f64(),
            ttl()
        )));
    }
    if let Some(late) = probe.writes_acked.iter().find(|d| **d > ttl()) {
        return Err(Error::Check(format!(
            "the partitioned leader acknowledged a write started {:.1} s after the cut, past its \
             lease TTL",
            late.as_secs_f64()
        )));
    }
    write_n(&mut ledger, WRITES, "writes to the majority").await?;

    bed.net.heal(leader)?;
    let healed = Instant::now();
    // All three agree on one leader again, and it is not the old one.
    let agreed = bed.wait_leader(&all, HEALTH).await?;
    if agreed == leader {
        return Err(Error::Check(format!(
            "after the heal the old leader (node {leader}) leads again instead of following \
             node {new_leader}"
        )));
    }
    let agreed_id = bed.cluster.id_of(agreed)?;
    wait_follower(&bed, leader, &agreed_id, HEALTH).await?;
    bed.wait_healthy(HEALTH).await?;
    notes.push(format!(
        "healed old leader follows node {agreed}{}, all HEALTHY {:.1} s after the heal",
        if agreed == new_leader {
            ""
        } else {
            " (leadership moved again after the heal)"
        },
        healed.elapsed().as_secs_f64()
    ));
    write_n(&mut ledger, WRITES, "writes after the heal").await?;
    // A control write carrying the marker, through the majority's leader: the scan must find
    // it, or finding no probe write would prove nothing.
    bed.cluster
        .management()
        .with_deadline(WRITE_DEADLINE)
        .update_labels(&leader_id, &[(PROBE_LABEL, &control_value(&marker))], &[])
        .await
        .map_err(|e| Error::Check(format!("the control write: {e}")))?;
    let end_revision = history.revision().await?;
    let changes = history.scan(start_revision, end_revision).await?;
    notes.push(old_lease_writes(
        &changes,
        &old_key,
        &marker,
        (start_revision, end_revision),
    )?);
    let lost = losses(&bed, &ledger, &mut notes).await?;
    notes.extend(bed.reboots());
    Ok(RunResult {
        recovery: Some(recovery),
        lost,
        notes,
    })
}

/// Checks etcd's history of the run (`changes` in `revisions`) for writes of the partitioned
/// old leader: the revision at which its election key vanished (its lease expired, or it was
/// revoked), the probe writes (`marker`) that landed at all, and any write after that revision
/// carrying the old lease or touching the old election key. A probe write or a lease-bound
/// write after the key vanished fails the run; the note says what was scanned and found.
fn old_lease_writes(
    changes: &[Change],
    old_key: &ElectionKey,
    marker: &str,
    revisions: (i64, i64),
) -> Result<String> {
    let vanished = changes
        .iter()
        .find(|c| c.delete && c.key == old_key.key)
        .map(|c| c.revision)
        .ok_or_else(|| {
            Error::Check(format!(
                "etcd history {}..={}: the old leader's election key {} (lease {:x}) never \
                 vanished",
                revisions.0,
                revisions.1,
                String::from_utf8_lossy(&old_key.key),
                old_key.lease
            ))
        })?;
    let control = control_value(marker);
    let controls = changes
        .iter()
        .filter(|c| c.introduces(marker).contains(&control))
        .count();
    if controls == 0 {
        return Err(Error::Check(format!(
            "etcd history {}..={}: the control write carrying the marker was not found, so \
             the scan cannot vouch for the probe writes",
            revisions.0, revisions.1
        )));
    }
    let probes: Vec<i64> = changes
        .iter()
        .filter(|c| c.introduces(marker).iter().any(|t| *t != control))
        .map(|c| c.revision)
        .collect();
    let late_probes: Vec<i64> = probes.iter().copied().filter(|r| *r > vanished).collect();
    let late_lease: Vec<i64> = changes
        .iter()
        .filter(|c| c.revision > vanished && (c.lease == old_key.lease || c.key == old_key.key))
        .map(|c| c.revision)
        .collect();
    let note = format!(
        "etcd history: revisions {}..={} scanned ({} changes); the old leader's election key \
         (lease {:x}, created at {}) vanished at revision {vanished}; probe writes found: {} \
         {probes:?}, after the expiry: {} (the control write found: {controls}); writes \
         under the old lease or key after it: {}",
        revisions.0,
        revisions.1,
        changes.len(),
        old_key.lease,
        old_key.create_revision,
        probes.len(),
        late_probes.len(),
        late_lease.len()
    );
    if !late_probes.is_empty() || !late_lease.is_empty() {
        return Err(Error::Check(format!(
            "the old leader wrote after its lease was gone: probe writes at revisions \
             {late_probes:?}, old lease or key at revisions {late_lease:?} ({note})"
        )));
    }
    Ok(note)
}

/// Scenario 2: a follower (a consensus member) is cut off from the others for a while, then
/// healed; it must come back HEALTHY by itself, and the majority keeps taking writes meanwhile.
pub async fn follower_partition() -> Result<RunResult> {
    let bed = Testbed::start(3, 3).await?;
    let all = [0, 1, 2];
    let leader = bed.wait_leader(&all, HEALTH).await?;
    let follower = all
        .into_iter()
        .find(|i| *i != leader)
        .ok_or_else(|| Error::Check("no follower".into()))?;
    let others: Vec<usize> = all.into_iter().filter(|i| *i != follower).collect();
    let mut ledger = Ledger::new(&bed, follower, WRITE_DEADLINE)?;
    write_n(&mut ledger, WRITES, "writes before the partition").await?;

    let cut = Instant::now();
    bed.net.partition(follower, &others)?;
    let slowest = write_n(&mut ledger, WRITES, "writes during the partition").await?;
    let hold = FOLLOWER_HOLD.saturating_sub(cut.elapsed());
    // The fault's duration, not a wait for a condition.
    tokio::time::sleep(hold).await;
    // Proof that the cut was real: the leader has not heard from the follower for a while.
    let follower_id = bed.cluster.id_of(follower)?;
    let silent = bed
        .cluster
        .management()
        .with_deadline(WRITE_DEADLINE)
        .get_node(&follower_id)
        .await
        .map_err(|e| Error::Check(format!("reading the follower's record: {e}")))?
        .and_then(|n| n.time_since_heartbeat)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    if silent < FOLLOWER_HOLD / 2 {
        return Err(Error::Check(format!(
            "the partition did not cut the follower off: its last heartbeat is {silent:?} old"
        )));
    }
    bed.net.heal(follower)?;
    let healed = Instant::now();
    bed.cluster
        .wait_heartbeat_since(follower, healed, HEALTH)
        .await?;
    bed.wait_healthy(HEALTH).await?;
    let recovery = healed.elapsed();
    let mut notes = vec![format!(
        "node {follower} (follower) partitioned for {:.0} s (no heartbeat for {:.1} s); writes \
         meanwhile: slowest {:.1} s; HEALTHY {:.1} s after the heal",
        FOLLOWER_HOLD.as_secs_f64(),
        silent.as_secs_f64(),
        slowest.as_secs_f64(),
        recovery.as_secs_f64()
    )];
    write_n(&mut ledger, WRITES, "writes after the heal").await?;
    let lost = losses(&bed, &ledger, &mut notes).await?;
    notes.extend(bed.reboots());
    Ok(RunResult {
        recovery: Some(recovery),
        lost,
        notes,
    })
}

/// Scenario 5: the leader is frozen (SIGSTOP, its etcd too) for twice its lease TTL. The
/// others elect a new leader; thawed, the old one must step down and acknowledge no write
/// (a write it acknowledged then would be split brain: the new leader exists by then).
pub async fn leader_freeze() -> Result<RunResult> {
    let bed = Testbed::start(3, 3).await?;
    let all = [0, 1, 2];
    let leader = bed.wait_leader(&all, HEALTH).await?;
    let others: Vec<usize> = all.into_iter().filter(|i| *i != leader).collect();
    let mut ledger = Ledger::new(&bed, others[0], WRITE_DEADLINE)?;
    write_n(&mut ledger, WRITES, "writes before the freeze").await?;

    let frozen = Instant::now();
    bed.cluster.node(leader).freeze();
    let elected = bed.wait_leader(&others, HEALTH).await;
    let recovery = frozen.elapsed();
    let hold = (ttl() * 2).saturating_sub(frozen.elapsed());
    // The fault's duration, not a wait for a condition.
    tokio::time::sleep(hold).await;
    let new_leader = match elected {
        Ok(index) => index,
        Err(e) => {
            bed.cluster.node(leader).thaw();
            return Err(e);
        }
    };
    let held = frozen.elapsed();
    bed.cluster.node(leader).thaw();
    let thawed = Instant::now();
    let probe = probe_directly(&bed, leader, thawed, ttl() * 3, &probe_marker()).await;
    let new_id = bed.cluster.id_of(new_leader)?;
    let mut notes = vec![
        format!(
            "node {leader} (leader) frozen {:.1} s; node {new_leader} leads after {:.1} s",
            held.as_secs_f64(),
            recovery.as_secs_f64()
        ),
        format!(
            "thawed old leader probed directly {} times: last read served at {}, writes \
             acknowledged: {}",
            probe.attempts,
            probe.last_served.map_or("never".to_string(), |d| format!(
                "+{:.1} s after SIGCONT",
                d.as_secs_f64()
            )),
            probe.writes_acked.len()
        ),
    ];
    if !probe.writes_acked.is_empty() {
        return Err(Error::Check(format!(
            "split brain: the thawed old leader acknowledged {} writes while node {new_leader} led",
            probe.writes_acked.len()
        )));
    }
    wait_follower(&bed, leader, &new_id, HEALTH).await?;
    bed.wait_healthy(HEALTH).await?;
    write_n(&mut ledger, WRITES, "writes after the thaw").await?;
    let lost = losses(&bed, &ledger, &mut notes).await?;
    notes.extend(bed.reboots());
    Ok(RunResult {
        recovery: Some(recovery),
        lost,
        notes,
    })
}

/// Scenario 7: every host loses 10 % of the packets from the other hosts (and, where the
/// kernel has netem, delays its own by 100 ms) for a while: one leader throughout, every write
/// acknowledged, heartbeats HEALTHY.
pub async fn lossy() -> Result<RunResult> {
    let bed = Testbed::start(3, 3).await?;
    let all = [0, 1, 2];
    let first = bed.wait_leader(&all, HEALTH).await?;
    let mut ledger = Ledger::new(&bed, first, WRITE_DEADLINE)?;
    write_n(&mut ledger, WRITES, "writes before the loss").await?;

    let mut notes = Vec::new();
    let netem = all.iter().try_for_each(|i| bed.net.netem(*i, 100, 10));
    match &netem {
        Ok(()) => notes.push("netem: 100 ms delay and 10 % loss on every host's egress".into()),
        Err(e) => {
            for i in all {
                bed.net.clear_netem(i);
                bed.net.loss(i, 10)?;
            }
            notes.push(format!(
                "netem unavailable ({e}); 10 % loss by nftables on every host's ingress from \
                 the other hosts, no delay"
            ));
        }
    }
    let started = Instant::now();
    let mut leaders: HashSet<String> = HashSet::new();
    let mut slowest = Duration::ZERO;
    let mut writes = 0u32;
    let mut disagreements = 0u32;
    while started.elapsed() < LOSSY_HOLD {
        slowest = slowest.max(ledger.write().await.map_err(check("write under loss"))?);
        writes += 1;
        let seen = futures::future::join_all(all.iter().map(|i| bed.leader_seen_by(*i))).await;
        let named: HashSet<&String> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
        if named.len() > 1 {
            disagreements += 1;
        }
        leaders.extend(named.into_iter().cloned());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bed.wait_healthy(HEALTH).await?;
    notes.push(format!(
        "{writes} writes under loss over {:.0} s, slowest {:.2} s; leaders named: {}; rounds \
         with nodes naming different leaders: {disagreements}; all HEALTHY under loss",
        LOSSY_HOLD.as_secs_f64(),
        slowest.as_secs_f64(),
        leaders.len()
    ));
    for i in all {
        bed.net.clear_netem(i);
        bed.net.heal(i)?;
    }
    if leaders.len() != 1 {
        return Err(Error::Check(format!(
            "leadership moved under loss: {leaders:?}"
        )));
    }
    let lost = losses(&bed, &ledger, &mut notes).await?;
    notes.extend(bed.reboots());
    Ok(RunResult {
        recovery: None,
        lost,
        notes,
    })
}
