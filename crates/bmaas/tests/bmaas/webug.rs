//! The debug web page.

use std::time::Duration;

use identity::SigningKey;
use prost::Message;
use proto::cloud::agent::api::{Cpu, Node};
use proto::cloud::bmaas::server::api::{AgentHardwareReport, AgentHeartbeatRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;

async fn get(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn lists_machines_and_shows_details_escaped() {
    let t = common::start().await;
    let addr = t.server().webug_address.unwrap();
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let report = AgentHardwareReport {
        report: Some(Node {
            cpu: vec![Cpu {
                model: "<script>alert(1)</script>".into(),
                cores: 4,
                hardware_threads: 8,
                ..Default::default()
            }],
            ..Default::default()
        }),
        warning: vec!["something odd".into()],
    };
    assert!(report.encoded_len() > 0);
    t.heartbeat(
        &key,
        AgentHeartbeatRequest {
            machine_id: machine.to_string(),
            hardware_report: Some(report),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let index = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(index.starts_with("HTTP/1.1 200 OK"), "{index}");
    assert!(index.contains(&machine.to_string()));
    assert!(
        index.contains("&lt;script&gt;"),
        "agent input must be escaped"
    );
    assert!(!index.contains("<script>"));

    let detail = get(addr, &format!("GET /machine/{machine} HTTP/1.1\r\n\r\n")).await;
    assert!(detail.starts_with("HTTP/1.1 200 OK"), "{detail}");
    assert!(detail.contains("something odd"));
    assert!(detail.contains(&hex::encode(key.public_key().as_bytes())));

    let missing = get(
        addr,
        &format!("GET /machine/{} HTTP/1.1\r\n\r\n", uuid::Uuid::new_v4()),
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(
        get(addr, "GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
    assert!(
        get(addr, "POST / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405")
    );
}

/// Connections beyond the page's limit are closed at once instead of each holding a task and
/// a database query; a freed place serves pages again.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let t = common::start().await;
    let addr = t.server().webug_address.unwrap();
    let mut silent = Vec::new();
    for _ in 0..bmaas::server::webug::MAX_CONNECTIONS {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The listener accepts in order: once a connection past the limit is closed, all the
    // silent ones hold their places.
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
        .await
        .expect("a connection over the limit is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);

    silent.pop();
    test_support::eventually(Duration::from_secs(10), async || {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
            .await
            .ok()?
            .ok()?;
        out.starts_with("HTTP/1.1 200 OK").then_some(())
    })
    .await
    .expect("a page once a place is free");
}
