//! The election against a real etcd member: a leader whose connection to etcd breaks for
//! less than its lease TTL keeps its leadership (its lease is still live, so nobody else may
//! lead), and a leader that cannot renew its lease steps down no later than the lease expires.
//!
//! The leader's election talks to etcd through a unix-socket proxy the test can cut: every
//! forwarded connection is torn down and new ones are refused while it is cut.

use std::path::{Path, PathBuf};
use std::time::Duration;

use curator::election::{self, ElectionStatus};
use identity::SigningKey;
use kv::Namespaced;
use logtree::LogTree;
use supervisor::Supervisor;
use tempfile::TempDir;
use test_support::LoopbackBlock;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The lease TTL of both candidates.
const TTL: Duration = Duration::from_secs(3);

/// A unix-socket proxy in front of etcd's client socket.
struct Proxy {
    path: PathBuf,
    cut: watch::Sender<bool>,
}

impl Proxy {
    fn start(dir: &Path, upstream: PathBuf) -> Proxy {
        let path = dir.join("proxy.sock");
        let listener = UnixListener::bind(&path).expect("bind proxy");
        let (cut, _) = watch::channel(false);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if *cuts.borrow() {
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = UnixStream::connect(&upstream).await else {
                        return;
                    };
                    // Dropping both ends is the cut: the client sees its connection reset.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { path, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// One etcd member and the curator keyspace on it.
struct Etcd {
    status: consensus::Status,
    _supervisor: Supervisor,
    dir: TempDir,
    _block: LoopbackBlock,
}

impl Etcd {
    async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let block = LoopbackBlock::allocate();
        let config = consensus::Config::new(
            dir.path().join("etcd"),
            dir.path().join("eph"),
            SigningKey::generate().expect("key"),
            block.addr(1).into(),
        );
        let service = consensus::Service::new(config);
        let supervisor = Supervisor::start(LogTree::new(), service.runnable());
        let status = tokio::time::timeout(START_TIMEOUT, service.wait_running())
            .await
            .expect("etcd did not start");
        Etcd {
            status,
            _supervisor: supervisor,
            dir,
            _block: block,
        }
    }

    /// The curator keyspace on a connection of its own through `socket`.
    async fn keyspace_via(socket: &Path) -> Namespaced {
        let client = kv::connect_unix(socket).await.expect("connect");
        Namespaced::root(client)
            .sub(curator::KEYSPACE)
            .expect("keyspace")
    }
}

/// One candidate's election, run until the test ends.
struct Candidate {
    status: watch::Receiver<ElectionStatus>,
    _cancel: tokio_util::sync::DropGuard,
}

impl Candidate {
    fn start(ns: Namespaced, node_id: &str) -> Candidate {
        let (tx, status) = watch::channel(ElectionStatus::Unknown);
        let cancel = CancellationToken::new();
        tokio::spawn(election::run(
            ns,
            node_id.to_string(),
            TTL,
            tx,
            cancel.clone(),
        ));
        Candidate {
            status,
            _cancel: cancel.drop_guard(),
        }
    }

    fn leads(&self) -> bool {
        matches!(*self.status.borrow(), ElectionStatus::Leader(_))
    }

    fn follows(&self, leader: &str) -> bool {
        matches!(&*self.status.borrow(), ElectionStatus::Follower { leader_id } if leader_id == leader)
    }

    /// Waits until `condition` holds for this candidate's status.
    async fn wait(&mut self, what: &str, condition: impl Fn(&ElectionStatus) -> bool) {
        tokio::time::timeout(START_TIMEOUT, self.status.wait_for(condition))
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {START_TIMEOUT:?}"))
            .expect("election ended");
    }

    /// Every status this candidate publishes from now on, with the time since `since`.
    fn record(&self, since: Instant) -> tokio::task::JoinHandle<Vec<(Duration, ElectionStatus)>> {
        let mut status = self.status.clone();
        status.mark_unchanged();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let end = since + TTL * 3;
            while let Ok(Ok(())) = tokio::time::timeout_at(end, status.changed()).await {
                seen.push((since.elapsed(), status.borrow_and_update().clone()));
            }
            seen
        })
    }
}

/// The leader first, through the proxy, and a second candidate directly, following it.
async fn leader_and_follower(etcd: &Etcd, proxy: &Proxy) -> (Candidate, Candidate) {
    let mut a = Candidate::start(Etcd::keyspace_via(&proxy.path).await, "node-a");
    a.wait("a leads", |s| matches!(s, ElectionStatus::Leader(_)))
        .await;
    let mut b = Candidate::start(Etcd::keyspace_via(&etcd.status.socket_path).await, "node-b");
    b.wait(
        "b follows a",
        |s| matches!(s, ElectionStatus::Follower { leader_id } if leader_id == "node-a"),
    )
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_for_less_than_its_ttl_keeps_leading() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.dir.path(), etcd.status.socket_path.clone());
    let (a, b) = leader_and_follower(&etcd, &proxy).await;

    let cut = Instant::now();
    let a_seen = a.record(cut);
    let b_seen = b.record(cut);
    proxy.set_cut(true);
    // The fault's duration (a third of the TTL), not a wait for a condition.
    tokio::time::sleep(TTL / 3).await;
    proxy.set_cut(false);

    let (a_seen, b_seen) = (a_seen.await.expect("a"), b_seen.await.expect("b"));
    assert!(
        a_seen.is_empty(),
        "the leader's lease was live throughout, yet its status changed: {a_seen:?}"
    );
    assert!(
        b_seen.is_empty(),
        "the follower's status changed while the leader's lease was live: {b_seen:?}"
    );
    assert!(a.leads() && b.follows("node-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_by_its_lease_expiry() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.dir.path(), etcd.status.socket_path.clone());
    let (mut a, mut b) = leader_and_follower(&etcd, &proxy).await;

    let cut = Instant::now();
    proxy.set_cut(true);
    a.wait("a steps down", |s| !matches!(s, ElectionStatus::Leader(_)))
        .await;
    let stepped_down = cut.elapsed();
    // The last renewal was at most a third of the TTL before the cut.
    assert!(
        stepped_down <= TTL + Duration::from_millis(500),
        "the leader stepped down {stepped_down:?} after its last chance to renew (TTL {TTL:?})"
    );
    b.wait("b leads", |s| matches!(s, ElectionStatus::Leader(_)))
        .await;
    // Healed, the old leader follows the new one.
    proxy.set_cut(false);
    a.wait(
        "a follows b",
        |s| matches!(s, ElectionStatus::Follower { leader_id } if leader_id == "node-b"),
    )
    .await;
}
