//! Scenario 6: a node's state directory on a filesystem that fills up, and etcd's NOSPACE
//! alarm.
//!
//! A fresh 3-node cluster with 3 consensus members, every node storing its data in the clear
//! (NEEDS_INSECURE, so this scenario can decode the node's files itself) and etcd's backend
//! quota small. Node 2's whole state directory is a tmpfs of its own, mounted before the node
//! first starts. Each run:
//!
//! 1. Full filesystem: a filler file takes every free byte of node 2's tmpfs; the cluster
//!    keeps taking writes through the leader and node 2 is rebooted onto the full disk (a
//!    machine restarting with a full disk); then the filler goes. Node 2 must come back by
//!    itself (a fresh heartbeat, its etcd member caught up with the leader's revision), every
//!    file it keeps must still decode with the node's own decoders, no acknowledged write may
//!    be lost, and whatever failed on node 2 meanwhile must have said "No space left on device".
//! 2. NOSPACE: the curator leader's etcd is filled past its quota (overwrites of one key, so
//!    compaction can free it); a cluster API write must then fail with ResourceExhausted and
//!    a message saying the cluster store is full, the leader node must log the alarm, and
//!    writes must succeed again once its consensus service has compacted, defragmented and
//!    disarmed it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use launch::{Cluster, ClusterOptions, NodeHost, RestartPolicy};
use tokio::time::Instant;

use super::HEALTH;
use crate::bed::{LEADER_TTL, POLL};
use crate::{Error, Ledger, Result, RunResult, TestNet, Testbed};

/// The node whose state directory is on the small filesystem: the last to join, a follower
/// unless leadership moved to it.
const FULL_NODE: usize = 2;
/// Size of its tmpfs. etcd preallocates 64 MiB per WAL segment (and the next one ahead), so
/// the member alone needs about 130 MiB; what is left is filled anyway.
const TMPFS_SIZE: &str = "192m";
/// etcd's backend quota on every node: small, so that phase 2 fills it in seconds, far above
/// what the cluster's own records take.
const QUOTA: u64 = 8 * 1024 * 1024;
/// One overwrite of the filler key in phase 2.
const FILLER_VALUE: usize = 512 * 1024;
/// How long the filesystem stays full (writes go on meanwhile, node 2 reboots in it).
const FULL_HOLD: Duration = Duration::from_secs(25);
/// Deadline of one acknowledged write.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Ledger writes before and after each fault.
const WRITES: usize = 3;
/// What the kernel's ENOSPC reads as in Rust's and Go's error texts.
const ENOSPC_TEXTS: [&str; 2] = ["No space left on device", "no space left on device"];

/// The etcd client socket in a node's ephemeral directory (consensus' `SOCKET_NAME`).
const SOCKET: &str = "client.sock:0";

static RUN: AtomicU32 = AtomicU32::new(0);

fn check(what: &str) -> impl FnOnce(String) -> Error + '_ {
    move |e| Error::Check(format!("{what}: {e}"))
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let text = format!("{what} {}", path.display());
    move |e| Error::Check(format!("{text}: {e}"))
}

