//! The curator against hostile callers: each test mounts an attack a node certificate (or no
//! certificate at all) can mount on a leader, and checks that the leader keeps serving, keeps
//! its lease and refuses the attacker with a status naming the limit it hit.
//!
//! Leader responsiveness is measured from a [`Monitor`] on its own OS thread with its own
//! runtime and its own etcd connection, so that whatever the attack does to the test's runtime
//! (which also runs the leader) cannot hide in the measurement. The measuring tests run alone
//! (`.config/nextest.toml`): their baseline and their attack phase must see the same machine.

mod curator_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use curator::election::ElectionStatus;
use curator::testing::TestLeader;
use curator_support::*;
use futures::StreamExt;
use proto::api::{
    ApproveNodeRequest, DeleteNodeRequest, GetClusterInfoRequest, GetNodesRequest,
    UpdateNodeLabelsRequest, delete_node_request,
};
use proto::common::NodeState;
use proto::common::node_labels::Pair;
use proto::curator_api::watch_event::Progress;
use proto::curator_api::{HeartbeatUpdateRequest, JoinNodeRequest, WatchRequest, watch_request};
use rpc::{ClientCredentials, ServerVerification};
use tonic::Code;

/// The filter that took down launched clusters: four nested comprehensions over a
/// 100-element list, 10^8 iterations per node, in 1.2 KB.
fn bomb() -> String {
    let list = format!(
        "[{}]",
        (0..100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    format!("{list}.all(a, {list}.all(b, {list}.all(c, {list}.all(d, true))))")
}

/// The owner's credentials, for clients built on other runtimes than the test's.
async fn owner_credentials(t: &TestLeader) -> ClientCredentials {
    let certificate =
        curator::state::pki::ensure_owner_certificate(t.leader.ns(), &t.owner_key.public_key())
            .await
            .expect("owner certificate");
    ClientCredentials::Authenticated {
        certificate,
        key: t.owner_key.clone(),
    }
}

/// What a [`Monitor`] saw.
#[derive(Debug, Default)]
struct Observed {
    /// Latency of every GetClusterInfo that was answered.
    latencies: Vec<Duration>,
    /// Calls that failed or were not answered within [`Monitor::CALL_TIMEOUT`].
    failures: Vec<String>,
    /// When (after the start) the leader's election key stopped being the one it was.
    lease_lost_after: Option<Duration>,
}

impl Observed {
    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        if v.is_empty() {
            return Duration::MAX;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    fn max(&self) -> Duration {
        self.latencies
            .iter()
            .max()
            .copied()
            .unwrap_or(Duration::MAX)
    }

    fn summary(&self) -> String {
        format!(
            "{} GetClusterInfo answered (p50 {:?}, p99 {:?}, max {:?}), {} failed, lease {}",
            self.latencies.len(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.max(),
            self.failures.len(),
            match self.lease_lost_after {
                Some(d) => format!("LOST after {d:?}"),
                None => "kept".to_string(),
            }
        )
    }
}

/// Calls GetClusterInfo every [`Monitor::PERIOD`] and checks the leader's election key, from a
/// thread and runtime of its own.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Observed>,
}

impl Monitor {
    const PERIOD: Duration = Duration::from_millis(25);
    const CALL_TIMEOUT: Duration = Duration::from_secs(2);

    async fn start(t: &TestLeader) -> Monitor {
        let creds = owner_credentials(t).await;
        let verification = ServerVerification::Cluster {
            ca: t.ca.clone(),
            node_id: Some(t.node_id()),
            crl: None,
        };
        let addr = t.addr.clone();
        let socket = t.consensus.socket_path.clone();
        let (lock_key, lock_rev) = (
            t.leader.leadership.lock_key.clone(),
            t.leader.leadership.lock_rev,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("monitor runtime");
            rt.block_on(async move {
                let config =
                    rpc::client_tls::client_config(&creds, verification).expect("client config");
                let channel = rpc::client_tls::connect_lazy(&addr, config).expect("channel");
                let mut mgmt = management(channel);
                let etcd = kv::connect_unix(&socket).await.expect("monitor etcd");
                let ns = kv::Namespaced::root(etcd)
                    .sub(curator::KEYSPACE)
                    .expect("namespace");
                // One call to set up the connection before measuring.
                mgmt.get_cluster_info(GetClusterInfoRequest {})
                    .await
                    .expect("first GetClusterInfo");
                let _ = ready_tx.send(());
                let start = Instant::now();
                let mut seen = Observed::default();
                while !stopped.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match tokio::time::timeout(
                        Self::CALL_TIMEOUT,
                        mgmt.get_cluster_info(GetClusterInfoRequest {}),
                    )
                    .await
                    {
                        Ok(Ok(_)) => seen.latencies.push(t0.elapsed()),
                        Ok(Err(e)) => {
                            seen.failures
                                .push(format!("{:?}: {}", e.code(), e.message()))
                        }
                        Err(_) => seen.failures.push("timed out".to_string()),
                    }
                    if seen.lease_lost_after.is_none() {
                        let held = match ns.get(lock_key.clone(), None).await {
                            Ok(r) => r
                                .kvs()
                                .first()
                                .is_some_and(|kv| kv.create_revision() == lock_rev),
                            // etcd itself not answering is not the leader's fault.
                            Err(_) => true,
                        };
                        if !held {
                            seen.lease_lost_after = Some(start.elapsed());
                        }
                    }
                    tokio::time::sleep(Self::PERIOD).await;
                }
                seen
            })
        });
        ready_rx.await.expect("monitor started");
        Monitor { stop, thread }
    }

    fn finish(self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("monitor thread")
    }
}

/// Whether the test leader's curator is still leader under the same election key.
fn still_leader(t: &TestLeader) -> bool {
    match &*t.election.borrow() {
        ElectionStatus::Leader(l) => {
            l.lock_key == t.leader.leadership.lock_key && l.lock_rev == t.leader.leadership.lock_rev
        }
        _ => false,
    }
}

/// Point 1. Ten filter bombs from a node certificate (GetNodes needs only
/// READ_CLUSTER_STATUS, which every node holds), plus ten of the most expensive filters the
/// limits admit: the leader keeps answering GetClusterInfo within 100 ms and keeps its lease;
/// the bombs are refused at once, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_bombs_do_not_stall_the_leader() {
    let t = TestLeader::start().await;
    for _ in 0..20 {
        add_node(&t, NodeState::Up, &[1; 32]).await;
    }
    let attacker = key();
    add_node_with_key(&t, &attacker).await;
    let channel = t.node(&attacker).await;

    let idle = Monitor::start(&t).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = idle.finish();
    println!("idle: {}", idle.summary());

    let monitor = Monitor::start(&t).await;
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut mgmt = management(channel.clone());
        let filter = if i % 2 == 0 {
            bomb()
        } else {
            heaviest_admissible()
        };
        calls.push(tokio::spawn(async move {
            let t0 = Instant::now();
            // The callers give up after a while, as they did on the launched cluster.
            let r = tokio::time::timeout(Duration::from_secs(4), async {
                let mut s = mgmt
                    .get_nodes(GetNodesRequest { filter })
                    .await?
                    .into_inner();
                let mut n = 0;
                while let Some(m) = s.next().await {
                    m?;
                    n += 1;
                }
                Ok::<_, tonic::Status>(n)
            })
            .await;
            (i, t0.elapsed(), r)
        }));
    }
    let mut bomb_codes = Vec::new();
    for c in calls {
        let (i, took, r) = c.await.expect("caller task");
        let outcome = match &r {
            Ok(Ok(n)) => format!("OK, {n} nodes"),
            Ok(Err(e)) => format!("{:?}: {}", e.code(), e.message()),
            Err(_) => "caller gave up".to_string(),
        };
        println!(
            "{} call {i}: {outcome} after {took:?}",
            if i % 2 == 0 { "bomb" } else { "heavy" }
        );
        if i % 2 == 0 {
            bomb_codes.push((took, r.ok().map(|r| r.map_err(|e| e.code()))));
        }
    }
    // Let the leader run on for a moment after the callers are gone: on the launched cluster
    // the damage continued long after the callers had given up.
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = monitor.finish();
    println!("under attack: {}", seen.summary());

    assert!(
        seen.failures.is_empty(),
        "failed calls: {:?}",
        seen.failures
    );
    // The damage this guards against was seconds-long stalls and a lost lease. Alone on an
    // idle machine the slowest answer is ~15 ms; a single outlier of a few hundred ms was seen
    // once on a 2-core machine (a disk flush), so the slowest may take up to a second while
    // nearly all stay fast.
    assert!(
        seen.percentile(0.95) < Duration::from_millis(100),
        "GetClusterInfo p95 {:?} under attack",
        seen.percentile(0.95)
    );
    assert!(
        seen.max() < Duration::from_secs(1),
        "GetClusterInfo took up to {:?} under attack",
        seen.max()
    );
    assert!(seen.lease_lost_after.is_none(), "{}", seen.summary());
    assert!(still_leader(&t), "the leader lost its leadership");
    // Refused as a filter over the limits, or (if many arrive at once) as more filters than
    // the leader parses at a time; either way at once, never evaluated.
    for (took, r) in bomb_codes {
        assert!(
            matches!(
                r,
                Some(Err(Code::InvalidArgument)) | Some(Err(Code::ResourceExhausted))
            ),
            "bomb answered {r:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "bomb refused only after {took:?}"
        );
    }
    t.stop().await;
}

