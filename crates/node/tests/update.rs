//! NodeManagement.UpdateNode against a real node process, with bundles served over HTTPS by a
//! server inside the test (a test CA the node trusts through `--update-ca`, as a private
//! mirror's). The "new" versions are the same node binary re-stamped with another version by
//! `metropolis-bundle --stamp-version` (see `node::version`): what the node then reports comes from
//! the binary it runs, not from the test.
//!
//! One node walks through: refusals that leave the slots alone (http://, an unreachable host,
//! a bundle with a wrong digest), ACTIVATION_NONE (the new slot boots on the next start),
//! ACTIVATION_KEXEC (same PID, back on the new version) and ACTIVATION_REBOOT (the node exits
//! asking for a reboot and the launcher starts it again, into the new slot), then Reboot:
//! KEXEC with START_ROLLBACK (back to the other slot, same PID) and POWER_OFF.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::node::update::slots::{BOOT_STATE, Slot, Slots};
use common::{START_TIMEOUT, bootstrap_params, cluster_ca, write_params};
use identity::SigningKey;
use proto::api::management_client::ManagementClient;
use proto::api::node_management_client::NodeManagementClient;
use proto::api::reboot_request::{NextBoot, Type as RebootType};
use proto::api::{ActivationMode, GetNodesRequest, RebootRequest, UpdateNodeRequest};
use proto::common::cluster_configuration::StorageSecurityPolicy;
use test_support::mirror::serve_https;
use test_support::node::{self, RestartPolicy, TestNode};
use test_support::{LoopbackBlock, eventually};
use tonic::Code;
use tonic::transport::Channel;

/// How long a node may take to come back on a new version (stop, etcd and curator restart).
const BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes a bundle of this build's node binary, re-stamped as `version` if given.
fn make_bundle(binary: &Path, dir: &Path, name: &str, version: Option<&str>) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_metropolis-bundle"));
    cmd.arg("--binary").arg(binary).arg("--output").arg(&out);
    if let Some(v) = version {
        cmd.arg("--stamp-version").arg(v);
    }
    let status = cmd.status().expect("run metropolis-bundle");
    assert!(status.success(), "metropolis-bundle failed");
    out
}

/// The version GetNodes reports for node `id`, in its SemVer form.
async fn reported_version(mgmt: &mut ManagementClient<Channel>, id: &str) -> Option<String> {
    let mut stream = mgmt
        .get_nodes(GetNodesRequest {
            filter: format!("node.id == \"{id}\""),
        })
        .await
        .ok()?
        .into_inner();
    let node = stream.message().await.ok()??;
    node.status?.version.map(|v| v.to_string())
}

