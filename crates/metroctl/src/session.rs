//! Connections to a cluster: the curator leader (through rpc's [`LeaderChannel`], which
//! follows leadership changes from any endpoint, and rpc's typed [`Management`] client over
//! it) and a node's NodeManagement service, both verified against the pinned cluster CA.
//!
//! Every call is retried under one [`RetryPolicy`] whose deadline is `--connect-timeout`: that
//! long a command keeps looking for the leader, following leadership changes, before it
//! reports the cluster unreachable.
//!
//! Every connection also refuses curators and nodes whose certificate the cluster CRL revokes
//! (deleted nodes). A session starts from the CRL cached in the config directory (if it
//! verifies against the pinned CA), the leader channel fetches the current one from every
//! endpoint when it starts and from every curator it asks for the leader, and a newer CRL is
//! cached again when the session ends.

use std::future::Future;
use std::time::Duration;

use proto::api;
use proto::api::node_management_client::NodeManagementClient;
use rpc::client_tls::{self, ClientCredentials, ServerVerification};
use rpc::{CallError, ClusterCrl, LeaderChannel, LeaderOptions, Management, RetryPolicy};
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::Channel;

use crate::config::{CRL_FILE, ConfigDir, OWNER_CERT_FILE, OWNER_KEY_FILE, normalize_endpoint};
use crate::error::{Error, Result};
use crate::progress;
use crate::trust::{self, TrustOptions};

/// How long connecting to a node's NodeManagement may take.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every command needs from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The config directory.
    pub cfg: ConfigDir,
    /// `--endpoints`, normalized (may be empty: then the saved ones are used).
    pub endpoints: Vec<String>,
    /// How a first contact may pin the CA.
    pub trust: TrustOptions,
    /// How long a call may keep looking for the leader (the deadline of every call).
    pub connect_timeout: Duration,
}

impl Context {
    /// Builds the context, normalizing endpoints.
    pub fn new(
        cfg: ConfigDir,
        endpoints: &[String],
        trust: TrustOptions,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let endpoints = endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| normalize_endpoint(e, rpc::CURATOR_PORT))
            .collect::<Result<Vec<_>>>()?;
        Ok(Context {
            cfg,
            endpoints,
            trust,
            connect_timeout,
        })
    }

    /// The endpoints to use: `--endpoints`, else the saved ones.
    pub fn endpoints(&self) -> Result<Vec<String>> {
        if !self.endpoints.is_empty() {
            return Ok(self.endpoints.clone());
        }
        let saved = self
            .cfg
            .endpoints()?
            .iter()
            .map(|e| normalize_endpoint(e, rpc::CURATOR_PORT))
            .collect::<Result<Vec<_>>>()?;
        if saved.is_empty() {
            return Err(Error::usage(
                "no endpoints: pass --endpoints with the address of any node of the cluster",
            ));
        }
        Ok(saved)
    }

    /// A session authenticated with the owner certificate.
    pub async fn owner_session(&self) -> Result<Session> {
        let key = self.cfg.require_owner_key()?;
        let cert = self.cfg.owner_cert()?.ok_or_else(|| {
            Error::local(format!(
                "no owner certificate in {}: take ownership of the cluster first \
                 (metroctl --config {} --endpoints <node address> takeownership)",
                self.cfg.dir().display(),
                self.cfg.dir().display()
            ))
        })?;
        let cert_key = identity::verify::cert_public_key(&cert).map_err(|e| {
            Error::local(format!("{}: {e}", self.cfg.path(OWNER_CERT_FILE).display()))
        })?;
        if cert_key != key.public_key() {
            return Err(Error::local(format!(
                "{} does not belong to {}: take ownership again (metroctl takeownership) to \
                 fetch the certificate of this key",
                self.cfg.path(OWNER_CERT_FILE).display(),
                self.cfg.path(OWNER_KEY_FILE).display()
            )));
        }
        let creds = ClientCredentials::Authenticated {
            certificate: cert.clone(),
            key,
        };
        let endpoints = self.endpoints()?;
        let ca = trust::ensure_pinned(&self.cfg, &endpoints, Some(&cert), &self.trust).await?;
        if identity::verify::check_in_cluster(&cert, &ca).is_err() {
            return Err(Error::untrusted(format!(
                "{} was not issued by the pinned cluster CA ({}): the two belong to different \
                 clusters. Delete the one that is wrong, or use another --config directory.",
                self.cfg.path(OWNER_CERT_FILE).display(),
                self.cfg.path(crate::config::CA_FILE).display()
            )));
        }
        Session::new(&self.cfg, endpoints, creds, ca, self.connect_timeout)
    }

    /// A session with a self-signed certificate of `key` (what AAA.Escrow wants).
    pub async fn ephemeral_session(&self, key: identity::SigningKey) -> Result<Session> {
        let creds = ClientCredentials::Ephemeral(key);
        let endpoints = self.endpoints()?;
        let owner_cert = self.cfg.owner_cert()?;
        let ca =
            trust::ensure_pinned(&self.cfg, &endpoints, owner_cert.as_deref(), &self.trust).await?;
        Session::new(&self.cfg, endpoints, creds, ca, self.connect_timeout)
    }
}

