//! Test harness of the curator's tests (and `bench`): a real single-member etcd run by the
//! consensus service, a bootstrapped cluster in it, a real leader elected through
//! [`crate::election`], and its services on a real TLS socket. Built only with the `testing`
//! feature, which production builds never enable.
//!
//! Each leader takes a loopback block of its own ([`LoopbackBlock`]), so leaders run side by
//! side on the fixed etcd peer port.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use identity::{NodeCredentials, PublicKey, SigningKey};
use logtree::LogTree;
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::{ClusterConfiguration, NodeTpmUsage};
use rpc::{ClientCredentials, RevocationSet, ServerSecurity, ServerVerification};
use supervisor::Supervisor;
use tempfile::TempDir;
use test_support::LoopbackBlock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::bootstrap::{self, BootstrapData};
use crate::election::{self, ElectionStatus};
use crate::health::ManualClock;
use crate::leader::{self, Leader};
use crate::state::NodeRecord;

/// How long the harness waits for etcd and the election.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A permissive configuration for tests that do not exercise policies: no TPM needed, any
/// storage accepted.
pub fn permissive_configuration() -> ClusterConfiguration {
    ClusterConfiguration {
        tpm_mode: TpmMode::BestEffort as i32,
        storage_security_policy: StorageSecurityPolicy::Permissive as i32,
        ..Default::default()
    }
}

/// A bootstrapped single-node cluster whose curator leader serves on a TLS socket.
pub struct TestLeader {
    /// The leader's state (for direct state manipulation in tests).
    pub leader: Arc<Leader>,
    /// The leader's clock, moved by hand.
    pub clock: Arc<ManualClock>,
    /// `host:port` of the leader's gRPC server.
    pub addr: String,
    /// Cluster CA DER.
    pub ca: Vec<u8>,
    /// The owner's key (the owner certificate is issued on first use of [`Self::owner`]).
    pub owner_key: SigningKey,
    /// The bootstrap node's credentials.
    pub credentials: NodeCredentials,
    /// The bootstrap node's join key.
    pub join_key: SigningKey,
    /// The revocation set the server consults.
    pub revocations: RevocationSet,
    /// The local etcd member.
    pub consensus: consensus::Status,
    /// The node's IP, host 1 of [`Self::block`].
    pub address: IpAddr,
    /// The election status of the leader's curator (it must stay Leader under load).
    pub election: watch::Receiver<ElectionStatus>,
    cancel: CancellationToken,
    supervisor: Supervisor,
    _dir: TempDir,
    /// The loopback block the leader lives in; its other hosts are free for the test.
    /// Declared last: released only after etcd and the server are gone.
    pub block: LoopbackBlock,
}

impl TestLeader {
    /// Starts a leader with [`permissive_configuration`] in a block of its own.
    pub async fn start() -> TestLeader {
        Self::start_with(permissive_configuration()).await
    }