/// The cluster's state directory with node 2's directory as a tmpfs mount; unmounted (lazily:
/// the node may still hold files there) and removed when dropped, after the cluster is gone.
struct Scratch {
    root: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn create() -> Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "chaos-disk-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        Ok(Self {
            mount: root.join(format!("node{FULL_NODE}")),
            root,
            mounted: false,
        })
    }

    /// Moves the (stopped) node's directory onto a tmpfs mounted in its place: the launcher
    /// insists on an empty state directory, so the node is set up first and moved after.
    /// Files are copied sparse: etcd's preallocated WAL tail takes no space until written.
    fn move_onto_tmpfs(&mut self) -> Result<()> {
        let aside = self.root.join(format!("node{FULL_NODE}.disk"));
        std::fs::rename(&self.mount, &aside).map_err(io("moving aside", &self.mount))?;
        std::fs::create_dir(&self.mount).map_err(io("creating", &self.mount))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={TMPFS_SIZE},mode=0700"))
            .arg("tmpfs")
            .arg(&self.mount))?;
        self.mounted = true;
        run(Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(aside.join("."))
            .arg(&self.mount))?;
        std::fs::remove_dir_all(&aside).map_err(io("removing", &aside))
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes the filler until the filesystem refuses: 1 MiB at a time, then page by page.
    /// Returns the bytes written.
    fn fill(&self) -> Result<u64> {
        let path = self.filler();
        let mut file = std::fs::File::create(&path).map_err(io("creating", &path))?;
        let mut written = 0u64;
        for chunk in [1024 * 1024, 4096] {
            let block = vec![0xa5u8; chunk];
            loop {
                match file.write(&block) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => return Err(io("filling", &path)(e)),
                }
            }
        }
        // Whatever is still buffered fails the same way; the disk is full either way.
        let _ = file.flush();
        Ok(written)
    }

    fn free(&self) -> Result<()> {
        let path = self.filler();
        std::fs::remove_file(&path).map_err(io("removing", &path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Check(format!("running {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Check(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Every file node `dir`'s node keeps, decoded the way the node decodes it: the parameters,
/// sealed configuration and cluster directory on the ESP, the node credentials and roles in
/// the (unencrypted) data directory, and the etcd member's peer PKI.
fn decode_node_files(dir: &Path) -> std::result::Result<String, String> {
    use node::storage::{Esp, contents, data::DataDir};
    let esp = Esp::new(dir.join("esp").join("metropolis"));
    let e = |what: &str| {
        let what = what.to_string();
        move |e: node::storage::Error| format!("{what}: {e}")
    };
    esp.parameters()
        .map_err(e("parameters"))?
        .ok_or("parameters missing")?;
    esp.sealed_configuration()
        .map_err(e("sealed configuration"))?
        .ok_or("sealed configuration missing")?;
    let directory = esp
        .cluster_directory()
        .map_err(e("cluster directory"))?
        .ok_or("cluster directory missing")?;
    let data = DataDir::open(&dir.join("data"), None).map_err(e("data directory"))?;
    contents::load_credentials(&data).map_err(e("node credentials"))?;
    let roles = contents::load_roles(&data)
        .map_err(e("node roles"))?
        .ok_or("node roles missing")?;
    let etcd = dir.join("data").join("etcd");
    let pki = consensus::Config::new(
        etcd.clone(),
        etcd.join("unused"),
        identity::SigningKey::load(&etcd.join("peer_pki").join("cert-key.pem"))
            .map_err(|e| format!("peer key: {e}"))?,
        std::net::IpAddr::from([0, 0, 0, 0]),
    )
    .peer_pki();
    pki.read_ca().map_err(|e| format!("peer CA: {e}"))?;
    identity::files::load_certificate(&pki.cert()).map_err(|e| format!("peer cert: {e}"))?;
    let crl = std::fs::read(pki.crl()).map_err(|e| format!("peer CRL: {e}"))?;
    if crl.first() != Some(&0x30) {
        return Err("peer CRL is not DER".to_string());
    }
    Ok(format!(
        "parameters, sealed configuration, cluster directory ({} nodes), credentials, roles \
         (consensus member: {}), peer PKI all decode",
        directory.nodes.len(),
        roles.consensus_member.is_some()
    ))
}

/// The store revision node `index`'s etcd member has applied (asked on its own socket).
async fn member_revision(bed: &Testbed, index: usize) -> std::result::Result<i64, String> {
    let socket = socket(bed, index);
    let attempt = async {
        let mut client = kv::connect_unix(&socket).await.map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        Ok(status.header().map_or(0, |h| h.revision()))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer".to_string()))
}

fn socket(bed: &Testbed, index: usize) -> PathBuf {
    bed.cluster
        .node(index)
        .dir()
        .join("ephemeral")
        .join("consensus")
        .join(SOCKET)
}

/// Node `index`'s output lines that report ENOSPC.
fn enospc_lines(bed: &Testbed, index: usize) -> Vec<String> {
    bed.cluster
        .node(index)
        .logs()
        .into_iter()
        .filter(|l| ENOSPC_TEXTS.iter().any(|t| l.contains(t)))
        .collect()
}

fn short(line: &str) -> String {
    let line = line.trim();
    if line.len() <= 240 {
        line.to_string()
    } else {
        let mut end = 240;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    }
}

async fn start() -> Result<(Scratch, Testbed)> {
    // Declared before the cluster, so dropped after it: unmounting waits for the nodes to go.
    let mut scratch = Scratch::create()?;
    let net = TestNet::create(3)?;
    let options = ClusterOptions {
        nodes: 3,
        consensus_members: 2,
        leader_ttl: Some(LEADER_TTL),
        restart: RestartPolicy::OnFailure,
        storage_policy: StorageSecurityPolicy::NeedsInsecure,
        state_dir: Some(scratch.root.clone()),
        node_args: vec!["--etcd-quota-backend-bytes".into(), QUOTA.to_string()],
        hosts: net
            .hosts()
            .iter()
            .map(|h| NodeHost {
                address: h.address,
                wrapper: h.wrapper(),
            })
            .collect(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    let bed = Testbed { cluster, net };
    let node = bed.cluster.node(FULL_NODE);
    node.stop().await?;
    scratch.move_onto_tmpfs()?;
    let started = Instant::now();
    node.start()?;
    bed.cluster
        .wait_heartbeat_since(FULL_NODE, started, HEALTH)
        .await?;
    bed.wait_healthy(HEALTH).await?;
    Ok((scratch, bed))
}

/// One run of scenario 6.
pub async fn once() -> Result<RunResult> {
    // The scratch directory goes after the cluster (reverse order of declaration).
    let (scratch, bed) = start().await?;
    let all = [0, 1, 2];
    let leader = bed.wait_leader(&all, HEALTH).await?;
    let writer = if leader == FULL_NODE { 0 } else { leader };
    let mut ledger = Ledger::new(&bed, writer, WRITE_DEADLINE)?;
    for _ in 0..WRITES {
        ledger
            .write()
            .await
            .map_err(check("writes before the fill"))?;
    }
    let mut notes = Vec::new();

    // Phase 1: the full filesystem.
    let boots_before = bed.cluster.node(FULL_NODE).boot();
    let filled = scratch.fill()?;
    let full_at = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut writes = 0u32;
    bed.cluster.node(FULL_NODE).reboot().await.map_err(|e| {
        Error::Check(format!(
            "rebooting node {FULL_NODE} onto the full disk: {e}"
        ))
    })?;
    while full_at.elapsed() < FULL_HOLD {
        slowest = slowest.max(
            ledger
                .write()
                .await
                .map_err(check("write while node 2's disk is full"))?,
        );
        writes += 1;
        tokio::time::sleep(POLL).await;
    }
    let boots_full = bed.cluster.node(FULL_NODE).boot() - boots_before;
    let failures = enospc_lines(&bed, FULL_NODE);
    notes.push(format!(
        "node {FULL_NODE}{}: {:.1} MiB filler filled its tmpfs; {writes} writes through node \
         {leader} meanwhile (slowest {:.2} s); node {FULL_NODE} rebooted onto the full disk, {} \
         boots while full, {} log lines report ENOSPC",
        if leader == FULL_NODE {
            " (it led)"
        } else {
            " (follower)"
        },
        filled as f64 / (1024.0 * 1024.0),
        slowest.as_secs_f64(),
        boots_full,
        failures.len()
    ));
    if let Some(first) = failures.first() {
        notes.push(format!("first ENOSPC line: {}", short(first)));
    }
    scratch.free()?;
    let freed = Instant::now();
    bed.cluster
        .wait_heartbeat_since(FULL_NODE, freed, HEALTH)
        .await?;
    // Its etcd member applies everything the leader's has.
    let target = member_revision(&bed, writer)
        .await
        .map_err(check("the leader's etcd revision"))?;
    let deadline = Instant::now() + HEALTH;
    loop {
        match member_revision(&bed, FULL_NODE).await {
            Ok(r) if r >= target => break,
            seen => {
                if Instant::now() >= deadline {
                    return Err(Error::Check(format!(
                        "node {FULL_NODE}'s etcd did not catch up to revision {target} within \
                         {HEALTH:?} after space returned: {seen:?}"
                    )));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    bed.wait_healthy(HEALTH).await?;
    let recovery = freed.elapsed();
    let boots_after = bed.cluster.node(FULL_NODE).boot() - boots_before;
    notes.push(format!(
        "space freed: node {FULL_NODE} HEALTHY with its etcd at revision >= {target} after \
         {:.1} s ({} boots in all since the fill)",
        recovery.as_secs_f64(),
        boots_after
    ));
    let files = decode_node_files(bed.cluster.node(FULL_NODE).dir())
        .map_err(|e| Error::Check(format!("node {FULL_NODE}'s files after the fill: {e}")))?;
    notes.push(files);
    // A node that failed while full must say why. The reboot ended boot `boots_before`;
    // every later exit is a failure.
    let failed = bed
        .cluster
        .node(FULL_NODE)
        .exits()
        .iter()
        .filter(|(boot, _)| *boot > boots_before)
        .count();
    if (failed > 0 || boots_after > 1) && enospc_lines(&bed, FULL_NODE).is_empty() {
        return Err(Error::Check(format!(
            "node {FULL_NODE} failed {failed} times on the full disk without a log line naming \
             ENOSPC; last lines:\n{}",
            bed.cluster.node(FULL_NODE).tail(30)
        )));
    }
    for _ in 0..WRITES {
        ledger
            .write()
            .await
            .map_err(check("writes after space returned"))?;
    }

    // Phase 2: etcd's NOSPACE alarm.
    let leader = bed.wait_leader(&all, HEALTH).await?;
    let nospace = nospace(&bed, leader, &mut ledger).await?;
    notes.extend(nospace.0);

    let ledger_lost = ledger.lost().await?;
    let records_lost = bed.lost_records().await?;
    notes.push(format!(
        "{} acknowledged writes, {ledger_lost} lost; {records_lost} node records missing or not UP",
        ledger.acked()
    ));
    notes.extend(bed.reboots());
    drop(bed);
    drop(scratch);
    Ok(RunResult {
        recovery: Some(recovery.max(nospace.1)),
        lost: ledger_lost + records_lost,
        notes,
    })
}

/// Phase 2: fills the leader's etcd past its quota; checks what the operator sees and that
/// the alarm clears by itself. Returns notes and the time from the alarm to the first
/// acknowledged write after it.
async fn nospace(
    bed: &Testbed,
    leader: usize,
    ledger: &mut Ledger,
) -> Result<(Vec<String>, Duration)> {
    let mut client = kv::connect_unix(&socket(bed, leader))
        .await
        .map_err(|e| Error::Check(format!("connecting to node {leader}'s etcd: {e}")))?;
    let value = vec![b'f'; FILLER_VALUE];
    let mut puts = 0u32;
    let refused = loop {
        match client.put("chaos/filler", value.clone(), None).await {
            Ok(_) => puts += 1,
            Err(e) => break e,
        }
        if puts > 4 * (QUOTA / FILLER_VALUE as u64) as u32 {
            return Err(Error::Check(format!(
                "etcd accepted {puts} overwrites of {FILLER_VALUE} bytes under a {QUOTA}-byte quota"
            )));
        }
    };
    let alarm = Instant::now();
    if !kv::is_no_space(&refused) {
        return Err(Error::Check(format!(
            "filling etcd failed, but not with NOSPACE: {refused}"
        )));
    }
    // What an operator's write sees now.
    let api = bed
        .cluster
        .management()
        .with_deadline(WRITE_DEADLINE)
        .update_labels(&bed.cluster.id_of(leader)?, &[("chaos-nospace", "1")], &[])
        .await;
    let seen = match api {
        Err(e)
            if e.code() == tonic::Code::ResourceExhausted
                && e.to_string().contains("cluster store is full") =>
        {
            e.to_string()
        }
        Err(e) => {
            return Err(Error::Check(format!(
                "a write under the NOSPACE alarm failed with the wrong error: {e}"
            )));
        }
        Ok(()) => {
            return Err(Error::Check(
                "a write under the NOSPACE alarm was acknowledged (was the alarm cleared \
                 already?)"
                    .to_string(),
            ));
        }
    };
    // The member whose quota check failed raises the alarm (each applies every write
    // against its own database), so any node may be the one to log it.
    let deadline = Instant::now() + HEALTH;
    let (logged_by, line) = loop {
        let found = (0..bed.len()).find_map(|i| {
            bed.cluster
                .node(i)
                .logs()
                .into_iter()
                .find(|l| l.contains("etcd NOSPACE alarm on member"))
                .map(|l| (i, l))
        });
        if let Some(found) = found {
            break found;
        }
        if Instant::now() >= deadline {
            return Err(Error::Check(format!(
                "no node logged the NOSPACE alarm within {HEALTH:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    // Cleared by the node itself: a write goes through again.
    let deadline = Instant::now() + HEALTH;
    loop {
        match ledger.write().await {
            Ok(_) => break,
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(Error::Check(format!(
                        "writes still fail {HEALTH:?} after the NOSPACE alarm: {e}"
                    )));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let cleared = alarm.elapsed();
    // Every member raises an alarm of its own (each applies the writes against its own
    // quota); each node's keeper clears its member's.
    let deadline = Instant::now() + HEALTH;
    loop {
        let alarms = client
            .alarm(
                kv::etcd_client::AlarmAction::Get,
                kv::etcd_client::AlarmType::None,
                None,
            )
            .await
            .map_err(|e| Error::Check(format!("listing alarms: {e}")))?;
        if alarms.alarms().is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Check(format!(
                "alarms still raised {HEALTH:?} after writes resumed: {:?}",
                alarms
                    .alarms()
                    .iter()
                    .map(|a| (a.member_id(), a.alarm()))
                    .collect::<Vec<_>>()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let all_clear = alarm.elapsed();
    let size = client
        .status()
        .await
        .map_err(|e| Error::Check(format!("etcd status: {e}")))?
        .db_size();
    Ok((
        vec![
            format!(
                "NOSPACE: node {leader}'s etcd refused overwrite {} ({} KiB each, quota {} MiB); \
                 the API answered: {}",
                puts + 1,
                FILLER_VALUE / 1024,
                QUOTA / (1024 * 1024),
                short(&seen)
            ),
            format!("node {logged_by} logged: {}", short(&line)),
            format!(
                "NOSPACE cleared by the node (compacted, defragmented to {} KiB, disarmed): \
                 writes acknowledged again {:.1} s after the alarm, every member's alarm \
                 cleared after {:.1} s",
                size / 1024,
                cleared.as_secs_f64(),
                all_clear.as_secs_f64()
            ),
        ],
        cleared,
    ))
}