/// A filter just inside the limits: two nested comprehensions over a literal list.
fn heaviest_admissible() -> String {
    let list = format!(
        "[{}]",
        (0..100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    format!("{list}.all(a, {list}.all(b, a + b >= 0))")
}

/// A node with `key` written straight into etcd, UP, no roles.
async fn add_node_with_key(t: &TestLeader, node_key: &identity::SigningKey) {
    let record = curator::state::NodeRecord::new(
        &node_key.public_key(),
        proto::curator_private::Node {
            fsm_state: NodeState::Up as i32,
            join_key: key().public_key().as_bytes().to_vec(),
            ..Default::default()
        },
    );
    t.put_node(&record).await;
}

fn delete_request(id: &str) -> DeleteNodeRequest {
    DeleteNodeRequest {
        node: Some(delete_node_request::Node::Id(id.to_string())),
        safety_bypass_has_roles: Some(Default::default()),
        safety_bypass_not_decommissioned: Some(Default::default()),
    }
}

/// Point 3. Deleting a node ends the Watch and Heartbeat streams it holds open with
/// Unauthenticated within a second, without it sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_ends_its_open_streams() {
    let t = TestLeader::start().await;
    let k = key();
    add_node_with_key(&t, &k).await;
    let mut cur = curator(t.node(&k).await);

    let mut watch = cur
        .watch(WatchRequest {
            kind: Some(watch_request::Kind::NodesInCluster(Default::default())),
        })
        .await
        .expect("Watch")
        .into_inner();
    loop {
        let event = next(&mut watch).await.expect("backlog").expect("event");
        if event.progress == Progress::LastBacklogged as i32 {
            break;
        }
    }
    let (beats, rx) = tokio::sync::mpsc::channel::<HeartbeatUpdateRequest>(1);
    beats.send(HeartbeatUpdateRequest {}).await.expect("send");
    let mut replies = cur
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Heartbeat")
        .into_inner();
    next(&mut replies).await.expect("reply").expect("a reply");

    management(t.owner().await)
        .delete_node(delete_request(&id_of(&k)))
        .await
        .expect("DeleteNode");
    let deleted = Instant::now();
    // Heartbeats are checked against the leader's node set, not etcd: DeleteNode takes the
    // node out of it before answering, without waiting for the set's watch.
    assert_eq!(
        t.leader.live.check(&id_of(&k)),
        curator::leader::live::Known::Deleted
    );

    // The Watch may still carry the node's own tombstone; then it must end.
    let watch_end = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(e) => return e.code(),
            }
        }
    })
    .await;
    println!("Watch ended {:?} after {:?}", watch_end, deleted.elapsed());
    assert_eq!(watch_end, Ok(Code::Unauthenticated));

    let beat_end = tokio::time::timeout(Duration::from_secs(1), replies.message()).await;
    println!(
        "Heartbeat ended {:?} after {:?}",
        beat_end
            .as_ref()
            .map(|r| r.as_ref().map_err(|e| e.code()).map(|_| ())),
        deleted.elapsed()
    );
    match beat_end {
        Ok(Err(e)) => assert_eq!(e.code(), Code::Unauthenticated),
        other => panic!("Heartbeat did not end with Unauthenticated: {other:?}"),
    }
    drop(beats);
    t.stop().await;
}

