//! Drives a real TLS gRPC server through every method of every Metropolis service with every
//! kind of caller and asserts the gRPC code the authorization layer answers with.
//!
//! The services are default stubs (every method answers Unimplemented), so "Unimplemented"
//! means "the call passed authorization and reached the handler", exactly like upstream's
//! TestExternalServerSecurity. One stub method reports the PeerInfo it was handed, to prove the
//! layer passes the classified peer on.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use identity::{SigningKey, templates};
use proto::api::{
    aaa_server::AaaServer, management_server::ManagementServer,
    node_management_server::NodeManagementServer,
};
use proto::authz::{METHOD_POLICIES, MethodPolicy};
use proto::curator_api::{curator_local_server::CuratorLocalServer, curator_server::CuratorServer};
use proto::ext::Permission;
use rpc::peer::{NODE_PERMISSIONS, PeerInfo};
use rpc::{ClientCredentials, RevocationSet, ServerSecurity, ServerVerification};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

struct Stub;
impl proto::api::management_server::Management for Stub {}
impl proto::api::node_management_server::NodeManagement for Stub {}
impl proto::api::aaa_server::Aaa for Stub {}
impl proto::curator_api::curator_local_server::CuratorLocal for Stub {}
#[tonic::async_trait]
impl proto::curator_api::curator_server::Curator for Stub {
    // Reached only after authorization: echoes the peer so the test can check what handlers see.
    async fn update_node_status(
        &self,
        request: Request<proto::curator_api::UpdateNodeStatusRequest>,
    ) -> Result<Response<proto::curator_api::UpdateNodeStatusResponse>, Status> {
        let peer = PeerInfo::of(&request)?;
        Err(Status::unimplemented(format!("peer: {peer:?}")))
    }
}

/// Everything the test cluster (and a foreign one) consists of.
struct World {
    ca: Vec<u8>,
    server_id: String,
    owner: ClientCredentials,
    node: ClientCredentials,
    revoked_node: ClientCredentials,
    self_signed: ClientCredentials,
    foreign_node: ClientCredentials,
    revocations: RevocationSet,
    addr: String,
    node_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Owner,
    Node,
    SelfSigned,
    NoCert,
    ForeignCa,
    RevokedNode,
}

const CALLERS: [Caller; 6] = [
    Caller::Owner,
    Caller::Node,
    Caller::SelfSigned,
    Caller::NoCert,
    Caller::ForeignCa,
    Caller::RevokedNode,
];

fn node_creds(ca_key: &SigningKey, ca: &[u8]) -> (ClientCredentials, String) {
    let key = SigningKey::generate().expect("keygen");
    let cert = templates::node_cert(ca_key, ca, &key.public_key()).expect("node cert");
    let id = identity::node_id(&key.public_key());
    (
        ClientCredentials::Authenticated {
            certificate: cert,
            key,
        },
        id,
    )
}

async fn start_world(node_permissions: Option<Vec<Permission>>) -> World {
    let ca_key = SigningKey::generate().expect("keygen");
    let ca = templates::cluster_ca(&ca_key).expect("ca");
    let server_key = SigningKey::generate().expect("keygen");
    let server_cert =
        templates::node_cert(&ca_key, &ca, &server_key.public_key()).expect("server cert");
    let server_id = identity::node_id(&server_key.public_key());

    let owner_key = SigningKey::generate().expect("keygen");
    let owner_cert =
        templates::user_cert(&ca_key, &ca, &owner_key.public_key(), "owner").expect("owner cert");
    let (node, node_id) = node_creds(&ca_key, &ca);
    let (revoked_node, revoked_id) = node_creds(&ca_key, &ca);
    let foreign_ca_key = SigningKey::generate().expect("keygen");
    let foreign_ca = templates::cluster_ca(&foreign_ca_key).expect("foreign ca");
    let (foreign_node, _) = node_creds(&foreign_ca_key, &foreign_ca);

    let revocations = RevocationSet::new();
    revocations.revoke_node(&revoked_id);
    let mut security = ServerSecurity::new(ca.clone(), revocations.clone());
    if let Some(p) = node_permissions {
        security.node_permissions = Arc::new(p);
    }

    let tls =
        rpc::server_tls::server_config_for(server_cert, &server_key.to_pkcs8_der(), ca.clone())
            .expect("server tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let router = rpc::serve::server_builder(security)
        .add_service(ManagementServer::new(Stub))
        .add_service(NodeManagementServer::new(Stub))
        .add_service(AaaServer::new(Stub))
        .add_service(CuratorServer::new(Stub))
        .add_service(CuratorLocalServer::new(Stub))
        .add_service(rpc::reflection::v1(SERVED))
        .add_service(rpc::reflection::v1alpha(SERVED));
    let incoming = rpc::serve::tls_incoming(listener, tls);
    tokio::spawn(router.serve_with_incoming(incoming));

    World {
        ca,
        server_id,
        owner: ClientCredentials::Authenticated {
            certificate: owner_cert,
            key: owner_key,
        },
        node,
        revoked_node,
        self_signed: ClientCredentials::Ephemeral(SigningKey::generate().expect("keygen")),
        foreign_node,
        revocations,
        addr,
        node_id,
    }
}

impl World {
    fn channel(&self, caller: Caller) -> Channel {
        let creds = match caller {
            Caller::Owner => self.owner.clone(),
            Caller::Node => self.node.clone(),
            Caller::SelfSigned => self.self_signed.clone(),
            Caller::NoCert => ClientCredentials::None,
            Caller::ForeignCa => self.foreign_node.clone(),
            Caller::RevokedNode => self.revoked_node.clone(),
        };
        let verification = ServerVerification::Cluster {
            ca: self.ca.clone(),
            node_id: Some(self.server_id.clone()),
            crl: None,
        };
        let config = rpc::client_tls::client_config(&creds, verification).expect("client config");
        rpc::client_tls::connect_lazy(&self.addr, config).expect("endpoint")
    }
}

/// Calls `path` with one empty message, whatever the method's streaming shape (an empty
/// message is a valid encoding of every request type), and returns the final status.
async fn call(channel: Channel, path: &str) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return Status::unavailable(format!("not ready: {e}"));
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = Request::new(futures::stream::iter(vec![()]));
    let path = PathAndQuery::from_str(path).expect("path");
    match grpc.streaming(request, path, codec).await {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status,
            Ok(_) => Status::ok(""),
        },
    }
}

