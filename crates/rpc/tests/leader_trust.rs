//! Whom the leader channel takes for the leader, against real TLS servers on 127.0.0.1: every
//! test server holds a genuine node certificate of the test cluster and names itself the
//! leader, as a rogue curator would. Without a CRL or a leader check (upstream's behaviour) the
//! client follows whichever it asks first; with them it must refuse a revoked node and a node
//! its check rejects, keep its CRL current from the curators it talks to, and drop (and cut
//! off) a leader the moment a newer CRL revokes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use identity::{SigningKey, templates};
use proto::api::management_client::ManagementClient;
use proto::api::management_server::{Management, ManagementServer};
use proto::api::{GetClusterInfoRequest, GetClusterInfoResponse, GetNodesRequest, Node};
use proto::curator_api::curator_local_server::{CuratorLocal, CuratorLocalServer};
use proto::curator_api::{
    GetClusterCrlRequest, GetClusterCrlResponse, GetCurrentLeaderRequest, GetCurrentLeaderResponse,
};
use rpc::{
    ClientCredentials, ClusterCrl, LeaderChannel, LeaderCheck, LeaderInfo, LeaderOptions,
    RevocationSet, ServerSecurity,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(15);

/// One test server: names itself leader, serves whatever CRL it is given, tells who answered
/// GetClusterInfo and keeps GetNodes streams open.
#[derive(Clone)]
struct Server {
    node_id: String,
    addr: String,
    crl: watch::Sender<Vec<u8>>,
    management_calls: Arc<AtomicUsize>,
    discovery_calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl CuratorLocal for Server {
    async fn get_current_leader(
        &self,
        _request: Request<GetCurrentLeaderRequest>,
    ) -> Result<Response<BoxStream<GetCurrentLeaderResponse>>, Status> {
        self.discovery_calls.fetch_add(1, Ordering::SeqCst);
        let (host, port) = self.addr.rsplit_once(':').expect("host:port");
        let answer = GetCurrentLeaderResponse {
            leader_node_id: self.node_id.clone(),
            leader_host: host.to_string(),
            leader_port: port.parse().expect("port"),
            this_node_id: self.node_id.clone(),
        };
        let stream = futures::StreamExt::chain(
            futures::stream::once(async move { Ok(answer) }),
            futures::stream::pending(),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_cluster_crl(
        &self,
        _request: Request<GetClusterCrlRequest>,
    ) -> Result<Response<GetClusterCrlResponse>, Status> {
        let crl = self.crl.borrow().clone();
        if crl.is_empty() {
            return Err(Status::unimplemented("no CRL here"));
        }
        Ok(Response::new(GetClusterCrlResponse { crl }))
    }
}

#[tonic::async_trait]
impl Management for Server {
    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        self.management_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(GetClusterInfoResponse {
            ca_certificate: self.node_id.as_bytes().to_vec(),
            ..Default::default()
        }))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<BoxStream<Node>>, Status> {
        self.management_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
}

/// A test cluster: its CA and one server per node.
struct Cluster {
    ca_key: SigningKey,
    ca: Vec<u8>,
    owner: ClientCredentials,
    servers: Vec<Server>,
    /// Node certificates, by server index.
    certificates: Vec<Vec<u8>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        let ca_key = SigningKey::generate().expect("keygen");
        let ca = templates::cluster_ca(&ca_key).expect("ca");
        let owner_key = SigningKey::generate().expect("keygen");
        let owner_cert =
            templates::user_cert(&ca_key, &ca, &owner_key.public_key(), "owner").expect("owner");
        let mut cluster = Self {
            ca_key,
            ca,
            owner: ClientCredentials::Authenticated {
                certificate: owner_cert,
                key: owner_key,
            },
            servers: Vec::new(),
            certificates: Vec::new(),
            _tasks: Vec::new(),
        };
        for _ in 0..n {
            let key = SigningKey::generate().expect("keygen");
            let certificate = templates::node_cert(&cluster.ca_key, &cluster.ca, &key.public_key())
                .expect("node cert");
            let tls = rpc::server_tls::server_config_for(
                certificate.clone(),
                &key.to_pkcs8_der(),
                cluster.ca.clone(),
            )
            .expect("server tls");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let server = Server {
                node_id: identity::node_id(&key.public_key()),
                addr: listener.local_addr().expect("addr").to_string(),
                crl: watch::Sender::new(Vec::new()),
                management_calls: Arc::new(AtomicUsize::new(0)),
                discovery_calls: Arc::new(AtomicUsize::new(0)),
            };
            let router = rpc::serve::server_builder(ServerSecurity::new(
                cluster.ca.clone(),
                RevocationSet::new(),
            ))
            .add_service(CuratorLocalServer::new(server.clone()))
            .add_service(ManagementServer::new(server.clone()));
            cluster._tasks.push(tokio::spawn(async move {
                let _ = router
                    .serve_with_incoming(rpc::serve::tls_incoming(listener, tls))
                    .await;
            }));
            cluster.servers.push(server);
            cluster.certificates.push(certificate);
        }
        cluster
    }

    /// A CRL of this cluster revoking the certificates of `revoked` (server indexes).
    fn crl(&self, number: u64, revoked: &[usize]) -> Vec<u8> {
        let serials: Vec<Vec<u8>> = revoked
            .iter()
            .map(|&i| identity::verify::cert_serial(&self.certificates[i]).expect("serial"))
            .collect();
        templates::crl(&self.ca_key, &self.ca, &serials, number).expect("crl")
    }

    fn client(&self, seeds: &[usize], options: LeaderOptions) -> LeaderChannel {
        let seeds = seeds
            .iter()
            .map(|&i| self.servers[i].addr.clone())
            .collect();
        LeaderChannel::new(seeds, self.owner.clone(), self.ca.clone(), options).expect("client")
    }
}

/// Which server answered GetClusterInfo through `lc`.
async fn answered_by(lc: &LeaderChannel) -> Result<String, Status> {
    let channel = lc.channel().await?;
    let response = ManagementClient::new(channel)
        .get_cluster_info(GetClusterInfoRequest {})
        .await?;
    Ok(String::from_utf8_lossy(&response.into_inner().ca_certificate).into_owned())
}

/// Polls until `lc` reaches `want`'s server.
async fn wait_answered_by(lc: &LeaderChannel, want: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let last = answered_by(lc).await;
        if last.as_deref().is_ok_and(|got| got == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{want} never answered; last: {last:?}, leader {:?}",
            lc.current_leader()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn options(crl: Option<ClusterCrl>, check: Option<Arc<dyn LeaderCheck>>) -> LeaderOptions {
    LeaderOptions {
        wait_timeout: Duration::from_secs(5),
        crl,
        leader_check: check,
        ..LeaderOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_curators_are_refused() {
    let cluster = Cluster::start(2).await;
    let (rogue, genuine) = (&cluster.servers[0], &cluster.servers[1]);
    // The genuine curator hands out the CRL revoking the rogue (a deleted node).
    genuine.crl.send_replace(cluster.crl(2, &[0]));

    // Upstream's client follows the first curator it asks: the rogue.
    let trusting = cluster.client(&[0, 1], options(None, None));
    wait_answered_by(&trusting, &rogue.node_id).await;
    drop(trusting);
    let rogue_calls = rogue.management_calls.load(Ordering::SeqCst);
    let rogue_discovery = rogue.discovery_calls.load(Ordering::SeqCst);

    // With a CRL (empty to begin with), the channel learns the revocation from the genuine
    // curator before it takes anyone's word, and never talks to the rogue.
    let crl = ClusterCrl::new(cluster.ca.clone());
    let careful = cluster.client(&[0, 1], options(Some(crl.clone()), None));
    wait_answered_by(&careful, &genuine.node_id).await;
    assert_eq!(crl.number(), Some(2), "the CRL was fetched");
    assert_eq!(
        careful.current_leader().map(|l| l.node_id),
        Some(genuine.node_id.clone())
    );
    assert_eq!(
        rogue.management_calls.load(Ordering::SeqCst),
        rogue_calls,
        "no call reached the revoked curator"
    );
    assert_eq!(
        rogue.discovery_calls.load(Ordering::SeqCst),
        rogue_discovery,
        "the revoked curator was not even asked who leads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_revoked_later_is_withdrawn_and_cut_off() {
    let cluster = Cluster::start(2).await;
    let (rogue, genuine) = (&cluster.servers[0], &cluster.servers[1]);
    let crl = ClusterCrl::new(cluster.ca.clone());
    // Only the rogue is a seed: nothing tells the client about the revocation yet.
    let lc = cluster.client(&[0], options(Some(crl.clone()), None));
    wait_answered_by(&lc, &rogue.node_id).await;
    // A stream open on the leader, like a node's watch of itself.
    let mut open = ManagementClient::new(lc.channel().await.expect("channel"))
        .get_nodes(GetNodesRequest::default())
        .await
        .expect("GetNodes")
        .into_inner();

    // A forged CRL (another CA) and an older valid one change nothing.
    let other_key = SigningKey::generate().expect("keygen");
    let other_ca = templates::cluster_ca(&other_key).expect("ca");
    rogue
        .crl
        .send_replace(templates::crl(&other_key, &other_ca, &[], 99).expect("crl"));
    genuine.crl.send_replace(cluster.crl(1, &[]));
    lc.add_endpoints([genuine.addr.clone()]).expect("endpoint");
    let refresh = lc.refresh_crl().await.expect("the channel has a CRL");
    assert_eq!(crl.number(), Some(1), "{refresh:?}");
    assert!(
        refresh.failed.iter().any(|f| f.starts_with(&rogue.addr)),
        "the forged CRL is refused: {refresh:?}"
    );
    assert_eq!(
        lc.current_leader().map(|l| l.node_id),
        Some(rogue.node_id.clone())
    );

    // The genuine curator learns of the revocation; so does the client, which drops the
    // rogue at once and ends what was open on it.
    genuine.crl.send_replace(cluster.crl(2, &[0]));
    let refresh = lc.refresh_crl().await.expect("the channel has a CRL");
    assert!(refresh.updated, "{refresh:?}");
    let ended = tokio::time::timeout(SOON, open.message())
        .await
        .expect("the stream on the revoked leader ends");
    assert!(ended.is_err(), "the stream ends with an error: {ended:?}");
    wait_answered_by(&lc, &genuine.node_id).await;

    // Served an older CRL again, the client keeps the revocation.
    genuine.crl.send_replace(cluster.crl(1, &[]));
    let refresh = lc.refresh_crl().await.expect("the channel has a CRL");
    assert!(!refresh.updated, "{refresh:?}");
    assert_eq!(crl.number(), Some(2));
    assert_eq!(crl.revoked(), 1);
}

/// Accepts only the listed nodes as leaders.
#[derive(Debug)]
struct Members(Vec<String>);

impl LeaderCheck for Members {
    fn check<'a>(&'a self, leader: &'a LeaderInfo) -> BoxFuture<'a, Result<(), String>> {
        let ok = self.0.contains(&leader.node_id);
        let id = leader.node_id.clone();
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(format!("{id} holds no ConsensusMember role"))
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_the_check_refuses_are_not_used() {
    let cluster = Cluster::start(2).await;
    let (rogue, genuine) = (&cluster.servers[0], &cluster.servers[1]);
    let check: Arc<dyn LeaderCheck> = Arc::new(Members(vec![genuine.node_id.clone()]));
    let lc = cluster.client(&[0, 1], options(None, Some(check)));
    wait_answered_by(&lc, &genuine.node_id).await;
    assert!(
        rogue.discovery_calls.load(Ordering::SeqCst) > 0,
        "the rogue was asked (and named itself)"
    );
    assert_eq!(
        rogue.management_calls.load(Ordering::SeqCst),
        0,
        "but no call went to it"
    );
}