/// A connection to a cluster whose CA is pinned.
#[derive(Debug)]
pub struct Session {
    leader: LeaderChannel,
    management: Management,
    policy: RetryPolicy,
    ca: Vec<u8>,
    creds: ClientCredentials,
    endpoints: Vec<String>,
    pin_check: watch::Receiver<Option<Error>>,
    crl: ClusterCrl,
    /// Where the CRL is cached, and the CRL number it had when the session started.
    crl_cache: (ConfigDir, Option<u64>),
}

impl Drop for Session {
    fn drop(&mut self) {
        let (cfg, cached) = &self.crl_cache;
        if self.crl.number() > *cached
            && let Some(der) = self.crl.der()
            && let Err(e) = cfg.save_crl(&der)
        {
            eprintln!("warning: cannot cache the cluster CRL: {}", e.message);
        }
    }
}

/// A CRL for `ca`, starting from the cached one if that verifies against it.
fn cached_crl(cfg: &ConfigDir, ca: &[u8]) -> ClusterCrl {
    let crl = ClusterCrl::new(ca.to_vec());
    match cfg.crl() {
        Ok(Some(der)) => {
            if let Err(e) = crl.update(&der) {
                eprintln!(
                    "warning: ignoring {}: {e}; the current CRL is fetched from the cluster",
                    cfg.path(CRL_FILE).display()
                );
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("warning: {}", e.message),
    }
    crl
}

impl Session {
    fn new(
        cfg: &ConfigDir,
        endpoints: Vec<String>,
        creds: ClientCredentials,
        ca: Vec<u8>,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let crl = cached_crl(cfg, &ca);
        let options = LeaderOptions {
            wait_timeout: connect_timeout,
            crl: Some(crl.clone()),
            ..LeaderOptions::default()
        };
        let leader = LeaderChannel::new(endpoints.clone(), creds.clone(), ca.clone(), options)
            .map_err(|e| Error::usage(format!("cannot use the endpoints: {e}")))?;
        let policy = RetryPolicy::default()
            .with_deadline(Some(connect_timeout))
            .with_attempt_timeout(None);
        let management = Management::new(leader.clone()).with_policy(policy);
        let pin_check = trust::spawn_pin_check(cfg, endpoints.clone(), ca.clone());
        let crl_cache = (cfg.clone(), crl.number());
        Ok(Session {
            leader,
            management,
            policy,
            ca,
            creds,
            endpoints,
            pin_check,
            crl,
            crl_cache,
        })
    }

    /// The pinned CA (DER).
    pub fn ca(&self) -> &[u8] {
        &self.ca
    }

    /// The endpoints this session started from.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The leader currently used, if found.
    pub fn leader(&self) -> Option<rpc::LeaderInfo> {
        self.leader.current_leader()
    }

    /// The typed cluster API client; run its calls through [`Self::api`] or
    /// [`Self::api_status`].
    pub fn management(&self) -> &Management {
        &self.management
    }

    /// Runs a typed client call, showing that we wait and watching for a CA mismatch. The
    /// outer error is a CA mismatch found meanwhile; the inner one is the call's last status,
    /// for callers that map codes themselves.
    pub async fn api_status<T>(
        &self,
        call: impl Future<Output = std::result::Result<T, CallError>>,
    ) -> Result<Result<T, Status>> {
        Ok(self.guarded(call).await?.map_err(|e| e.status))
    }

    /// Runs a typed client call; failures become errors saying we were doing `what`.
    pub async fn api<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, CallError>>,
    ) -> Result<T> {
        self.api_status(call)
            .await?
            .map_err(|status| Error::from_status(what, &status))
    }

    /// Runs a call on the leader (re-issued after leader changes). The outer error is a CA
    /// mismatch found meanwhile; the inner one is the call's status, for callers that map
    /// codes themselves.
    pub async fn call_status<T, F, Fut>(&self, f: F) -> Result<Result<T, Status>>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.guarded(self.leader.call(&self.policy, f)).await
    }

    /// Runs `call` with the waiting indicator, ended early by a CA mismatch.
    async fn guarded<T>(&self, call: impl Future<Output = T>) -> Result<T> {
        let mut pin_check = self.pin_check.clone();
        let mismatch = async move {
            // The borrow of the watched value ends here, before any other await: it is not
            // Send, and the dashboard runs calls in spawned tasks.
            let found = pin_check
                .wait_for(Option::is_some)
                .await
                .map(|found| found.clone());
            match found {
                Ok(found) => found,
                // The checker is gone: it found nothing; never resolve.
                Err(_) => std::future::pending().await,
            }
        };
        let call = progress::waiting("waiting for the cluster", call);
        tokio::select! {
            result = call => Ok(result),
            Some(error) = mismatch => Err(error),
        }
    }

    /// Runs a call on the leader; failures become errors saying we were doing `what`.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_status(f)
            .await?
            .map_err(|status| Error::from_status(what, &status))
    }

    /// Every node, or those the CEL `filter` selects.
    pub async fn nodes_status(&self, filter: &str) -> Result<Result<Vec<api::Node>, Status>> {
        self.api_status(self.management.get_nodes(filter)).await
    }

    /// Every node, or those the CEL `filter` selects; a refused filter is explained.
    pub async fn nodes(&self, filter: &str) -> Result<Vec<api::Node>> {
        self.nodes_status(filter).await?.map_err(|status| {
            if status.code() == tonic::Code::InvalidArgument && !filter.is_empty() {
                Error::refused(format!(
                    "the cluster rejected the filter {filter:?}: {}\n\
                     Filters are CEL expressions over `node` (a metropolis.proto.api.Node), e.g. \
                     'node.state == NODE_STATE_UP' or 'has(node.roles.kubernetes_worker)'.",
                    status.message()
                ))
            } else {
                Error::from_status("listing nodes", &status)
            }
        })
    }

    /// The node with this ID; a refusal with advice if there is none.
    pub async fn node(&self, id: &str) -> Result<api::Node> {
        let nodes = self.nodes("").await?;
        find_node(nodes, id)
    }

    /// A NodeManagement client for node `id` at `address` (IP), verified to be that node.
    /// Owner TLS towards node `id` itself: its node certificate, of the pinned cluster, not
    /// revoked.
    pub fn node_tls(&self, id: &str) -> Result<std::sync::Arc<rustls::ClientConfig>> {
        let verification = ServerVerification::Cluster {
            ca: self.ca.clone(),
            node_id: Some(id.to_string()),
            crl: Some(self.crl.clone()),
        };
        client_tls::client_config(&self.creds, verification)
            .map_err(|e| Error::local(format!("building the TLS configuration: {e}")))
    }

    pub async fn node_management(
        &self,
        id: &str,
        address: &str,
    ) -> Result<NodeManagementClient<Channel>> {
        let config = self.node_tls(id)?;
        let endpoint = normalize_endpoint(address, rpc::NODE_MANAGEMENT_PORT)?;
        let connect = client_tls::connect(&endpoint, config);
        match tokio::time::timeout(NODE_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(channel)) => Ok(NodeManagementClient::new(channel)),
            Ok(Err(e)) => Err(Error::unreachable(format!(
                "cannot reach node {id} at {endpoint}: {}",
                trust::error_chain(&e)
            ))),
            Err(_) => Err(Error::unreachable(format!(
                "cannot reach node {id} at {endpoint}: no connection within \
                 {NODE_CONNECT_TIMEOUT:?}"
            ))),
        }
    }
}

