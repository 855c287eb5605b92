//! A curator leader under a connection and stream flood from someone who can merely connect:
//! 2,000 idle TLS connections, then streams opened and held without a request body, streams
//! opened and reset at once ("rapid reset", CVE-2023-44487) and a stream of unauthenticated
//! RegisterNode calls, all on the curator port. A legitimate node's UpdateNodeStatus must still
//! succeed within a second, on its existing connection and on a new one, and the memory of
//! the attacked process must stay bounded.
//!
//! The leader runs in this test process; the attacker is this same test binary started again
//! as a child (`flood_attacker_process`, which does nothing unless started that way), so the
//! resident memory read from `/proc/self/status` is the server's and not the attacker's.
//!
//! Also here: the size limits of the fields a node stores through the Curator service.

mod curator_support;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use curator::testing::TestLeader;
use curator_support::*;
use futures::StreamExt;
use prost::Message;
use proto::common::NodeState;
use proto::curator_api::{RegisterNodeRequest, UpdateNodeStatusRequest};
use rpc::{ClientCredentials, ServerVerification};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Set in the attacker child: the curator's address.
const ATTACKER_TARGET: &str = "CURATOR_FLOOD_TARGET";
/// Set in the attacker child: the `127.a.b` block whose addresses it connects from.
const ATTACKER_BLOCK: &str = "CURATOR_FLOOD_BLOCK";

/// Set when the test runs with its temporary files on tmpfs.
const IN_TMPFS: &str = "CURATOR_FLOOD_IN_TMPFS";
/// Where tmpfs is mounted on Linux.
const TMPFS: &str = "/dev/shm";

/// Idle TLS connections the attacker holds.
const IDLE_CONNECTIONS: usize = 2000;
/// Source addresses the idle connections are spread over (so that they are not refused by a
/// per-address cap: the harder case for the server).
const IDLE_SOURCES: usize = 8;
/// HTTP/2 connections per kind of stream flood.
const FLOOD_CONNECTIONS: usize = 4;
/// Streams each holding connection tries to open and keep.
const HELD_STREAMS_PER_CONNECTION: usize = 5000;
/// How long the legitimate node is measured under the flood.
const MEASURE_FOR: Duration = Duration::from_secs(6);

const REGISTER_NODE: &str = "/metropolis.node.core.curator.proto.api.Curator/RegisterNode";

