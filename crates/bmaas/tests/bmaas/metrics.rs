//! The server's Prometheus metrics: `/metrics` over mutual TLS against the component CA,
//! agent heartbeats and the BMDB's state in it, `promtool check metrics` content with it, and
//! clients without a component certificate refused.

use std::time::Duration;

use bmaas::devcerts;
use identity::SigningKey;
use proto::cloud::bmaas::server::api::AgentHeartbeatRequest;

use crate::common;

async fn scrape(t: &common::TestServer, config: &rustls::ClientConfig) -> Result<String, String> {
    let addr = t.server().prometheus_address.unwrap();
    let answer = rpc::https::get(
        &addr.ip().to_string(),
        addr.port(),
        "/metrics",
        config,
        Duration::from_secs(10),
        16 << 20,
    )
    .await?;
    assert_eq!(answer.status, 200);
    Ok(String::from_utf8(answer.body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_count_heartbeats_and_read_the_bmdb() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    t.heartbeat(
        &key,
        AgentHeartbeatRequest {
            machine_id: machine.to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let op = devcerts::dev_certs(t.certs.path(), "prometheus").unwrap();
    let config = bmaas::server::tls::internal_client_config(&op).unwrap();
    let text = scrape(&t, &config).await.unwrap();
    for line in [
        "bmaas_server_agent_heartbeats_total 1",
        "bmaas_server_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Heartbeat\",grpc_service=\"cloud.bmaas.server.api.AgentCallback\"} 1",
        "bmdb_sessions{component=\"srv\"}",
        "bmdb_agents_seen 1",
        "bmdb_machines 1",
        "bmdb_hardware_reports 0",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a certificate of the component CA: refused in the handshake.
    let stranger = bmaas::agent::tls::client_config(&key, Some(&t.tls.ca)).unwrap();
    let refused = scrape(&t, &stranger).await;
    assert!(refused.is_err(), "a stranger read the metrics: {refused:?}");
}