/// What the layer must answer for `caller` on the method with `policy`.
fn expected(policy: &MethodPolicy, caller: Caller, node_permissions: &[Permission]) -> Code {
    let reached = Code::Unimplemented;
    match caller {
        // Refused during the TLS handshake, before any layer: under TLS 1.3 the client learns
        // it only when its first request hits the closed connection, which tonic reports as
        // Unknown "transport error".
        Caller::ForeignCa => Code::Unknown,
        _ if policy.is_unauthenticated() => reached,
        Caller::Owner => reached,
        Caller::Node if policy.need.iter().all(|p| node_permissions.contains(p)) => reached,
        Caller::Node => Code::PermissionDenied,
        Caller::SelfSigned | Caller::NoCert | Caller::RevokedNode => Code::Unauthenticated,
    }
}

#[tokio::test]
async fn every_method_with_every_caller() {
    let world = start_world(None).await;
    let mut failures = Vec::new();
    for caller in CALLERS {
        let channel = world.channel(caller);
        for policy in METHOD_POLICIES {
            let status = call(channel.clone(), policy.path).await;
            let want = expected(policy, caller, NODE_PERMISSIONS);
            if status.code() != want {
                failures.push(format!(
                    "{caller:?} {}: got {:?} ({}), want {want:?}",
                    policy.path,
                    status.code(),
                    status.message()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn handlers_see_the_classified_peer() {
    let world = start_world(None).await;
    let path = "/metropolis.node.core.curator.proto.api.Curator/UpdateNodeStatus";
    let status = call(world.channel(Caller::Node), path).await;
    assert!(
        status.message().contains(&world.node_id),
        "node peer: {}",
        status.message()
    );
    assert!(
        status.message().contains("Node("),
        "node peer: {}",
        status.message()
    );
    let status = call(world.channel(Caller::Owner), path).await;
    assert!(
        status.message().contains("identity: \"owner\""),
        "owner peer: {}",
        status.message()
    );
}

#[tokio::test]
async fn node_permission_messages_and_overrides() {
    // Upstream TestExternalServerSecurity: a node cannot get the register ticket...
    let world = start_world(None).await;
    let path = "/metropolis.proto.api.Management/GetRegisterTicket";
    let status = call(world.channel(Caller::Node), path).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "node missing PERMISSION_GET_REGISTER_TICKET permission"
    );
    // ...unless a test override grants it.
    let mut granted = NODE_PERMISSIONS.to_vec();
    granted.push(Permission::GetRegisterTicket);
    let world = start_world(Some(granted)).await;
    assert_eq!(
        call(world.channel(Caller::Node), path).await.code(),
        Code::Unimplemented
    );
}

#[tokio::test]
async fn revocation_applies_to_the_next_call() {
    let world = start_world(None).await;
    let path = "/metropolis.node.core.curator.proto.api.Curator/Watch";
    let channel = world.channel(Caller::Node);
    assert_eq!(
        call(channel.clone(), path).await.code(),
        Code::Unimplemented
    );
    world.revocations.revoke_node(&world.node_id);
    // Same connection, next call: refused.
    let status = call(channel, path).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("removed from the cluster"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn client_refuses_a_server_of_another_cluster_or_node() {
    let world = start_world(None).await;
    let other_ca = templates::cluster_ca(&SigningKey::generate().expect("keygen")).expect("ca");
    let path = "/metropolis.node.core.curator.proto.api.CuratorLocal/GetCurrentLeader";
    for verification in [
        ServerVerification::Cluster {
            ca: other_ca,
            node_id: None,
            crl: None,
        },
        ServerVerification::Cluster {
            ca: world.ca.clone(),
            node_id: Some("metropolis-00".to_string()),
            crl: None,
        },
    ] {
        let config =
            rpc::client_tls::client_config(&ClientCredentials::None, verification).expect("config");
        let channel = rpc::client_tls::connect_lazy(&world.addr, config).expect("endpoint");
        assert_eq!(call(channel, path).await.code(), Code::Unavailable);
    }
    // Insecure (trust on first use) talks to anyone.
    let config =
        rpc::client_tls::client_config(&ClientCredentials::None, ServerVerification::Insecure)
            .expect("config");
    let channel = rpc::client_tls::connect_lazy(&world.addr, config).expect("endpoint");
    assert_eq!(call(channel, path).await.code(), Code::Unimplemented);
}

/// What the test server serves, as its reflection lists it.
const SERVED: &[&str] = &[
    "metropolis.proto.api.Management",
    "metropolis.proto.api.NodeManagement",
    "metropolis.proto.api.AAA",
    "metropolis.node.core.curator.proto.api.Curator",
    "metropolis.node.core.curator.proto.api.CuratorLocal",
];

/// Reflection lists exactly what the listener serves: the descriptor set holds
/// every proto of the project, BMaaS included, and grpcurl users believe the listing.
#[tokio::test]
async fn reflection_lists_only_served_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let world = start_world(None).await;
    let mut client = ServerReflectionClient::new(world.channel(Caller::NoCert));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    let want: BTreeSet<String> = SERVED.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, want);
}
