//! e2e: a third node registers with parameters written by `metroctl cluster
//! node-params`, waits in NEW (listed by bare `approve` with its public key; its logs refused
//! with advice), is approved and comes UP (logs: "Cluster enrolment done."); roles are
//! added and removed (both spellings) while `node describe --watch` re-renders.

mod common;

use std::time::Duration;

use common::{ENROLMENT, Metroctl, find, roles};
use launch::{Node, NodeConfig, RestartPolicy};
use test_support::LoopbackBlock;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_roles_and_watch() {
    let block = LoopbackBlock::allocate();
    let cluster = common::start(2, &block).await;
    let id1 = cluster.id_of(1).expect("id 1");
    let tmp = tempfile::tempdir().expect("tempdir");
    // The launcher's state directory is a complete metroctl config (owner key, certificate,
    // pinned CA).
    let mctl = Metroctl {
        config: cluster.state_dir().to_path_buf(),
        endpoints: Some(format!("{},{}", block.host(1), block.host(2))),
    };

    // Nothing pending yet.
    let run = mctl.run(&["approve"]).await.ok();
    assert_eq!(run.stdout, "no nodes pending approval\n", "{run}");

    // A new node registers with parameters from metroctl.
    let dir = tmp.path().join("node2");
    let params = dir.join("parameters.pb");
    let run = mctl
        .run(&["cluster", "node-params", params.to_str().expect("utf8")])
        .await
        .ok();
    assert!(run.stderr.contains("metroctl approve"), "{run}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&params)
            .expect("params")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the parameters hold the ticket");
    }
    let node2 = Node::new(NodeConfig {
        index: 2,
        address: block.addr(3),
        dir: dir.clone(),
        binary: launch::find_node_binary(None).expect("metropolis-node (cargo build -p node)"),
        parameters: Some(params.clone()),
        etcd: cluster.options().etcd_binary.clone(),
        leader_ttl: cluster.options().leader_ttl,
        // On the cluster's loopback block, like its other nodes.
        skip_peer_client_san_check: true,
        extra_args: Vec::new(),
        env: Vec::new(),
        wrapper: Vec::new(),
        echo: cluster.options().echo_logs,
        restart: RestartPolicy::OnRebootRequest,
    });
    node2.start().expect("start node 2");
    let id2 = node2
        .wait_id(ENROLMENT)
        .await
        .expect("node 2 announces its ID");

    // Bare approve lists it with its public key.
    let run = mctl
        .run_until(&["approve", "-o", "json"], ENROLMENT, |r| {
            r.code == 0 && r.stdout.contains(&id2)
        })
        .await;
    let pending = run.json();
    let entry = find(&pending, &id2).expect("pending node 2");
    let pubkey = entry["pubkey"].as_str().expect("pubkey").to_string();
    assert_eq!(
        identity::PublicKey::from_slice(&hex::decode(&pubkey).expect("hex"))
            .expect("key")
            .node_id(),
        id2
    );
    let run = mctl.run(&["approve"]).await.ok();
    assert!(run.stdout.contains(&pubkey), "{run}");
    assert!(
        run.stdout.contains(&format!("metroctl approve {id2}")),
        "{run}"
    );

    // A NEW node serves no logs: the error says what to do.
    let run = mctl.run(&["node", "logs", &id2]).await.failed(3);
    assert!(
        run.stderr.contains(&format!(
            "node {id2} is NEW: approve it first (metroctl approve {id2})"
        )),
        "{run}"
    );

    // Approve; it becomes UP and logs its enrolment.
    let run = mctl.run(&["approve", &id2]).await.ok();
    assert!(
        run.stdout.contains(&format!("approved node {id2}")),
        "{run}"
    );
    mctl.run_until(&["node", "describe", &id2, "-o", "json"], ENROLMENT, |r| {
        r.code == 0 && find(&r.json(), &id2).is_some_and(|n| n["state"] == "UP")
    })
    .await;
    let run = mctl.run(&["approve", &id2]).await.ok();
    assert!(run.stdout.contains("already approved"), "{run}");
    let run = mctl
        .run_until(&["node", "logs", &id2], ENROLMENT, |r| {
            r.code == 0 && r.stdout.contains("Cluster enrolment done.")
        })
        .await;
    assert!(run.stdout.contains("Cluster enrolment done."), "{run}");

    // Watch all nodes while roles change.
    let mut watch = mctl
        .command(&["node", "describe", "--watch", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = next_json(&mut lines).await;
    assert!(find(&first, &id2).is_some(), "{first}");

    let run = mctl.run(&["node", "add-role", "kw", &id2]).await.ok();
    assert!(run.stdout.contains("added KubernetesWorker"), "{run}");
    wait_json(&mut lines, |nodes| {
        find(nodes, &id2).is_some_and(|n| roles(n) == vec!["KubernetesWorker"])
    })
    .await;
    let run = mctl
        .run(&["node", "describe", &id2, "-o", "json"])
        .await
        .ok();
    assert_eq!(roles(&run.json()[0]), vec!["KubernetesWorker"]);

    // Upstream's spelling removes it again; the watch sees that too.
    mctl.run(&["node", "remove", "role", "KubernetesWorker", &id2])
        .await
        .ok();
    wait_json(&mut lines, |nodes| {
        find(nodes, &id2).is_some_and(|n| roles(n).is_empty())
    })
    .await;
    let _ = watch.kill().await;

    // Role dependencies are explained.
    let run = mctl.run(&["node", "add-role", "kc", &id1]).await.failed(3);
    assert!(run.stderr.contains("ConsensusMember"), "{run}");
    assert!(run.stderr.contains("metroctl node add"), "{run}");

    // Several nodes at once, then back.
    mctl.run(&["node", "add-role", "kubernetesworker", &id1, &id2])
        .await
        .ok();
    let run = mctl
        .run(&[
            "node",
            "list",
            "--filter",
            "has(node.roles.kubernetes_worker)",
        ])
        .await
        .ok();
    let mut got: Vec<&str> = run.stdout.lines().skip(1).collect();
    got.sort();
    let mut want = vec![id1.as_str(), id2.as_str()];
    want.sort();
    assert_eq!(got, want, "{run}");
    mctl.run(&["node", "remove-role", "kw", &id1, &id2])
        .await
        .ok();

    node2.kill_now();
    cluster.shutdown().await;
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// The next JSON document the watch prints.
async fn next_json(lines: &mut Lines) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("watch printed nothing within 60 s")
        .expect("read watch output")
        .expect("watch ended");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {line}"))
}

/// Reads watch documents until one satisfies `done` (bounded).
async fn wait_json(lines: &mut Lines, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let doc = tokio::time::timeout(remaining, next_json(lines))
            .await
            .expect("the watch did not show the change within 60 s");
        if done(&doc) {
            return;
        }
    }
}
