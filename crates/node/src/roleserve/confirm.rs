//! Destructive orders are confirmed before the node carries them out.
//!
//! The leader checks ([`super::trust`]) decide which curator the node listens to, but they
//! work from what the node knows, and that can be stale: a node that was down while a
//! consensus member was deleted still lists that member and does not know its revocation. So
//! before the node does anything it cannot undo on a curator's word ([`Order`]: wipe itself,
//! stop for good, drop its etcd data, overwrite its etcd peer PKI), it confirms the order
//! independently of the curator that gave it:
//!
//! * **Through its own etcd member**, when it runs one (it is a consensus member): a
//!   linearizable read of its own node record, the very state the curators act on. No
//!   curator is involved. Dropping the etcd data also needs the member to be gone from the
//!   etcd cluster (a removed member stops serving, and the node asks the cluster instead).
//! * **Otherwise through a verified leader found afresh**, in three steps:
//!   1. the cluster CRL is fetched again from every curator the node knows (its cluster
//!      directory and every endpoint its leader channel learned), so a revocation any of them
//!      knows of is applied;
//!   2. the other consensus members the cluster directory lists must back the ordering
//!      curator as leader ([`vouched`]): asked over connections pinned to their node IDs,
//!      none may name another leader, and unless all of them are plainly no curators any more
//!      (nothing listens at their address, or their certificate is revoked), at least one
//!      must name the ordering curator. A deleted member the node still trusts cannot make a
//!      genuine one vouch for it, and while the genuine ones cannot be asked, nothing is
//!      confirmed;
//!   3. a new leader channel, seeded from the cluster directory and subject to both leader
//!      checks with the refreshed CRL, finds the leader and reads this node's state there
//!      again: its record (Curator.Watch) for a decommission or a role change, JoinNode with
//!      the join key for "deleted" and "not UP".
//!
//! Only if the read confirms the very order is it carried out. Otherwise nothing destructive
//! happens: the node logs a warning starting with `SECURITY:` that names the ordering curator
//! and keeps running (the worker that received the order restarts and looks again). The
//! price is that a destructive order waits while nothing can confirm it, e.g. while the other
//! consensus members are unreachable; a genuine order is carried out once they are back.

use std::collections::HashMap;
use std::time::Duration;

use identity::{NodeCredentials, SigningKey};
use proto::common::node_roles::ConsensusMember;
use proto::common::{ClusterDirectory, NodeRoles, NodeState};
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use proto::curator_api::watch_request::{Kind, NodeInCluster};
use proto::curator_api::{GetCurrentLeaderRequest, JoinNodeRequest, WatchRequest};
use rpc::client_tls::{self, ClientCredentials, ServerVerification};
use rpc::retry::{DEFAULT_BACKOFF, RetryPolicy};
use rpc::{ClusterCrl, LeaderChannel, LeaderOptions};
use tonic::Code;

use super::Roleserve;
use super::membership::Membership;
use super::trust;
use crate::params;

/// How long a confirmation may take in all. A destructive order can wait: one that cannot be
/// confirmed within this time is not carried out now, and the worker that got it asks again.
pub const CONFIRM_DEADLINE: Duration = Duration::from_secs(30);

/// How long another consensus member may take to say who leads (connecting included).
const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the independent read through the fresh leader channel is retried.
const READ_POLICY: RetryPolicy =
    RetryPolicy::forever(DEFAULT_BACKOFF).with_deadline(Some(Duration::from_secs(20)));

/// An order that destroys something if carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    /// The node's record is DECOMMISSION_REQUESTED: wipe data and key material.
    Decommission,
    /// The node was deleted: stop for good (exit code 3).
    Deleted,
    /// The node is no longer UP (decommissioned): stop for good (exit code 3).
    Decommissioned,
    /// The ConsensusMember role is gone: delete the local etcd data.
    LeaveConsensus,
    /// The ConsensusMember role carries another etcd peer PKI than the local one: overwrite it.
    PeerPki(ConsensusMember),
}

