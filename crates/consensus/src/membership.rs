//! Cluster membership: adding a node as a learner (with its peer certificate), removing one
//! without breaking quorum, and the two helpers that run beside every member (autopromoter,
//! self-updater).

use std::net::IpAddr;
use std::time::Duration;

use identity::PublicKey;
use kv::Namespaced;
use kv::etcd_client::{self, Client, MemberAddOptions};

use crate::config::{JoinCluster, peer_url};
use crate::error::Error;
use crate::peer_pki;
use crate::service::Status;

/// How often the autopromoter looks for learners (upstream: 5 s). Every new consensus member
/// waits for it once, and members join one at a time (etcd admits one learner at a time), so
/// upstream's interval alone made a 5-node cluster take over 10 s longer to form; one
/// member list a second on each member is cheap.
pub const AUTOPROMOTE_INTERVAL: Duration = Duration::from_secs(1);
/// How long adding a learner waits out etcd's "unhealthy cluster" refusal: etcd changes
/// membership only once its raft leader has been connected to every voting member for 5 s
/// (its `HealthInterval`), so right after a member joined, the next is refused for up to that
/// long. Members join one after another as fast as they are promoted, so this is the normal
/// case while a cluster forms, not an error to hand to the caller.
const UNHEALTHY_WAIT: Duration = Duration::from_secs(7);
/// The pause between those attempts.
const UNHEALTHY_RETRY: Duration = Duration::from_millis(200);
/// How often the self-updater retries a failed peer URL update (upstream: 1 s).
const SELF_UPDATE_RETRY: Duration = Duration::from_secs(1);

/// A voting member another node can contact when joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingNode {
    /// Member name (node ID).
    pub name: String,
    /// Its first peer URL.
    pub url: String,
}

impl Status {
    /// Prepares `pubkey`'s node (reachable at `address`) to join as a new member: issues its
    /// peer certificate, lists the voting members and the CRL, and adds it as a learner unless
    /// it already is a member. Idempotent. etcd admits one learner at a time; adding a second
    /// before the first is promoted fails (the caller retries).
    ///
    /// The node's member is found by node ID only (see [`MEMBERS_KEYSPACE`]): never by its
    /// peer URL, which is built from an address the node reports about itself. A node that
    /// reports another member's address is refused ([`Error::PeerUrlInUse`]) instead of being
    /// taken for that member.
    pub async fn add_node(
        &self,
        pubkey: &PublicKey,
        address: IpAddr,
    ) -> Result<JoinCluster, Error> {
        let ns = self.pki_namespace()?;
        let ca = peer_pki::ensure_ca(&ns).await?;
        let node_certificate = peer_pki::ensure_member(&ns, pubkey, address).await?;
        let initial_crl = peer_pki::crl(&ns).await?;

        let id = identity::node_id(pubkey);
        let url = peer_url(address, self.peer_port);
        let members = self.client().member_list().await?;
        let existing_nodes = members
            .members()
            .iter()
            .filter(|m| !m.is_learner() && !m.peer_urls().is_empty())
            .map(|m| ExistingNode {
                name: m.name().to_string(),
                url: m.peer_urls()[0].clone(),
            })
            .collect();
        let recorded = self.recorded_member(&id).await?;
        let known = members
            .members()
            .iter()
            .any(|m| is_node_member(m, &id, recorded));
        if !known {
            if let Some(other) = members
                .members()
                .iter()
                .find(|m| m.peer_urls().contains(&url))
            {
                return Err(Error::PeerUrlInUse {
                    node_id: id,
                    url,
                    member: member_label(other),
                });
            }
            let added = self.member_add_learner(&url).await?;
            let member_id = added.member().map(|m| m.id()).ok_or_else(|| {
                Error::Process(format!(
                    "etcd added a member for {id} at {url} without saying its ID"
                ))
            })?;
            if let Err(e) = self.record_member(&id, member_id).await {
                // Without the record nobody could find this learner again (it has no name
                // until it starts), and it would block every later learner: take it back.
                if let Err(re) = self.client().member_remove(member_id).await {
                    tracing::warn!("could not remove unrecorded learner {member_id:x}: {re}");
                }
                return Err(e);
            }
            tracing::info!("added {id} at {url} as etcd learner {member_id:x}");
        }
        Ok(JoinCluster {
            ca_certificate: ca,
            node_certificate,
            existing_nodes,
            initial_crl,
        })
    }

    /// Adds a learner at `url`, waiting out etcd's refusal of a member change right after the
    /// last one ([`UNHEALTHY_WAIT`]).
    async fn member_add_learner(&self, url: &str) -> Result<etcd_client::MemberAddResponse, Error> {
        let deadline = tokio::time::Instant::now() + UNHEALTHY_WAIT;
        loop {
            let added = self
                .client()
                .member_add(
                    [url.to_string()],
                    Some(MemberAddOptions::new().with_is_learner()),
                )
                .await;
            match added {
                Err(e) if is_quorum_refusal(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!("etcd refused to add a learner yet, retrying: {e}");
                    tokio::time::sleep(UNHEALTHY_RETRY).await;
                }
                added => return Ok(added?),
            }
        }
    }

