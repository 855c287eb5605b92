//! AgentCallback.Heartbeat: upstream's TestAgentCallbackService and
//! TestOSInstallationFlow, plus wrong keys, certificates and malformed requests.

use std::time::{Duration, Instant};

use bmdb::model::OsInstallationResult;
use bmdb::queries;
use identity::SigningKey;
use prost::Message;
use proto::cloud::agent::api::{Cpu, Node};
use proto::cloud::bmaas::server::api::agent_callback_client::AgentCallbackClient;
use proto::cloud::bmaas::server::api::os_installation_report::{self, Result as ReportResult};
use proto::cloud::bmaas::server::api::os_installation_request::Type;
use proto::cloud::bmaas::server::api::{
    AgentHardwareReport, AgentHeartbeatRequest, MetropolisInstallationRequest,
    OsInstallationReport, OsInstallationRequest,
};
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::common::{self, TestServer};

fn request(machine: Uuid) -> AgentHeartbeatRequest {
    AgentHeartbeatRequest {
        machine_id: machine.to_string(),
        ..Default::default()
    }
}

fn report() -> AgentHardwareReport {
    AgentHardwareReport {
        report: Some(Node {
            manufacturer: "ACME".into(),
            memory_installed_bytes: 64 << 30,
            cpu: vec![Cpu {
                cores: 8,
                hardware_threads: 16,
                vendor: "AuthenticAMD".into(),
                model: "Test CPU".into(),
                architecture: None,
            }],
            ..Default::default()
        }),
        warning: vec!["no SMBIOS".into()],
    }
}

#[tokio::test]
async fn made_up_machine_is_refused() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let err = t
        .heartbeat(&key, request(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(t.count("machine_agent_heartbeat").await, 0);
}

#[tokio::test]
async fn right_key_is_accepted_and_the_report_stored() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut req = request(machine);
    req.hardware_report = Some(report());
    let resp = t.heartbeat(&key, req).await.unwrap();
    assert_eq!(resp.installation_request, None);

    let tags = t
        .session
        .transact(move |tx| Box::pin(async move { queries::get_machine(tx, machine).await }))
        .await
        .unwrap()
        .unwrap();
    assert!(tags.agent_heartbeat.is_some());
    let stored =
        AgentHardwareReport::decode(tags.hardware_report.unwrap().hardware_report_raw.as_slice())
            .unwrap();
    assert_eq!(stored, report());
}

#[tokio::test]
async fn wrong_key_is_refused_like_an_unknown_machine() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let wrong = t.heartbeat(&other, request(machine)).await.unwrap_err();
    let unknown = t
        .heartbeat(&key, request(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );
    assert_eq!(t.count("machine_agent_heartbeat").await, 0);
    // The right key still works.
    t.heartbeat(&key, request(machine)).await.unwrap();
    assert_eq!(t.count("machine_agent_heartbeat").await, 1);
}

#[tokio::test]
async fn any_single_ed25519_certificate_with_the_right_key_is_accepted() {
    // As upstream: the certificate is not checked to be self-signed; the key is what counts.
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let some_ca_key = SigningKey::generate().unwrap();
    let some_ca = identity::templates::ca(&some_ca_key, "some CA").unwrap();
    let cert =
        identity::templates::user_cert(&some_ca_key, &some_ca, &key.public_key(), "agent").unwrap();
    let config =
        bmaas::agent::tls::client_config_with_cert(vec![cert], &key, Some(&t.tls.ca)).unwrap();
    let mut client = t.agent_client_with(config).await;
    client.heartbeat(request(machine)).await.unwrap();
}