fn status_request(id: &str, address: &str) -> UpdateNodeStatusRequest {
    UpdateNodeStatusRequest {
        node_id: id.to_string(),
        status: Some(status(address)),
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_node_is_served_under_a_connection_and_stream_flood() {
    // etcd's data goes to tmpfs when there is one: its fsyncs on a build machine's busy disk
    // take seconds at times, which says nothing about the flood. The test runs again as a
    // child with TMPDIR pointing there (a process cannot change its own environment safely).
    if std::env::var_os(IN_TMPFS).is_none() && std::path::Path::new(TMPFS).is_dir() {
        let status = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "legitimate_node_is_served_under_a_connection_and_stream_flood",
                "--exact",
                "--nocapture",
            ])
            .env(IN_TMPFS, "1")
            .env("TMPDIR", TMPFS)
            .status()
            .expect("running the test on tmpfs");
        assert!(status.success(), "the test failed on tmpfs: {status}");
        return;
    }
    sys::raise_open_file_limit().expect("raising the open-file limit");
    let t = TestLeader::start().await;
    let block = t.block.prefix();
    let (key, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&key);
    let node_channel = t.node(&key).await;
    let mut node = curator(node_channel.clone());
    node.update_node_status(status_request(&id, "10.1.0.3"))
        .await
        .expect("UpdateNodeStatus before the flood");
    let mut quiet_latencies = Vec::new();
    for i in 0..5 {
        let call = Instant::now();
        node.update_node_status(status_request(&id, &format!("10.1.0.{}", 10 + i)))
            .await
            .expect("UpdateNodeStatus before the flood");
        quiet_latencies.push(call.elapsed());
    }
    quiet_latencies.sort();
    let baseline_rss = rss_kib();

    // Peak memory, sampled off the runtime so that a busy runtime does not skew it.
    let peak_rss = Arc::new(AtomicU64::new(baseline_rss));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak_rss.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // How late the runtime and the OS wake a sleeper: tells runtime saturation from CPU
    // contention.
    let runtime_late = Arc::new(AtomicU64::new(0));
    let os_late = Arc::new(AtomicU64::new(0));
    {
        let (late, on) = (runtime_late.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let over = t0.elapsed().saturating_sub(Duration::from_millis(20));
                late.fetch_max(
                    u64::try_from(over.as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        });
        let (late, on) = (os_late.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                std::thread::sleep(Duration::from_millis(20));
                let over = t0.elapsed().saturating_sub(Duration::from_millis(20));
                late.fetch_max(
                    u64::try_from(over.as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        });
    }
    let started = Instant::now();
    // The attacker shares this machine's CPUs, which a real one would not: it runs at the
    // lowest priority so that what is measured is the server's handling of the flood rather
    // than the attacker's own CPU use.
    let mut attacker = Command::new("nice")
        .args(["-n", "19"])
        .arg(std::env::current_exe().expect("test binary"))
        .args(["flood_attacker_process", "--exact", "--nocapture"])
        .env(ATTACKER_TARGET, &t.addr)
        .env(ATTACKER_BLOCK, block)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the attacker");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = attacker.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(l) = line.strip_prefix("FLOOD ") {
                let _ = lines_tx.send(l.to_string());
            }
        }
    });
    let mut wait_for = async |prefix: &str| -> String {
        let line = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.recv().await {
                if l.starts_with(prefix) {
                    return l;
                }
            }
            panic!("the attacker exited before `{prefix}`");
        })
        .await
        .unwrap_or_else(|_| panic!("the attacker did not report `{prefix}` within 60 s"));
        eprintln!("attacker: {line}");
        line
    };
    let idle = wait_for("idle").await;
    let idle_held: usize = idle
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("idle count");
    let idle_rss = rss_kib();
    eprintln!(
        "while connecting: runtime wake-ups up to {} ms late, OS up to {} ms",
        runtime_late.swap(0, Ordering::Relaxed),
        os_late.swap(0, Ordering::Relaxed)
    );
    eprintln!(
        "{idle_held} idle TLS connections open after {:?}",
        started.elapsed()
    );
    wait_for("streaming").await;

    // The legitimate node, on its connection and on a new one, throughout the flood.
    let mut latencies = Vec::new();
    let mut fresh_latencies = Vec::new();
    let until = Instant::now() + MEASURE_FOR;
    let mut i = 0u32;
    while Instant::now() < until {
        i += 1;
        let address = format!("10.1.{}.{}", i / 250, i % 250);
        let call = Instant::now();
        node.update_node_status(status_request(&id, &address))
            .await
            .expect("UpdateNodeStatus under the flood");
        latencies.push(call.elapsed());

        let call = Instant::now();
        let mut fresh = curator(t.node(&key).await);
        fresh
            .update_node_status(status_request(&id, &address))
            .await
            .expect("UpdateNodeStatus on a new connection under the flood");
        fresh_latencies.push(call.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "during the stream flood: runtime wake-ups up to {} ms late, OS up to {} ms",
        runtime_late.swap(0, Ordering::Relaxed),
        os_late.swap(0, Ordering::Relaxed)
    );
    let stats = {
        let _ = attacker.stdin.take();
        wait_for("stats").await
    };
    let _ = attacker.kill();
    let _ = attacker.wait();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak_rss.load(Ordering::Relaxed);

    latencies.sort();
    fresh_latencies.sort();
    let max = |v: &[Duration]| v.last().copied().unwrap_or_default();
    eprintln!(
        "UpdateNodeStatus without the flood: median {:?}, max {:?}",
        quiet_latencies[quiet_latencies.len() / 2],
        max(&quiet_latencies)
    );
    eprintln!(
        "UpdateNodeStatus under the flood: {} calls on the node's connection, median {:?}, max {:?}; \
         {} on new connections, median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        max(&latencies),
        fresh_latencies.len(),
        fresh_latencies[fresh_latencies.len() / 2],
        max(&fresh_latencies),
    );
    eprintln!(
        "curator process VmRSS: {} MiB before, {} MiB with {idle_held} idle connections, \
         peak {} MiB under the stream flood (attacker: {stats}); whole test {:?}",
        baseline_rss / 1024,
        idle_rss / 1024,
        peak / 1024,
        started.elapsed(),
    );

    assert_eq!(
        idle_held, IDLE_CONNECTIONS,
        "every idle connection was accepted"
    );
    assert!(
        max(&latencies) < Duration::from_secs(1) && max(&fresh_latencies) < Duration::from_secs(1),
        "a legitimate UpdateNodeStatus takes less than a second under the flood"
    );
    assert!(
        peak - baseline_rss < 384 * 1024,
        "the flood grew the curator by {} MiB",
        (peak - baseline_rss) / 1024
    );
    t.stop().await;
}

