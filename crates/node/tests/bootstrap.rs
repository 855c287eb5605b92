//! A single-node cluster with the real binary: bootstrap, owner escrow,
//! GetClusterInfo and Logs with the owner certificate, clean SIGTERM shutdown, and a restart
//! that re-joins the cluster from the sealed configuration with no plaintext private key in
//! the encrypted part of the data directory.

mod common;

use std::time::Duration;

use common::{START_TIMEOUT, bootstrap_params, cluster_ca};
use identity::SigningKey;
use proto::api::get_logs_request::{BacklogMode, StreamMode};
use proto::api::management_client::ManagementClient;
use proto::api::node_management_client::NodeManagementClient;
use proto::api::{GetClusterInfoRequest, GetLogsRequest};
use proto::common::LogFilter;
use proto::common::cluster_configuration::StorageSecurityPolicy;
use proto::common::log_entry::Kind;
use proto::common::log_filter::{Filter, WithChildren};
use test_support::fs::files_below;
use test_support::node::{self, Exit, TestNode};
use test_support::process::pids_with_arg;
use test_support::{LoopbackBlock, eventually};
use tonic::transport::Channel;

/// Lines logged at `root` read through NodeManagement.Logs.
async fn root_log_lines(ch: Channel) -> Vec<String> {
    let mut stream = NodeManagementClient::new(ch)
        .logs(GetLogsRequest {
            dn: "root".to_string(),
            filters: vec![],
            backlog_mode: BacklogMode::BacklogAll as i32,
            backlog_count: 0,
            stream_mode: StreamMode::StreamDisable as i32,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(msg) = stream.message().await.expect("logs message") {
        for e in msg.backlog_entries {
            assert_eq!(e.dn, "root");
            if let Some(Kind::Leveled(l)) = e.kind {
                lines.extend(l.lines);
            }
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_serve_stop_and_rejoin() {
    let block = LoopbackBlock::allocate();
    let address = block.addr(1);
    let host = block.host(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("node0");
    let owner = SigningKey::generate().expect("owner key");
    let params = common::write_params(
        dir.path(),
        &bootstrap_params(
            &owner,
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
        ),
    );

    // First boot: bootstrap.
    let node = node::start(0, &state, address, Some(&params));
    let id = node.expect_id(START_TIMEOUT).await;
    assert!(identity::is_valid_node_id(&id), "{id}");
    node.expect_line("NODE_READY", START_TIMEOUT).await;
    node.expect_line("Cluster enrolment done.", Duration::from_secs(5))
        .await;
    let ca = cluster_ca(&state);

    let cert = common::escrow(&host, &owner, &ca, &id).await;
    let info = ManagementClient::new(common::owner_channel(&host, 7835, &owner, &cert, &ca, &id))
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("GetClusterInfo")
        .into_inner();
    assert_eq!(info.ca_certificate, ca);

    let root_lines =
        root_log_lines(common::owner_channel(&host, 7839, &owner, &cert, &ca, &id)).await;
    assert!(
        root_lines.iter().any(|l| l == "Cluster enrolment done."),
        "{root_lines:?}"
    );
    // The whole tree includes the etcd member's logs.
    let mut all =
        NodeManagementClient::new(common::owner_channel(&host, 7839, &owner, &cert, &ca, &id))
            .logs(GetLogsRequest {
                dn: String::new(),
                filters: vec![LogFilter {
                    filter: Some(Filter::WithChildren(WithChildren {})),
                }],
                backlog_mode: BacklogMode::BacklogAll as i32,
                backlog_count: 0,
                stream_mode: StreamMode::StreamDisable as i32,
            })
            .await
            .expect("logs")
            .into_inner();
    let mut dns = std::collections::BTreeSet::new();
    while let Some(msg) = all.message().await.expect("message") {
        dns.extend(msg.backlog_entries.into_iter().map(|e| e.dn));
    }
    assert!(
        dns.iter().any(|d| d.ends_with("controlplane.consensus")),
        "{dns:?}"
    );

    // A crashed etcd member: the control plane restarts and the cluster API comes back.
    let etcd_data = state.join("data/etcd/data");
    let etcd_pids = pids_with_arg(&etcd_data.to_string_lossy());
    assert_eq!(etcd_pids.len(), 1, "{etcd_pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &etcd_pids[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    node.expect_line("the etcd member stopped", START_TIMEOUT)
        .await;
    eventually(Duration::from_secs(60), async || {
        let ch = common::owner_channel(&host, 7835, &owner, &cert, &ca, &id);
        ManagementClient::new(ch)
            .get_cluster_info(GetClusterInfoRequest {})
            .await
    })
    .await
    .expect("the cluster API comes back after the etcd crash");

    assert_eq!(
        node.expect_stop(Duration::from_secs(30)).await,
        Exit::Code(0)
    );
    assert!(
        node.stdout_lines()
            .iter()
            .any(|l| l.contains("received SIGTERM")),
        "{:?}",
        node.stdout_lines()
    );
    drop(node);

    // Second boot: re-join from the sealed configuration (parameters stay installed).
    let node = node::start(0, &state, address, None);
    assert_eq!(node.expect_id(START_TIMEOUT).await, id);
    node.expect_line("Joined the cluster.", START_TIMEOUT).await;
    node.expect_line("NODE_READY", START_TIMEOUT).await;
    let info = ManagementClient::new(common::owner_channel(&host, 7835, &owner, &cert, &ca, &id))
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("GetClusterInfo after restart")
        .into_inner();
    assert_eq!(info.ca_certificate, ca);

    // No plaintext private key in the encrypted part of data/. The node key is also the etcd
    // peer key, which etcd must read in the clear (documented): take it from there and make
    // sure its bytes appear nowhere else.
    let peer_key =
        SigningKey::load(&state.join("data/etcd/peer_pki/cert-key.pem")).expect("etcd peer key");
    assert_eq!(peer_key.public_key().node_id(), id);
    let etcd = state.join("data/etcd");
    let encrypted: Vec<_> = files_below(&state.join("data"))
        .into_iter()
        .filter(|p| !p.starts_with(&etcd))
        .collect();
    assert!(
        encrypted
            .iter()
            .any(|p| p.ends_with("node/credentials/cert-key.pem")),
        "{encrypted:?}"
    );
    for path in &encrypted {
        let bytes = std::fs::read(path).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "{path:?} holds a PEM key");
        assert!(
            !text.contains("CERTIFICATE"),
            "{path:?} holds a PEM certificate"
        );
        assert!(
            !bytes.windows(32).any(|w| w == peer_key.seed()),
            "{path:?} holds the raw node key"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{path:?}");
    }
}

/// Under the INSECURE storage policy the data directory is plain (as upstream's unencrypted
/// partition) and the node still re-joins through JoinNode, which returns an empty CUK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_storage_rejoins_with_plain_data() {
    let block = LoopbackBlock::allocate();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("node0");
    let owner = SigningKey::generate().expect("owner key");
    let params = common::write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::NeedsInsecure),
    );
    let node = node::start(0, &state, block.addr(1), Some(&params));
    let id = node.expect_id(START_TIMEOUT).await;
    node.expect_line("NODE_READY", START_TIMEOUT).await;
    assert_eq!(
        node.expect_stop(Duration::from_secs(30)).await,
        Exit::Code(0)
    );
    drop(node);

    let key = std::fs::read_to_string(state.join("data/node/credentials/cert-key.pem"))
        .expect("plain key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    let sealed =
        std::fs::read(state.join("esp/metropolis/sealed_configuration.pb")).expect("sealed");
    let sealed = <proto::private::SealedConfiguration as prost::Message>::decode(sealed.as_slice())
        .expect("decode");
    assert!(sealed.node_unlock_key.is_empty());
    assert_eq!(
        sealed.storage_security,
        proto::common::NodeStorageSecurity::Insecure as i32
    );

    let node = node::start(0, &state, block.addr(1), None);
    assert_eq!(node.expect_id(START_TIMEOUT).await, id);
    node.expect_line("Joined the cluster.", START_TIMEOUT).await;
    node.expect_line("NODE_READY", START_TIMEOUT).await;
}
