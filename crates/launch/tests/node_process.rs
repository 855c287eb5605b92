//! The process side of the harness against a stand-in for `metropolis-node`: a shell script
//! that follows the node CLI contract (NODE_ID= and NODE_READY lines, exit 0 on SIGTERM, exit
//! 4 to ask for a reboot, a child process like the node's etcd). Needs no cluster, so it runs
//! even before the node daemon builds.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use launch::{Error, Exit, Node, NodeConfig, RestartPolicy};

const ID: &str = "metropolis-00112233445566778899aabbccddeeff";
const SOON: Duration = Duration::from_secs(20);

/// `$2` is the state directory (`--state-dir <dir> --address <ip> ...`). Behaviour switches
/// are files in it: `fail` (exit 1 before being ready), `reboot-once` (first boot exits 4).
const SCRIPT: &str = r#"#!/bin/sh
dir="$2"
n=$(cat "$dir/boots" 2>/dev/null || echo 0)
n=$((n+1))
echo "$n" > "$dir/boots"
echo "root I0101 00:00:00.000000 main.rs:1] NODE_ID=metropolis-00112233445566778899aabbccddeeff"
echo "boot $n args: $*"
echo "to stderr" >&2
if [ -f "$dir/fail" ]; then echo "fatal: told to fail"; exit 1; fi
if [ "$n" = 1 ] && [ -f "$dir/reboot-once" ]; then echo "asking for a reboot"; exit 4; fi
trap 'echo "got TERM"; exit 0' TERM
sleep 1000 &
echo "$!" > "$dir/child.pid"
echo "$$" > "$dir/node.pid"
echo "NODE_READY"
wait
"#;

fn setup(name: &str) -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::Builder::new()
        .prefix(&format!("launch-{name}-"))
        .tempdir()
        .expect("tempdir");
    let script = temp.path().join("fake-node");
    std::fs::write(&script, SCRIPT).expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (temp, script)
}

fn node(temp: &Path, script: &Path, restart: RestartPolicy) -> Node {
    Node::new(NodeConfig {
        index: 7,
        address: ADDRESS,
        dir: temp.join("node7"),
        binary: script.to_path_buf(),
        parameters: Some(temp.join("params.pb")),
        etcd: None,
        leader_ttl: Some(2),
        skip_peer_client_san_check: true,
        extra_args: Vec::new(),
        env: Vec::new(),
        wrapper: Vec::new(),
        echo: false,
        restart,
    })
}

/// The fake node binds nothing, so its address needs no loopback block: a documentation
/// address (TEST-NET-1) that no test binds.
const ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 8);

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

async fn wait_dead(pid: u32) {
    test_support::process::wait_until_dead(pid, SOON)
        .await
        .expect("the process is gone");
}

#[tokio::test]
async fn start_stop_kill_and_logs() {
    let (temp, script) = setup("lifecycle");
    let node = node(temp.path(), &script, RestartPolicy::OnRebootRequest);
    node.start().expect("start");
    assert_eq!(node.wait_id(SOON).await.expect("id"), ID);
    node.wait_ready(SOON).await.expect("ready");
    assert!(node.is_running() && node.is_ready());
    assert!(
        node.start().is_err(),
        "a running node cannot be started twice"
    );
    node.wait_log("[stderr] to stderr", SOON)
        .await
        .expect("stderr captured");
    let args = node.wait_log("args:", SOON).await.expect("args line");
    for want in [
        "--state-dir",
        "--address 192.0.2.8",
        "--parameters",
        "--leader-ttl 2",
        "--etcd-skip-peer-client-san-check",
    ] {
        assert!(args.contains(want), "{args}");
    }
    let child = read_pid(&node.dir().join("child.pid"));

    // Clean stop: exit 0, and the child the node left behind goes with it.
    assert_eq!(node.stop().await.expect("stop"), Exit::Code(0));
    assert!(node.logs_contain("got TERM"));
    wait_dead(child).await;
    assert!(!node.is_running() && !node.is_ready());

    // Power on again, then power off: SIGKILL.
    node.start().expect("start again");
    node.wait_ready(SOON).await.expect("ready again");
    assert_eq!(node.boot(), 2);
    let child = read_pid(&node.dir().join("child.pid"));
    assert_eq!(
        node.kill().await.expect("kill"),
        Exit::Signal(rustix::process::Signal::KILL.as_raw())
    );
    wait_dead(child).await;
    assert_eq!(node.exit_code(), None);
    assert_eq!(node.exits().len(), 2);

    let log = std::fs::read_to_string(node.log_path()).expect("node.log");
    assert_eq!(log.matches("NODE_READY").count(), 2, "{log}");
    assert!(log.contains("=== launch: boot 2 of node 7"), "{log}");
}

#[tokio::test]
async fn reboot_request_restarts_and_fatal_fails_waiters() {
    let (temp, script) = setup("reboot");
    let node = node(temp.path(), &script, RestartPolicy::OnRebootRequest);
    std::fs::create_dir_all(node.dir()).expect("dir");
    std::fs::write(node.dir().join("reboot-once"), "").expect("switch");
    node.start().expect("start");
    node.wait_ready(SOON)
        .await
        .expect("ready after the requested reboot");
    assert_eq!(node.boot(), 2);
    assert_eq!(
        node.exits().first().map(|(_, e)| e.clone()),
        Some(Exit::Code(4))
    );
    node.stop().await.expect("stop");

    std::fs::write(node.dir().join("fail"), "").expect("switch");
    node.start().expect("start");
    let started = tokio::time::Instant::now();
    let err = node
        .wait_ready(SOON)
        .await
        .expect_err("a fatal exit fails the wait");
    assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
    assert!(matches!(err, Error::NodeExited { .. }), "{err}");
    assert!(
        err.to_string().contains("told to fail"),
        "the error quotes the log: {err}"
    );
    assert_eq!(node.exit_code(), Some(1));
}

#[tokio::test]
async fn dropping_the_handle_kills_the_node_and_its_children() {
    let (temp, script) = setup("drop");
    let node = node(temp.path(), &script, RestartPolicy::OnFailure);
    node.start().expect("start");
    node.wait_ready(SOON).await.expect("ready");
    let pid = read_pid(&node.dir().join("node.pid"));
    let child = read_pid(&node.dir().join("child.pid"));
    drop(node);
    wait_dead(pid).await;
    wait_dead(child).await;
}