/// The attacker of [`legitimate_node_is_served_under_a_connection_and_stream_flood`]; does
/// nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_attacker_process() {
    let (Ok(target), Ok(block)) = (
        std::env::var(ATTACKER_TARGET),
        std::env::var(ATTACKER_BLOCK),
    ) else {
        return;
    };
    sys::raise_open_file_limit().expect("raising the open-file limit");
    let target: SocketAddr = target.parse().expect("target address");
    let source = |i: usize| -> IpAddr {
        format!("{block}.{}", 10 + i % IDLE_SOURCES)
            .parse()
            .expect("source address")
    };
    let key = key();
    let config = rpc::client_tls::client_config(
        &ClientCredentials::Ephemeral(key.clone()),
        ServerVerification::Insecure,
    )
    .expect("client config");

    // Idle connections: TLS, then silence.
    let idle: Vec<_> = futures::stream::iter(0..IDLE_CONNECTIONS)
        .map(|i| tls_connect(source(i), target, config.clone()))
        .buffer_unordered(64)
        .filter_map(async |r| r.ok())
        .collect()
        .await;
    println!("FLOOD idle {}", idle.len());

    let stats = Arc::new(Stats::default());
    let flood_source: IpAddr = format!("{block}.9").parse().expect("source address");
    let mut tasks = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        tasks.push(tokio::spawn(hold_streams(
            flood_source,
            target,
            config.clone(),
            stats.clone(),
        )));
        tasks.push(tokio::spawn(rapid_reset(
            flood_source,
            target,
            config.clone(),
            stats.clone(),
        )));
        tasks.push(tokio::spawn(register_calls(
            flood_source,
            target,
            config.clone(),
            key.public_key().as_bytes().to_vec(),
            stats.clone(),
        )));
    }
    // Let the flood build up before the node is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("FLOOD streaming");

    // Until the test closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 16];
    while !matches!(stdin.read(&mut buf).await, Ok(0) | Err(_)) {}
    println!(
        "FLOOD stats streams the server let one connection open: {}, held streams started \
         (beyond that limit they wait in the attacker): {}, resets {}, RegisterNode calls {}, \
         flood connections closed by the server {}",
        match stats.stream_limit.load(Ordering::Relaxed) {
            usize::MAX => "unlimited".to_string(),
            n => n.to_string(),
        },
        stats.held.load(Ordering::Relaxed),
        stats.resets.load(Ordering::Relaxed),
        stats.calls.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
    );
    drop(idle);
    for t in tasks {
        t.abort();
    }
}

#[derive(Default)]
struct Stats {
    /// The server's limit of concurrent streams per connection, as it announced it.
    stream_limit: AtomicUsize,
    /// Streams started without a request body, over all holding connections (the client
    /// queues those beyond the server's limit).
    held: AtomicUsize,
    /// Streams opened and reset at once.
    resets: AtomicUsize,
    /// Completed RegisterNode calls.
    calls: AtomicUsize,
    /// Flood connections the server closed (GOAWAY or reset).
    closed: AtomicUsize,
}