    /// Starts a leader with the given cluster configuration in a block of its own.
    pub async fn start_with(configuration: ClusterConfiguration) -> TestLeader {
        let dir = tempfile::tempdir().expect("tempdir");
        let block = LoopbackBlock::allocate();
        let address = IpAddr::V4(block.addr(1));
        let node_key = SigningKey::generate().expect("key");
        let join_key = SigningKey::generate().expect("key");
        let owner_key = SigningKey::generate().expect("key");

        let mut config = consensus::Config::new(
            dir.path().join("etcd"),
            dir.path().join("eph"),
            node_key.clone(),
            address,
        );
        // Tests may join more members in this loopback block; they all connect from
        // 127.0.0.1.
        config.peer_client_san_check = false;
        let service = consensus::Service::new(config);
        let supervisor = Supervisor::start(LogTree::new(), service.runnable());
        let consensus = tokio::time::timeout(START_TIMEOUT, service.wait_running())
            .await
            .expect("etcd did not start");
        let ns = consensus.namespaced(&[crate::KEYSPACE]).expect("namespace");

        let join_cluster = consensus
            .add_node(&node_key.public_key(), address)
            .await
            .expect("add self");
        let data = BootstrapData {
            node_key: node_key.public_key(),
            join_key: join_key.public_key(),
            cluster_unlock_key: vec![7; 32],
            owner_key: owner_key.public_key().as_bytes().to_vec(),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent,
            configuration,
            join_cluster,
        };
        let (ca, cert) = bootstrap::finish(&ns, &data).await.expect("bootstrap");
        let credentials = NodeCredentials::new(node_key, cert, ca.clone()).expect("credentials");

        let cancel = CancellationToken::new();
        let (tx, mut rx) = watch::channel(ElectionStatus::Unknown);
        election::spawn(
            consensus.clone(),
            ns,
            credentials.node_id(),
            election::DEFAULT_LEADER_TTL,
            tx,
            cancel.clone(),
        )
        .expect("election thread");
        let leadership = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                if let ElectionStatus::Leader(l) = rx.borrow_and_update().clone() {
                    return l;
                }
                rx.changed().await.expect("election ended");
            }
        })
        .await
        .expect("no leadership");

        let clock = Arc::new(ManualClock::default());
        let revocations = RevocationSet::new();
        let leader = Leader::new(
            leadership,
            credentials.clone(),
            consensus.clone(),
            clock.clone(),
            revocations.clone(),
        );
        let security = ServerSecurity::new(ca.clone(), revocations.clone());
        let tls = rpc::server_tls::server_config(&credentials).expect("tls");
        let listener = tokio::net::TcpListener::bind((address, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let router = leader::router(&leader, security);
        let stop = cancel.clone();
        tokio::spawn(router.serve_with_incoming_shutdown(
            rpc::serve::tls_incoming_with(
                listener,
                tls,
                crate::listener::connection_limits(),
                cancel.clone(),
            ),
            stop.cancelled_owned(),
        ));

        TestLeader {
            leader,
            clock,
            addr,
            ca,
            owner_key,
            credentials,
            join_key,
            revocations,
            consensus,
            address,
            election: rx,
            block,
            cancel,
            supervisor,
            _dir: dir,
        }
    }

    /// A channel to the leader with these credentials, verifying the leader's certificate.
    pub fn channel(&self, creds: ClientCredentials) -> Channel {
        let verification = ServerVerification::Cluster {
            ca: self.ca.clone(),
            node_id: Some(self.credentials.node_id()),
            crl: None,
        };
        let config = rpc::client_tls::client_config(&creds, verification).expect("client config");
        rpc::client_tls::connect_lazy(&self.addr, config).expect("endpoint")
    }

    /// A channel authenticated as the owner (its certificate is issued directly in etcd).
    pub async fn owner(&self) -> Channel {
        let cert = crate::state::pki::ensure_owner_certificate(
            &self.leader.leadership.guarded_namespace(),
            &self.owner_key.public_key(),
        )
        .await
        .expect("owner certificate");
        self.channel(ClientCredentials::Authenticated {
            certificate: cert,
            key: self.owner_key.clone(),
        })
    }

    /// A channel authenticated with the node certificate of `key` (issued directly in etcd).
    pub async fn node(&self, key: &SigningKey) -> Channel {
        let cert =
            crate::state::pki::leader_node_certificate(&self.leader.leadership, &key.public_key())
                .await
                .expect("node certificate")
                .1;
        self.channel(ClientCredentials::Authenticated {
            certificate: cert,
            key: key.clone(),
        })
    }

    /// A channel with an ephemeral self-signed certificate of `key`.
    pub fn ephemeral(&self, key: &SigningKey) -> Channel {
        self.channel(ClientCredentials::Ephemeral(key.clone()))
    }

    /// Writes a node record as it is, in whatever state it holds, with its join-key index
    /// entry: test fixtures put nodes straight into a state instead of walking them through
    /// the lifecycle (which the state layer would otherwise enforce).
    pub async fn put_node(&self, record: &NodeRecord) {
        crate::state::node::write_unchecked(&self.leader.leadership, record)
            .await
            .expect("writing node record");
    }

    /// Runs the leader's background reconciler every `period` until the leader stops.
    /// (Not started by default: tests that write leftovers on purpose must keep them.)
    pub fn reconcile_every(&self, period: Duration) {
        tokio::spawn(leader::background::run(
            self.leader.clone(),
            period,
            self.cancel.child_token(),
        ));
    }

    /// The bootstrap node's ID.
    pub fn node_id(&self) -> String {
        self.credentials.node_id()
    }

    /// The bootstrap node's public key.
    pub fn node_key(&self) -> PublicKey {
        self.credentials.public_key()
    }

    /// Stops the server, the election (revoking the lease) and etcd.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.supervisor.shutdown().await;
    }
}