/// Point 3. A curator that has just started refuses a deleted node from the first call it
/// serves: its revocations are loaded before it accepts a connection (a follower here; the
/// authorization layer runs before it would point the caller at the leader). The cluster has
/// deleted many nodes, so loading takes a while: a curator that served before loading would
/// answer the deleted node's first calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_curator_refuses_deleted_nodes_from_its_first_call() {
    const DELETED: usize = 20_000;
    let t = TestLeader::start().await;
    let gone = key();
    let gone_cert = curator::state::pki::ensure_node_certificate(t.leader.ns(), &gone.public_key())
        .await
        .expect("certificate");
    // Its tombstone, among many others, as DeleteNode leaves them.
    let ns = t.leader.ns();
    let mut ids: Vec<String> = (0..DELETED)
        .map(|i| format!("metropolis-{i:032x}"))
        .collect();
    ids.push(id_of(&gone));
    for chunk in ids.chunks(100) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|id| {
                kv::etcd_client::TxnOp::put(
                    format!("{}{id}", curator::state::node::DELETED_PREFIX),
                    Vec::new(),
                    None,
                )
            })
            .collect();
        ns.txn(kv::etcd_client::Txn::new().and_then(ops))
            .await
            .expect("tombstones");
    }

    // A second curator on the same etcd, with its own (empty) revocation set, as on a node
    // whose curator has just started.
    let other = key();
    let other_cert =
        curator::state::pki::ensure_node_certificate(t.leader.ns(), &other.public_key())
            .await
            .expect("certificate");
    let credentials =
        identity::NodeCredentials::new(other.clone(), other_cert, t.ca.clone()).expect("creds");
    let listen = std::net::SocketAddr::new(t.block.addr(2).into(), 7835);
    let config = curator::Config::new(credentials, t.consensus.clone(), listen);
    assert!(config.revocations.is_empty());
    let started = curator::Curator::new(config);
    let sup = supervisor::Supervisor::start(logtree::LogTree::new(), started.runnable());

    let verification = ServerVerification::Cluster {
        ca: t.ca.clone(),
        node_id: Some(id_of(&other)),
        crl: None,
    };
    let creds = ClientCredentials::Authenticated {
        certificate: gone_cert,
        key: gone.clone(),
    };
    let config = rpc::client_tls::client_config(&creds, verification).expect("client config");
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        // A new connection each time: the first call the curator serves is what counts.
        let ch = rpc::client_tls::connect_lazy(&listen.to_string(), config.clone()).expect("ch");
        match management(ch)
            .get_cluster_info(GetClusterInfoRequest {})
            .await
        {
            Ok(_) => break Code::Ok,
            // Not serving yet: the connection is refused or the handshake cannot finish.
            Err(e)
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<tonic::transport::Error>()) => {}
            Err(e) => {
                println!("first answer: {e:?}");
                break e.code();
            }
        }
        assert!(Instant::now() < deadline, "the curator never served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!("first answer of a freshly started curator to a deleted node: {first:?}");
    assert_eq!(first, Code::Unauthenticated);
    let _ = sup.shutdown().await;
    t.stop().await;
}

