//! etcd's NOSPACE alarm against a real etcd with a small backend quota: overwriting one key
//! grows the history until etcd raises the alarm and refuses writes (ResourceExhausted,
//! "database space exceeded"); the member's space keeper logs the alarm, compacts,
//! defragments and disarms it, after which writes succeed again.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use consensus::{Config, Service};
use identity::SigningKey;
use kv::etcd_client::{AlarmAction, AlarmType};
use logtree::LogTree;
use supervisor::Supervisor;
use test_support::{LoopbackBlock, eventually};

/// etcd start on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);
/// Small enough to fill in a second, large enough for etcd's own start-up data.
const QUOTA: u64 = 1024 * 1024;
/// One overwrite: 64 KiB, so about 16 of them fill the quota with history.
const VALUE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_is_reported_and_cleared_after_compaction() {
    let block = LoopbackBlock::allocate();
    let dir = tempfile::tempdir().expect("tempdir");
    let address: IpAddr = block.host(1).parse().expect("ip");
    let mut config = Config::new(
        dir.path().join("etcd"),
        dir.path().join("eph"),
        SigningKey::generate().expect("key"),
        address,
    );
    config.quota_backend_bytes = Some(QUOTA);
    config.space_check_interval = Duration::from_millis(500);
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
    let status = tokio::time::timeout(TIMEOUT, service.wait_running())
        .await
        .expect("member running");
    let ns = status.namespaced(&["curator"]).expect("ns");

    // Overwrite one key until etcd refuses: only history grows, the live data stays 64 KiB.
    let value = vec![b'x'; VALUE];
    let mut refused = None;
    for _ in 0..200 {
        match ns.put("/filler", value.clone(), None).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("etcd never refused a write past its quota");
    assert!(refused.is_no_space(), "not a NOSPACE refusal: {refused}");
    match &refused {
        kv::Error::Etcd(kv::etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        }
        e => panic!("not a gRPC status: {e}"),
    }

    // The keeper reports the alarm in the member's log and clears it; writes succeed again.
    eventually(TIMEOUT, async || match ns.put("/after", "ok", None).await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    })
    .await
    .expect("writes succeed once the keeper disarmed the alarm");
    let alarms = status
        .client()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(
        alarms.alarms().is_empty(),
        "{:?}",
        alarms
            .alarms()
            .iter()
            .map(|a| a.alarm())
            .collect::<Vec<_>>()
    );
    let size = status.client().status().await.expect("status").db_size();
    assert!(
        u64::try_from(size).expect("size") < QUOTA,
        "database {size} bytes after defragmentation"
    );
    let got = ns.get("/filler", None).await.expect("get");
    assert_eq!(got.kvs()[0].value().len(), VALUE, "the live value survives");
    let lines = common::consensus_logs(&tree);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("etcd NOSPACE alarm on member")
                && l.contains("reached the backend quota")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("disarmed")), "{lines:#?}");
    supervisor.shutdown().await.expect("shutdown");
}
