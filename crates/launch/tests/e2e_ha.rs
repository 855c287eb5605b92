//! e2e "ha" (an e2e test of later upstream Monogon, not in the 8456ddf0 baseline): three nodes;
//! nodes 1 and 2 become consensus members one after the other (learner → voting, checked with
//! GetConsensusStatus); all HEALTHY; then every node is rebooted in turn while a writer keeps
//! changing a node label through the leader-following client: every write must succeed (within the
//! retry deadline) throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Clock, HEALTH, REJOIN};
use launch::proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use launch::{Cluster, Management};
use test_support::{LoopbackBlock, eventually};
use tokio::time::Instant;

/// The longest a single write may take, retries through a leader failover included.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
const LABEL: &str = "e2e-writes";

async fn wait_consensus_full(cluster: &Cluster, timeout: Duration) {
    let ids = cluster.expected_ids().expect("ids");
    eventually(timeout, async || {
        let members = cluster.management().consensus_status().await;
        if let Ok(members) = &members {
            let full = ids.iter().all(|id| {
                members
                    .iter()
                    .any(|m| &m.id == id && m.status() == MemberStatus::Full)
            });
            if full && members.len() == ids.len() {
                return Ok(());
            }
        }
        Err(format!("{members:?}"))
    })
    .await
    .expect("etcd members all voting");
}

/// Writes label values 1, 2, … on `id` until `stop`; returns how many writes succeeded and
/// the slowest, or the first failure.
async fn writer(
    management: Management,
    id: String,
    stop: Arc<AtomicBool>,
) -> Result<(u64, Duration), String> {
    let management = management.with_deadline(WRITE_DEADLINE);
    let mut written = 0u64;
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        let value = (written + 1).to_string();
        let started = Instant::now();
        management
            .update_labels(&id, &[(LABEL, &value)], &[])
            .await
            .map_err(|e| {
                format!(
                    "write {} failed after {:?}: {e}",
                    written + 1,
                    started.elapsed()
                )
            })?;
        slowest = slowest.max(started.elapsed());
        written += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((written, slowest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha() {
    common::init();
    let mut clock = Clock::new();
    let block = LoopbackBlock::allocate();
    let mut options = common::options(3, &block);
    options.consensus_members = 2;
    let cluster = common::start(options).await;
    clock.lap("cluster of 3 launched, nodes 1 and 2 consensus members");

    wait_consensus_full(&cluster, REJOIN).await;
    cluster.wait_all_healthy(HEALTH).await.expect("all HEALTHY");
    clock.lap("3 voting etcd members, all HEALTHY");

    let target = cluster.id_of(2).expect("id");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(writer(cluster.management(), target.clone(), stop.clone()));

    for index in 0..3 {
        let leader = cluster.management().current_leader();
        cluster
            .reboot_node(index)
            .await
            .unwrap_or_else(|e| panic!("reboot node {index}: {e}"));
        assert!(
            cluster
                .node(index)
                .boot_logs()
                .iter()
                .any(|l| l.contains("Joined the cluster.")),
            "node {index} did not join after its reboot"
        );
        cluster
            .wait_all_healthy(REJOIN)
            .await
            .expect("all HEALTHY after a reboot");
        wait_consensus_full(&cluster, REJOIN).await;
        clock.lap(&format!(
            "node {index} rebooted and back (leader before: {leader:?}, now: {:?})",
            cluster.management().current_leader()
        ));
        assert!(
            !writes.is_finished(),
            "the writer stopped early: {:?}",
            writes.await
        );
    }

    stop.store(true, Ordering::SeqCst);
    let (written, slowest) = writes
        .await
        .expect("writer task")
        .expect("every write succeeded");
    clock.lap(&format!(
        "{written} writes during the rolling restart, slowest {slowest:.1?}"
    ));
    assert!(written > 0);
    let node = cluster
        .management()
        .get_node(&target)
        .await
        .expect("GetNodes")
        .expect("node 2 listed");
    let label = node
        .labels
        .iter()
        .flat_map(|l| l.pairs.iter())
        .find(|p| p.key == LABEL)
        .map(|p| p.value.clone());
    assert_eq!(
        label,
        Some(written.to_string()),
        "the last write is visible"
    );
    cluster.shutdown().await;
}