async fn tls_connect(
    from: IpAddr,
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    let name = rustls_pki_types::ServerName::try_from("curator").expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

async fn h2_connect(
    from: IpAddr,
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<h2::client::SendRequest<Bytes>> {
    let tls = tls_connect(from, to, config).await.ok()?;
    let (send, connection) = h2::client::handshake(tls).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(send)
}

fn request(path: &str) -> http::Request<()> {
    http::Request::post(format!("https://curator{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// Opens streams and never sends their request body, keeping as many open as the server
/// lets it; reconnects when the server closes the connection.
async fn hold_streams(
    from: IpAddr,
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stats: Arc<Stats>,
) {
    loop {
        let Some(mut send) = h2_connect(from, to, config.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut held = Vec::new();
        while held.len() < HELD_STREAMS_PER_CONNECTION {
            let Ok(ready) = send.ready().await else {
                break;
            };
            send = ready;
            if held.len() == 1 {
                // By now the server's SETTINGS have arrived: the first stream was answered.
                stats
                    .stream_limit
                    .store(send.current_max_send_streams(), Ordering::Relaxed);
            }
            match send.send_request(request(REGISTER_NODE), false) {
                Ok((response, stream)) => {
                    if held.is_empty() {
                        // Wait for the first stream's answer (the request has no body, so
                        // that is the deadline's Cancelled or the connection's end).
                        let response = tokio::time::timeout(Duration::from_millis(200), response);
                        let _ = response.await;
                    }
                    held.push(stream);
                    stats.held.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        if held.len() == HELD_STREAMS_PER_CONNECTION {
            // Keep them until the test ends.
            std::future::pending::<()>().await;
        }
        stats.held.fetch_sub(held.len(), Ordering::Relaxed);
        stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens streams and resets each at once, as fast as the connection allows.
async fn rapid_reset(
    from: IpAddr,
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stats: Arc<Stats>,
) {
    loop {
        let Some(mut send) = h2_connect(from, to, config.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let Ok(ready) = send.ready().await else {
                break;
            };
            send = ready;
            match send.send_request(request(REGISTER_NODE), false) {
                Ok((_, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    stats.resets.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
            tokio::task::yield_now().await;
        }
        stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unauthenticated RegisterNode calls with a wrong ticket (each costs the curator a lookup of
/// the real one), as many at once as the connection allows.
async fn register_calls(
    from: IpAddr,
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    join_key: Vec<u8>,
    stats: Arc<Stats>,
) {
    let body = {
        let message = RegisterNodeRequest {
            register_ticket: vec![0; 34],
            join_key,
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(&message);
        Bytes::from(frame)
    };
    loop {
        let Some(mut send) = h2_connect(from, to, config.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let inflight = Arc::new(tokio::sync::Semaphore::new(1000));
        loop {
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break;
            };
            let Ok(ready) = send.ready().await else {
                break;
            };
            send = ready;
            let Ok((response, mut stream)) = send.send_request(request(REGISTER_NODE), false)
            else {
                break;
            };
            if stream.send_data(body.clone(), true).is_err() {
                break;
            }
            let stats = stats.clone();
            tokio::spawn(async move {
                if let Ok(response) = response.await {
                    let mut body = response.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let _ = body.trailers().await;
                    stats.calls.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
        }
        stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a node stores about itself is bounded: an oversized boot ID, too many or absurd
/// cluster network prefixes and requests over the Curator's size limit are refused and leave
/// the record as it was; errors about oversized input do not quote it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_node_fields_are_refused_and_not_stored() {
    use proto::api::update_node_labels_request::Node as Which;
    use proto::common::NodeClusterNetworking;
    use proto::common::node_cluster_networking::Prefix;
    use proto::common::node_labels::Pair;
    use proto::curator_api::UpdateNodeClusterNetworkingRequest;
    use tonic::Code;

    let t = TestLeader::start().await;
    let (key, _) = add_node(&t, NodeState::Up, &[1; 32]).await;
    let id = id_of(&key);
    let mut node = curator(t.node(&key).await);
    let with_boot_id = |boot_id: Vec<u8>| {
        let mut req = status_request(&id, "10.1.0.3");
        if let Some(s) = req.status.as_mut() {
            s.boot_id = boot_id;
        }
        req
    };

    // A real boot ID is stored.
    node.update_node_status(with_boot_id(vec![7; 16]))
        .await
        .expect("16-byte boot ID");
    let stored = || async { load(&t, &id).await.node.status.expect("status").boot_id };
    assert_eq!(stored().await, vec![7; 16]);

    // One of a KiB is refused; so is a request over the Curator's size limit.
    let err = node
        .update_node_status(with_boot_id(vec![8; 1024]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("boot_id"), "{}", err.message());
    let err = node
        .update_node_status(with_boot_id(vec![9; 1 << 20]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(stored().await, vec![7; 16], "nothing oversized was stored");

    // Cluster networking: too many prefixes, or a "prefix" of 100 KB.
    let clusternet = |prefixes: Vec<String>| UpdateNodeClusterNetworkingRequest {
        clusternet: Some(NodeClusterNetworking {
            wireguard_pubkey: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_string(),
            prefixes: prefixes.into_iter().map(|cidr| Prefix { cidr }).collect(),
        }),
    };
    let many = (0..1000).map(|i| format!("10.192.{}.{}/32", i / 256, i % 256));
    let err = node
        .update_node_cluster_networking(clusternet(many.collect()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = node
        .update_node_cluster_networking(clusternet(vec!["1".repeat(100_000)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 200, "{} bytes", err.message().len());
    assert_eq!(load(&t, &id).await.node.clusternet, None);
    node.update_node_cluster_networking(clusternet(vec!["10.192.1.0/24".to_string()]))
        .await
        .expect("a real announcement");

    // A label key of 100 KB is refused with a short message (gRPC messages travel in a
    // header, which the client caps at 16 KiB).
    let mut owner = management(t.owner().await);
    let err = owner
        .update_node_labels(proto::api::UpdateNodeLabelsRequest {
            node: Some(Which::Id(id.clone())),
            upsert: vec![Pair {
                key: "k".repeat(100_000),
                value: String::new(),
            }],
            delete: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    t.stop().await;
}
