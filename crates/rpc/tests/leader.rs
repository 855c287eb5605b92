//! The leader-following channel against real TLS servers on 127.0.0.1.
//!
//! Each test server is a small curator look-alike: `CuratorLocal.GetCurrentLeader` answers
//! from a shared "who is leader" value like upstream's listener (the leader streams itself once
//! and ends the stream when it loses leadership; a follower streams the leader's record on
//! every change and ends the stream when it becomes leader itself), and
//! `Management.GetClusterInfo` tells which node answered (its node ID in `ca_certificate`) or,
//! on a follower, Unavailable "not the leader". Every server runs in its own Tokio runtime so a
//! test can kill it outright (all its connections die with the runtime).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use identity::{SigningKey, templates};
use proto::api::management_client::ManagementClient;
use proto::api::management_server::{Management, ManagementServer};
use proto::api::{GetClusterInfoRequest, GetClusterInfoResponse};
use proto::curator_api::curator_local_server::{CuratorLocal, CuratorLocalServer};
use proto::curator_api::{GetCurrentLeaderRequest, GetCurrentLeaderResponse};
use rpc::{
    ClientCredentials, LeaderChannel, LeaderOptions, RetryPolicy, RevocationSet, ServerSecurity,
};
use test_support::eventually;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(15);

/// Who the test cluster's leader is and what address it reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LeaderRecord {
    node_id: String,
    host: String,
    port: i32,
}

/// The services of one test server.
#[derive(Clone)]
struct Curator {
    node_id: String,
    leader: watch::Receiver<LeaderRecord>,
    /// How many GetClusterInfo calls the leader fails with "lost leadership" before answering.
    fail_next: Arc<AtomicUsize>,
    /// GetClusterInfo calls received.
    calls: Arc<AtomicUsize>,
    /// GetCurrentLeader streams open right now.
    streams: Arc<AtomicUsize>,
}

