//! Three curators on three real etcd members: exactly one leader; followers point clients at
//! it and refuse everything else with Unavailable; when the leader's etcd stops answering
//! for longer than the lease TTL (it is frozen) a new leader takes over within a few seconds,
//! serves writes, and a leader-following client succeeds on retry.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use curator::bootstrap::{self, BootstrapData, consensus_role};
use curator::election::{self, ElectionStatus};
use curator::testing::permissive_configuration;
use curator::{Config, Curator};
use identity::{NodeCredentials, SigningKey};
use logtree::LogTree;
use prost::Message;
use proto::api::management_client::ManagementClient;
use proto::api::{
    ApproveNodeRequest, DeleteNodeRequest, GetRegisterTicketRequest, delete_node_request,
};
use proto::common::{NodeRoles, NodeState, NodeStatus, NodeStorageSecurity, NodeTpmUsage};
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::{CommitNodeRequest, RegisterNodeRequest, WatchRequest, watch_request};
use proto::curator_private::Node;
use rpc::RetryPolicy;
use rpc::leader::{LeaderChannel, LeaderOptions};
use rpc::retry::DEFAULT_BACKOFF;
use rpc::{ClientCredentials, ServerVerification};
use supervisor::Supervisor;
use tempfile::TempDir;
use test_support::{LoopbackBlock, eventually};
use tokio::sync::watch;

/// Up to 100 attempts, without a deadline: the tests bound their waits themselves.
const PATIENT: RetryPolicy = RetryPolicy::forever(DEFAULT_BACKOFF).with_attempts(Some(100));

const TIMEOUT: Duration = Duration::from_secs(90);

struct ClusterNode {
    address: IpAddr,
    key: SigningKey,
    consensus_service: Arc<consensus::Service>,
    consensus_sup: Supervisor,
    curator: Option<(Arc<Curator>, Supervisor)>,
    _dir: TempDir,
}

impl ClusterNode {
    async fn start_consensus(
        address: &str,
        key: SigningKey,
        join: Option<consensus::JoinCluster>,
    ) -> ClusterNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let address: IpAddr = address.parse().expect("ip");
        let mut config = consensus::Config::new(
            dir.path().join("etcd"),
            dir.path().join("eph"),
            key.clone(),
            address,
        );
        config.join_cluster = join;
        // Members on one loopback connect to each other from 127.0.0.1.
        config.peer_client_san_check = false;
        let consensus_service = consensus::Service::new(config);
        let consensus_sup = Supervisor::start(LogTree::new(), consensus_service.runnable());
        let node = ClusterNode {
            address,
            key,
            consensus_service,
            consensus_sup,
            curator: None,
            _dir: dir,
        };
        node.consensus().await;
        node
    }

    async fn consensus(&self) -> consensus::Status {
        tokio::time::timeout(TIMEOUT, self.consensus_service.wait_running())
            .await
            .expect("etcd running")
    }

    fn id(&self) -> String {
        identity::node_id(&self.key.public_key())
    }

    async fn start_curator(&mut self, credentials: NodeCredentials, ttl: Duration) {
        let listen = SocketAddr::new(self.address, rpc::CURATOR_PORT);
        let mut config = Config::new(credentials, self.consensus().await, listen);
        config.leader_ttl = ttl;
        let curator = Curator::new(config);
        let sup = Supervisor::start(LogTree::new(), curator.runnable());
        self.curator = Some((curator, sup));
    }

    fn election(&self) -> watch::Receiver<ElectionStatus> {
        self.curator.as_ref().expect("curator").0.election()
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.address, rpc::CURATOR_PORT)
    }
}