/// Point 3. WatchRevocations: the CRL (signed by the cluster CA) and every deleted node,
/// then each deletion as it happens. What non-curator nodes feed their servers from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_revocations_reports_the_crl_and_deletions() {
    let t = TestLeader::start().await;
    let (early, late, watcher) = (key(), key(), key());
    for k in [&early, &late, &watcher] {
        add_node_with_key(&t, k).await;
        // Issues the node certificate, which the deletion then revokes.
        t.node(k).await;
    }
    let mut owner = management(t.owner().await);
    owner
        .delete_node(delete_request(&id_of(&early)))
        .await
        .expect("DeleteNode");

    let mut cur = curator(t.node(&watcher).await);
    let mut events = cur
        .watch_revocations(proto::curator_api::WatchRevocationsRequest {})
        .await
        .expect("WatchRevocations")
        .into_inner();
    let first = next(&mut events).await.expect("ok").expect("first event");
    assert_eq!(first.deleted_node_ids, vec![id_of(&early)]);
    let crl = identity::verify::inspect_crl(&first.cluster_crl, &t.ca).expect("a signed CRL");
    assert_eq!(crl.revoked_serials.len(), 1, "the early node's certificate");

    owner
        .delete_node(delete_request(&id_of(&late)))
        .await
        .expect("DeleteNode");
    let mut seen_id = false;
    let mut serials = 0;
    while !(seen_id && serials == 2) {
        let e = next(&mut events).await.expect("ok").expect("an event");
        seen_id |= e.deleted_node_ids.contains(&id_of(&late));
        if !e.cluster_crl.is_empty() {
            serials = identity::verify::inspect_crl(&e.cluster_crl, &t.ca)
                .expect("signed")
                .revoked_serials
                .len();
        }
    }
    // A node deleted for good cannot register again with its key.
    let mut anon = curator(t.ephemeral(&late));
    let refused = anon
        .register_node(proto::curator_api::RegisterNodeRequest {
            register_ticket: register_ticket(&t).await,
            join_key: key().public_key().as_bytes().to_vec(),
            have_local_tpm: false,
            labels: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("was deleted"), "{refused:?}");
    t.stop().await;
}

