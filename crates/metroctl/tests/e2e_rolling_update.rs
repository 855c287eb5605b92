//! e2e: `metroctl node update` rolls a 3-node cluster (all three consensus members) from the
//! version it was built as to 0.9.0, a bundle of the same node binary re-stamped by
//! `metropolis-bundle --stamp-version` and served over HTTPS by a mirror in the test (the
//! nodes trust its CA through `--update-ca`). Meanwhile a probe asks the cluster for its nodes
//! every 100 ms through a leader-following client: the cluster must answer throughout, but for
//! at most one failover window per consensus member. Before the roll, `--dry-run` changes
//! nothing and a bundle URL that 404s stops the roll at its first node, naming it. After it,
//! `node reboot --kexec --rollback` takes one node back to the version it ran before, and
//! `node poweroff` without --yes asks first (and, without a terminal, refuses).
//!
//! Needs the workspace's binaries built (`cargo build --workspace --bins`): the node, metroctl
//! and metropolis-bundle.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Metroctl, Run};
use launch::{Cluster, ClusterOptions, Management};
use test_support::mirror::serve_https;
use test_support::{LoopbackBlock, eventually};
use tokio::time::Instant;

/// The version the roll installs.
const NEW_VERSION: &str = "0.9.0";
/// Bound on the whole roll of three members (each one restarts etcd and its curator).
const ROLL_TIMEOUT: Duration = Duration::from_secs(900);
/// How often the probe asks, and how long one answer may take before it counts as a failure.
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `metropolis-bundle`, built next to metroctl by `cargo build --workspace --bins`.
fn bundle_tool() -> PathBuf {
    let tool = Path::new(env!("CARGO_BIN_EXE_metroctl")).with_file_name("metropolis-bundle");
    assert!(
        tool.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
        tool.display()
    );
    tool
}

/// A bundle of `binary` stamped as `version`, read into memory.
fn stamped_bundle(binary: &Path, dir: &Path, version: &str) -> Vec<u8> {
    let out = dir.join(format!("{version}.tar"));
    let status = std::process::Command::new(bundle_tool())
        .arg("--binary")
        .arg(binary)
        .arg("--output")
        .arg(&out)
        .arg("--stamp-version")
        .arg(version)
        .status()
        .expect("run metropolis-bundle");
    assert!(status.success(), "metropolis-bundle failed");
    std::fs::read(out).expect("read bundle")
}

type Snapshot = BTreeMap<String, (String, Vec<u8>)>;

/// id → (version, boot ID) as the cluster reports them.
async fn try_snapshot(mgmt: &Management) -> Result<Snapshot, String> {
    let nodes = mgmt.get_nodes("").await.map_err(|e| e.to_string())?;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let status = n.status.unwrap_or_default();
            let version = status.version.map(|v| v.to_string()).unwrap_or_default();
            (n.id, (version, status.boot_id))
        })
        .collect())
}

async fn snapshot(mgmt: &Management) -> Snapshot {
    try_snapshot(mgmt).await.expect("GetNodes")
}

