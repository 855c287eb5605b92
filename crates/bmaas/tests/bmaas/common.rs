//! An in-process server on a fresh database with dev certificates, and clients for it.

use std::sync::Arc;

use bmaas::devcerts::{self, ComponentTls};
use bmaas::server::{Config, Server};
use bmdb::{Bmdb, Provider, Session, queries};
use identity::SigningKey;
use proto::cloud::bmaas::server::api::agent_callback_client::AgentCallbackClient;
use proto::cloud::bmaas::server::api::operator_client::OperatorClient;
use proto::cloud::bmaas::server::api::{AgentHeartbeatRequest, AgentHeartbeatResponse};
use tonic::transport::Channel;
use uuid::Uuid;

/// Logs to the test output (shown for failing tests), once per process.
pub fn init_logging() {
    test_support::logging::init_with("bmaas=debug,bmdb=info");
}

pub struct TestServer {
    pub server: Option<Server>,
    pub bmdb: Bmdb,
    /// A session for test set-up and checks.
    pub session: Session,
    pub tls: ComponentTls,
    pub certs: tempfile::TempDir,
}

pub async fn start() -> TestServer {
    init_logging();
    let connect = bmdb::throwaway::fresh_database().await.unwrap();
    let mut config = bmdb::Config::new(connect, "srv");
    config.max_connections = 5;
    let bmdb = Bmdb::open(config, true).await.unwrap();
    let certs = tempfile::tempdir().unwrap();
    let tls = devcerts::dev_certs(certs.path(), "srv").unwrap();
    let server = Server::start(Config {
        grpc_listen_address: "127.0.0.1:0".into(),
        public_listen_address: "127.0.0.1:0".into(),
        webug_listen_address: Some("127.0.0.1:0".into()),
        prometheus_listen_address: Some("127.0.0.1:0".into()),
        prometheus_insecure: false,
        tls: tls.clone(),
        bmdb: bmdb.clone(),
    })
    .await
    .unwrap();
    let session = bmdb.start_session().await.unwrap();
    TestServer {
        server: Some(server),
        bmdb,
        session,
        tls,
        certs,
    }
}

impl TestServer {
    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// An AgentCallback client with this client TLS configuration.
    pub async fn agent_client_with(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> AgentCallbackClient<Channel> {
        let addr = self.server().public_address.to_string();
        AgentCallbackClient::new(rpc::client_tls::connect(&addr, config).await.unwrap())
    }

    /// An AgentCallback client presenting an ephemeral certificate for `key`.
    pub async fn agent_client(&self, key: &SigningKey) -> AgentCallbackClient<Channel> {
        let config = bmaas::agent::tls::client_config(key, Some(&self.tls.ca)).unwrap();
        self.agent_client_with(config).await
    }

    /// One heartbeat as the agent holding `key`.
    pub async fn heartbeat(
        &self,
        key: &SigningKey,
        request: AgentHeartbeatRequest,
    ) -> Result<AgentHeartbeatResponse, tonic::Status> {
        let mut client = self.agent_client(key).await;
        client.heartbeat(request).await.map(|r| r.into_inner())
    }

    /// An Operator client with a dev certificate of the same CA.
    pub async fn operator(&self) -> OperatorClient<Channel> {
        let op = devcerts::dev_certs(self.certs.path(), "operator").unwrap();
        let config = bmaas::server::tls::internal_client_config(&op).unwrap();
        let addr = self.server().grpc_address.to_string();
        OperatorClient::new(rpc::client_tls::connect(&addr, config).await.unwrap())
    }

    /// A machine as the Shepherd leaves it after a takeover: provided, agent started with
    /// `key` (upstream's test set-up).
    pub async fn machine_with_agent(&self, key: &SigningKey) -> Uuid {
        let public = key.public_key().as_bytes().to_vec();
        let provider_id = Uuid::new_v4().to_string();
        self.session
            .transact(|tx| {
                let public = public.clone();
                let provider_id = provider_id.clone();
                Box::pin(async move {
                    let m = queries::new_machine(tx).await?;
                    queries::machine_add_provided(
                        tx,
                        m.machine_id,
                        Provider::Equinix,
                        &provider_id,
                    )
                    .await?;
                    queries::machine_set_agent_started(tx, m.machine_id, &public).await?;
                    Ok(m.machine_id)
                })
            })
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &'static str) -> i64 {
        let sql = match table {
            "machine_agent_heartbeat" => "SELECT count(*) FROM machine_agent_heartbeat",
            "machine_hardware_report" => "SELECT count(*) FROM machine_hardware_report",
            "machine_os_installation_report" => {
                "SELECT count(*) FROM machine_os_installation_report"
            }
            other => panic!("unknown table {other}"),
        };
        sqlx::query_scalar(sql)
            .fetch_one(self.bmdb.pool())
            .await
            .unwrap()
    }
}