/// Writes an UP consensus-member record with an address for `node` (setup, not under test).
async fn write_member_record(
    ns: &kv::Namespaced,
    node: &ClusterNode,
    join: &consensus::JoinCluster,
) {
    let record = Node {
        public_key: node.key.public_key().as_bytes().to_vec(),
        fsm_state: NodeState::Up as i32,
        roles: Some(NodeRoles {
            consensus_member: Some(consensus_role(join)),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            external_address: node.address.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    ns.put(
        format!("/nodes/{}", node.id()),
        record.encode_to_vec(),
        None,
    )
    .await
    .expect("write record");
}

async fn wait_for(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually(TIMEOUT, f)
        .await
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
}

fn leader_of(nodes: &[ClusterNode]) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(*n.election().borrow(), ElectionStatus::Leader(_)))
        .map(|(i, _)| i)
        .collect()
}

/// Three etcd members and three curators (lease TTL `ttl`) on `block`, with exactly one
/// leader that the others follow. Returns the nodes, the cluster CA and the owner key.
async fn three_curators(
    block: &LoopbackBlock,
    ttl: Duration,
) -> (Vec<ClusterNode>, Vec<u8>, SigningKey) {
    // Three etcd members.
    let a =
        ClusterNode::start_consensus(&block.host(1), SigningKey::generate().expect("key"), None)
            .await;
    let sa = a.consensus().await;
    let ns = sa.namespaced(&[curator::KEYSPACE]).expect("ns");
    let owner = SigningKey::generate().expect("key");
    let join_a = sa
        .add_node(&a.key.public_key(), a.address)
        .await
        .expect("add a");
    let (ca, cert_a) = bootstrap::finish(
        &ns,
        &BootstrapData {
            node_key: a.key.public_key(),
            join_key: SigningKey::generate().expect("key").public_key(),
            cluster_unlock_key: vec![1; 32],
            owner_key: owner.public_key().as_bytes().to_vec(),
            configuration: permissive_configuration(),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent,
            join_cluster: join_a,
        },
    )
    .await
    .expect("bootstrap");
    // The bootstrap record has no address yet; give it one as status push would.
    let mut nodes = vec![a];
    for ip in [block.host(2), block.host(3)] {
        let key = SigningKey::generate().expect("key");
        let join = sa
            .add_node(&key.public_key(), ip.parse().expect("ip"))
            .await
            .expect("add");
        let node = ClusterNode::start_consensus(&ip, key, Some(join.clone())).await;
        write_member_record(&ns, &node, &join).await;
        nodes.push(node);
    }
    let join_a_again = sa
        .add_node(&nodes[0].key.public_key(), nodes[0].address)
        .await
        .expect("a");
    write_member_record(&ns, &nodes[0], &join_a_again).await;

    // Three curators.
    for (i, node) in nodes.iter_mut().enumerate() {
        let cert = if i == 0 {
            cert_a.clone()
        } else {
            curator::state::pki::ensure_node_certificate(&ns, &node.key.public_key())
                .await
                .expect("cert")
        };
        let creds = NodeCredentials::new(node.key.clone(), cert, ca.clone()).expect("creds");
        node.start_curator(creds, ttl).await;
    }
    wait_for("exactly one leader", async || leader_of(&nodes).len() == 1).await;
    let leader = leader_of(&nodes)[0];
    let leader_id = nodes[leader].id();
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        wait_for("followers to follow", async || {
            matches!(&*n.election().borrow(), ElectionStatus::Follower { leader_id: l } if *l == leader_id)
        })
        .await;
        let _ = i;
    }
    (nodes, ca, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_followers_redirect_and_failover() {
    let block = LoopbackBlock::allocate();
    let (nodes, ca, owner) = three_curators(&block, election::DEFAULT_LEADER_TTL).await;
    let leader = leader_of(&nodes)[0];
    let leader_id = nodes[leader].id();
    let ns = nodes[leader]
        .consensus()
        .await
        .namespaced(&[curator::KEYSPACE])
        .expect("ns");

    // The owner talks to a follower: Unavailable naming the leader.
    let owner_cert = curator::state::pki::ensure_owner_certificate(&ns, &owner.public_key())
        .await
        .expect("owner");
    let owner_creds = ClientCredentials::Authenticated {
        certificate: owner_cert,
        key: owner.clone(),
    };
    let follower = (leader + 1) % 3;
    let config = rpc::client_tls::client_config(
        &owner_creds,
        ServerVerification::Cluster {
            ca: ca.clone(),
            node_id: None,
            crl: None,
        },
    )
    .expect("config");
    let channel =
        rpc::client_tls::connect_lazy(&nodes[follower].endpoint(), config).expect("endpoint");
    let status = ManagementClient::new(channel)
        .get_register_ticket(GetRegisterTicketRequest {})
        .await
        .expect_err("a follower does not serve Management");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains(&leader_id),
        "{}",
        status.message()
    );

    // A leader-following client seeded with only that follower reaches the leader.
    let lc = LeaderChannel::new(
        vec![nodes[follower].endpoint()],
        owner_creds,
        ca.clone(),
        LeaderOptions::default(),
    )
    .expect("leader channel");
    let ticket = |lc: LeaderChannel| async move {
        lc.call(&PATIENT, |ch| async move {
            ManagementClient::new(ch)
                .get_register_ticket(GetRegisterTicketRequest {})
                .await
                .map(|r| r.into_inner().ticket)
        })
        .await
    };
    let before = ticket(lc.clone()).await.expect("ticket through the leader");
    assert_eq!(
        lc.current_leader().expect("leader known").node_id,
        leader_id
    );

    // Take the leader's etcd away: its lease can no longer be kept alive nor revoked, so the
    // others take over once it expires (TTL 3 s). Frozen rather than killed: a killed etcd is
    // restarted by its supervisor, and back within the TTL it lets its leader renew the lease
    // and rightly keep leading, which is no failover.
    let killed_at = Instant::now();
    let pid = nodes[leader].consensus().await.pid.expect("pid");
    signal(pid, "-STOP");
    wait_for("a new leader", async || {
        let leaders = leader_of(&nodes);
        leaders.len() == 1 && leaders[0] != leader
    })
    .await;
    let takeover = killed_at.elapsed();
    // The crashed leader's curator, cut off from its etcd, is neither leader nor follower until
    // its member is back (upstream TestLeaderElectionStatus).
    assert!(
        !matches!(
            *nodes[leader].election().borrow(),
            ElectionStatus::Leader(_)
        ),
        "two leaders"
    );
    let after = ticket(lc.clone())
        .await
        .expect("ticket after failover (retried through Unavailable)");
    let served = killed_at.elapsed();
    assert_eq!(
        before, after,
        "the ticket is cluster state and survives failover"
    );
    assert_ne!(lc.current_leader().expect("leader").node_id, leader_id);
    println!("failover: new leader after {takeover:?}, first successful call after {served:?}");
    assert!(
        takeover < Duration::from_secs(20),
        "takeover took {takeover:?}"
    );

    // The frozen member comes back; wait until all three vote again so the next fault leaves
    // a quorum.
    signal(pid, "-CONT");
    let new_leader = leader_of(&nodes)[0];
    let sn = nodes[new_leader].consensus().await;
    wait_for("three voters again", async || {
        let Ok(list) = sn.client().member_list().await else {
            return false;
        };
        list.members().iter().filter(|m| !m.is_learner()).count() == 3
            && nodes[leader].consensus_service.watch().borrow().is_some()
    })
    .await;

    // A registration interrupted by a leader crash: Register on one leader, crash it, approve
    // and commit on its successor. The NEW record is plain etcd state, so nothing is lost.
    let x = SigningKey::generate().expect("key");
    let x_join = SigningKey::generate().expect("key");
    let x_lc = LeaderChannel::new(
        vec![
            nodes[0].endpoint(),
            nodes[1].endpoint(),
            nodes[2].endpoint(),
        ],
        ClientCredentials::Ephemeral(x.clone()),
        ca.clone(),
        LeaderOptions::default(),
    )
    .expect("leader channel");
    let register = RegisterNodeRequest {
        register_ticket: after.clone(),
        join_key: x_join.public_key().as_bytes().to_vec(),
        ..Default::default()
    };
    x_lc.call(&PATIENT, |ch| {
        let r = register.clone();
        async move { CuratorClient::new(ch).register_node(r).await }
    })
    .await
    .expect("register X");
    let sn_pid = sn.pid.expect("pid");
    signal(sn_pid, "-STOP");
    wait_for("a third leader", async || {
        let leaders = leader_of(&nodes);
        leaders.len() == 1 && leaders[0] != new_leader
    })
    .await;
    signal(sn_pid, "-CONT");
    let x_pub = x.public_key().as_bytes().to_vec();
    lc.call(&PATIENT, |ch| {
        let pubkey = x_pub.clone();
        async move {
            ManagementClient::new(ch)
                .approve_node(ApproveNodeRequest { pubkey })
                .await
        }
    })
    .await
    .expect("approve X after failover");
    let commit = CommitNodeRequest {
        cluster_unlock_key: vec![9; 32],
        storage_security: NodeStorageSecurity::Encrypted as i32,
    };
    let committed = x_lc
        .call(&PATIENT, |ch| {
            let c = commit.clone();
            async move { CuratorClient::new(ch).commit_node(c).await }
        })
        .await
        .expect("commit X after failover")
        .into_inner();
    identity::verify::verify_node_cert(&committed.node_certificate, &ca).expect("X's certificate");

    // Deleting X revokes its certificate on every curator: before, a follower answers X with
    // "not the leader"; after, every curator refuses X itself.
    let x_certificate = committed.node_certificate.clone();
    let x_creds = ClientCredentials::Authenticated {
        certificate: committed.node_certificate,
        key: x.clone(),
    };
    let x_id = identity::node_id(&x.public_key());
    let current = leader_of(&nodes)[0];
    let follower = (current + 1) % 3;
    assert_eq!(
        watch_code(nodes[follower].endpoint(), &x_creds, &ca, &x_id).await,
        tonic::Code::Unavailable
    );
    lc.call(&PATIENT, |ch| {
        let pubkey = x_pub.clone();
        async move {
            ManagementClient::new(ch)
                .delete_node(DeleteNodeRequest {
                    node: Some(delete_node_request::Node::Pubkey(pubkey)),
                    safety_bypass_not_decommissioned: Some(
                        delete_node_request::SafetyBypassNotDecommissioned {},
                    ),
                    safety_bypass_has_roles: None,
                })
                .await
        }
    })
    .await
    .expect("delete X");
    for n in &nodes {
        if n.consensus_service.watch().borrow().is_none() {
            continue; // the member frozen last may still be catching up
        }
        let endpoint = n.endpoint();
        wait_for("every curator to refuse the deleted node", async || {
            watch_code(endpoint.clone(), &x_creds, &ca, &x_id).await == tonic::Code::Unauthenticated
        })
        .await;
        // And every curator, leader or follower, hands out a CRL of the cluster CA that
        // revokes it, so clients refuse X as a curator too.
        let crl = cluster_crl(endpoint, &ca).await;
        let held = rpc::ClusterCrl::new(ca.clone());
        held.update(&crl).expect("a CRL of the cluster CA");
        assert!(held.is_revoked(&x_certificate), "the CRL revokes X");
    }

    for n in nodes {
        if let Some((_, sup)) = n.curator {
            let _ = sup.shutdown().await;
        }
        let _ = n.consensus_sup.shutdown().await;
    }
}

/// A node that stops gracefully cancels its etcd member and its curator together; the member
/// waits for the curator's election to give its lease back, so the successor leads as soon as
/// that revocation is seen, not when the lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_leader_is_replaced_well_within_its_ttl() {
    // Long enough that a successor waiting for the lease to expire cannot pass.
    const TTL: Duration = Duration::from_secs(10);
    let block = LoopbackBlock::allocate();
    let (mut nodes, _ca, _owner) = three_curators(&block, TTL).await;
    let leader = leader_of(&nodes)[0];
    let stopped_at = Instant::now();
    // When a survivor leads, timed as it happens (the stop itself takes longer: etcd's own
    // graceful shutdown comes after the revocation).
    let successor = (0..3).filter(|i| *i != leader).map(|i| {
        let mut election = nodes[i].election();
        tokio::spawn(async move {
            let led = election
                .wait_for(|s| matches!(s, ElectionStatus::Leader(_)))
                .await
                .is_ok();
            led.then(|| stopped_at.elapsed())
        })
    });
    let successor: Vec<_> = successor.collect();
    let (_, sup) = nodes[leader].curator.take().expect("curator");
    // Both at once, as the node's supervisor cancels its control plane's children.
    let (curator, consensus) = tokio::join!(sup.shutdown(), nodes[leader].consensus_sup.shutdown());
    curator.expect("curator stopped");
    consensus.expect("etcd member stopped");
    let (first, _, others) = tokio::time::timeout(TIMEOUT, futures::future::select_all(successor))
        .await
        .unwrap_or_else(|_| panic!("no survivor led within {TIMEOUT:?}"));
    for other in others {
        other.abort();
    }
    let takeover = first
        .expect("task")
        .expect("the first survivor to finish waiting leads");
    println!("graceful stop: new leader after {takeover:?}");
    assert!(
        takeover < TTL / 4,
        "the successor led {takeover:?} after the leader stopped (lease TTL {TTL:?}): it waited \
         for the lease instead of seeing it revoked"
    );

    for n in nodes {
        if let Some((_, sup)) = n.curator {
            let _ = sup.shutdown().await;
        }
        let _ = n.consensus_sup.shutdown().await;
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// CuratorLocal.GetClusterCRL at one curator, asked without credentials; retried while the
/// curator drops connections (its listener restarts when its election status changes, e.g.
/// right after its etcd came back).
async fn cluster_crl(endpoint: String, ca: &[u8]) -> Vec<u8> {
    let mut crl = Vec::new();
    wait_for(
        "the curator's cluster CRL",
        async || match try_cluster_crl(endpoint.clone(), ca).await {
            Ok(c) => {
                crl = c;
                true
            }
            Err(_) => false,
        },
    )
    .await;
    crl
}

async fn try_cluster_crl(endpoint: String, ca: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let verification = ServerVerification::Cluster {
        ca: ca.to_vec(),
        node_id: None,
        crl: None,
    };
    let config =
        rpc::client_tls::client_config(&ClientCredentials::None, verification).expect("config");
    let channel = rpc::client_tls::connect_lazy(&endpoint, config).expect("endpoint");
    Ok(
        proto::curator_api::curator_local_client::CuratorLocalClient::new(channel)
            .get_cluster_crl(proto::curator_api::GetClusterCrlRequest {})
            .await?
            .into_inner()
            .crl,
    )
}

/// The code a Watch of `node_id` gets at one curator with these credentials.
async fn watch_code(
    endpoint: String,
    creds: &ClientCredentials,
    ca: &[u8],
    node_id: &str,
) -> tonic::Code {
    let verification = ServerVerification::Cluster {
        ca: ca.to_vec(),
        node_id: None,
        crl: None,
    };
    let config = rpc::client_tls::client_config(creds, verification).expect("config");
    let channel = rpc::client_tls::connect_lazy(&endpoint, config).expect("endpoint");
    let kind = watch_request::Kind::NodeInCluster(watch_request::NodeInCluster {
        node_id: node_id.to_string(),
    });
    match CuratorClient::new(channel)
        .watch(WatchRequest { kind: Some(kind) })
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}
