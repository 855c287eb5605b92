//! e2e: metroctl refuses a curator whose node certificate the cluster revoked. A deleted
//! node's certificate (its machine taken over) serves a rogue curator that names itself the
//! leader; metroctl, given the rogue's address first, must learn the revocation from the
//! genuine curator, never send the rogue a cluster API call, and cache the CRL so that even a
//! later run that reaches only the rogue refuses it.

mod common;
#[path = "../../launch/tests/common/rogue.rs"]
mod rogue;

use std::net::SocketAddr;

use common::{HEALTH, Metroctl};
use identity::NodeCredentials;
use launch::proto::common::cluster_configuration::StorageSecurityPolicy;
use launch::{ClusterOptions, DeleteBypass};
use test_support::LoopbackBlock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_curator_is_refused() {
    let block = LoopbackBlock::allocate();
    let mut options = ClusterOptions::new(2, &block.prefix());
    // INSECURE storage, so the test can read node 1's credentials like a thief would.
    options.storage_policy = StorageSecurityPolicy::NeedsInsecure;
    let cluster = launch::Cluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("launching the cluster failed: {e}"));
    let (node0, node1) = (cluster.node(0), cluster.node(1));
    let id1 = cluster.id_of(1).expect("id");
    let stolen = NodeCredentials::load(&node1.data_dir().join("node").join("credentials"))
        .expect("node 1's credentials");
    node1.kill().await.expect("node 1 powered off");
    cluster.mark_removed(1);
    cluster.refresh_leader_channel().expect("leader channel");
    cluster
        .management()
        .delete(
            &id1,
            DeleteBypass {
                has_roles: false,
                not_decommissioned: true,
            },
        )
        .await
        .expect("delete node 1");
    cluster
        .wait_node_gone(1, HEALTH)
        .await
        .expect("node 1 deleted");
    let rogue_addr = SocketAddr::new(node1.address().into(), rpc::CURATOR_PORT);
    let rogue = rogue::Rogue::start(rogue_addr, stolen, "metropolis-00".to_string()).await;

    // An operator's config: the owner credentials and the pinned CA, no CRL yet.
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["owner-key.pem", "owner.pem", "ca.pem"] {
        std::fs::copy(cluster.state_dir().join(file), dir.path().join(file)).expect("copy");
    }
    let both = Metroctl::fresh(dir.path(), None).with_endpoints(&format!(
        "{},{}",
        rogue_addr,
        node0.curator_endpoint()
    ));
    let listed = both.run(&["node", "list", "-o", "json"]).await.ok();
    let ids: Vec<String> = listed
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|n| n["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, vec![cluster.id_of(0).expect("id")], "{listed}");
    assert!(
        rogue.obeyed().is_empty(),
        "metroctl called the revoked curator: {:?}",
        rogue.calls()
    );
    let cached = std::fs::read(dir.path().join("cluster-crl.der")).expect("the CRL is cached");
    let crl = rpc::ClusterCrl::new(cluster.ca_certificate().to_vec());
    crl.update(&cached).expect("a CRL of the cluster CA");
    assert_eq!(crl.revoked(), 1, "it revokes node 1");

    // With the cached CRL, a run that reaches only the rogue refuses it.
    let rogue_only = Metroctl::fresh(dir.path(), None).with_endpoints(&rogue_addr.to_string());
    let refused = rogue_only
        .run(&["--connect-timeout", "5", "node", "list"])
        .await
        .failed(4);
    assert!(refused.stderr.contains("revoked"), "{refused}");
    assert!(
        rogue.obeyed().is_empty(),
        "metroctl called the revoked curator: {:?}",
        rogue.calls()
    );
    drop(rogue);
    cluster.shutdown().await;
}