/// Point 5. 500 concurrent JoinNode calls with random keys (no credentials needed) leave
/// ApproveNode's p99 within 2× its idle value.
///
/// Idle and attacked approvals are taken in alternating rounds (the attackers pause between
/// them), so that both see the same background load of a shared machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_does_not_delay_approvals() {
    const ATTACKERS: usize = 500;
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 5;
    let t = TestLeader::start().await;
    let mut waiting = Vec::new();
    for _ in 0..2 * ROUNDS * PER_ROUND {
        let (k, _) = add_node(&t, NodeState::New, &[]).await;
        waiting.push(k);
    }
    let mut mgmt = management(t.owner().await);
    mgmt.get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("warm up");

    async fn approve_all(
        mgmt: &mut proto::api::management_client::ManagementClient<tonic::transport::Channel>,
        keys: &[identity::SigningKey],
        took: &mut Vec<Duration>,
    ) {
        for k in keys {
            let t0 = Instant::now();
            mgmt.approve_node(ApproveNodeRequest {
                pubkey: k.public_key().as_bytes().to_vec(),
            })
            .await
            .expect("ApproveNode");
            took.push(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let percentile = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[((v.len() * p).div_ceil(100)).clamp(1, v.len()) - 1]
    };

    // Every attacker has its own connection (its key is in its TLS certificate), made before
    // the measurement starts, and calls JoinNode again as soon as it is answered, unless
    // paused. They run on a runtime of their own, as callers on other machines would: what is
    // measured is what they cost the leader, not the test's scheduling.
    let stop = Arc::new(AtomicBool::new(false));
    let (pause, paused) = tokio::sync::watch::channel(false);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let attack = {
        let (stop, calls) = (stop.clone(), calls.clone());
        let verification = ServerVerification::Cluster {
            ca: t.ca.clone(),
            node_id: Some(t.node_id()),
            crl: None,
        };
        let addr = t.addr.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("attacker runtime");
            rt.block_on(async move {
                let mut attackers = Vec::new();
                for _ in 0..ATTACKERS {
                    let config = rpc::client_tls::client_config(
                        &ClientCredentials::Ephemeral(key()),
                        verification.clone(),
                    )
                    .expect("client config");
                    let mut cur =
                        curator(rpc::client_tls::connect_lazy(&addr, config).expect("channel"));
                    let (stop, mut paused, calls, up) =
                        (stop.clone(), paused.clone(), calls.clone(), up_tx.clone());
                    attackers.push(tokio::spawn(async move {
                        let mut first = true;
                        while !stop.load(Ordering::Relaxed) {
                            if !first && *paused.borrow_and_update() {
                                let _ = paused.changed().await;
                                continue;
                            }
                            let r = cur
                                .join_node(JoinNodeRequest {
                                    using_sealed_configuration: false,
                                })
                                .await;
                            if first {
                                let _ = up.send(());
                                first = false;
                            }
                            calls.fetch_add(1, Ordering::Relaxed);
                            assert_eq!(code(r), Code::NotFound);
                        }
                    }));
                }
                for a in attackers {
                    a.await.expect("attacker");
                }
            })
        })
    };
    for _ in 0..ATTACKERS {
        tokio::task::block_in_place(|| up_rx.recv()).expect("attacker connected");
    }

    let (mut idle, mut storm) = (Vec::new(), Vec::new());
    let mut storm_calls = 0;
    let mut storm_time = Duration::ZERO;
    for (round, keys) in waiting.chunks(2 * PER_ROUND).enumerate() {
        assert!(round < ROUNDS);
        // Paused: the calls in flight drain (at most a few seconds' admission wait).
        pause.send_replace(true);
        let drained = Instant::now();
        loop {
            let before = calls.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            if calls.load(Ordering::Relaxed) == before {
                break;
            }
            assert!(
                drained.elapsed() < Duration::from_secs(30),
                "attack never drains"
            );
        }
        approve_all(&mut mgmt, &keys[..PER_ROUND], &mut idle).await;
        // Resumed: all attackers send at once. Measure once the leader has worked through
        // that burst (as many answers as attackers), in the steady state of the attack.
        let resumed = calls.load(Ordering::Relaxed);
        pause.send_replace(false);
        while calls.load(Ordering::Relaxed) < resumed + ATTACKERS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (before, started) = (calls.load(Ordering::Relaxed), Instant::now());
        approve_all(&mut mgmt, &keys[PER_ROUND..], &mut storm).await;
        storm_calls += calls.load(Ordering::Relaxed) - before;
        storm_time += started.elapsed();
    }
    stop.store(true, Ordering::Relaxed);
    pause.send_replace(false);
    tokio::task::block_in_place(|| attack.join()).expect("attackers");
    let (idle_p50, storm_p50) = (percentile(&mut idle, 50), percentile(&mut storm, 50));
    let (idle_p99, storm_p99) = (percentile(&mut idle, 99), percentile(&mut storm, 99));
    println!(
        "ApproveNode p99: idle {idle_p99:?}, under {ATTACKERS} looping JoinNode callers \
         {storm_p99:?} ({:.2}×); p50: idle {idle_p50:?}, attacked {storm_p50:?} ({:.2}×); \
         {storm_calls} JoinNode calls answered in {storm_time:?} of attack",
        storm_p99.as_secs_f64() / idle_p99.as_secs_f64(),
        storm_p50.as_secs_f64() / idle_p50.as_secs_f64(),
    );
    // The 2× bound, with slack: on two cores shared with other builds a single etcd fsync
    // or scheduling stall of a few hundred milliseconds decides a p99 of 40 samples, in
    // either phase. Without the fix every approval queues behind hundreds of join-key
    // lookups: seconds at p99 and at the median alike.
    assert!(
        storm_p99 <= 2 * idle_p99 + Duration::from_millis(250),
        "ApproveNode p99 {storm_p99:?} under attack vs {idle_p99:?} idle"
    );
    assert!(
        storm_p50 <= 2 * idle_p50 + Duration::from_millis(20),
        "ApproveNode p50 {storm_p50:?} under attack vs {idle_p50:?} idle"
    );
    assert!(storm_calls > 0, "the attack did not run");
    t.stop().await;
}