#[tokio::test]
async fn missing_or_unusable_client_certificates_are_unauthenticated() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;

    let verifier = bmaas::agent::tls::server_verifier(Some(&t.tls.ca)).unwrap();
    let builder = || {
        rustls::ClientConfig::builder_with_provider(rpc::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
    };

    // No certificate at all.
    let mut config = builder().with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = t.agent_client_with(std::sync::Arc::new(config)).await;
    let err = client.heartbeat(request(machine)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // An ECDSA certificate.
    let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&ecdsa)
        .unwrap();
    let mut config = builder()
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(ecdsa.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = t.agent_client_with(std::sync::Arc::new(config)).await;
    let err = client.heartbeat(request(machine)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(t.count("machine_agent_heartbeat").await, 0);
}

#[tokio::test]
async fn bad_machine_id_is_invalid_and_changes_nothing() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    t.machine_with_agent(&key).await;
    for bad in [
        "",
        "not-a-uuid",
        "12345678-1234-1234-1234-1234567890",
        &"x".repeat(10_000),
    ] {
        let mut req = AgentHeartbeatRequest {
            machine_id: bad.to_string(),
            ..Default::default()
        };
        req.hardware_report = Some(report());
        let err = t.heartbeat(&key, req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("machine_id"), "{}", err.message());
        assert!(err.message().len() < 200, "message echoes too much input");
    }
    assert_eq!(t.count("machine_agent_heartbeat").await, 0);
    assert_eq!(t.count("machine_hardware_report").await, 0);
}

#[tokio::test]
async fn oversized_hardware_report_is_invalid_and_changes_nothing() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut big = report();
    // 1.5 MiB of warnings: over the 1 MiB report limit, under tonic's 4 MiB request limit.
    big.warning = vec!["w".repeat(1024); 1536];
    let mut req = request(machine);
    req.hardware_report = Some(big);
    let err = t.heartbeat(&key, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("hardware_report"),
        "{}",
        err.message()
    );
    assert_eq!(t.count("machine_agent_heartbeat").await, 0);
    assert_eq!(t.count("machine_hardware_report").await, 0);

    // A report just under the limit is fine.
    let mut ok = report();
    ok.warning = vec!["w".repeat(1024); 1000];
    let mut req = request(machine);
    req.hardware_report = Some(ok);
    t.heartbeat(&key, req).await.unwrap();
    assert_eq!(t.count("machine_hardware_report").await, 1);
}

#[tokio::test]
async fn installation_report_without_result_is_invalid() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut req = request(machine);
    req.installation_report = Some(OsInstallationReport {
        generation: 1,
        result: None,
    });
    let err = t.heartbeat(&key, req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(t.count("machine_agent_heartbeat").await, 0);
    assert_eq!(t.count("machine_os_installation_report").await, 0);
}

async fn set_request(t: &TestServer, machine: Uuid, generation: i64) {
    let raw = OsInstallationRequest {
        generation,
        r#type: Some(Type::Metropolis(MetropolisInstallationRequest {
            root_device: format!("disk{generation}"),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    t.session
        .transact(|tx| {
            let raw = raw.clone();
            Box::pin(async move {
                queries::machine_set_os_installation_request(tx, machine, generation, &raw).await
            })
        })
        .await
        .unwrap();
}

fn success(generation: i64) -> OsInstallationReport {
    OsInstallationReport {
        generation,
        result: Some(ReportResult::Success(os_installation_report::Success {})),
    }
}

async fn beat(
    client: &mut AgentCallbackClient<Channel>,
    machine: Uuid,
    report: Option<OsInstallationReport>,
) -> Option<OsInstallationRequest> {
    let mut req = request(machine);
    req.installation_report = report;
    client
        .heartbeat(req)
        .await
        .unwrap()
        .into_inner()
        .installation_request
}

/// Upstream's TestOSInstallationFlow.
#[tokio::test]
async fn os_installation_flow() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut client = t.agent_client(&key).await;
    // No request: nothing to do.
    assert_eq!(beat(&mut client, machine, None).await, None);
    assert_eq!(beat(&mut client, machine, None).await, None);

    // A request is returned on every heartbeat until reported.
    set_request(&t, machine, 1).await;
    for _ in 0..2 {
        let got = beat(&mut client, machine, None).await.unwrap();
        assert_eq!(got.generation, 1);
        match got.r#type {
            Some(Type::Metropolis(m)) => assert_eq!(m.root_device, "disk1"),
            other => panic!("unexpected request type {other:?}"),
        }
    }
    // Reporting its generation stops it, from that very heartbeat on.
    assert_eq!(beat(&mut client, machine, Some(success(1))).await, None);
    assert_eq!(beat(&mut client, machine, None).await, None);

    // A newer generation is returned again.
    set_request(&t, machine, 2).await;
    assert_eq!(
        beat(&mut client, machine, None).await.unwrap().generation,
        2
    );
    let failed = OsInstallationReport {
        generation: 2,
        result: Some(ReportResult::Error(os_installation_report::Error {
            error: "disk on fire".into(),
        })),
    };
    assert_eq!(beat(&mut client, machine, Some(failed.clone())).await, None);

    let stored = t
        .session
        .transact(move |tx| Box::pin(async move { queries::get_machine(tx, machine).await }))
        .await
        .unwrap()
        .unwrap()
        .os_installation_report
        .unwrap();
    assert_eq!(stored.generation, 2);
    assert_eq!(stored.os_installation_result, OsInstallationResult::Error);
    assert_eq!(
        OsInstallationReport::decode(stored.os_installation_report_raw.as_slice()).unwrap(),
        failed
    );
}

