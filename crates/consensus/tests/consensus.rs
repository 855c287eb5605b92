//! The consensus service against real etcd processes: bootstrap, restart from disk, learners
//! joining and being promoted, a three-member cluster surviving a member's loss, quorum-safe
//! removal, logs in the logtree, and no orphaned etcd when the node process dies.
//!
//! Every test holds a loopback block of its own, so tests run side by side on the fixed peer
//! port.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use consensus::{Config, Error, JoinCluster, Service, Status};
use identity::SigningKey;
use logtree::LogTree;
use supervisor::Supervisor;
use tempfile::TempDir;
use test_support::{LoopbackBlock, eventually};

/// Generous: etcd start plus a promotion round (5 s autopromoter) on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

struct TestNode {
    dir: TempDir,
    key: SigningKey,
    tree: LogTree,
    supervisor: Supervisor,
    service: Arc<Service>,
}

impl TestNode {
    async fn start(
        address: &str,
        key: SigningKey,
        join: Option<JoinCluster>,
        dir: Option<TempDir>,
    ) -> TestNode {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
        let address: IpAddr = address.parse().expect("ip");
        let mut config = Config::new(
            dir.path().join("data/etcd"),
            dir.path().join("eph"),
            key.clone(),
            address,
        );
        config.join_cluster = join;
        // Members on one loopback connect to each other from 127.0.0.1.
        config.peer_client_san_check = false;
        let service = Service::new(config);
        let tree = LogTree::new();
        let runnable = service.runnable();
        let supervisor = Supervisor::start(
            tree.clone(),
            supervisor::runnable(move |ctx| {
                let runnable = runnable.clone();
                async move {
                    ctx.run("consensus", runnable)?;
                    ctx.signal_healthy();
                    ctx.cancelled().await;
                    Ok(())
                }
            }),
        );
        TestNode {
            dir,
            key,
            tree,
            supervisor,
            service,
        }
    }

    async fn running(&self) -> Status {
        match tokio::time::timeout(TIMEOUT, self.service.wait_running()).await {
            Ok(status) => status,
            Err(_) => panic!(
                "member did not become a voter in time; its logs:\n{}",
                self.logs().join("\n")
            ),
        }
    }

    async fn stop(self) -> (TempDir, SigningKey) {
        self.supervisor.shutdown().await.expect("shutdown");
        (self.dir, self.key)
    }

    fn logs(&self) -> Vec<String> {
        common::consensus_logs(&self.tree)
    }
}

async fn put_get(status: &Status, key: &str, value: &str) -> String {
    let ns = status.namespaced(&["curator"]).expect("ns");
    ns.put(key, value, None).await.expect("put");
    let got = ns.get(key, None).await.expect("get");
    String::from_utf8_lossy(got.kvs()[0].value()).into_owned()
}