/// The label set used for churn: 128 labels with long prefixed keys and long values, about
/// 40 KB per record; `round` changes every value.
fn big_labels(round: usize) -> Vec<Pair> {
    let domain = (0..3)
        .map(|i| format!("{}{i}", "d".repeat(60)))
        .collect::<Vec<_>>()
        .join(".");
    (0..labels::MAX_LABELS_PER_NODE)
        .map(|i| Pair {
            key: format!("{domain}/k{i:03}{}", "x".repeat(56)),
            value: format!("v{round:06}{}", "y".repeat(56)),
        })
        .collect()
}

/// Point 6. Twenty Watch streams whose client never reads, then 6 MiB of label changes: the
/// leader keeps its lease and keeps serving, and the unread watches are cut off instead of
/// buffering everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_watches_cannot_stall_the_leader() {
    let t = TestLeader::start().await;
    // Two watching nodes: one caller may hold only so many streams (see the next test).
    let watchers = [key(), key()];
    for k in &watchers {
        add_node_with_key(&t, k).await;
    }
    let target = key();
    add_node_with_key(&t, &target).await;

    // Each stream on its own connection, so that every one of them can hold its full share
    // of windows on the way.
    let mut watches = Vec::new();
    for i in 0..20 {
        let mut cur = curator(t.node(&watchers[i % 2]).await);
        let w = cur
            .watch(WatchRequest {
                kind: Some(watch_request::Kind::NodesInCluster(Default::default())),
            })
            .await
            .expect("Watch")
            .into_inner();
        watches.push(w);
    }

    let monitor = Monitor::start(&t).await;
    let mut mgmt = management(t.owner().await);
    let mut written = 0usize;
    let mut round = 0;
    let churn_start = Instant::now();
    let mut churn_error = None;
    while written < 6 << 20 {
        let upsert = big_labels(round);
        let bytes: usize = upsert.iter().map(|p| p.key.len() + p.value.len()).sum();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            mgmt.update_node_labels(UpdateNodeLabelsRequest {
                node: Some(proto::api::update_node_labels_request::Node::Id(id_of(
                    &target,
                ))),
                upsert,
                delete: vec![],
            }),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                churn_error = Some(format!("{:?}: {}", e.code(), e.message()));
                break;
            }
            Err(_) => {
                churn_error = Some("UpdateNodeLabels timed out".to_string());
                break;
            }
        }
        written += bytes;
        round += 1;
    }
    let churn_time = churn_start.elapsed();
    // A moment more for the watches to fill up and be cut.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = monitor.finish();
    println!(
        "churn: {round} updates, {} KiB in {churn_time:?} ({churn_error:?}); {}",
        written >> 10,
        seen.summary()
    );
    assert_eq!(churn_error, None);
    assert!(seen.lease_lost_after.is_none(), "{}", seen.summary());
    assert!(still_leader(&t), "the leader lost its leadership");
    assert!(
        seen.failures.is_empty(),
        "failed calls: {:?}",
        seen.failures
    );

    // Reading now: each watch ends with an error instead of replaying all 6 MiB.
    let mut ends = Vec::new();
    for mut w in watches {
        let end = tokio::time::timeout(WAIT, async {
            let mut events = 0;
            loop {
                match w.message().await {
                    Ok(Some(_)) => events += 1,
                    Ok(None) => return (events, Code::Ok),
                    Err(e) => return (events, e.code()),
                }
            }
        })
        .await
        .expect("an unread watch neither ended nor delivered everything");
        ends.push(end);
    }
    println!("unread watches ended after (events, code): {ends:?}");
    for (events, code) in ends {
        assert!(
            matches!(code, Code::ResourceExhausted | Code::Unavailable),
            "a watch ended with {code:?} after {events} events"
        );
        assert!(events < round, "a watch delivered all {events} changes");
    }
    t.stop().await;
}

