//! Waiting for the cluster to reach a state (nodes UP or HEALTHY, a node gone, a curator
//! serving, a fresh heartbeat), failing early when a node that should run has exited.

use super::*;

impl Cluster {
    /// Fails with [`Error::NodeExited`] if one of `nodes` (not removed) has died and is not
    /// being restarted.
    pub(super) fn check_alive(&self, what: &str, nodes: &[Node]) -> Result<()> {
        let removed = self.removed();
        for node in nodes.iter().filter(|n| !removed.contains(&n.index())) {
            if let Some(exit) = node.exit() {
                return Err(Error::NodeExited {
                    index: node.index(),
                    status: exit.to_string(),
                    what: what.to_string(),
                    tail: node.tail(30),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn poll_nodes(&self) -> Result<Vec<proto::api::Node>> {
        self.management()
            .with_deadline(POLL_CALL_DEADLINE)
            .get_nodes("")
            .await
            .map_err(Error::from)
    }

    /// Polls GetNodes until `done` holds, failing early if a node that should be running
    /// died. `what` describes the condition for the timeout error.
    pub async fn wait_nodes(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[proto::api::Node]) -> bool,
    ) -> Result<Vec<proto::api::Node>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive(what, &self.nodes)?;
            let nodes = self.poll_nodes().await;
            if let Ok(nodes) = &nodes
                && done(nodes)
            {
                return Ok(nodes.clone());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    last: describe_result(&nodes),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every node not removed is UP and HEALTHY.
    pub async fn wait_all_healthy(&self, timeout: Duration) -> Result<Vec<proto::api::Node>> {
        let expected = self.expected_ids()?;
        self.wait_nodes("all nodes to be UP and HEALTHY", timeout, |nodes| {
            expected.iter().all(|id| {
                nodes.iter().any(|n| {
                    &n.id == id && n.state() == NodeState::Up && n.health() == Health::Healthy
                })
            })
        })
        .await
    }

    /// Waits until node `index` is in `state` according to the cluster.
    pub async fn wait_node_state(
        &self,
        index: usize,
        state: NodeState,
        timeout: Duration,
    ) -> Result<proto::api::Node> {
        let id = self.id_of(index)?;
        let nodes = self
            .wait_nodes(
                &format!("node {index} ({id}) to be {}", state.as_str_name()),
                timeout,
                |nodes| nodes.iter().any(|n| n.id == id && n.state() == state),
            )
            .await?;
        nodes
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::Invalid(format!("node {id} vanished")))
    }

    /// Waits until the cluster no longer lists node `index`.
    pub async fn wait_node_gone(&self, index: usize, timeout: Duration) -> Result<()> {
        let id = self.id_of(index)?;
        self.wait_nodes(
            &format!("node {index} ({id}) to be gone"),
            timeout,
            |nodes| nodes.iter().all(|n| n.id != id),
        )
        .await?;
        Ok(())
    }

    /// Waits until node `index` runs a curator: its port answers `GetCurrentLeader` with a
    /// node certificate of this cluster for that very node.
    pub async fn wait_curator_serving(&self, index: usize, timeout: Duration) -> Result<()> {
        let id = self.id_of(index)?;
        let endpoint = self.nodes[index].curator_endpoint();
        let config = client_tls::client_config(
            &self.owner_credentials(),
            ServerVerification::Cluster {
                ca: self.ca_certificate.clone(),
                node_id: Some(id.clone()),
                crl: Some(self.crl.clone()),
            },
        )
        .map_err(|source| Error::Client {
            what: "configuring a curator client",
            source,
        })?;
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = async {
                let channel = client_tls::connect(&endpoint, config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut stream = CuratorLocalClient::new(channel)
                    .get_current_leader(GetCurrentLeaderRequest {})
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                match stream.message().await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("stream ended".to_string()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            };
            let last = match tokio::time::timeout(POLL_CALL_DEADLINE, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "no answer".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("a curator to serve on node {index} ({endpoint})"),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the cluster has a heartbeat of node `index` sent after `since` (and counts
    /// it HEALTHY). Right after a restart its health still reflects heartbeats of the previous
    /// boot; this tells that the new boot is in contact.
    pub async fn wait_heartbeat_since(
        &self,
        index: usize,
        since: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let id = self.id_of(index)?;
        self.wait_nodes(
            &format!("a heartbeat of node {index} ({id}) sent after its restart"),
            timeout,
            |nodes| {
                let elapsed = since.elapsed();
                nodes.iter().any(|n| {
                    n.id == id
                        && n.health() == Health::Healthy
                        && n.time_since_heartbeat
                            .as_ref()
                            .is_some_and(|d| Duration::try_from(*d).is_ok_and(|d| d < elapsed))
                })
            },
        )
        .await?;
        Ok(())
    }
}

pub(super) fn describe_result(nodes: &Result<Vec<proto::api::Node>>) -> String {
    match nodes {
        Ok(nodes) => format!("\n{}", describe_nodes(nodes, &HashMap::new())),
        Err(e) => e.to_string(),
    }
}