/// metroctl with a bound of our own (`Metroctl::run` allows 120 s, too little for a roll).
async fn run_long(mctl: &Metroctl, args: &[&str], timeout: Duration) -> Run {
    let output = tokio::time::timeout(timeout, mctl.command(args).output())
        .await
        .unwrap_or_else(|_| panic!("metroctl {args:?} did not finish within {timeout:?}"))
        .expect("run metroctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The node ID of the plan's step `n` in metroctl's output.
fn step_node(run: &Run, n: usize) -> String {
    let marker = format!("step {n}: ");
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no {marker:?} in the plan:\n{run}"));
    let rest = &line[line.find(&marker).expect("marker") + marker.len()..];
    rest.split_whitespace().next().expect("node ID").to_string()
}

/// One probe: when it started, how long it took, whether the cluster answered.
struct Probe {
    at: Instant,
    ok: bool,
}

/// Unavailability windows (consecutive failed probes): each one's length, from its first
/// failed probe to the next answered one (or the last probe).
fn windows(probes: &[Probe]) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut open: Option<Instant> = None;
    for p in probes {
        match (p.ok, open) {
            (false, None) => open = Some(p.at),
            (true, Some(start)) => {
                out.push(p.at - start);
                open = None;
            }
            _ => {}
        }
    }
    if let (Some(start), Some(last)) = (open, probes.last()) {
        out.push(last.at - start);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_of_three_consensus_members() {
    let block = LoopbackBlock::allocate();
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = launch::find_node_binary(None).expect("node binary");
    let bundle = stamped_bundle(&binary, dir.path(), NEW_VERSION);
    let mirror = SocketAddr::from((block.addr(9), 8443));
    let ca_pem = serve_https(mirror, vec![("/new.tar".to_string(), bundle)]).await;
    let ca_file = dir.path().join("mirror-ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write mirror CA");

    let options = ClusterOptions {
        consensus_members: 2,
        update_ca: Some(ca_file),
        ..ClusterOptions::new(3, &block.prefix())
    };
    let cluster = Cluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("launching the cluster failed: {e}"));
    let mgmt = cluster.management();
    let before = snapshot(&mgmt).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let old_version = before.values().next().expect("a node").0.clone();
    assert!(
        before.values().all(|(v, _)| *v == old_version),
        "{before:?}"
    );
    assert_ne!(old_version, NEW_VERSION);

    let mctl = Metroctl {
        config: cluster.state_dir().to_path_buf(),
        endpoints: Some(format!(
            "{},{},{}",
            block.host(1),
            block.host(2),
            block.host(3)
        )),
    };
    let url = format!("https://{mirror}/new.tar");

    // --dry-run prints the plan (three steps, one member each) and changes nothing.
    let dry = mctl
        .run(&["node", "update", "--bundle-url", &url, "--dry-run", "all"])
        .await
        .ok();
    assert!(dry.stdout.contains("dry run: nothing was changed"), "{dry}");
    let planned: Vec<String> = (1..=3).map(|n| step_node(&dry, n)).collect();
    let mut sorted = planned.clone();
    sorted.sort();
    assert_eq!(sorted, before.keys().cloned().collect::<Vec<_>>(), "{dry}");
    assert_eq!(
        snapshot(&mgmt).await,
        before,
        "the dry run changed something"
    );

    // A bundle URL that 404s: the roll stops at its first node, names it, and lists the rest
    // as not updated; nothing restarted.
    let missing = format!("https://{mirror}/missing.tar");
    let failed = mctl
        .run(&["node", "update", "--bundle-url", &missing, "all"])
        .await;
    assert_ne!(failed.code, 0, "{failed}");
    let first = step_node(&failed, 1);
    assert!(
        failed.stderr.contains(&format!("updating node {first}: ")),
        "{failed}"
    );
    assert!(failed.stderr.contains("404"), "{failed}");
    let not_updated = failed
        .stderr
        .lines()
        .find(|l| l.starts_with("not updated: "))
        .unwrap_or_else(|| panic!("no list of nodes not updated:\n{failed}"));
    for id in before.keys() {
        assert!(not_updated.contains(id.as_str()), "{failed}");
    }
    assert_eq!(
        snapshot(&mgmt).await,
        before,
        "the failed roll changed something"
    );

    // The roll, with the probe running.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let mgmt = mgmt.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut probes = Vec::new();
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                let answer = tokio::time::timeout(PROBE_TIMEOUT, mgmt.get_nodes("")).await;
                let ok = matches!(answer, Ok(Ok(ref nodes)) if nodes.len() == 3);
                probes.push(Probe { at, ok });
            }
            probes
        })
    };
    let started = Instant::now();
    let roll = run_long(
        &mctl,
        &[
            "node",
            "update",
            "--bundle-url",
            &url,
            "--activation",
            "kexec",
            "all",
        ],
        ROLL_TIMEOUT,
    )
    .await;
    let roll_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let probes = probe.await.expect("probe task");
    println!("{roll}");
    let roll = roll.ok();

    let gaps = windows(&probes);
    let total: Duration = gaps.iter().sum();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    let failed_probes = probes.iter().filter(|p| !p.ok).count();
    println!(
        "rolling update of 3 consensus members: {:.1} s; {} probes, {failed_probes} failed; \
         Management unavailable {:.1} s in total over {} window(s), longest {:.1} s",
        roll_time.as_secs_f64(),
        probes.len(),
        total.as_secs_f64(),
        gaps.len(),
        longest.as_secs_f64()
    );
    assert!(
        gaps.len() <= 3,
        "the cluster stopped answering more than once per consensus member: {gaps:?}"
    );

    // Every node runs the new version, on a new boot; no node record was lost.
    let after = snapshot(&mgmt).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "node records changed"
    );
    for (id, (version, boot)) in &after {
        assert_eq!(version, NEW_VERSION, "node {id}");
        assert_ne!(*boot, before[id].1, "node {id} did not restart");
        assert!(
            roll.stdout.contains(&format!("{id}: back, HEALTHY")),
            "{id}: {roll}"
        );
    }
    assert_eq!(
        roll.stdout.matches("consensus healthy: 3/3").count(),
        3,
        "{roll}"
    );
    assert!(roll.stdout.contains("done in "), "{roll}");
    // The leader went last, as planned.
    assert_eq!(step_node(&roll, 3), planned[2], "{roll}");

    // Reboot with rollback: the node boots the other slot, the version it ran before.
    let back = &planned[0];
    mctl.run(&["node", "reboot", "--kexec", "--rollback", back])
        .await
        .ok();
    eventually(Duration::from_secs(180), async || {
        let now = try_snapshot(&mgmt).await?;
        match now.get(back.as_str()) {
            Some((v, boot)) if *v == old_version && *boot != after[back.as_str()].1 => Ok(()),
            other => Err(format!("node {back}: {other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the rollback did not come back on {old_version}: {e}"));

    // Power-off needs confirmation; without a terminal (and without --yes) it is refused.
    let refused = mctl.run(&["node", "poweroff", back]).await.failed(2);
    assert!(refused.stderr.contains("--yes"), "{refused}");
    assert!(
        cluster
            .node(cluster.index_of(back).expect("index"))
            .is_running()
    );

    cluster.shutdown().await;
}
