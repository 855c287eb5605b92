//! e2e: a fresh operator config (only the owner key) against a 2-node cluster:
//! trust on first use of the CA, takeownership, listing and describing in all three formats,
//! filters, output files, cluster info and ticket, logs, and readable errors for a bad filter,
//! unknown or malformed node IDs and an unreachable cluster.

mod common;

use common::{HEALTH, Metroctl, find, roles};
use test_support::LoopbackBlock;
use tokio::io::AsyncBufReadExt;

type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

async fn next_line(lines: &mut Lines) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("no output within 60 s")
        .expect("read output")
        .expect("output ended")
}

/// What `metropolis-node --version` prints after the program name (`0.1.0-g1a2b3c4d`).
fn node_binary_version() -> String {
    let binary = launch::find_node_binary(None).expect("metropolis-node binary");
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .expect("run metropolis-node --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .trim()
        .strip_prefix("metropolis-node ")
        .unwrap_or_else(|| panic!("unexpected --version output {text:?}"));
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
    version.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_listing_and_errors() {
    let block = LoopbackBlock::allocate();
    let (host0, host1) = (block.host(1), block.host(2));
    let cluster = common::start(2, &block).await;
    let id0 = cluster.id_of(0).expect("id 0");
    let id1 = cluster.id_of(1).expect("id 1");
    let ca_fp = common::fingerprint(cluster.ca_certificate());
    let tmp = tempfile::tempdir().expect("tempdir");
    let mctl = Metroctl::fresh(&tmp.path().join("cfg"), Some(&cluster.owner_key_path()))
        .with_endpoints(&host0);

    // First contact without a terminal: refused (exit 5), naming the fingerprint and the flag.
    let run = mctl.run(&["takeownership"]).await.failed(5);
    assert!(run.stderr.contains(&ca_fp), "{run}");
    assert!(run.stderr.contains("--accept-ca-fingerprint"), "{run}");
    assert!(
        !mctl.config.join("ca.pem").exists(),
        "nothing may be pinned"
    );
    // A wrong fingerprint is refused too.
    mctl.run(&["--accept-ca-fingerprint", "SHA256:00", "takeownership"])
        .await
        .failed(5);

    // Take ownership with the right fingerprint: CA pinned, owner certificate saved.
    let run = mctl
        .run(&["--accept-ca-fingerprint", &ca_fp, "takeownership"])
        .await
        .ok();
    assert!(run.stdout.contains("Took ownership"), "{run}");
    assert!(mctl.config.join("ca.pem").exists());
    assert!(mctl.config.join("owner.pem").exists());
    assert_eq!(
        std::fs::read(mctl.config.join("ca.pem")).expect("ca.pem"),
        identity::files::certificate_to_pem(cluster.ca_certificate()).into_bytes()
    );
    // Repeatable: the same certificate again.
    let run = mctl.run(&["takeownership"]).await.ok();
    assert!(run.stdout.contains("refreshed"), "{run}");

    // From here on without --endpoints: takeownership saved them.
    let mctl = Metroctl {
        endpoints: None,
        ..mctl
    };

    // node list: both IDs; with an ID only that one.
    let run = mctl.run(&["node", "list"]).await.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "NODE ID", "{run}");
    let mut listed: Vec<&str> = lines[1..].to_vec();
    listed.sort();
    let mut want = vec![id0.as_str(), id1.as_str()];
    want.sort();
    assert_eq!(listed, want, "{run}");
    let run = mctl.run(&["node", "list", &id1]).await.ok();
    assert_eq!(run.stdout, format!("NODE ID\n{id1}\n"));

    // describe as a table, like upstream's e2e test parses it.
    let run = mctl
        .run_until(&["node", "describe", &id0], HEALTH, |r| {
            r.code == 0 && r.stdout.contains("HEALTHY")
        })
        .await;
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NODE ID")
            && lines[0].contains("STATE")
            && lines[0].ends_with("HEARTBEAT  VERSION"),
        "{run}"
    );
    let fields: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(fields.len(), 8, "{run}");
    assert_eq!(fields[0], id0);
    assert_eq!(fields[1], "UP");
    assert_eq!(fields[2], host0);
    assert_eq!(fields[3], "HEALTHY");
    assert_eq!(fields[4], "ConsensusMember,KubernetesController");
    assert_eq!(fields[5], "no");
    let secs: u64 = fields[6]
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("heartbeat column {:?}", fields[6]));
    assert!(secs <= 30, "{run}");
    // The version the running binary was built as, as the binary itself prints it.
    let version = node_binary_version();
    assert_eq!(fields[7], version, "{run}");

    // JSON, parsed and checked.
    let run = mctl.run(&["node", "describe", "-o", "json"]).await.ok();
    let nodes = run.json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{run}");
    let n0 = find(&nodes, &id0).expect("node 0 in JSON");
    assert_eq!(n0["state"], "UP");
    assert_eq!(n0["address"], host0.as_str());
    assert_eq!(roles(n0), vec!["ConsensusMember", "KubernetesController"]);
    assert_eq!(n0["tpm_usage"], "NOT_PRESENT");
    assert_eq!(n0["running_curator"], true);
    assert_eq!(n0["version"], version.as_str());
    assert_eq!(n0["pubkey"].as_str().map(str::len), Some(64));
    let n1 = find(&nodes, &id1).expect("node 1 in JSON");
    assert_eq!(n1["address"], host1.as_str());
    assert!(roles(n1).is_empty());
    // --columns narrows the fields.
    let run = mctl
        .run(&[
            "node",
            "describe",
            &id1,
            "-o",
            "json",
            "--columns",
            "id,address",
        ])
        .await
        .ok();
    assert_eq!(
        run.json(),
        serde_json::json!([{"id": id1, "address": host1}])
    );

    // YAML.
    let run = mctl
        .run(&["node", "describe", &id1, "-o", "yaml"])
        .await
        .ok();
    assert!(run.stdout.starts_with(&format!("- id: {id1}\n")), "{run}");
    assert!(run.stdout.contains("\n  state: UP\n"), "{run}");
    assert!(
        run.stdout.contains(&format!("\n  address: \"{host1}\"\n")),
        "{run}"
    );
    assert!(run.stdout.contains("\n  roles: []\n"), "{run}");

    // --output writes the file instead of stdout.
    let out = tmp.path().join("nodes.json");
    let run = mctl
        .run(&[
            "node",
            "list",
            "-o",
            "json",
            "--output",
            out.to_str().expect("utf8"),
        ])
        .await
        .ok();
    assert!(run.stdout.is_empty(), "{run}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("output file")).expect("json");
    assert_eq!(written.as_array().map(Vec::len), Some(2));

    // --filter (CEL, evaluated by the cluster).
    let run = mctl
        .run(&[
            "node",
            "list",
            "--filter",
            &format!("node.status.external_address == \"{host1}\""),
        ])
        .await
        .ok();
    assert_eq!(run.stdout, format!("NODE ID\n{id1}\n"));
    let run = mctl
        .run(&[
            "node",
            "list",
            "--filter",
            "has(node.roles.consensus_member)",
        ])
        .await
        .ok();
    assert_eq!(run.stdout, format!("NODE ID\n{id0}\n"));

    // Readable errors: a bad filter, an unknown and a malformed ID.
    let run = mctl
        .run(&["node", "describe", "--filter", "node.state ==="])
        .await
        .failed(3);
    assert!(run.stderr.contains("rejected the filter"), "{run}");
    assert!(run.stderr.contains("CEL"), "{run}");
    let unknown = identity::PublicKey::from_bytes([9; 32]).node_id();
    let run = mctl.run(&["node", "describe", &unknown]).await.failed(3);
    assert!(
        run.stderr.contains(&format!("node {unknown} not found")),
        "{run}"
    );
    let run = mctl
        .run(&["node", "add-role", "kw", &unknown])
        .await
        .failed(3);
    assert!(run.stderr.contains("not found"), "{run}");
    let run = mctl.run(&["node", "describe", "node-1"]).await.failed(2);
    assert!(run.stderr.contains("metropolis-"), "{run}");
    mctl.run(&["node", "add-role", "worker", &id1])
        .await
        .failed(2);

    // cluster info and ticket.
    let run = mctl.run(&["cluster", "info", "-o", "json"]).await.ok();
    let info = run.json();
    assert_eq!(info["ca_fingerprint"], ca_fp.as_str());
    assert_eq!(info["tpm_mode"], "DISABLED");
    assert!(
        info["directory"].as_array().is_some_and(|d| !d.is_empty()),
        "{run}"
    );
    let run = mctl.run(&["cluster", "info"]).await.ok();
    assert!(run.stdout.contains(&ca_fp), "{run}");
    let ticket = mctl.run(&["cluster", "ticket"]).await.ok().stdout;
    assert!(ticket.trim().len() >= 64, "{ticket}");
    let run = mctl.run(&["cluster", "ticket", "-o", "json"]).await.ok();
    assert_eq!(run.json()["ticket"], ticket.trim());
    let rotated = mctl.run(&["cluster", "ticket", "--rotate"]).await.ok();
    assert!(rotated.stderr.contains("node-params"), "{rotated}");
    assert_ne!(rotated.stdout, ticket);
    assert_eq!(
        mctl.run(&["cluster", "ticket"]).await.ok().stdout,
        rotated.stdout
    );

    // Logs of the registered node contain its enrolment.
    let run = mctl.run(&["node", "logs", &id1]).await.ok();
    assert!(
        run.stdout
            .starts_with(&format!("=== Logs from {id1} ({host1}):\n")),
        "{run}"
    );
    assert!(run.stdout.contains("Cluster enrolment done."), "{run}");
    assert!(run.stdout.ends_with("=== Done.\n"), "{run}");
    let run = mctl
        .run(&[
            "node",
            "logs",
            &id1,
            "--dn",
            "root",
            "--exact",
            "--backlog",
            "5",
            "--concise",
        ])
        .await
        .ok();
    assert!(run.stdout.lines().count() >= 3, "{run}");
    assert!(run.stdout.ends_with("=== Done.\n"), "{run}");

    // Following: new entries arrive while the command runs (a role change makes the node's
    // role fetcher log its new roles).
    let mut follow = mctl
        .command(&[
            "node",
            "logs",
            &id1,
            "-f",
            "--backlog",
            "1",
            "--dn",
            "root.role",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start logs -f");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let header = next_line(&mut lines).await;
    assert_eq!(header, format!("=== Logs from {id1} ({host1}):"));
    mctl.run(&["node", "add-role", "kw", &id1]).await.ok();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline, next_line(&mut lines))
            .await
            .expect("the followed log did not show the role change within 60 s");
        if line.contains("KubernetesWorker") {
            break;
        }
    }
    let _ = follow.kill().await;
    mctl.run(&["node", "remove-role", "kw", &id1]).await.ok();

    // Shell completions.
    let run = mctl.run(&["completion", "bash"]).await.ok();
    assert!(run.stdout.contains("metroctl"), "{run}");

    // Nobody listening: unreachable (exit 4), quickly.
    let run = mctl
        .run(&[
            "--endpoints",
            &block.host(200),
            "--connect-timeout",
            "3",
            "node",
            "list",
        ])
        .await
        .failed(4);
    assert!(
        run.stderr.contains("unreachable") || run.stderr.contains("cannot reach"),
        "{run}"
    );
    let other = Metroctl::fresh(&tmp.path().join("cfg2"), Some(&cluster.owner_key_path()))
        .with_endpoints(&block.host(200));
    other.run(&["takeownership"]).await.failed(4);

    cluster.shutdown().await;
}