/// Picks node `id` out of `nodes`, or explains that the cluster has no such node.
pub fn find_node(nodes: Vec<api::Node>, id: &str) -> Result<api::Node> {
    nodes
        .into_iter()
        .find(|n| crate::model::node_id_of(n) == id)
        .ok_or_else(|| unknown_node(id))
}

/// The refusal for a node ID the cluster does not know.
pub fn unknown_node(id: &str) -> Error {
    Error::refused(format!(
        "node {id} not found in this cluster (metroctl node list shows the nodes it has)"
    ))
}

/// Checks the syntax of a node ID typed by the user.
pub fn check_node_id(id: &str) -> Result<()> {
    identity::parse_node_id(id)
        .map(|_| ())
        .map_err(|e| Error::usage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_node_ids_are_usage_errors() {
        let e = check_node_id("node-1").expect_err("invalid");
        assert_eq!(e.kind, crate::error::Kind::Usage);
        assert!(e.message.contains("metropolis-"), "{}", e.message);
        let id = identity::PublicKey::from_bytes([1; 32]).node_id();
        check_node_id(&id).expect("valid");
    }

    #[test]
    fn unknown_nodes_are_refusals_with_advice() {
        let e = find_node(Vec::new(), "metropolis-00").expect_err("missing");
        assert_eq!(e.kind, crate::error::Kind::Refused);
        assert!(e.message.contains("metroctl node list"), "{}", e.message);
    }

    #[test]
    fn the_cached_crl_is_used_only_if_it_is_the_clusters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ConfigDir::locate(Some(dir.path().to_path_buf())).expect("cfg");
        let ca_key = identity::SigningKey::generate().expect("key");
        let ca = identity::templates::cluster_ca(&ca_key).expect("ca");
        assert_eq!(cached_crl(&cfg, &ca).number(), None, "nothing cached");

        let crl = identity::templates::crl(&ca_key, &ca, &[vec![7]], 5).expect("crl");
        cfg.save_crl(&crl).expect("save");
        let held = cached_crl(&cfg, &ca);
        assert_eq!(held.number(), Some(5));
        assert!(held.is_serial_revoked(&[7]));

        // A CRL of another CA (a tampered cache, or another cluster's) is ignored.
        let other_key = identity::SigningKey::generate().expect("key");
        let other_ca = identity::templates::cluster_ca(&other_key).expect("ca");
        assert_eq!(cached_crl(&cfg, &other_ca).number(), None);
    }

    #[test]
    fn endpoints_come_from_flags_or_the_saved_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ConfigDir::locate(Some(dir.path().to_path_buf())).expect("cfg");
        let ctx = Context::new(
            cfg.clone(),
            &[],
            TrustOptions::default(),
            Duration::from_secs(1),
        )
        .expect("context");
        assert_eq!(
            ctx.endpoints().expect_err("none").kind,
            crate::error::Kind::Usage
        );
        cfg.save_endpoints(&["10.0.0.1".into()]).expect("save");
        assert_eq!(ctx.endpoints().expect("saved"), vec!["10.0.0.1:7835"]);
        let ctx = Context::new(
            cfg,
            &["10.0.0.2".into()],
            TrustOptions::default(),
            Duration::from_secs(1),
        )
        .expect("context");
        assert_eq!(ctx.endpoints().expect("flag"), vec!["10.0.0.2:7835"]);
    }
}