impl Order {
    /// What the curator claimed, for the logs.
    fn claim(&self) -> &'static str {
        match self {
            Order::Decommission => {
                "asked this node to decommission itself (wipe its data and keys)"
            }
            Order::Deleted => "indicated that this node was deleted (it would stop for good)",
            Order::Decommissioned => {
                "indicated that this node is no longer UP (it would stop for good)"
            }
            Order::LeaveConsensus => {
                "removed this node's ConsensusMember role (its etcd data would be deleted)"
            }
            Order::PeerPki(_) => {
                "sent a ConsensusMember role with another etcd peer PKI (the one on disk would \
                 be overwritten)"
            }
        }
    }

    /// Whether this order is confirmed by a JoinNode answer rather than by the record.
    fn by_join(&self) -> bool {
        matches!(self, Order::Deleted | Order::Decommissioned)
    }
}

/// What an independent read says about this node.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    /// No such node.
    Absent,
    /// JoinNode refused it as not UP.
    NotUp(String),
    /// JoinNode accepted it: it is UP.
    Up,
    /// Its record.
    Record { state: NodeState, roles: NodeRoles },
}

/// Whether `observed` confirms `order`; otherwise what it says instead.
fn confirms(order: &Order, observed: &Observed) -> Result<(), String> {
    let ok = match (order, observed) {
        (
            Order::Decommission,
            Observed::Record {
                state: NodeState::DecommissionRequested | NodeState::Decommissioning,
                ..
            },
        ) => true,
        (Order::Deleted, Observed::Absent) => true,
        (Order::Decommissioned, Observed::Absent | Observed::NotUp(_)) => true,
        (Order::Decommissioned, Observed::Record { state, .. }) => *state != NodeState::Up,
        (Order::LeaveConsensus, Observed::Record { roles, .. }) => roles.consensus_member.is_none(),
        (Order::PeerPki(ordered), Observed::Record { roles, .. }) => roles
            .consensus_member
            .as_ref()
            .is_some_and(|held| same_peer_pki(held, ordered)),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(match observed {
        Observed::Absent => "the node does not exist".to_string(),
        Observed::NotUp(why) => format!("the node is not UP ({why})"),
        Observed::Up => "the node is an UP member (JoinNode accepts it)".to_string(),
        Observed::Record { state, roles } => format!(
            "the node is {} with roles {}",
            state.as_str_name(),
            super::describe_roles(roles)
        ),
    })
}

/// What another consensus member says about who leads.
#[derive(Debug)]
enum Say {
    /// It names this node as the leader.
    Names(String),
    /// It is plainly no curator (any more): nothing listens there, its certificate is revoked.
    Abstains(String),
    /// It could not be asked (timeout, no leader known yet, ...).
    Unknown(String),
}

/// Whether the consensus members `directory` lists, other than `by` and `this_node`, back
/// `by` as the current leader: none names another leader, and either one names `by` or none
/// of them could (see [`Say::Abstains`]). Each is asked with CuratorLocal.GetCurrentLeader
/// over a connection pinned to its node ID, refusing certificates `crl` revokes. Also used
/// before the cluster directory forgets a node ID on a leader's word.
pub async fn vouched(
    directory: &ClusterDirectory,
    by: &str,
    this_node: Option<&str>,
    crl: &ClusterCrl,
) -> Result<(), String> {
    let others: Vec<(String, String)> = directory
        .nodes
        .iter()
        .filter(|n| !n.id.is_empty() && n.id != by && Some(n.id.as_str()) != this_node)
        .filter_map(|n| {
            let single = ClusterDirectory {
                nodes: vec![n.clone()],
            };
            params::curator_endpoints(&single)
                .into_iter()
                .next()
                .map(|endpoint| (n.id.clone(), endpoint))
        })
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let says = futures::future::join_all(
        others
            .iter()
            .map(|(id, endpoint)| leader_according_to(id, endpoint, crl)),
    )
    .await;
    let mut vouched = false;
    let mut missing = Vec::new();
    let mut all = Vec::new();
    for ((id, _), say) in others.iter().zip(says) {
        match say {
            Say::Names(leader) if leader == by => vouched = true,
            Say::Names(leader) => {
                return Err(format!(
                    "consensus member {id} names {leader} as the leader, not {by}"
                ));
            }
            Say::Abstains(why) => all.push(format!("{id}: {why}")),
            Say::Unknown(why) => {
                missing.push(format!("{id}: {why}"));
                all.push(format!("{id}: {why}"));
            }
        }
    }
    if vouched || missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no other consensus member backs {by} as the leader ({})",
            all.join("; ")
        ))
    }
}