async fn voters(status: &Status) -> usize {
    let list = status.client().member_list().await.expect("member list");
    list.members().iter().filter(|m| !m.is_learner()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_serves_logs_and_refuses_removing_the_last_voter() {
    let block = LoopbackBlock::allocate();
    let node = TestNode::start(
        &block.host(1),
        SigningKey::generate().expect("key"),
        None,
        None,
    )
    .await;
    let status = node.running().await;
    assert_eq!(put_get(&status, "/hello", "world").await, "world");
    // The raw key is in the curator keyspace.
    let raw = status
        .client()
        .get("namespaced:curator//hello", None)
        .await
        .expect("raw get");
    assert_eq!(raw.kvs().len(), 1);
    // The self-updater replaced the bootstrap's plain-HTTP peer URL.
    eventually(TIMEOUT, async || {
        let list = status.client().member_list().await.expect("members");
        let urls = list.members()[0].peer_urls().to_vec();
        if urls == [status.peer_url.clone()] {
            Ok(())
        } else {
            Err(format!("peer URLs {urls:?}"))
        }
    })
    .await
    .expect("the peer URL is updated");
    assert!(
        status
            .peer_url
            .starts_with(&format!("https://{}:", block.host(1)))
    );

    let err = status
        .remove_node(&status.name)
        .await
        .expect_err("last voter");
    assert!(matches!(err, Error::QuorumWouldBreak { .. }), "{err}");

    let logs = node.logs();
    assert!(
        logs.iter().any(|l| l.contains("Bootstrapping PKI: done")),
        "{logs:#?}"
    );
    assert!(logs.iter().any(|l| l.contains("etcd server ready")));
    // etcd's own zap output, parsed into leveled entries with etcd's source location.
    assert!(
        logs.iter()
            .any(|l| l.contains(".go:") && l.contains("root.consensus")),
        "{logs:#?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_keeps_data_and_ca() {
    let block = LoopbackBlock::allocate();
    let node = TestNode::start(
        &block.host(1),
        SigningKey::generate().expect("key"),
        None,
        None,
    )
    .await;
    let status = node.running().await;
    put_get(&status, "/persist", "me").await;
    let ca_file = node.dir.path().join("data/etcd/peer_pki/ca.pem");
    let ca_before = std::fs::read(&ca_file).expect("ca file");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node.dir.path().join("data/etcd/peer_pki/cert-key.pem"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let (dir, key) = node.stop().await;

    let node = TestNode::start(&block.host(1), key, None, Some(dir)).await;
    let status = node.running().await;
    let ns = status.namespaced(&["curator"]).expect("ns");
    let got = ns.get("/persist", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"me");
    assert_eq!(std::fs::read(&ca_file).expect("ca file"), ca_before);
    assert!(
        node.logs()
            .iter()
            .any(|l| l.contains("PKI data present, not bootstrapping"))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_join_get_promoted_and_quorum_is_protected() {
    let block = LoopbackBlock::allocate();
    let a = TestNode::start(
        &block.host(1),
        SigningKey::generate().expect("key"),
        None,
        None,
    )
    .await;
    let sa = a.running().await;
    put_get(&sa, "/before", "join").await;

    let mut nodes = Vec::new();
    for ip in [block.host(2), block.host(3)] {
        let key = SigningKey::generate().expect("key");
        let address: IpAddr = ip.parse().expect("ip");
        let join = sa
            .add_node(&key.public_key(), address)
            .await
            .expect("add_node");
        // Idempotent: a second call neither fails nor adds a second learner.
        let again = sa
            .add_node(&key.public_key(), address)
            .await
            .expect("add_node again");
        assert_eq!(again.node_certificate, join.node_certificate);
        let list = sa.client().member_list().await.expect("members");
        assert_eq!(list.members().iter().filter(|m| m.is_learner()).count(), 1);
        let node = TestNode::start(&ip, key, Some(join), None).await;
        let status = node.running().await;
        // A joined member reads what was written before it joined.
        let ns = status.namespaced(&["curator"]).expect("ns");
        assert_eq!(
            ns.get("/before", None).await.expect("get").kvs()[0].value(),
            b"join"
        );
        nodes.push(node);
    }
    assert_eq!(voters(&sa).await, 3);

    // Members are found by node ID only. A node reporting a voter's address is not taken
    // for that voter: adding it is refused, and nothing is added.
    let liar = SigningKey::generate().expect("key");
    let err = sa
        .add_node(&liar.public_key(), block.addr(2).into())
        .await
        .expect_err("a voter's address");
    assert!(matches!(err, Error::PeerUrlInUse { .. }), "{err}");
    assert!(
        !sa.remove_node(&identity::node_id(&liar.public_key()))
            .await
            .expect("no member")
    );
    assert_eq!(voters(&sa).await, 3);
    // A learner that never started has no name; it is still found by its node ID.
    let unstarted = SigningKey::generate().expect("key");
    sa.add_node(&unstarted.public_key(), block.addr(9).into())
        .await
        .expect("add learner");
    let members = || async {
        sa.client()
            .member_list()
            .await
            .expect("members")
            .members()
            .len()
    };
    assert_eq!(members().await, 4);
    assert!(
        sa.remove_node(&identity::node_id(&unstarted.public_key()))
            .await
            .expect("remove the unstarted learner")
    );
    assert_eq!(members().await, 3);

    let b = nodes.remove(0);
    let c = nodes.remove(0);
    let sb = b.running().await;
    let c_id = c.running().await.name;

    // Lose C: A and B keep serving writes.
    c.stop().await;
    assert_eq!(put_get(&sa, "/after", "loss").await, "loss");
    assert_eq!(put_get(&sb, "/after2", "loss").await, "loss");

    // Removing B now would leave A alone with a dead C: refused.
    let err = sa.remove_node(&sb.name).await.expect_err("quorum");
    assert!(matches!(err, Error::QuorumWouldBreak { .. }), "{err}");
    assert_eq!(voters(&sa).await, 3);
    // Removing the dead C is fine, and idempotent.
    assert!(sa.remove_node(&c_id).await.expect("remove C"));
    assert!(!sa.remove_node(&c_id).await.expect("remove C again"));
    assert_eq!(voters(&sa).await, 2);
    assert_eq!(put_get(&sb, "/after3", "removal").await, "removal");

    b.stop().await;
    a.stop().await;
}
