//! A cluster on test hosts: a [`TestNet`] and a launch [`Cluster`] whose nodes each run in a
//! namespace of their own, plus what every scenario asks of it: who leads (as each node sees
//! it), whether a node serves Management itself, and a ledger of acknowledged writes that is
//! checked for losses at the end.

use std::collections::HashMap;
use std::time::Duration;

use launch::proto::api::node::Health;
use launch::proto::common::NodeState;
use launch::proto::curator_api::GetCurrentLeaderRequest;
use launch::proto::curator_api::curator_local_client::CuratorLocalClient;
use launch::{Cluster, ClusterOptions, Management, NodeHost, RestartPolicy};
use rpc::{ServerVerification, client_tls};
use tokio::time::Instant;

use crate::net::TestNet;
use crate::{Error, Result};

/// Curator lease TTL of chaos clusters, in seconds: the node's default.
pub const LEADER_TTL: u32 = 3;
/// How long one probe of a single node may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(250);
/// The label the ledger writes.
const LEDGER_LABEL: &str = "chaos-seq";

/// A cluster on test hosts. Field order matters: the cluster (its processes) goes before
/// the network it runs on.
pub struct Testbed {
    pub cluster: Cluster,
    pub net: TestNet,
}

impl Testbed {
    /// `nodes` nodes, `members` of them consensus members (node 0 and nodes 1..members),
    /// each on a test host of its own; returns once all are HEALTHY.
    pub async fn start(nodes: usize, members: usize) -> Result<Self> {
        let net = TestNet::create(nodes)?;
        let options = ClusterOptions {
            nodes,
            consensus_members: members.saturating_sub(1),
            leader_ttl: Some(LEADER_TTL),
            // Like a real machine, a node that fails is started again (and the scenario notes it):
            // coming back without operator help is what the campaign checks.
            restart: RestartPolicy::OnFailure,
            hosts: net
                .hosts()
                .iter()
                .map(|h| NodeHost {
                    address: h.address,
                    wrapper: h.wrapper(),
                })
                .collect(),
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(options).await?;
        Ok(Self { cluster, net })
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.cluster.nodes().len()
    }

    /// Whether there are no nodes (never: a cluster has at least one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leader named by node `index`'s curator (asked directly), if it answers in time.
    pub async fn leader_seen_by(&self, index: usize) -> std::result::Result<String, String> {
        let endpoint = self.cluster.node(index).curator_endpoint();
        let config = client_tls::client_config(
            &self.cluster.owner_credentials(),
            ServerVerification::Cluster {
                ca: self.cluster.ca_certificate().to_vec(),
                node_id: None,
                crl: Some(self.cluster.crl().clone()),
            },
        )
        .map_err(|e| e.to_string())?;
        let attempt = async {
            let channel = client_tls::connect(&endpoint, config)
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = CuratorLocalClient::new(channel)
                .get_current_leader(GetCurrentLeaderRequest {})
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            match stream.message().await {
                Ok(Some(m)) if !m.leader_node_id.is_empty() => Ok(m.leader_node_id),
                Ok(Some(_)) => Err("no leader known".to_string()),
                Ok(None) => Err("stream ended".to_string()),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err("no answer".to_string()))
    }

    /// A client calling node `index`'s curator only, once per call.
    pub async fn direct(&self, index: usize) -> std::result::Result<Management, String> {
        let id = self.cluster.id_of(index).map_err(|e| e.to_string())?;
        let config = client_tls::client_config(
            &self.cluster.owner_credentials(),
            ServerVerification::Cluster {
                ca: self.cluster.ca_certificate().to_vec(),
                node_id: Some(id),
                crl: Some(self.cluster.crl().clone()),
            },
        )
        .map_err(|e| e.to_string())?;
        let endpoint = self.cluster.node(index).curator_endpoint();
        let channel = tokio::time::timeout(PROBE_TIMEOUT, client_tls::connect(&endpoint, config))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(Management::direct(channel).with_deadline(PROBE_TIMEOUT))
    }

    /// Whether node `index` answers a Management call itself (only the leader does).
    pub async fn serves_management(&self, index: usize) -> bool {
        let Ok(client) = self.direct(index).await else {
            return false;
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, client.get_nodes("")).await,
            Ok(Ok(_))
        )
    }

    /// The index of the node every node in `among` names as leader, once they agree and that
    /// node serves Management itself.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen =
                futures::future::join_all(among.iter().map(|i| self.leader_seen_by(*i))).await;
            let ids: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
            if ids.len() == among.len()
                && ids.windows(2).all(|w| w[0] == w[1])
                && let Some(index) = ids.first().and_then(|id| self.cluster.index_of(id))
                && self.serves_management(index).await
            {
                return Ok(index);
            }
            if Instant::now() >= deadline {
                return Err(Error::Check(format!(
                    "no agreed leader among nodes {among:?} within {timeout:?}: {seen:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every node is UP and HEALTHY (as the leader sees it).
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        self.cluster.wait_all_healthy(timeout).await?;
        Ok(())
    }

    /// Every node record the cluster lists: ID → (state, health).
    pub async fn records(&self) -> Result<HashMap<String, (NodeState, Health)>> {
        let nodes = self
            .cluster
            .management()
            .with_deadline(Duration::from_secs(30))
            .get_nodes("")
            .await
            .map_err(|e| Error::Check(format!("GetNodes: {e}")))?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let state = n.state();
                let health = n.health();
                (n.id, (state, health))
            })
            .collect())
    }

    /// Boots beyond the first of every node: restarts after failures (or scenario power
    /// cycles), as `node <i>: <n> boots` notes.
    pub fn reboots(&self) -> Vec<String> {
        self.cluster
            .nodes()
            .iter()
            .filter(|n| n.boot() > 1)
            .map(|n| format!("node {} booted {} times", n.index(), n.boot()))
            .collect()
    }

    /// Node records missing or not UP among those launched.
    pub async fn lost_records(&self) -> Result<u64> {
        let records = self.records().await?;
        let ids = self.cluster.expected_ids()?;
        Ok(ids
            .iter()
            .filter(|id| !matches!(records.get(*id), Some((NodeState::Up, _))))
            .count() as u64)
    }
}

/// Acknowledged writes: a counter label on one node record, written through the
/// leader-following client; every acknowledged value must still be there at the end.
pub struct Ledger {
    management: Management,
    node: String,
    acked: u64,
}

impl Ledger {
    /// A ledger writing on node `index`'s record.
    pub fn new(bed: &Testbed, index: usize, deadline: Duration) -> Result<Self> {
        Ok(Self {
            management: bed.cluster.management().with_deadline(deadline),
            node: bed.cluster.id_of(index)?,
            acked: 0,
        })
    }

    /// The highest acknowledged value.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Writes the next value; Ok once the cluster acknowledged it.
    pub async fn write(&mut self) -> std::result::Result<Duration, String> {
        let value = (self.acked + 1).to_string();
        let started = Instant::now();
        self.management
            .update_labels(&self.node, &[(LEDGER_LABEL, &value)], &[])
            .await
            .map_err(|e| e.to_string())?;
        self.acked += 1;
        Ok(started.elapsed())
    }

    /// Acknowledged writes that are not visible any more: the highest acknowledged value
    /// minus the value read (an unacknowledged write may have landed too; that loses nothing).
    pub async fn lost(&self) -> Result<u64> {
        let node = self
            .management
            .get_node(&self.node)
            .await
            .map_err(|e| Error::Check(format!("reading the ledger: {e}")))?
            .ok_or_else(|| Error::Check(format!("ledger node {} is gone", self.node)))?;
        let value = node
            .labels
            .iter()
            .flat_map(|l| l.pairs.iter())
            .find(|p| p.key == LEDGER_LABEL)
            .and_then(|p| p.value.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(self.acked.saturating_sub(value))
    }
}