/// Who consensus member `id` at `endpoint` says leads.
async fn leader_according_to(id: &str, endpoint: &str, crl: &ClusterCrl) -> Say {
    let ask = async {
        match tokio::net::TcpStream::connect(endpoint).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Say::Abstains("no curator listens there".to_string());
            }
            Err(e) => return Say::Unknown(format!("connecting: {e}")),
        }
        let verification = ServerVerification::Cluster {
            ca: crl.ca().to_vec(),
            node_id: Some(id.to_string()),
            crl: Some(crl.clone()),
        };
        let presented = client_tls::Presented::default();
        let config = match client_tls::client_config_presented(
            &ClientCredentials::None,
            verification,
            Some(presented.clone()),
        ) {
            Ok(config) => config,
            Err(e) => return Say::Unknown(e.to_string()),
        };
        let channel = match client_tls::connect(endpoint, config).await {
            Ok(channel) => channel,
            Err(e) => {
                // Only its own revoked certificate says the member was deleted; anyone
                // else's at its address says nothing about it.
                let certificate = presented.lock().unwrap_or_else(|e| e.into_inner()).take();
                let own_and_revoked = certificate.is_some_and(|c| {
                    identity::verify::cert_public_key(&c)
                        .is_ok_and(|key| identity::node_id(&key) == id)
                        && crl.is_revoked(&c)
                });
                if own_and_revoked {
                    return Say::Abstains("its certificate is revoked".to_string());
                }
                return Say::Unknown(rpc::error::error_chain(&e));
            }
        };
        let answer = async {
            let mut stream = CuratorLocalClient::new(channel)
                .get_current_leader(GetCurrentLeaderRequest {})
                .await?
                .into_inner();
            stream.message().await
        };
        match answer.await {
            Ok(Some(answer)) if answer.leader_node_id.is_empty() => {
                Say::Unknown("it names no leader".to_string())
            }
            Ok(Some(answer)) => Say::Names(answer.leader_node_id),
            Ok(None) => Say::Unknown("no answer".to_string()),
            Err(s) if s.code() == Code::Unimplemented => {
                Say::Abstains("it serves no curator".to_string())
            }
            Err(s) => Say::Unknown(format!("{:?}: {}", s.code(), s.message())),
        }
    };
    tokio::time::timeout(AGREEMENT_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| Say::Unknown(format!("no answer within {AGREEMENT_TIMEOUT:?}")))
}

/// Whether two ConsensusMember roles make the node write the same peer PKI to disk.
pub fn same_peer_pki(a: &ConsensusMember, b: &ConsensusMember) -> bool {
    a.ca_certificate == b.ca_certificate
        && a.peer_certificate == b.peer_certificate
        && a.initial_crl == b.initial_crl
}

/// What confirming needs to know about this node.
#[derive(Debug, Clone)]
pub struct Confirmer<'a> {
    rs: &'a Roleserve,
    /// This node's ID, once known (before the data is unlocked at boot it is not).
    node_id: Option<String>,
    join_key: SigningKey,
    /// The node credentials, once the data directory is unlocked.
    credentials: Option<NodeCredentials>,
    crl: ClusterCrl,
    /// Curator endpoints known besides the cluster directory's.
    known: Vec<String>,
}

impl<'a> Confirmer<'a> {
    /// For an enrolled node.
    pub fn new(rs: &'a Roleserve, m: &Membership) -> Self {
        Self {
            rs,
            node_id: Some(m.node_id()),
            join_key: m.join_key.clone(),
            credentials: Some(m.credentials.clone()),
            crl: m.crl.clone(),
            known: m.curator.endpoints(),
        }
    }