/// One node certificate cannot open streams without bound: past the per-caller limit a Watch
/// is refused with ResourceExhausted, and closing one makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_hold_unbounded_watches() {
    let t = TestLeader::start().await;
    let k = key();
    add_node_with_key(&t, &k).await;
    let mut cur = curator(t.node(&k).await);
    let request = || WatchRequest {
        kind: Some(watch_request::Kind::NodesInCluster(Default::default())),
    };
    let mut held = Vec::new();
    for _ in 0..curator::leader::streams::MAX_STREAMS_PER_CALLER {
        held.push(cur.watch(request()).await.expect("Watch").into_inner());
    }
    let refused = cur.watch(request()).await.expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("limit"), "{refused:?}");
    // Another node is not affected.
    let other = key();
    add_node_with_key(&t, &other).await;
    curator(t.node(&other).await)
        .watch(request())
        .await
        .expect("another caller's Watch");
    // A closed stream gives its slot back (the server notices the reset shortly after).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cur.watch(request()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("the slot was not given back: {s:?}"),
        }
    }
    t.stop().await;
}

/// Point 7. Deleting a node whose (self-reported) address is a voter's removes no etcd member:
/// members are found by node ID only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_claiming_a_voters_address_keeps_the_voter() {
    let t = TestLeader::start().await;
    // A second voter at .2.
    let voter = key();
    let voter_ip: std::net::IpAddr = t.block.addr(2).into();
    let join = t
        .consensus
        .add_node(&voter.public_key(), voter_ip)
        .await
        .expect("add voter");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = consensus::Config::new(
        dir.path().join("etcd"),
        dir.path().join("eph"),
        voter.clone(),
        voter_ip,
    );
    config.join_cluster = Some(join);
    // Members on one loopback connect to each other from 127.0.0.1.
    config.peer_client_san_check = false;
    let service = consensus::Service::new(config);
    let sup = supervisor::Supervisor::start(logtree::LogTree::new(), service.runnable());
    tokio::time::timeout(Duration::from_secs(90), service.wait_running())
        .await
        .expect("second voter running");
    let voters = |list: &kv::etcd_client::MemberListResponse| {
        list.members()
            .iter()
            .filter(|m| !m.is_learner())
            .map(|m| m.name().to_string())
            .collect::<Vec<_>>()
    };
    let before = t.consensus.client().member_list().await.expect("members");
    assert_eq!(voters(&before).len(), 2, "{:?}", voters(&before));
    // A fresh voter may still be catching up, and with two voters every write waits for it:
    // wait until the leader writes again before going on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut owner = management(t.owner().await);
    while let Err(e) = owner
        .get_register_ticket(proto::api::GetRegisterTicketRequest {})
        .await
    {
        assert!(
            Instant::now() < deadline,
            "the leader does not recover: {e:?}"
        );
        assert!(
            still_leader(&t),
            "the leader lost its lease while etcd grew"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A node (no roles, never a member) that reports the voter's address.
    let liar = key();
    add_node_with_key(&t, &liar).await;
    modify(&t, &id_of(&liar), |r| {
        r.node.status = Some(status(&voter_ip.to_string()));
    })
    .await;
    owner
        .delete_node(delete_request(&id_of(&liar)))
        .await
        .expect("DeleteNode");

    let after = t.consensus.client().member_list().await.expect("members");
    println!(
        "voters before {:?}, after {:?}",
        voters(&before),
        voters(&after)
    );
    assert_eq!(voters(&after), voters(&before), "a voter was removed");
    let _ = sup.shutdown().await;
    t.stop().await;
}