/// Heartbeat latency against a local PostgreSQL (debug build), and many agents at once.
#[tokio::test]
async fn latency_and_concurrency() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut client = t.agent_client(&key).await;
    client.heartbeat(request(machine)).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        client.heartbeat(request(machine)).await.unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    eprintln!(
        "heartbeat latency over 50 sequential calls: p50 {:?}, p90 {:?}, max {:?}",
        samples[25], samples[45], samples[49]
    );
    assert!(samples[25] < Duration::from_millis(500));

    // 20 agents heartbeating at once all get through (serialization conflicts are retried).
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let key = SigningKey::generate().unwrap();
        let machine = t.machine_with_agent(&key).await;
        let mut client = t.agent_client(&key).await;
        tasks.push(tokio::spawn(async move {
            let mut req = request(machine);
            req.hardware_report = Some(report());
            client.heartbeat(req).await.map(|_| ())
        }));
    }
    let start = Instant::now();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    eprintln!(
        "20 concurrent heartbeats with reports: {:?}",
        start.elapsed()
    );
    assert_eq!(t.count("machine_agent_heartbeat").await, 21);
}

/// Unknown machines and wrong keys are refused by a plain read, without a session check or a
/// serializable transaction: with the sessions table locked (which stops every transaction at
/// its session check), they are still refused at once, while a known agent's heartbeat waits
/// for the lock.
#[tokio::test]
async fn unknown_agents_are_refused_without_a_transaction() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut client = t.agent_client(&key).await;
    client.heartbeat(request(machine)).await.unwrap();

    let mut lock = t.bmdb.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let within = Duration::from_secs(3);
    let started = Instant::now();
    let unknown = tokio::time::timeout(within, t.heartbeat(&key, request(Uuid::new_v4())))
        .await
        .expect("an unknown machine is refused while transactions are blocked")
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    let other = SigningKey::generate().unwrap();
    let wrong = tokio::time::timeout(within, t.heartbeat(&other, request(machine)))
        .await
        .expect("a wrong key is refused while transactions are blocked")
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    eprintln!(
        "both refused in {:?} with transactions blocked",
        started.elapsed()
    );

    // The lock does hold transactions: the real agent waits until it is released.
    let beat = tokio::spawn(async move { client.heartbeat(request(machine)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !beat.is_finished(),
        "a known agent's heartbeat runs in a transaction"
    );
    lock.rollback().await.unwrap();
    beat.await.unwrap().unwrap();
}

/// The generation of a stored installation report is the server's: a report naming another
/// generation than the current request's is ignored (the heartbeat still counts), so an agent
/// cannot overwrite the report of the current installation with an old or made-up one.
#[tokio::test]
async fn installation_reports_of_other_generations_are_ignored() {
    let t = common::start().await;
    let key = SigningKey::generate().unwrap();
    let machine = t.machine_with_agent(&key).await;
    let mut client = t.agent_client(&key).await;
    let stored = || async {
        t.session
            .transact(move |tx| Box::pin(async move { queries::get_machine(tx, machine).await }))
            .await
            .unwrap()
            .unwrap()
            .os_installation_report
    };
    let failed = |generation| OsInstallationReport {
        generation,
        result: Some(ReportResult::Error(os_installation_report::Error {
            error: "made up".into(),
        })),
    };

    // No request yet: nothing to report on.
    assert_eq!(beat(&mut client, machine, Some(success(1))).await, None);
    assert!(stored().await.is_none());

    // Generation 2 is requested and reported done.
    set_request(&t, machine, 2).await;
    assert_eq!(beat(&mut client, machine, Some(success(2))).await, None);
    let done = stored().await.unwrap();
    assert_eq!(
        (done.generation, done.os_installation_result),
        (2, OsInstallationResult::Success)
    );

    // Reports of an old, a future and a negative generation change nothing.
    for generation in [1, 3, -1] {
        assert_eq!(
            beat(&mut client, machine, Some(failed(generation))).await,
            None,
            "generation {generation}"
        );
        let after = stored().await.unwrap();
        assert_eq!(
            (after.generation, after.os_installation_result),
            (2, OsInstallationResult::Success),
            "generation {generation}"
        );
    }

    // A new request is answered until it is reported; a report of the previous one does not
    // stop it.
    set_request(&t, machine, 3).await;
    let pending = beat(&mut client, machine, Some(success(2))).await.unwrap();
    assert_eq!(pending.generation, 3);
    assert_eq!(beat(&mut client, machine, Some(success(3))).await, None);
    assert_eq!(stored().await.unwrap().generation, 3);
    assert_eq!(t.count("machine_agent_heartbeat").await, 1);
}