/// Counts an open stream for as long as it lives.
struct OpenStream(Arc<AtomicUsize>);
impl OpenStream {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}
impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Curator {
    fn answer(&self, record: &LeaderRecord) -> GetCurrentLeaderResponse {
        GetCurrentLeaderResponse {
            leader_node_id: record.node_id.clone(),
            leader_host: record.host.clone(),
            leader_port: record.port,
            this_node_id: self.node_id.clone(),
        }
    }

    async fn stream_leader(self, tx: mpsc::Sender<Result<GetCurrentLeaderResponse, Status>>) {
        let _open = OpenStream::new(&self.streams);
        let mut leader = self.leader.clone();
        let was_leader = leader.borrow().node_id == self.node_id;
        loop {
            let record = leader.borrow_and_update().clone();
            let is_leader = record.node_id == self.node_id;
            let end = match (was_leader, is_leader) {
                (true, false) => Some(Status::unavailable("lost leadership")),
                (false, true) => Some(Status::unavailable(
                    "this node became leader meanwhile, try again",
                )),
                _ => None,
            };
            if let Some(status) = end {
                let _ = tx.send(Err(status)).await;
                return;
            }
            if tx.send(Ok(self.answer(&record))).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[tonic::async_trait]
impl CuratorLocal for Curator {
    async fn get_current_leader(
        &self,
        _request: Request<GetCurrentLeaderRequest>,
    ) -> Result<Response<BoxStream<GetCurrentLeaderResponse>>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().stream_leader(tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Management for Curator {
    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let record = self.leader.borrow().clone();
        if record.node_id != self.node_id {
            return Err(Status::unavailable(format!(
                "not the leader; the leader is {} at {}:{}",
                record.node_id, record.host, record.port
            )));
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Status::unavailable("lost leadership"));
        }
        Ok(Response::new(GetClusterInfoResponse {
            ca_certificate: self.node_id.as_bytes().to_vec(),
            ..Default::default()
        }))
    }
}

/// A running test server; killed (all connections dropped) on [`TestServer::kill`] or drop.
struct TestServer {
    key: SigningKey,
    node_id: String,
    addr: String,
    curator: Curator,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Serves as node `key` with `certificate`, accepting clients of `ca`.
    fn start(
        key: &SigningKey,
        certificate: Vec<u8>,
        ca: Vec<u8>,
        leader: watch::Receiver<LeaderRecord>,
    ) -> Self {
        let node_id = identity::node_id(&key.public_key());
        let curator = Curator {
            node_id: node_id.clone(),
            leader,
            fail_next: Arc::new(AtomicUsize::new(0)),
            calls: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(AtomicUsize::new(0)),
        };
        let tls = rpc::server_tls::server_config_for(certificate, &key.to_pkcs8_der(), ca.clone())
            .expect("server tls");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        let services = curator.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let router = rpc::serve::server_builder(ServerSecurity::new(ca, RevocationSet::new()))
                .add_service(CuratorLocalServer::new(services.clone()))
                .add_service(ManagementServer::new(services));
            let _ = router
                .serve_with_incoming(rpc::serve::tls_incoming(listener, tls))
                .await;
        });
        Self {
            key: key.clone(),
            node_id,
            addr,
            curator,
            runtime: Some(runtime),
        }
    }

    /// The record this node would publish as leader, optionally without its address.
    fn record(&self, with_address: bool) -> LeaderRecord {
        let (host, port) = self.addr.rsplit_once(':').expect("host:port");
        LeaderRecord {
            node_id: self.node_id.clone(),
            host: if with_address {
                host.to_string()
            } else {
                String::new()
            },
            port: if with_address {
                port.parse().expect("port")
            } else {
                0
            },
        }
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster CA, an owner credential and `n` curator look-alikes sharing one leader record.
struct TestCluster {
    ca_key: SigningKey,
    ca: Vec<u8>,
    owner: ClientCredentials,
    leader: watch::Sender<LeaderRecord>,
    nodes: Vec<TestServer>,
}

impl TestCluster {
    fn new(n: usize) -> Self {
        let ca_key = SigningKey::generate().expect("keygen");
        let ca = templates::cluster_ca(&ca_key).expect("ca");
        let owner_key = SigningKey::generate().expect("keygen");
        let owner_cert =
            templates::user_cert(&ca_key, &ca, &owner_key.public_key(), "owner").expect("owner");
        let (leader, _) = watch::channel(LeaderRecord::default());
        let mut cluster = Self {
            ca_key,
            ca,
            owner: ClientCredentials::Authenticated {
                certificate: owner_cert,
                key: owner_key,
            },
            leader,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            let key = SigningKey::generate().expect("keygen");
            let node = cluster.start_node(&key, &cluster.ca_key, &cluster.ca.clone());
            cluster.nodes.push(node);
        }
        cluster.elect(0);
        cluster
    }

    /// A server for `key` with a node certificate issued by `issuer_key`/`issuer_ca`, serving
    /// this cluster's leader record.
    fn start_node(
        &self,
        key: &SigningKey,
        issuer_key: &SigningKey,
        issuer_ca: &[u8],
    ) -> TestServer {
        let certificate =
            templates::node_cert(issuer_key, issuer_ca, &key.public_key()).expect("node cert");
        TestServer::start(
            key,
            certificate,
            issuer_ca.to_vec(),
            self.leader.subscribe(),
        )
    }

    fn elect(&self, i: usize) {
        self.leader.send_replace(self.nodes[i].record(true));
    }

    fn id(&self, i: usize) -> String {
        self.nodes[i].node_id.clone()
    }

    fn client(&self, seeds: &[usize], options: LeaderOptions) -> LeaderChannel {
        let seeds = seeds.iter().map(|&i| self.nodes[i].addr.clone()).collect();
        LeaderChannel::new(seeds, self.owner.clone(), self.ca.clone(), options).expect("client")
    }
}

/// Up to `n` attempts, within the default deadline.
fn up_to(n: usize) -> RetryPolicy {
    RetryPolicy::default().with_attempts(Some(n))
}

fn short_wait() -> LeaderOptions {
    LeaderOptions {
        wait_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Which node answered GetClusterInfo on this channel.
async fn answered_by(channel: Channel) -> Result<String, Status> {
    let response = ManagementClient::new(channel)
        .get_cluster_info(GetClusterInfoRequest {})
        .await?;
    Ok(String::from_utf8_lossy(&response.into_inner().ca_certificate).into_owned())
}

/// Calls through `lc` until `want` answers; between tries waits for a leader change (bounded),
/// so there is no fixed sleep. Panics after [`SOON`].
async fn wait_answered_by(lc: &LeaderChannel, want: &str) {
    let deadline = Instant::now() + SOON;
    let mut leader = lc.watch();
    loop {
        leader.borrow_and_update();
        let last = match lc.channel().await {
            Ok(channel) => match answered_by(channel).await {
                Ok(got) if got == want => return,
                Ok(got) => format!("answered by {got}"),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            },
            Err(status) => status.message().to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "calls never reached {want}; last: {last}; leader: {:?}",
            lc.current_leader()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), leader.changed()).await;
    }
}

#[tokio::test]
async fn seeded_with_a_follower_reaches_the_leader() {
    let cluster = TestCluster::new(2);
    let lc = cluster.client(&[1], LeaderOptions::default());
    let channel = lc.channel().await.expect("leader channel");
    assert_eq!(answered_by(channel).await.expect("call"), cluster.id(0));
    let leader = lc.current_leader().expect("leader known");
    assert_eq!(leader.node_id, cluster.id(0));
    assert_eq!(leader.endpoint, cluster.nodes[0].addr);
    // The leader's address was learned from the follower's answer.
    assert_eq!(
        lc.endpoints(),
        vec![cluster.nodes[1].addr.clone(), cluster.nodes[0].addr.clone()]
    );
}

#[tokio::test]
async fn follows_leadership_moves() {
    let cluster = TestCluster::new(3);
    let lc = cluster.client(&[1], LeaderOptions::default());
    wait_answered_by(&lc, &cluster.id(0)).await;
    cluster.elect(2);
    wait_answered_by(&lc, &cluster.id(2)).await;
    assert_eq!(lc.current_leader().expect("leader").node_id, cluster.id(2));
    // And back to a former leader.
    cluster.elect(0);
    wait_answered_by(&lc, &cluster.id(0)).await;
}

#[tokio::test]
async fn discovery_survives_the_death_of_the_seed() {
    let mut cluster = TestCluster::new(3);
    cluster.elect(1);
    let lc = cluster.client(&[0], LeaderOptions::default());
    wait_answered_by(&lc, &cluster.id(1)).await;
    cluster.nodes[0].kill();
    // Node 2 becomes leader: only node 1, learned from an answer, can tell the client now.
    cluster.elect(2);
    wait_answered_by(&lc, &cluster.id(2)).await;
    let endpoints = lc.endpoints();
    for i in 0..3 {
        assert!(endpoints.contains(&cluster.nodes[i].addr), "{endpoints:?}");
    }
}

#[tokio::test]
async fn a_server_of_another_ca_is_never_used() {
    let cluster = TestCluster::new(2);
    let foreign_key = SigningKey::generate().expect("keygen");
    let foreign_ca = templates::cluster_ca(&foreign_key).expect("foreign ca");

    // As the only seed: discovery refuses to talk to it at all.
    let impostor_key = SigningKey::generate().expect("keygen");
    let impostor = cluster.start_node(&impostor_key, &foreign_key, &foreign_ca);
    let lc = LeaderChannel::new(
        vec![impostor.addr.clone()],
        cluster.owner.clone(),
        cluster.ca.clone(),
        short_wait(),
    )
    .expect("client");
    let started = Instant::now();
    let status = lc
        .channel()
        .await
        .expect_err("no leader from a foreign server");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        status.message().contains(&impostor.addr),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("not a node of the expected cluster"),
        "{}",
        status.message()
    );
    assert!(lc.current_leader().is_none());

    // As the claimed leader: a genuine follower names node 0, but at an address where a server
    // with a foreign certificate for node 0's very key listens.
    let twin = cluster.start_node(&cluster.nodes[0].key, &foreign_key, &foreign_ca);
    assert_eq!(twin.node_id, cluster.id(0));
    let mut redirected = cluster.nodes[0].record(true);
    (redirected.host, redirected.port) = (twin.record(true).host, twin.record(true).port);
    cluster.leader.send_replace(redirected.clone());
    let lc = cluster.client(&[1], short_wait());
    let status = lc.channel().await.expect_err("foreign twin refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains(&twin.addr),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("not a node of the expected cluster"),
        "{}",
        status.message()
    );
    assert!(lc.current_leader().is_none());

    // Same with a genuine node of the cluster that is not the named leader: the ID pin refuses.
    redirected.port = cluster.nodes[1].record(true).port;
    cluster.leader.send_replace(redirected);
    let lc = cluster.client(&[1], short_wait());
    let status = lc.channel().await.expect_err("wrong node refused");
    assert_eq!(status.code(), Code::Unavailable);
    let pinned = format!("expected {}", cluster.id(0));
    assert!(status.message().contains(&pinned), "{}", status.message());
    assert!(lc.current_leader().is_none());
}

#[tokio::test]
async fn a_leader_without_address_is_reached_through_the_override() {
    let cluster = TestCluster::new(2);
    cluster.leader.send_replace(cluster.nodes[0].record(false));
    let options = LeaderOptions {
        local_overrides: HashMap::from([(cluster.id(0), cluster.nodes[0].addr.clone())]),
        ..short_wait()
    };
    let lc = cluster.client(&[0], options);
    let channel = lc.channel().await.expect("leader through override");
    assert_eq!(answered_by(channel).await.expect("call"), cluster.id(0));
    assert_eq!(
        lc.current_leader().expect("leader").endpoint,
        cluster.nodes[0].addr
    );

    // Without the override there is no way to reach it.
    let lc = cluster.client(&[0, 1], short_wait());
    let status = lc.channel().await.expect_err("no address");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("reported no address"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn calls_survive_an_unavailable_answer() {
    let cluster = TestCluster::new(3);
    let lc = cluster.client(&[1], LeaderOptions::default());
    wait_answered_by(&lc, &cluster.id(0)).await;

    // The leader itself answers "lost leadership" once.
    cluster.nodes[0]
        .curator
        .fail_next
        .store(1, Ordering::SeqCst);
    let before = cluster.nodes[0].curator.calls.load(Ordering::SeqCst);
    let got = lc.call(&up_to(3), answered_by).await.expect("retried");
    assert_eq!(got, cluster.id(0));
    assert_eq!(
        cluster.nodes[0].curator.calls.load(Ordering::SeqCst) - before,
        2
    );

    // With a single attempt the Unavailable reaches the caller.
    cluster.nodes[0]
        .curator
        .fail_next
        .store(1, Ordering::SeqCst);
    let status = lc.call(&up_to(1), answered_by).await.expect_err("no retry");
    assert_eq!(status.code(), Code::Unavailable);

    // Leadership moves while the first attempt is under way: it reaches a follower, which
    // answers "not the leader", and a later attempt reaches the new leader.
    let attempts = AtomicUsize::new(0);
    let got = lc
        .call(&up_to(20), |channel| {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                cluster.elect(2);
            }
            answered_by(channel)
        })
        .await
        .expect("reached the new leader");
    assert_eq!(got, cluster.id(2));
    assert!(attempts.load(Ordering::SeqCst) >= 2);

    // Upstream followers answer Unimplemented: retried only once a new leader is known.
    let attempts = AtomicUsize::new(0);
    let got = lc
        .call(&up_to(3), |channel| {
            let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
            let mut leader = lc.watch();
            let new_leader = cluster.id(1);
            if first {
                cluster.elect(1);
            }
            async move {
                if first {
                    let published =
                        leader.wait_for(|l| l.as_ref().is_some_and(|l| l.node_id == new_leader));
                    let _ = tokio::time::timeout(SOON, published)
                        .await
                        .expect("new leader");
                    return Err(Status::unimplemented("unknown service"));
                }
                answered_by(channel).await
            }
        })
        .await
        .expect("retried after the leader changed");
    assert_eq!(got, cluster.id(1));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // Other failures, and Unimplemented from the current leader, are not retried.
    let attempts = AtomicUsize::new(0);
    let status = lc
        .call(&up_to(5), |_| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Status::unimplemented("really")) }
        })
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    let attempts = AtomicUsize::new(0);
    let status = lc
        .call(&up_to(5), |_| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Status::permission_denied("no")) }
        })
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn endpoints_added_later_are_used() {
    let cluster = TestCluster::new(2);
    let lc = LeaderChannel::new(
        Vec::new(),
        cluster.owner.clone(),
        cluster.ca.clone(),
        LeaderOptions::default(),
    )
    .expect("client");
    assert!(
        LeaderChannel::new(
            vec!["no-port".to_string()],
            cluster.owner.clone(),
            cluster.ca.clone(),
            LeaderOptions::default(),
        )
        .is_err()
    );
    assert!(lc.add_endpoints(["bad".to_string()]).is_err());
    lc.add_endpoints([cluster.nodes[1].addr.clone()])
        .expect("valid endpoint");
    wait_answered_by(&lc, &cluster.id(0)).await;
}