    /// For a node joining at boot (data still locked): only JoinNode answers can be confirmed.
    pub fn joining(
        rs: &'a Roleserve,
        join_key: SigningKey,
        crl: ClusterCrl,
        known: Vec<String>,
    ) -> Self {
        Self {
            rs,
            node_id: None,
            join_key,
            credentials: None,
            crl,
            known,
        }
    }

    /// Confirms `order`, given by curator `by` (its node ID). On failure the reason is logged
    /// as a SECURITY warning naming `by`, and returned; the caller must not act.
    pub async fn confirm(&self, order: &Order, by: &str) -> Result<(), String> {
        let result = match tokio::time::timeout(CONFIRM_DEADLINE, self.check(order, by)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no confirmation within {CONFIRM_DEADLINE:?}")),
        };
        match &result {
            Ok(how) => {
                tracing::info!(curator = %by, "curator {by} {}: confirmed {how}", order.claim())
            }
            Err(why) => tracing::warn!(
                curator = %by,
                "SECURITY: curator {by} {}, but that could not be confirmed independently of \
                 it: {why}; not acting on it",
                order.claim()
            ),
        }
        result.map(|_| ())
    }

    /// Confirms the order; returns how, or why not.
    async fn check(&self, order: &Order, by: &str) -> Result<&'static str, String> {
        if let (Some(status), Some(id)) = (self.rs.consensus_now(), &self.node_id) {
            // Deleting the etcd data of a member the etcd cluster still counts would destroy
            // a voter, whatever the record says (the leader updates the record before it
            // removes its own member, and puts the role back if etcd refuses).
            if *order == Order::LeaveConsensus {
                match status.client().member_list().await {
                    Ok(list) if list.members().iter().any(|m| m.name() == id) => {
                        return Err(
                            "this node's etcd member is still a member of the etcd cluster"
                                .to_string(),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("cannot list the etcd members: {e}"),
                }
            }
            match trust::local_record(&status, id).await {
                Ok(record) => {
                    let observed = match record {
                        None => Observed::Absent,
                        Some(r) => Observed::Record {
                            state: r.state(),
                            roles: r.roles(),
                        },
                    };
                    return confirms(order, &observed)
                        .map(|()| "by this node's etcd member")
                        .map_err(|why| format!("this node's etcd member says: {why}"));
                }
                // A member removed from the cluster stops serving; ask the cluster instead.
                Err(e) => tracing::debug!("cannot read this node from its etcd member: {e}"),
            }
        }
        let directory = self
            .rs
            .env
            .layout
            .esp
            .cluster_directory()
            .map_err(|e| format!("cannot read the cluster directory: {e}"))?
            .unwrap_or_default();
        let seeds = params::curator_endpoints(&directory);
        let mut everyone = seeds.clone();
        for endpoint in &self.known {
            if !everyone.contains(endpoint) {
                everyone.push(endpoint.clone());
            }
        }
        let refresh = rpc::crl::refresh(&self.crl, &ClientCredentials::None, &everyone).await;
        tracing::debug!(answered = ?refresh.answered, failed = ?refresh.failed, "CRL refreshed to confirm an order");
        vouched(&directory, by, self.node_id.as_deref(), &self.crl).await?;
        let observed = self
            .read(order, if seeds.is_empty() { everyone } else { seeds })
            .await?;
        confirms(order, &observed)
            .map(|()| "by a leader found afresh")
            .map_err(|why| format!("the leader found afresh says: {why}"))
    }

    /// Reads this node's state through a new leader channel seeded with `seeds`.
    async fn read(&self, order: &Order, seeds: Vec<String>) -> Result<Observed, String> {
        let creds = match (&self.credentials, order.by_join()) {
            (_, true) => ClientCredentials::Ephemeral(self.join_key.clone()),
            (Some(c), false) => ClientCredentials::Authenticated {
                certificate: c.certificate().to_vec(),
                key: c.key().clone(),
            },
            (None, false) => return Err("the node credentials are not unlocked yet".to_string()),
        };
        let overrides = match &self.node_id {
            Some(id) => HashMap::from([(id.clone(), self.rs.env.curator_endpoint())]),
            None => HashMap::new(),
        };
        let options = LeaderOptions {
            local_overrides: overrides,
            crl: Some(self.crl.clone()),
            leader_check: Some(self.rs.leader_check()),
            ..LeaderOptions::default()
        };
        let channel = LeaderChannel::new(seeds, creds, self.crl.ca().to_vec(), options)
            .map_err(|e| format!("cannot set up a leader channel: {e}"))?;
        if order.by_join() {
            let joined = channel
                .call(&READ_POLICY, |ch| async move {
                    CuratorClient::new(ch)
                        .join_node(JoinNodeRequest {
                            using_sealed_configuration: false,
                        })
                        .await
                })
                .await;
            return match joined {
                Ok(_) => Ok(Observed::Up),
                Err(s) if s.code() == Code::NotFound => Ok(Observed::Absent),
                Err(s) if s.code() == Code::FailedPrecondition => {
                    Ok(Observed::NotUp(s.message().to_string()))
                }
                Err(s) => Err(format!("JoinNode: {:?}: {}", s.code(), s.message())),
            };
        }
        let Some(id) = self.node_id.clone() else {
            return Err("this node's ID is not known yet".to_string());
        };
        let node = channel
            .call(&READ_POLICY, |ch| {
                let id = id.clone();
                async move {
                    let request = WatchRequest {
                        kind: Some(Kind::NodeInCluster(NodeInCluster {
                            node_id: id.clone(),
                        })),
                    };
                    let mut stream = CuratorClient::new(ch).watch(request).await?.into_inner();
                    loop {
                        match stream.message().await? {
                            Some(event) => {
                                if let Some(node) = event.nodes.into_iter().find(|n| n.id == id) {
                                    return Ok(node);
                                }
                            }
                            None => return Err(tonic::Status::unavailable("watch ended")),
                        }
                    }
                }
            })
            .await
            .map_err(|s| format!("reading this node: {:?}: {}", s.code(), s.message()))?;
        Ok(Observed::Record {
            state: NodeState::try_from(node.state).unwrap_or(NodeState::Invalid),
            roles: node.roles.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: NodeState, member: Option<ConsensusMember>) -> Observed {
        Observed::Record {
            state,
            roles: NodeRoles {
                consensus_member: member,
                ..NodeRoles::default()
            },
        }
    }

    fn member(peer: &[u8]) -> ConsensusMember {
        ConsensusMember {
            ca_certificate: b"ca".to_vec(),
            peer_certificate: peer.to_vec(),
            ..ConsensusMember::default()
        }
    }

    #[test]
    fn only_the_very_order_is_confirmed() {
        use NodeState::*;
        assert!(confirms(&Order::Decommission, &record(DecommissionRequested, None)).is_ok());
        assert!(confirms(&Order::Decommission, &record(Decommissioning, None)).is_ok());
        assert!(confirms(&Order::Decommission, &record(Up, None)).is_err());
        assert!(confirms(&Order::Decommission, &Observed::Absent).is_err());

        assert!(confirms(&Order::Deleted, &Observed::Absent).is_ok());
        assert!(confirms(&Order::Deleted, &Observed::Up).is_err());
        assert!(confirms(&Order::Deleted, &Observed::NotUp("x".into())).is_err());
        assert!(confirms(&Order::Decommissioned, &Observed::NotUp("x".into())).is_ok());
        assert!(confirms(&Order::Decommissioned, &record(Decommissioned, None)).is_ok());
        assert!(confirms(&Order::Decommissioned, &Observed::Up).is_err());

        assert!(confirms(&Order::LeaveConsensus, &record(Up, None)).is_ok());
        assert!(confirms(&Order::LeaveConsensus, &record(Up, Some(member(b"a")))).is_err());
        assert!(confirms(&Order::LeaveConsensus, &Observed::Absent).is_err());

        let ordered = Order::PeerPki(member(b"a"));
        assert!(confirms(&ordered, &record(Up, Some(member(b"a")))).is_ok());
        let err = confirms(&ordered, &record(Up, Some(member(b"b")))).expect_err("other PKI");
        assert!(err.contains("ConsensusMember"), "{err}");
        assert!(confirms(&ordered, &record(Up, None)).is_err());
    }
}
