//! The Operator service and the internal listener's mutual TLS and reflection.

use identity::SigningKey;
use proto::api::NodeParameters;
use proto::cloud::bmaas::server::api::operator_client::OperatorClient;
use proto::cloud::bmaas::server::api::os_installation_request::Type;
use proto::cloud::bmaas::server::api::{
    AgentHeartbeatRequest, EnrollMachineRequest, ListMachinesRequest, RequestOsInstallationRequest,
};
use tonic::Code;

use crate::common;

fn enroll(provider: &str, provider_id: &str, key: &[u8]) -> EnrollMachineRequest {
    EnrollMachineRequest {
        provider: provider.into(),
        provider_id: provider_id.into(),
        agent_public_key: key.to_vec(),
    }
}

fn params() -> NodeParameters {
    NodeParameters {
        network_config: Some(Default::default()),
        ..Default::default()
    }
}

#[tokio::test]
async fn enroll_list_and_heartbeat() {
    let t = common::start().await;
    let mut op = t.operator().await;
    let key = SigningKey::generate().unwrap();
    let id = op
        .enroll_machine(enroll("Equinix", "m-1", key.public_key().as_bytes()))
        .await
        .unwrap()
        .into_inner()
        .machine_id;
    t.heartbeat(
        &key,
        AgentHeartbeatRequest {
            machine_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let machines = op
        .list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner()
        .machines;
    assert_eq!(machines.len(), 1);
    let m = &machines[0];
    assert_eq!(m.machine_id, id);
    assert!(m.created_at.is_some());
    let provided = m.provided.as_ref().unwrap();
    assert_eq!(
        (provided.provider.as_str(), provided.provider_id.as_str()),
        ("Equinix", "m-1")
    );
    assert_eq!(
        m.agent_started.as_ref().unwrap().agent_public_key,
        key.public_key().as_bytes().to_vec()
    );
    assert!(m.agent_heartbeat.is_some());
    assert!(m.hardware_report.is_none() && m.os_installation_request.is_none());
}

#[tokio::test]
async fn enroll_validates_its_input() {
    let t = common::start().await;
    let mut op = t.operator().await;
    let key = [7u8; 32];
    for (req, code) in [
        (enroll("Nope", "x", &key), Code::InvalidArgument),
        (enroll("None", "", &key), Code::InvalidArgument),
        (
            enroll("None", &"x".repeat(129), &key),
            Code::InvalidArgument,
        ),
        (enroll("None", "x", &key[..31]), Code::InvalidArgument),
    ] {
        let err = op.enroll_machine(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
    }
    op.enroll_machine(enroll("lumen", "x", &key)).await.unwrap();
    let err = op
        .enroll_machine(enroll("Lumen", "x", &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Same provider ID at another provider is a different machine.
    op.enroll_machine(enroll("None", "x", &key)).await.unwrap();
    let n = op
        .list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner()
        .machines
        .len();
    assert_eq!(n, 2, "failed enrollments must not leave machines behind");
}

#[tokio::test]
async fn installation_requests_bump_generations() {
    let t = common::start().await;
    let mut op = t.operator().await;
    let key = SigningKey::generate().unwrap();
    let id = op
        .enroll_machine(enroll("None", "m", key.public_key().as_bytes()))
        .await
        .unwrap()
        .into_inner()
        .machine_id;
    let req = |machine_id: &str, root: &str| RequestOsInstallationRequest {
        machine_id: machine_id.into(),
        node_parameters: Some(params()),
        root_device: root.into(),
    };

    let err = op
        .request_os_installation(req("nope", "vda"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut no_params = req(&id, "vda");
    no_params.node_parameters = None;
    let err = op.request_os_installation(no_params).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = op
        .request_os_installation(req(&uuid::Uuid::new_v4().to_string(), "vda"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let g1 = op
        .request_os_installation(req(&id, "vda"))
        .await
        .unwrap()
        .into_inner()
        .generation;
    let g2 = op
        .request_os_installation(req(&id, "vdb"))
        .await
        .unwrap()
        .into_inner()
        .generation;
    assert_eq!((g1, g2), (1, 2));

    // The agent sees the latest one.
    let pending = t
        .heartbeat(
            &key,
            AgentHeartbeatRequest {
                machine_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .installation_request
        .unwrap();
    assert_eq!(pending.generation, 2);
    match pending.r#type {
        Some(Type::Metropolis(m)) => {
            assert_eq!(m.root_device, "vdb");
            assert_eq!(m.node_parameters, Some(params()));
        }
        other => panic!("unexpected {other:?}"),
    }
    let listed = op
        .list_machines(ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner()
        .machines;
    assert_eq!(
        listed[0]
            .os_installation_request
            .as_ref()
            .unwrap()
            .generation,
        2
    );
}

#[tokio::test]
async fn internal_listener_requires_a_certificate_of_the_component_ca() {
    let t = common::start().await;
    let addr = t.server().grpc_address.to_string();
    let call = |config| {
        let addr = addr.clone();
        async move {
            let channel = match rpc::client_tls::connect(&addr, config).await {
                Ok(c) => c,
                Err(_) => return Err(()),
            };
            OperatorClient::new(channel)
                .list_machines(ListMachinesRequest {})
                .await
                .map(|_| ())
                .map_err(|_| ())
        }
    };
    // A self-signed (agent-style) certificate.
    let key = SigningKey::generate().unwrap();
    let agent_style = bmaas::agent::tls::client_config(&key, Some(&t.tls.ca)).unwrap();
    assert!(call(agent_style).await.is_err());
    // A certificate of another dev CA.
    let other_dir = tempfile::tempdir().unwrap();
    let foreign = bmaas::devcerts::dev_certs(other_dir.path(), "operator").unwrap();
    let foreign = bmaas::agent::tls::client_config_with_cert(
        vec![foreign.certificate.clone()],
        &foreign.key,
        Some(&t.tls.ca),
    )
    .unwrap();
    assert!(call(foreign).await.is_err());
    // Ours.
    let op = bmaas::devcerts::dev_certs(t.certs.path(), "operator").unwrap();
    assert!(
        call(bmaas::server::tls::internal_client_config(&op).unwrap())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn reflection_lists_the_operator_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let t = common::start().await;
    let op = bmaas::devcerts::dev_certs(t.certs.path(), "operator").unwrap();
    let config = bmaas::server::tls::internal_client_config(&op).unwrap();
    let channel = rpc::client_tls::connect(&t.server().grpc_address.to_string(), config)
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "cloud.bmaas.server.api.Operator"),
        "{names:?}"
    );
}