    /// Removes `node_id`'s member (matched by name, or, for a learner that never started and
    /// so has no name yet, by the member ID [`Status::add_node`] recorded for the node).
    /// Returns whether a member was removed. Refuses to remove the last voting member, and
    /// lets etcd's strict reconfiguration check refuse removals that would leave fewer started
    /// members than a quorum; both come back as [`Error::QuorumWouldBreak`].
    pub async fn remove_node(&self, node_id: &str) -> Result<bool, Error> {
        let recorded = self.recorded_member(node_id).await?;
        let members = self.client().member_list().await?;
        let Some(target) = members
            .members()
            .iter()
            .find(|m| is_node_member(m, node_id, recorded))
        else {
            if recorded.is_some() {
                self.forget_member(node_id).await?;
            }
            return Ok(false);
        };
        let voters = members.members().iter().filter(|m| !m.is_learner()).count();
        if !target.is_learner() && voters <= 1 {
            return Err(Error::QuorumWouldBreak {
                node_id: node_id.to_string(),
                reason: "it is the last voting member".to_string(),
            });
        }
        match self.client().member_remove(target.id()).await {
            Ok(_) => {
                tracing::info!("removed etcd member {node_id}");
                self.forget_member(node_id).await?;
                Ok(true)
            }
            Err(e) if is_quorum_refusal(&e) => Err(Error::QuorumWouldBreak {
                node_id: node_id.to_string(),
                reason: format!("etcd refused: {e}"),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn members_namespace(&self) -> Result<Namespaced, Error> {
        self.namespaced(&[MEMBERS_KEYSPACE])
    }

    /// The etcd member ID recorded for `node_id` when it was added, if any.
    async fn recorded_member(&self, node_id: &str) -> Result<Option<u64>, Error> {
        let resp = self
            .members_namespace()?
            .get(member_key(node_id), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok()))
    }

    async fn record_member(&self, node_id: &str, member_id: u64) -> Result<(), Error> {
        self.members_namespace()?
            .put(member_key(node_id), format!("{member_id:x}"), None)
            .await?;
        Ok(())
    }

    async fn forget_member(&self, node_id: &str) -> Result<(), Error> {
        self.members_namespace()?
            .delete(member_key(node_id), None)
            .await?;
        Ok(())
    }
}

/// Keyspace of the node ID → etcd member ID records. A member's name is its node ID once it
/// has started, but a learner that has not started yet has no name; this record is how such
/// a learner is found by node ID. Peer URLs are never used to find a node's member: they are
/// built from the address a node reports about itself, so a node could claim another's.
pub const MEMBERS_KEYSPACE: &str = "etcd-members";

fn member_key(node_id: &str) -> String {
    format!("/{node_id}")
}

/// Whether `m` is the member of `node_id`: by name, or by the member ID recorded for it.
fn is_node_member(m: &etcd_client::Member, node_id: &str, recorded: Option<u64>) -> bool {
    m.name() == node_id || recorded == Some(m.id())
}

/// A member for messages: its name, or its ID while it has none.
fn member_label(m: &etcd_client::Member) -> String {
    if m.name().is_empty() {
        format!("unstarted learner {:x}", m.id())
    } else {
        m.name().to_string()
    }
}

/// etcd's strict reconfiguration check (on by default): "unhealthy cluster" when removing the
/// member would leave fewer connected members than a quorum, "not enough started members" for
/// the same check on other reconfigurations.
fn is_quorum_refusal(e: &etcd_client::Error) -> bool {
    let message = e.to_string();
    message.contains("unhealthy cluster") || message.contains("not enough started members")
}

/// Promotes learners while the local member is the raft leader (a cheap stand-in for a
/// leader election: promotion is idempotent, the check only avoids every member hammering the
/// cluster). etcd refuses to promote a learner that is not in sync yet; that is only logged.
pub async fn autopromote_once(client: &Client, logger: &logtree::LeveledLogger) {
    let mut c = client.clone();
    let status = match c.status().await {
        Ok(s) => s,
        Err(e) => {
            logger.warning(
                &logtree::caller_location(),
                format!("autopromoter: status failed: {e}"),
            );
            return;
        }
    };
    let is_leader = status
        .header()
        .is_some_and(|h| h.member_id() == status.leader());
    if !is_leader {
        return;
    }
    let members = match c.member_list().await {
        Ok(m) => m,
        Err(e) => {
            logger.warning(
                &logtree::caller_location(),
                format!("autopromoter: member list failed: {e}"),
            );
            return;
        }
    };
    for m in members.members().iter().filter(|m| m.is_learner()) {
        match c.member_promote(m.id()).await {
            Ok(_) => logger.info(
                &logtree::caller_location(),
                format!("promoted consensus node {}", m.name()),
            ),
            Err(e) => logger.info(
                &logtree::caller_location(),
                format!("cannot promote consensus node {} yet: {e}", m.name()),
            ),
        }
    }
}

/// Sets the member's peer URL once per run (the bootstrap member first registered a plain-HTTP
/// URL); retries until it works.
pub async fn self_update(status: &Status, logger: &logtree::LeveledLogger) {
    loop {
        match status
            .client()
            .member_update(status.member_id, [status.peer_url.clone()])
            .await
        {
            Ok(_) => {
                logger.info(
                    &logtree::caller_location(),
                    format!("peer URL set to {}", status.peer_url),
                );
                return;
            }
            Err(e) => {
                logger.warning(
                    &logtree::caller_location(),
                    format!("failed to update peer URL: {e}"),
                );
                tokio::time::sleep(SELF_UPDATE_RETRY).await;
            }
        }
    }
}