#[tokio::test]
async fn dropping_the_last_handle_stops_discovery() {
    let cluster = TestCluster::new(2);
    let lc = cluster.client(&[1], LeaderOptions::default());
    let clone = lc.clone();
    lc.channel().await.expect("leader");
    let open = || {
        cluster
            .nodes
            .iter()
            .map(|n| n.curator.streams.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    assert_eq!(open(), 1, "one discovery stream while a handle lives");
    let mut leader = lc.watch();
    leader.borrow_and_update();
    drop(lc);
    // A clone keeps it alive.
    clone.channel().await.expect("still following");
    assert_eq!(open(), 1);
    drop(clone);
    let closed = tokio::time::timeout(SOON, leader.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "updater still running: {closed:?}"
    );
    eventually(SOON, async || open() == 0)
        .await
        .expect("the discovery stream closes");
}

#[tokio::test]
async fn the_deadline_bounds_the_wait_for_a_leader() {
    let cluster = TestCluster::new(1);
    // Nothing listens on port 1: discovery never finds a leader.
    let lc = LeaderChannel::new(
        vec!["127.0.0.1:1".to_string()],
        cluster.owner.clone(),
        cluster.ca.clone(),
        LeaderOptions::default(),
    )
    .expect("client");
    let policy = RetryPolicy::default().with_deadline(Some(Duration::from_secs(1)));
    let started = Instant::now();
    let status = lc.call(&policy, answered_by).await.expect_err("no leader");
    assert_eq!(status.code(), Code::Unavailable);
    // Bounded by the call's deadline, not by the channel's 10 s wait for a leader.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        status.message().contains("127.0.0.1:1"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_hung_attempt_is_retried_on_the_leader() {
    let cluster = TestCluster::new(2);
    let lc = cluster.client(&[1], LeaderOptions::default());
    let policy = RetryPolicy::default().with_attempt_timeout(Some(Duration::from_millis(300)));
    let attempts = AtomicUsize::new(0);
    let got = lc
        .call(&policy, |channel| {
            let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                answered_by(channel).await
            }
        })
        .await
        .expect("second attempt answers");
    assert_eq!(got, cluster.id(0));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_typed_client_follows_the_leader_and_names_failed_calls() {
    let cluster = TestCluster::new(2);
    let management = rpc::Management::new(cluster.client(&[1], LeaderOptions::default()));
    let info = management.cluster_info().await.expect("cluster info");
    assert_eq!(String::from_utf8_lossy(&info.ca_certificate), cluster.id(0));
    assert_eq!(management.current_leader(), Some(cluster.id(0)));

    // "Lost leadership" once: retried within the call.
    cluster.nodes[0]
        .curator
        .fail_next
        .store(1, Ordering::SeqCst);
    management.cluster_info().await.expect("retried");

    // Failing for longer than the deadline: the last status, named by its method.
    cluster.nodes[0]
        .curator
        .fail_next
        .store(1000, Ordering::SeqCst);
    let error = management
        .with_deadline(Duration::from_secs(1))
        .cluster_info()
        .await
        .expect_err("deadline");
    assert_eq!(error.method, "GetClusterInfo");
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error.to_string().starts_with("GetClusterInfo: Unavailable"),
        "{error}"
    );
}