async fn wait_for_version(mgmt: &mut ManagementClient<Channel>, id: &str, want: &str) {
    let mgmt = &*mgmt;
    eventually(BACK_TIMEOUT, async || {
        let mut m = mgmt.clone();
        match reported_version(&mut m, id).await {
            Some(v) if v == want => Ok(()),
            other => Err(format!("node reports {other:?}, waiting for {want}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

fn update(url: &str, mode: ActivationMode) -> UpdateNodeRequest {
    UpdateNodeRequest {
        bundle_url: url.to_string(),
        activation_mode: mode as i32,
    }
}

/// Names of the entries of the ESP that belong to updates.
fn update_files(esp: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(esp)
        .expect("esp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("slot-") || n == BOOT_STATE || n.starts_with("bundle"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_node_none_kexec_reboot_and_refusals() {
    let block = LoopbackBlock::allocate();
    let node_ip = block.host(1);
    let mirror = SocketAddr::from((block.addr(9), 8443));
    let dir = tempfile::tempdir().expect("tempdir");

    let owner = SigningKey::generate().expect("owner");
    let params = write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::Permissive),
    );
    let node_dir = dir.path().join("node0");
    let mut config = node::config(0, &node_dir, block.addr(1), Some(&params));
    let binary = config.binary.clone();
    let built = {
        let out = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .expect("--version");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("metropolis-node ")
            .to_string()
    };
    let bundles = dir.path().join("bundles");
    std::fs::create_dir(&bundles).expect("mkdir");
    let v_none = "0.2.0";
    let v_kexec = "0.3.0";
    let v_reboot = "0.4.0";
    let mut files = Vec::new();
    for (name, version) in [("none", v_none), ("kexec", v_kexec), ("reboot", v_reboot)] {
        let path = make_bundle(&binary, &bundles, &format!("{name}.tar"), Some(version));
        files.push((
            format!("/{name}.tar"),
            std::fs::read(path).expect("read bundle"),
        ));
    }
    // The same bundle with one byte of the binary changed after the manifest was written.
    let mut tampered = files[0].1.clone();
    let at = tampered.len() - 4096;
    tampered[at] ^= 0xff;
    files.push(("/tampered.tar".to_string(), tampered));
    let ca_pem = serve_https(mirror, files).await;
    let ca_file = dir.path().join("mirror-ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");

    config.extra_args = vec!["--update-ca".into(), ca_file.display().to_string()];
    // Like a machine's firmware: a node that asks for a reboot is started again.
    config.restart = RestartPolicy::OnRebootRequest;
    let n = node::Node::new(config);
    n.start().expect("start node");
    let id = n.expect_id(START_TIMEOUT).await;
    n.expect_line(node::READY_MARKER, START_TIMEOUT).await;
    let ca = cluster_ca(&node_dir);
    let cert = common::escrow(&node_ip, &owner, &ca, &id).await;
    let mut mgmt = ManagementClient::new(common::owner_channel(
        &node_ip, 7835, &owner, &cert, &ca, &id,
    ));
    let nm_channel = common::owner_channel(&node_ip, 7839, &owner, &cert, &ca, &id);
    let mut nm = NodeManagementClient::new(nm_channel);
    wait_for_version(&mut mgmt, &id, &built).await;
    let esp = node_dir.join("esp").join("metropolis");
    let slots = Slots::new(&esp);

    // Refusals: nothing is installed, nothing is left behind.
    let err = nm
        .update_node(update(
            &format!("http://{mirror}/none.tar"),
            ActivationMode::ActivationNone,
        ))
        .await
        .expect_err("http:// refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("https://"), "{}", err.message());
    let unreachable = SocketAddr::from((block.addr(10), 8443));
    let err = nm
        .update_node(update(
            &format!("https://{unreachable}/none.tar"),
            ActivationMode::ActivationNone,
        ))
        .await
        .expect_err("unreachable host");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("connecting to"), "{}", err.message());
    let err = nm
        .update_node(update(
            &format!("https://{mirror}/tampered.tar"),
            ActivationMode::ActivationKexec,
        ))
        .await
        .expect_err("tampered bundle");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("SHA-256") && err.message().contains("does not match"),
        "{}",
        err.message()
    );
    let err = nm
        .update_node(update(
            &format!("https://{mirror}/missing.tar"),
            ActivationMode::ActivationNone,
        ))
        .await
        .expect_err("404");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("404"), "{}", err.message());
    assert_eq!(update_files(&esp), Vec::<String>::new());
    assert!(n.is_running());

    // NONE: installed into slot A, the node keeps running the base binary until restarted.
    nm.update_node(update(
        &format!("https://{mirror}/none.tar"),
        ActivationMode::ActivationNone,
    ))
    .await
    .expect("UpdateNode NONE");
    let state = slots.state().expect("boot state");
    assert_eq!((state.active, state.next), (None, Some(Slot::A)));
    assert_eq!(
        reported_version(&mut mgmt, &id).await.as_deref(),
        Some(built.as_str())
    );
    n.expect_stop(Duration::from_secs(30)).await;
    n.start().expect("restart");
    n.expect_line(node::READY_MARKER, START_TIMEOUT).await;
    wait_for_version(&mut mgmt, &id, v_none).await;
    let state = slots.state().expect("boot state");
    assert_eq!((state.active, state.next), (Some(Slot::A), Some(Slot::A)));
    assert_eq!(
        state.last_successful.and_then(|b| b.slot),
        Some(Slot::A),
        "{state:?}"
    );

    // KEXEC: slot B, same process.
    let pid = n.pid().expect("pid");
    let boot = n.boot();
    nm.update_node(update(
        &format!("https://{mirror}/kexec.tar"),
        ActivationMode::ActivationKexec,
    ))
    .await
    .expect("UpdateNode KEXEC");
    wait_for_version(&mut mgmt, &id, v_kexec).await;
    assert_eq!(n.pid(), Some(pid), "kexec keeps the PID");
    assert_eq!(n.boot(), boot, "kexec is not a restart by the launcher");
    let state = slots.state().expect("boot state");
    assert_eq!((state.active, state.next), (Some(Slot::B), Some(Slot::B)));
    // Slot A, the fallback, is as it was.
    assert_eq!(
        slots
            .manifest(Slot::A)
            .expect("manifest")
            .map(|m| m.version.to_proto().to_string()),
        Some(v_none.to_string())
    );

    // REBOOT: slot A again; the node exits asking for a reboot and the launcher restarts it.
    nm.update_node(update(
        &format!("https://{mirror}/reboot.tar"),
        ActivationMode::ActivationReboot,
    ))
    .await
    .expect("UpdateNode REBOOT");
    wait_for_version(&mut mgmt, &id, v_reboot).await;
    assert!(n.boot() > boot, "the launcher started the node again");
    assert!(
        n.exits()
            .iter()
            .any(|(_, e)| e.code() == Some(node::EXIT_REBOOT)),
        "{:?}",
        n.exits()
    );
    let state = slots.state().expect("boot state");
    assert_eq!((state.active, state.next), (Some(Slot::A), Some(Slot::A)));

    // Reboot KEXEC with START_ROLLBACK: back to slot B (the KEXEC version), same process.
    let pid = n.pid().expect("pid");
    let boot = n.boot();
    nm.reboot(RebootRequest {
        r#type: RebootType::Kexec as i32,
        next_boot: NextBoot::StartRollback as i32,
    })
    .await
    .expect("Reboot KEXEC START_ROLLBACK");
    wait_for_version(&mut mgmt, &id, v_kexec).await;
    assert_eq!(
        (n.pid(), n.boot()),
        (Some(pid), boot),
        "kexec keeps the process"
    );
    let state = slots.state().expect("boot state");
    assert_eq!((state.active, state.next), (Some(Slot::B), Some(Slot::B)));
    // Unsupported combinations are refused without side effects.
    let err = nm
        .reboot(RebootRequest {
            r#type: RebootType::Kexec as i32,
            next_boot: NextBoot::StartFirmwareUi as i32,
        })
        .await
        .expect_err("kexec into firmware UI");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = nm
        .reboot(RebootRequest {
            r#type: RebootType::Firmware as i32,
            next_boot: NextBoot::StartFirmwareUi as i32,
        })
        .await
        .expect_err("firmware UI");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // POWER_OFF: a clean stop that nothing restarts.
    nm.reboot(RebootRequest {
        r#type: RebootType::PowerOff as i32,
        next_boot: NextBoot::StartNormal as i32,
    })
    .await
    .expect("Reboot POWER_OFF");
    let exit = n.expect_exit(BACK_TIMEOUT).await;
    assert_eq!(exit.code(), Some(node::EXIT_CLEAN), "{exit:?}");
    assert_eq!(n.boot(), boot);
}

/// The download is bounded in size (announced or not) and in time, and trusts only the
/// system's CAs plus the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_bounded_and_verified() {
    use ::node::update::fetch::{FetchConfig, FetchError, check_url, fetch_to_file};

    let block = LoopbackBlock::allocate();
    let mirror = SocketAddr::from((block.addr(1), 8443));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_pem = serve_https(mirror, vec![("/big".to_string(), vec![7u8; 4096])]).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let url = check_url(&format!("https://{mirror}/big")).expect("url");

    let fits = FetchConfig::new(Some(&ca_file), Duration::from_secs(30), 4096).expect("config");
    let size = fetch_to_file(&url, &fits, &dir.path().join("ok"))
        .await
        .expect("download within bounds");
    assert_eq!(size, 4096);
    assert_eq!(
        std::fs::read(dir.path().join("ok")).expect("read").len(),
        4096
    );

    let small = FetchConfig::new(Some(&ca_file), Duration::from_secs(30), 4095).expect("config");
    match fetch_to_file(&url, &small, &dir.path().join("big")).await {
        Err(FetchError::Failed(m)) => assert!(m.contains("at most 4095"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Without the mirror's CA the server is not trusted.
    let untrusted = FetchConfig::new(None, Duration::from_secs(30), 4096).expect("config");
    match fetch_to_file(&url, &untrusted, &dir.path().join("untrusted")).await {
        Err(FetchError::Failed(m)) => assert!(m.contains("TLS handshake"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A server that accepts connections and never answers: the time bound ends it.
    let silent = tokio::net::TcpListener::bind(SocketAddr::from((block.addr(2), 8443)))
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let quick = FetchConfig::new(Some(&ca_file), Duration::from_secs(1), 4096).expect("config");
    let started = std::time::Instant::now();
    let url = check_url(&format!("https://{silent_addr}/big")).expect("url");
    match fetch_to_file(&url, &quick, &dir.path().join("silent")).await {
        Err(FetchError::Failed(m)) => assert!(m.contains("within 1s"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    held.abort();
}

/// A bundle whose binary exits at once: the loader starts it at most MAX_BOOT_ATTEMPTS times
/// (the launcher restarts the failing node like a machine that reboots on failure), then
/// boots the previous binary again, which comes back on its old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_never_boots_is_rolled_back() {
    use ::node::update::bundle;
    use ::node::update::loader::MAX_BOOT_ATTEMPTS;

    let block = LoopbackBlock::allocate();
    let node_ip = block.host(1);
    let mirror = SocketAddr::from((block.addr(9), 8443));
    let dir = tempfile::tempdir().expect("tempdir");
    let broken: &[u8] = b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n";
    let mut data = Vec::new();
    let version = proto::Version::parse_semver("0.9.0").expect("version");
    bundle::write(&mut data, &version, &[(bundle::NODE_BINARY, broken, 0o755)]).expect("bundle");
    let ca_pem = serve_https(mirror, vec![("/broken.tar".to_string(), data)]).await;
    let ca_file = dir.path().join("mirror-ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");

    let owner = SigningKey::generate().expect("owner");
    let params = write_params(
        dir.path(),
        &bootstrap_params(&owner, StorageSecurityPolicy::Permissive),
    );
    let node_dir = dir.path().join("node0");
    let mut config = node::config(0, &node_dir, block.addr(1), Some(&params));
    config.extra_args = vec!["--update-ca".into(), ca_file.display().to_string()];
    config.restart = RestartPolicy::OnFailure;
    let n = node::Node::new(config);
    n.start().expect("start node");
    let id = n.expect_id(START_TIMEOUT).await;
    n.expect_line(node::READY_MARKER, START_TIMEOUT).await;
    let ca = cluster_ca(&node_dir);
    let cert = common::escrow(&node_ip, &owner, &ca, &id).await;
    let mut mgmt = ManagementClient::new(common::owner_channel(
        &node_ip, 7835, &owner, &cert, &ca, &id,
    ));
    let mut nm = NodeManagementClient::new(common::owner_channel(
        &node_ip, 7839, &owner, &cert, &ca, &id,
    ));
    let built = reported_version(&mut mgmt, &id).await.expect("version");
    let boot = n.boot();

    nm.update_node(update(
        &format!("https://{mirror}/broken.tar"),
        ActivationMode::ActivationReboot,
    ))
    .await
    .expect("UpdateNode REBOOT");
    // One reboot into the slot, MAX_BOOT_ATTEMPTS failed starts, one more into the old binary.
    let esp = node_dir.join("esp").join("metropolis");
    let slots = Slots::new(&esp);
    eventually(BACK_TIMEOUT, async || {
        if n.boot() > boot + MAX_BOOT_ATTEMPTS && n.logs_contain("rolling back") {
            Ok(())
        } else {
            Err(format!("boot {}, state {:?}", n.boot(), slots.state()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    n.expect_line(node::READY_MARKER, START_TIMEOUT).await;
    wait_for_version(&mut mgmt, &id, &built).await;
    let broken_starts = n
        .logs()
        .iter()
        .filter(|l| l.contains("broken build"))
        .count();
    assert_eq!(broken_starts as u32, MAX_BOOT_ATTEMPTS, "{}", n.tail(40));
    let state = slots.state().expect("boot state");
    assert_eq!((state.active, state.next), (None, None), "{state:?}");
    assert_eq!(state.attempts, 0);
    let rolled_back = state.rolled_back.expect("the rollback is recorded");
    assert_eq!(
        (rolled_back.slot, rolled_back.attempts),
        (Slot::A, MAX_BOOT_ATTEMPTS)
    );
    // The node says so in its own log (the log tree the Logs RPC serves).
    assert!(
        n.logs_contain("rolled back: slot A was started 3 times"),
        "{}",
        n.tail(40)
    );
}
