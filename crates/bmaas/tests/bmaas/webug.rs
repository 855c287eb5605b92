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

/// The search form: machine ID prefix (a full ID opens the machine's page), provider and
/// provider ID; refused input is a 400, not an SQL pattern.
#[tokio::test]
async fn searches_by_machine_id_and_provider() {
    use bmdb::model::Provider;
    use bmdb::queries;

    let t = common::start().await;
    let addr = t.server().webug_address.unwrap();
    let m1 = t.machine_with_agent(&SigningKey::generate().unwrap()).await;
    let m2 = t.machine_with_agent(&SigningKey::generate().unwrap()).await;
    let lumen = t
        .session
        .transact(|tx| {
            Box::pin(async move {
                let m = queries::new_machine(tx).await?;
                queries::machine_add_provided(tx, m.machine_id, Provider::Lumen, "lumen-1").await?;
                Ok(m.machine_id)
            })
        })
        .await
        .unwrap();
    let page = async |query: &str| get(addr, &format!("GET /?{query} HTTP/1.1\r\n\r\n")).await;

    let prefix = &m1.to_string()[..8];
    let found = page(&format!("machine={prefix}")).await;
    assert!(found.starts_with("HTTP/1.1 200 OK"), "{found}");
    assert!(found.contains(&m1.to_string()), "{found}");
    assert!(!found.contains(&m2.to_string()), "{found}");
    assert!(found.contains("1 machines matching"), "{found}");

    let exact = page(&format!("machine={m1}")).await;
    assert!(exact.starts_with("HTTP/1.1 303"), "{exact}");
    assert!(
        exact
            .to_ascii_lowercase()
            .contains(&format!("location: /machine/{m1}")),
        "{exact}"
    );

    let by_provider = page("provider=Lumen").await;
    assert!(by_provider.contains(&lumen.to_string()), "{by_provider}");
    assert!(!by_provider.contains(&m1.to_string()), "{by_provider}");
    let both = page("provider=lumen&provider_id=lumen-1").await;
    assert!(both.contains(&lumen.to_string()), "{both}");
    let none = page("provider=Lumen&provider_id=lumen-2").await;
    assert!(none.contains("0 machines matching"), "{none}");
    let all = page("").await;
    for m in [m1, m2, lumen] {
        assert!(all.contains(&m.to_string()), "{all}");
    }

    assert!(page("machine=%25").await.starts_with("HTTP/1.1 400"));
    assert!(page("provider=Nowhere").await.starts_with("HTTP/1.1 400"));
}

/// What the page answers besides pages: security headers everywhere, nothing but GET, and a
/// bounded request head.
#[tokio::test]
async fn read_only_bounded_and_locked_down() {
    let t = common::start().await;
    let addr = t.server().webug_address.unwrap();
    let index = get(addr, "GET / HTTP/1.1\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert!(
        index.contains("content-security-policy: default-src 'none'"),
        "{index}"
    );
    assert!(index.contains("x-content-type-options: nosniff"), "{index}");
    assert!(index.contains("cache-control: no-store"), "{index}");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let id = uuid::Uuid::new_v4();
        for path in ["/".to_string(), format!("/machine/{id}")] {
            let answer = get(
                addr,
                &format!("{method} {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            )
            .await;
            assert!(
                answer.starts_with("HTTP/1.1 405"),
                "{method} {path}: {answer}"
            );
        }
    }
    assert!(
        get(addr, "GET /machine/not-an-id HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(bmaas::server::webug::MAX_REQUEST + 1)
    );
    // The server answers before it read everything, so the connection may end with a reset:
    // keep what arrived before it.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a request head over the limit is refused: {answer}"
    );
}
