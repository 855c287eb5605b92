//! The throwaway etcd itself: layout, independence and cleanup.

use std::path::Path;
use std::time::Duration;

use test_support::etcd::{SOCKET_NAME, TestEtcd};
use test_support::eventually;

#[tokio::test]
async fn layout_and_identity() {
    let etcd = TestEtcd::start().await.expect("start");
    assert_eq!(
        etcd.socket_path().file_name().and_then(|n| n.to_str()),
        Some(SOCKET_NAME)
    );
    assert!(etcd.socket_path().exists());
    assert!(etcd.data_dir().join("member").is_dir());
    let members = etcd
        .client()
        .member_list()
        .await
        .expect("member list")
        .members()
        .to_vec();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name(), etcd.name());
}

#[tokio::test]
async fn members_are_independent() {
    let (a, b) = tokio::join!(TestEtcd::start(), TestEtcd::start());
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_ne!(a.socket_path(), b.socket_path());
    a.client().put("k", "a", None).await.expect("put");
    assert!(
        b.client()
            .get("k", None)
            .await
            .expect("get")
            .kvs()
            .is_empty()
    );
}

#[tokio::test]
async fn drop_kills_etcd_and_removes_its_directory() {
    let etcd = TestEtcd::start().await.expect("start");
    let pid = etcd.pid().expect("pid");
    let dir = etcd.dir().to_path_buf();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(etcd);
    // Drop reaps the process, so its /proc entry is gone, not a zombie's.
    eventually(Duration::from_secs(10), async || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await
    .unwrap_or_else(|e| panic!("etcd {pid} still exists: {e}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Set for the helper process of [`etcd_dies_with_a_killed_test_process`].
const HOLD_ENV: &str = "KV_TEST_HOLD_ETCD";

/// Not a test on its own: run by [`etcd_dies_with_a_killed_test_process`] in a child process,
/// it starts etcd, reports its pid and waits to be killed.
#[tokio::test]
#[ignore = "helper, run by etcd_dies_with_a_killed_test_process"]
async fn helper_hold_etcd() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let etcd = TestEtcd::start().await.expect("start");
    println!("ETCD_DIR={}", etcd.dir().display());
    println!("ETCD_PID={}", etcd.pid().expect("pid"));
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn etcd_dies_with_a_killed_test_process() {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().expect("test binary");
    let mut holder = std::process::Command::new(exe)
        .args(["--exact", "helper_hold_etcd", "--ignored", "--nocapture"])
        .env(HOLD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let stdout = holder.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let mut field = |name: &str| {
        lines
            .find_map(|l| l.strip_prefix(name).map(str::to_string))
            .expect("helper reports etcd's directory and pid")
    };
    let dir = field("ETCD_DIR=");
    let pid = field("ETCD_PID=");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // SIGKILL: no destructors run, only PR_SET_PDEATHSIG can take etcd down.
    holder.kill().expect("kill helper");
    holder.wait().expect("reap helper");
    let pid: u32 = pid.parse().expect("pid");
    test_support::process::wait_until_dead(pid, Duration::from_secs(10))
        .await
        .expect("etcd must die with its killed parent");
    // The killed helper could not clean up after itself.
    std::fs::remove_dir_all(&dir).expect("remove the helper's etcd directory");
}
