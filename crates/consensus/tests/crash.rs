//! Crash consistency of the member's peer PKI files: the member dies while writing them
//! (failpoint `consensus::peer_pki::after_key`, armed to panic the member's runnable right
//! after the key is on disk), and its next start must still bring it up.
//!
//! Only compiled with the `failpoints` feature (which `make test` enables).

#![cfg(feature = "failpoints")]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use consensus::{Config, Service, Status};
use identity::SigningKey;
use logtree::LogTree;
use supervisor::Supervisor;
use test_support::LoopbackBlock;

/// Generous: etcd starts twice on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

fn start(
    dir: &std::path::Path,
    key: &SigningKey,
    address: IpAddr,
) -> (LogTree, Supervisor, Arc<Service>) {
    let config = Config::new(dir.join("data/etcd"), dir.join("eph"), key.clone(), address);
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
    (tree, supervisor, service)
}

async fn running(tree: &LogTree, service: &Service) -> Status {
    match tokio::time::timeout(TIMEOUT, service.wait_running()).await {
        Ok(status) => status,
        Err(_) => panic!(
            "member did not come up; its logs:\n{}",
            common::consensus_logs(tree).join("\n")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_writing_the_peer_pki_still_comes_up() {
    let block = LoopbackBlock::allocate();
    let address: IpAddr = block.host(1).parse().expect("ip");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("key");
    let scenario = fail::FailScenario::setup();
    // Once: the first PKI write dies after the key; the supervisor then restarts the member,
    // which has to cope with whatever that write left behind.
    fail::cfg("consensus::peer_pki::after_key", "1*panic").expect("failpoint");

    let (tree, supervisor, service) = start(dir.path(), &key, address);
    let status = running(&tree, &service).await;
    let issued = common::consensus_logs(&tree)
        .iter()
        .filter(|l| l.contains("certificates issued, writing to disk"))
        .count();
    assert!(issued >= 2, "the first PKI write was cut: {issued}");
    let ns = status.namespaced(&["t"]).expect("ns");
    ns.put("/k", "v", None).await.expect("put");
    drop(status);
    supervisor.shutdown().await.expect("shutdown");
    scenario.teardown();

    // A plain restart from disk comes up with the same data.
    let (tree, supervisor, service) = start(dir.path(), &key, address);
    let status = running(&tree, &service).await;
    let ns = status.namespaced(&["t"]).expect("ns");
    let got = ns.get("/k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v");
    drop(status);
    supervisor.shutdown().await.expect("shutdown");
}
