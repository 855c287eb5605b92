//! A node process killed with SIGKILL (no destructors, no cancellation) leaves no etcd behind:
//! the member is started with PR_SET_PDEATHSIG. A copy of this test binary plays the node.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use consensus::{Config, Service};
use identity::SigningKey;
use logtree::LogTree;
use supervisor::Supervisor;

const HOLD_ENV: &str = "CONSENSUS_TEST_HOLD_MEMBER";
/// The member's address, in a loopback block the test holds for the helper.
const ADDRESS_ENV: &str = "CONSENSUS_TEST_MEMBER_ADDRESS";

/// The "node": runs a member, reports the etcd pid, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for node_killed_leaves_no_etcd"]
async fn helper_hold_member() {
    let Some(dir) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let key = SigningKey::generate().expect("key");
    let config = Config::new(
        dir.join("data"),
        dir.join("eph"),
        key,
        std::env::var(ADDRESS_ENV)
            .expect("address from the test")
            .parse()
            .expect("ip"),
    );
    let service = Service::new(config);
    let runnable = service.runnable();
    let _supervisor = Supervisor::start(LogTree::new(), runnable);
    let status = tokio::time::timeout(Duration::from_secs(60), service.wait_running())
        .await
        .expect("running");
    println!("ETCD_PID={}", status.pid.expect("pid"));
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[test]
fn node_killed_leaves_no_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let block = test_support::LoopbackBlock::allocate();
    let mut node = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "helper_hold_member", "--ignored", "--nocapture"])
        .env(HOLD_ENV, dir.path())
        .env(ADDRESS_ENV, block.host(1))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn node");
    let stdout = node.stdout.take().expect("stdout");
    let pid: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("ETCD_PID=").map(str::to_string))
        .expect("node reports its etcd pid")
        .parse()
        .expect("pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    node.kill().expect("SIGKILL the node");
    node.wait().expect("reap node");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(test_support::process::wait_until_dead(
        pid,
        Duration::from_secs(10),
    ))
    .expect("etcd must die with the node");
}
